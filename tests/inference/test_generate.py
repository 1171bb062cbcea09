"""`mrisynth generate` (mrisynth.inference.generate): TIFF and per-modality NIfTI from masks, masks of other
sizes fitted to the model's input, bad labels refused in one line."""
import re
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest


def test_generate_writes_tiff_and_nifti(champion, trained, tmp_path):
    import nibabel as nib
    import tifffile

    out = tmp_path / "generated"
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "generate", "--model", "models:/promo-generator@champion",
                        "--masks", "data/test/masks", "--out", str(out)], cwd=trained, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tifs = sorted(out.glob("*.tif"))
    assert len(tifs) == 2
    image = tifffile.imread(tifs[0])
    assert image.shape == (64, 64, 4) and image.dtype == np.float32
    for c, modality in enumerate(("flair", "t1", "t1ce", "t2")):  # one NIfTI per modality, BraTS naming, spacing kept
        nifti = nib.load(str(out / f"{tifs[0].stem}_{modality}.nii.gz"))
        assert nifti.shape == (64, 64, 1) and nifti.header.get_zooms() == (1.0, 1.0, 1.0)
        np.testing.assert_allclose(np.asarray(nifti.dataobj)[..., 0], image[..., c])

    # masks of another size are fitted to the model's 64 x 64 input: smaller padded, larger resized
    for side, how in ((32, "pad"), (96, "resize")):
        masks, brains = tmp_path / f"m{side}", tmp_path / f"b{side}"
        masks.mkdir()
        brains.mkdir()
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4 : side // 2, side // 4 : side // 2] = 2
        tifffile.imwrite(masks / "x.tif", mask)
        tifffile.imwrite(brains / "x.tif", np.ones((side, side), np.uint8))
        r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "generate", "--model", "models:/promo-generator@champion",
                            "--masks", str(masks), "--brain", str(brains), "--out", str(tmp_path / f"o{side}")], cwd=trained, capture_output=True, text=True)
        assert r.returncode == 0 and f"{side}x{side} -> 64x64 ({how})" in r.stdout, r.stdout + r.stderr
        assert tifffile.imread(tmp_path / f"o{side}" / "x.tif").shape == (64, 64, 4)
        expected_mm = 1.5 if how == "resize" else 1.0  # 96 px resized to 64: each pixel covers 1.5 mm
        assert nib.load(str(tmp_path / f"o{side}" / "x_t1ce.nii.gz")).header.get_zooms()[:2] == (expected_mm, expected_mm)

    bad = tmp_path / "bad"
    bad.mkdir()
    tifffile.imwrite(bad / "x.tif", np.full((64, 64), 3, np.uint8))
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "generate", "--model", "models:/promo-generator@champion",
                        "--masks", str(bad), "--out", str(tmp_path / "o2")], cwd=trained, capture_output=True, text=True)
    assert r.returncode == 2 and "x.tif: labels [3]" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------ inputs and outputs around the model (a stand-in model, no registry)
class _Identity:
    """Stands in for a registered generator: size 16, 4 channels; an inpainting one (9 input channels) returns
    its context channels back in [0, 1] (the real slice outside the region, 0 inside), a full one zeros."""

    size, channels = 16, 4

    def __init__(self, in_channels: int):
        self.in_channels = in_channels

    def predict(self, cond):
        if self.in_channels == 4:
            return np.zeros((*cond.shape[:3], 4), np.float32)
        return ((cond[..., 5:] + 1.0) / 2.0).astype(np.float32)


@pytest.fixture
def stand_in(monkeypatch):
    from mrisynth.inference import promote, served_model
    from mrisynth.io import registry

    def use(in_channels: int):
        monkeypatch.setattr(promote, "require_model", lambda uri: None)
        monkeypatch.setattr(registry, "run_param", lambda uri, key: None)   # no registry behind a stand-in
        monkeypatch.setattr(served_model.Generator, "load", staticmethod(lambda uri: _Identity(in_channels)))
    return use


def _case(folder, side=16, scale=1.0):
    """A mask folder, a brain folder and an image folder with one case `x`."""
    import tifffile

    mask = np.zeros((side, side), np.uint8)
    mask[2:5, 2:5] = 2
    image = np.full((side, side, 4), 0.25, np.float32) * scale
    image[8:, 8:] = 0.75 * scale
    for name, array in (("m", mask), ("b", np.ones((side, side), np.uint8)), ("s", image)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / name / "x.tif", array)
    return folder / "m", folder / "b", folder / "s", image


def test_an_inpainting_generator_keeps_the_slice_given_with_images(stand_in, tmp_path, monkeypatch):
    import tifffile

    from mrisynth.inference import generate as module
    from mrisynth.inference.generate import generate

    stand_in(9)
    masks, _, slices, image = _case(tmp_path)
    reads = []
    read_image = module.tiff.read_image
    monkeypatch.setattr(module.tiff, "read_image", lambda path: reads.append(path) or read_image(path))
    generate("models:/g/1", masks, tmp_path / "out", images_dir=slices)  # brain from the images (any channel > 0)
    assert reads == [slices / "x.tif"]   # the real slice is read once: it gives the brain and the context
    out = tifffile.imread(tmp_path / "out" / "x.tif")
    np.testing.assert_allclose(out[8:, 8:], image[8:, 8:], atol=1e-6)  # far from the tumour: the real slice
    assert np.all(out[2:5, 2:5] == 0.0)  # inside the region the stand-in drew nothing


def test_inpainting_uses_the_trained_margin_and_augments_soft_ramp(stand_in, tmp_path, monkeypatch):
    import tifffile

    from mrisynth.inference.generate import generate
    from mrisynth.io import registry

    stand_in(9)
    monkeypatch.setattr(registry, "run_param", lambda uri, key: "0.25" if key == "inpaint_margin" else None)
    masks, _, slices, image = _case(tmp_path)   # tumour rows/columns 2-4; margin 0.25 x 16 px = 4 px
    generate("models:/g/1", masks, tmp_path / "out", images_dir=slices)
    out = tifffile.imread(tmp_path / "out" / "x.tif")
    # (8, 3) lies 4 px below the tumour: in the region, 1 px from its edge, so weight 1/4 of the generated value
    # (the stand-in draws 0 in the region): 0.25 real x 3/4
    assert out[8, 3, 0] == pytest.approx(0.25 * 0.75)
    assert out[9, 3, 0] == image[9, 3, 0]         # just outside the region: the real slice
    assert np.all(out[3, 3] == 0.0)               # deep inside: the generated value only


def test_an_unreadable_training_run_falls_back_to_the_default_margin(stand_in, tmp_path, capsys):
    from mrisynth.inference.generate import generate

    stand_in(9)
    masks, _, slices, _ = _case(tmp_path)
    generate("models:/g/1", masks, tmp_path / "out", images_dir=slices)   # the stand-in's run has no inpaint_margin
    assert "models:/g/1: the training run's inpaint_margin is not readable; using the default inpaint_margin 0.03" in capsys.readouterr().out


@pytest.mark.parametrize("problem, message", [
    ("no images", "pass --images DIR"),
    ("8-bit images", "x.tif: intensities 63.75 .. 191.25, expected [0, 1]"),
])
def test_an_inpainting_generator_says_what_its_slices_lack(stand_in, tmp_path, problem, message):
    from mrisynth.errors import DataError
    from mrisynth.inference.generate import generate

    stand_in(9)
    masks, brains, slices, _ = _case(tmp_path, scale=255.0 if problem == "8-bit images" else 1.0)
    with pytest.raises(DataError, match=re.escape(message)):
        generate("models:/g/1", masks, tmp_path / "out", brain_dir=brains, images_dir=None if problem == "no images" else slices)


def test_generate_never_writes_into_a_folder_it_reads_and_keeps_earlier_outputs_unless_forced(stand_in, tmp_path):
    import tifffile

    from mrisynth.errors import DataError
    from mrisynth.inference.generate import generate

    stand_in(4)
    masks, brains, _, _ = _case(tmp_path)
    before = tifffile.imread(masks / "x.tif")
    for out in (masks, brains):
        for force in (False, True):
            with pytest.raises(DataError, match="folder: generating there would overwrite"):
                generate("models:/g/1", masks, out, brain_dir=brains, force=force)
    np.testing.assert_array_equal(tifffile.imread(masks / "x.tif"), before)

    split = tmp_path / "data" / "test"  # an imported split: its images/ are read (brain), so never an output
    _case(split)
    (split / "m").rename(split / "masks")
    (split / "s").rename(split / "images")
    with pytest.raises(DataError, match="is the split's images folder"):
        generate("models:/g/1", split / "masks", split / "images", force=True)

    generate("models:/g/1", masks, tmp_path / "out", brain_dir=brains)
    with pytest.raises(DataError, match="already holds 5 of the files this run writes.*--force"):
        generate("models:/g/1", masks, tmp_path / "out", brain_dir=brains)
    assert generate("models:/g/1", masks, tmp_path / "out", brain_dir=brains, force=True) == [tmp_path / "out" / "x.tif"]


def test_generate_names_a_missing_folder_and_tiff_spelling(stand_in, tmp_path):
    from mrisynth.errors import DataError
    from mrisynth.inference.generate import generate

    stand_in(4)
    with pytest.raises(DataError, match="no such folder"):
        generate("models:/g/1", tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "tiffs").mkdir()
    (tmp_path / "tiffs" / "x.tiff").write_bytes(b"")
    with pytest.raises(DataError, match=r"found x\.tiff: rename"):
        generate("models:/g/1", tmp_path / "tiffs", tmp_path / "out")


def test_a_larger_non_square_mask_is_padded_to_a_square_before_resizing_never_stretched(stand_in, tmp_path):
    import nibabel as nib
    import tifffile

    from mrisynth.inference.generate import _fit, generate

    mask = np.zeros((8, 32), np.uint8)
    mask[2:6, 14:18] = 2  # a 4 x 4 tumour
    fitted, how, factor = _fit(mask, 16, is_mask=True)
    assert (how, factor) == ("resize", 2.0) and fitted.shape == (16, 16)
    rows, cols = np.nonzero(fitted)
    assert np.ptp(rows) == np.ptp(cols) == 1  # still square: 2 x 2 pixels at half the resolution
    stand_in(4)
    (tmp_path / "m").mkdir()
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "m" / "x.tif", mask)
    tifffile.imwrite(tmp_path / "b" / "x.tif", np.ones_like(mask))
    generate("models:/g/1", tmp_path / "m", tmp_path / "out", brain_dir=tmp_path / "b")
    assert nib.load(str(tmp_path / "out" / "x_t1.nii.gz")).header.get_zooms()[:2] == (2.0, 2.0)  # 32 px over 16: 2 mm each way


def test_generate_refuses_a_file_as_out_and_the_split_images_reached_through_dot(stand_in, tmp_path, monkeypatch):
    from mrisynth.errors import DataError
    from mrisynth.inference.generate import generate

    stand_in(4)
    masks, brains, _, _ = _case(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="exists and is a file, not a folder"):
        generate("models:/g/1", masks, tmp_path / "a_file", brain_dir=brains)
    split = tmp_path / "data" / "test"
    _case(split)
    (split / "m").rename(split / "masks")
    (split / "s").rename(split / "images")
    monkeypatch.chdir(split / "masks")
    with pytest.raises(DataError, match="is the split's images folder"):
        generate("models:/g/1", Path("."), Path("../images"), brain_dir=brains, force=True)


def test_another_cases_files_in_out_do_not_block_a_run(stand_in, tmp_path):
    from mrisynth.inference.generate import generate

    stand_in(4)
    masks, brains, _, _ = _case(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x_b_t1.nii.gz").write_bytes(b"case x_b's file")  # shares the prefix x_, not a file of case x
    assert generate("models:/g/1", masks, tmp_path / "out", brain_dir=brains) == [tmp_path / "out" / "x.tif"]


@pytest.mark.parametrize("uri, expected", [
    ("models:/gen/3", ("gen", "3", None)),
    ("models:/gen@champion", ("gen", None, "champion")),
    ("models:/team/gen@champion", ("team/gen", None, "champion")),
    ("models:/gen", None),
    ("runs:/abc/generator", None),
    ("/tmp/model", None),
])
def test_parse_uri(uri, expected):
    from mrisynth.io import registry

    assert registry.parse_uri(uri) == expected


def test_run_param_reads_the_registered_versions_training_run(trained):
    from mrisynth.config import load_params
    from mrisynth.io import registry

    gan = load_params("params.yaml").train_gan
    assert float(registry.run_param(f"models:/{gan.registry_name}@challenger", "inpaint_margin")) == gan.inpaint_margin
    assert registry.run_param(f"models:/{gan.registry_name}@challenger", "no_such_key") is None
    assert registry.run_param(f"models:/{gan.registry_name}/999", "inpaint_margin") is None
    assert registry.run_param("runs:/abc/generator", "inpaint_margin") is None

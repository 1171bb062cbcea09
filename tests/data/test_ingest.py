"""Importer: layout, splits, seeding, every bad input (error text and nothing written), skip-invalid."""
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import truncate_gzip, write_tiny_case
from mrisynth.errors import DataError
from mrisynth.data.ingest import ImportOptions, import_brats

COUNTS = {"train": 4, "val": 2, "test": 3}
OPTS = ImportOptions(size=64, fit="pad")


def _import(src, out, **kw):
    return import_brats(src, out, kw.pop("counts", COUNTS), kw.pop("seed", 7), kw.pop("options", OPTS), **kw)


def test_import_writes_the_documented_layout(tiny_brats, tmp_path):
    out = tmp_path / "out"
    manifest = _import(tiny_brats.parent, out)  # the parent of MICCAI_... works too
    assert {"case_id", "split", "slice_index", "image", "mask", "tumor_pixels"} <= set(manifest.columns)
    assert manifest["split"].value_counts().to_dict() == COUNTS
    assert manifest["case_id"].is_unique  # patient-disjoint: one slice per case, each case in one split
    on_disk = pd.read_csv(out / "manifest.csv")
    pd.testing.assert_frame_equal(on_disk[["case_id", "split"]], manifest[["case_id", "split"]])
    for _, row in manifest.iterrows():
        image = tifffile.imread(out / row["image"])
        mask = tifffile.imread(out / row["mask"])
        assert row["image"] == f"{row['split']}/images/{row['case_id']}.tif"
        assert image.shape == (64, 64, 4) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 4}
        assert row["tumor_pixels"] == np.count_nonzero(mask) > 0
    assert not (out / "rejected.csv").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_slice_is_the_largest_tumour_and_pad_is_lossless(tmp_path):
    root = tmp_path / "src"
    write_tiny_case(root, "BraTS20_Training_001", seed=1, tumour_slice=8)
    out = tmp_path / "out"
    manifest = _import(root, out, counts={"train": 1, "val": 0, "test": 0})
    assert manifest.loc[0, "slice_index"] == 8
    seg = np.asanyarray(nib.load(str(root / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz")).dataobj)
    mask = tifffile.imread(out / manifest.loc[0, "mask"])
    np.testing.assert_array_equal(mask[8:56, 8:56], seg[:, :, 8])  # 48 -> 64: centred, 8 px each side


def test_resize_fit_and_modality_subset(tiny_brats, tmp_path):
    options = ImportOptions(size=32, modalities=("t1ce", "flair"), fit="resize")
    manifest = _import(tiny_brats, tmp_path / "out", options=options)
    image = tifffile.imread(tmp_path / "out" / manifest.loc[0, "image"])
    assert image.shape == (32, 32, 2)


def test_splits_are_seeded(tiny_brats, tmp_path):
    a = _import(tiny_brats, tmp_path / "a", seed=1)
    b = _import(tiny_brats, tmp_path / "b", seed=1)
    c = _import(tiny_brats, tmp_path / "c", seed=2)
    assert a[["case_id", "split"]].equals(b[["case_id", "split"]])
    assert not a[["case_id", "split"]].equals(c[["case_id", "split"]])
    assert (tmp_path / "a" / "train" / "images" / f"{a.case_id[0]}.tif").read_bytes() == (
        tmp_path / "b" / "train" / "images" / f"{b.case_id[0]}.tif"
    ).read_bytes()


def test_case_355_segmentation_quirk_is_found(tiny_brats, tmp_path):
    manifest = _import(tiny_brats, tmp_path / "out", counts={"train": 12, "val": 0, "test": 0})
    assert "BraTS20_Training_355" in set(manifest["case_id"])


def _break_missing(case: Path):
    next(case.glob("*_t2.nii*")).unlink()
    return "missing t2 file"


def _break_truncated(case: Path):
    path = next(case.glob("*_flair.nii*"))
    if path.suffix == ".gz":
        truncate_gzip(path)
    else:
        path.write_bytes(path.read_bytes()[:400])
    return "cannot read"


def _break_shape(case: Path):
    path = next(case.glob("*_t1ce.nii*"))
    nib.save(nib.Nifti1Image(np.ones((40, 48, 12), np.int16), np.eye(4)), str(path))
    return "has shape (40, 48, 12), expected (48, 48, 12)"


def _break_nan(case: Path):
    path = next(case.glob("*_t1.nii*"))
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    data[4, 4, 4] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return "has 2 NaN/inf voxels"


def _break_label3(case: Path):
    path = next(p for p in case.iterdir() if "seg" in p.name.lower())
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8)
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return "has labels [3], expected a subset of {0, 1, 2, 4}"


def _break_empty(case: Path):
    for path in case.iterdir():
        if "seg" not in path.name.lower():
            nib.save(nib.Nifti1Image(np.zeros((48, 48, 12), np.int16), np.eye(4)), str(path))
    return "every modality is zero"


BREAKERS = [_break_missing, _break_truncated, _break_shape, _break_nan, _break_label3, _break_empty]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_bad_case_is_named_and_nothing_is_written(tiny_brats, tmp_path, breaker):
    counts = {"train": 12, "val": 0, "test": 0}  # every case is selected, so the broken one is too
    case = tiny_brats / "BraTS20_Training_004"
    expected = breaker(case)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        _import(tiny_brats, out, counts=counts)
    lines = [line for line in str(info.value).splitlines() if "BraTS20_Training_004" in line]
    assert len(lines) == 1 and expected in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_skip_invalid_rejects_and_still_delivers(tiny_brats, tmp_path, breaker):
    breaker(tiny_brats / "BraTS20_Training_004")
    out = tmp_path / "out"
    manifest = _import(tiny_brats, out, counts={"train": 8, "val": 1, "test": 2}, skip_invalid=True)
    assert len(manifest) == 11 and "BraTS20_Training_004" not in set(manifest["case_id"])
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["case_id"].tolist() == ["BraTS20_Training_004"]


def test_too_few_valid_cases(tiny_brats, tmp_path):
    _break_label3(tiny_brats / "BraTS20_Training_002")
    with pytest.raises(DataError, match="12 valid cases requested, found only 11"):
        _import(tiny_brats, tmp_path / "out", counts={"train": 12, "val": 0, "test": 0}, skip_invalid=True)
    with pytest.raises(DataError, match="20 cases requested .* found only 12 case folders"):
        _import(tiny_brats, tmp_path / "out", counts={"train": 20, "val": 0, "test": 0})
    assert not (tmp_path / "out").exists()


def test_output_folder_with_data_needs_force(tiny_brats, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="already holds data.*--force"):
        _import(tiny_brats, out)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(DataError, match="replaces only a dataset this tool imported.*nothing was deleted"):
        _import(tiny_brats, out, force=True)  # a folder of the user's: never deleted, even with --force
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    _import(tiny_brats, out)
    first = (out / "manifest.csv").read_text()
    _import(tiny_brats, out, force=True)  # an earlier import is replaced
    assert (out / "manifest.csv").read_text() == first


def test_manifest_paths_and_case_ids_must_stay_inside_the_dataset(tiny_brats, tmp_path):
    from mrisynth.data.export import export
    from mrisynth.io import gx
    from mrisynth.io.manifest import read_manifest

    data = tmp_path / "data"
    _import(tiny_brats, data)
    manifest = pd.read_csv(data / "manifest.csv")
    outside = tmp_path / "outside.tif"
    outside.write_bytes((data / manifest.loc[1, "image"]).read_bytes())
    manifest.loc[0, "case_id"] = "../../../escaped_case"
    manifest.loc[1, "image"] = str(outside)  # an absolute path outside data/
    manifest.to_csv(data / "manifest.csv", index=False)
    with pytest.raises(DataError, match="2 unsafe entries refused.*not a plain name.*leaves the dataset folder"):
        read_manifest(data)
    with pytest.raises(DataError, match="unsafe entr"):
        export(data, tmp_path / "export", "nifti")
    assert not (tmp_path / "escaped_case").exists() and not (tmp_path / "export").exists()
    report = gx.validate_dataset(data)  # Great Expectations names the rows too
    assert not report.success and any("paths_inside" in f for f in report.failures)


def test_parallel_import_matches_serial(tiny_brats, tmp_path):
    a = _import(tiny_brats, tmp_path / "a", workers=1)
    b = _import(tiny_brats, tmp_path / "b", workers=2)
    assert a.equals(b)


def test_force_onto_a_file_is_one_line_and_killed_import_leftovers_are_cleaned(tiny_brats, tmp_path):
    target = tmp_path / "data"
    target.write_text("not a folder")
    with pytest.raises(DataError, match="exists and is a file"):
        import_brats(tiny_brats, target, {"train": 2}, 1, ImportOptions(size=64), force=True)
    target.unlink()
    # a killed import left its temporary folder (its pid no longer runs); a live one's is kept
    dead = tmp_path / ".data.tmp-999999999-abc"
    dead.mkdir()
    (dead / "half.tif").write_bytes(b"partial")
    live = tmp_path / f".data.tmp-{os.getpid()}-xyz"
    live.mkdir()
    import_brats(tiny_brats, target, {"train": 2}, 1, ImportOptions(size=64))
    assert not dead.exists() and live.exists()
    assert (target / "manifest.csv").is_file() and (target / "card.json").is_file()


def test_split_and_modalities_cannot_name_paths_and_symlinked_files_are_the_datasets_own(tiny_brats, tmp_path):
    from mrisynth.io.manifest import is_inside, read_manifest

    data = tmp_path / "data"
    _import(tiny_brats, data)
    original = pd.read_csv(data / "manifest.csv")
    for column, value in (("split", "../../esc"), ("modalities", "flair,t1,t1ce,../../../esc2/x")):
        bad = original.copy()
        bad[column] = bad[column].astype(object)
        bad.loc[0, column] = value
        bad.to_csv(data / "manifest.csv", index=False)
        with pytest.raises(DataError, match="unsafe entr"):
            read_manifest(data)
    original.to_csv(data / "manifest.csv", index=False)
    # a file that is a symlink (DVC's symlink cache) into a store outside the folder is the dataset's own
    store = tmp_path / "cache"
    store.mkdir()
    image = data / original.loc[0, "image"]
    (store / "blob").write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(store / "blob")
    assert is_inside(data, original.loc[0, "image"]) and len(read_manifest(data)) == len(original)
    assert not is_inside(data, "train/../../x.tif") and not is_inside(data, "/etc/passwd") and is_inside(data, "train/./a.tif")


def test_a_slice_index_beyond_the_volume_is_one_line_naming_the_case(tiny_brats, tmp_path):
    import dataclasses

    beyond = dataclasses.replace(OPTS, slice_rule="40")
    with pytest.raises(DataError, match=r"BraTS20_Training_\d{3}: --slice 40: slice index 40 is outside 0\.\.11 \(12 axial slices\)"):
        _import(tiny_brats, tmp_path / "out", options=beyond)
    with pytest.raises(DataError, match="valid cases requested, found only 0"):  # --skip-invalid rejects them, never crashes
        _import(tiny_brats, tmp_path / "out", options=beyond, skip_invalid=True)
    assert not (tmp_path / "out").exists()


def test_no_cases_requested_says_so(tiny_brats, tmp_path):
    with pytest.raises(DataError, match="no cases requested .*at least one of --train/--val/--test"):
        _import(tiny_brats, tmp_path / "out", counts={"train": 0, "val": 0, "test": 0})


def test_phantom_cases_never_mix_with_other_files(tmp_path):
    from mrisynth.data.ingest import make_phantom

    out = tmp_path / "raw"
    (out / "BraTS20_Training_002").mkdir(parents=True)  # e.g. left from an earlier run with more cases
    with pytest.raises(DataError, match="already holds files; .*--force"):
        make_phantom(out, cases=1, seed=7, version=1)
    with pytest.raises(DataError, match="replaces only phantom cases .* nothing was deleted"):
        make_phantom(out, cases=1, seed=7, version=1, force=True)
    assert (out / "BraTS20_Training_002").is_dir()
    (out / "phantom_cases.csv").write_text("case_id\nBraTS20_Training_002\n")
    (out / "my_notes.txt").write_text("mine")  # not a phantom file: --force deletes nothing
    with pytest.raises(DataError, match=r"holds other entries \(my_notes.txt\), so nothing was deleted"):
        make_phantom(out, cases=1, seed=7, version=1, force=True)
    assert (out / "my_notes.txt").is_file() and (out / "BraTS20_Training_002").is_dir()
    (out / "my_notes.txt").unlink()
    assert make_phantom(out, cases=1, seed=7, version=1, force=True) == ["BraTS20_Training_001"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["BraTS20_Training_001"]  # the old case is gone


def test_data_default_refuses_a_full_folder_before_making_phantom_cases(tmp_path, monkeypatch, capsys):
    from mrisynth import cli
    from mrisynth.data import ingest

    def never(*args, **kwargs):
        raise AssertionError("phantom cases were made before the output folder was checked")

    monkeypatch.setattr(ingest, "make_phantom", never)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    params = str(Path(__file__).resolve().parents[2] / "params.yaml")
    assert cli.main(["data", "default", "--params", params, "--out", str(tmp_path / "data")]) == 2
    assert "output folder already holds data" in capsys.readouterr().err

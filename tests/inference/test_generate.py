"""`mrisynth generate` (mrisynth.inference.generate): TIFF and per-modality NIfTI from masks, masks of other
sizes fitted to the model's input, bad labels refused in one line."""
import subprocess
import sys

import numpy as np


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

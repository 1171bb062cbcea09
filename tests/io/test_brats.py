"""BraTS 2021 and 2023 (GLI) layouts: detection, forced layout, label mapping, one-line errors."""
import json

import nibabel as nib
import numpy as np
import pytest

from conftest import tiny_volumes
from mrisynth.errors import DataError
from mrisynth.data.ingest import ImportOptions, import_brats
from mrisynth.io import brats, tiff

GLI_NAMES = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def _write(root, case_id, seed, separator, names, labels_2023=False, drop=None):
    volumes, seg, k = tiny_volumes(seed)
    d = root / case_id
    d.mkdir(parents=True, exist_ok=True)
    for m, v in volumes.items():
        if m == drop:
            continue
        nib.save(nib.Nifti1Image(v.astype(np.int16), np.eye(4)), str(d / f"{case_id}{separator}{names[m]}.nii.gz"))
    if labels_2023:  # BraTS 2023: 3 = enhancing tumour, 4 unused
        seg = np.where(seg == 4, 3, seg).astype(np.uint8)
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(d / f"{case_id}{separator}seg.nii.gz"))
    return seg, k


def tree_2021(root, n=4):
    for i in range(n):
        _write(root, f"BraTS2021_{i:05d}", i, "_", {m: m for m in GLI_NAMES})
    return root


def tree_2023(root, n=4, cohort="GLI", **kw):
    segs = {}
    for i in range(n):
        case = f"BraTS-{cohort}-{i:05d}-000"
        segs[case] = _write(root, case, i, "-", GLI_NAMES, labels_2023=True, **kw)
    return root, segs


def test_detection():
    assert brats.detect_layout(["BraTS20_Training_001", "BraTS20_Training_355"]) == "brats2020"
    assert brats.detect_layout(["BraTS2021_00000", "BraTS2021_01666"]) == "brats2021"
    assert brats.detect_layout(["BraTS-GLI-00000-000", "BraTS-GLI-01666-001"]) == "brats2023"
    assert brats.detect_layout(["case_a", "case_b"]) == "brats2020"  # permissive default
    with pytest.raises(DataError, match="several BraTS releases are mixed"):
        brats.detect_layout(["BraTS2021_00000", "BraTS-GLI-00001-000"])


def test_brats2023_cohorts_with_gli_labels_are_detected_and_paediatric_cases_refused():
    assert brats.detect_layout(["BraTS-GLI-00001-000", "BraTS-SSA-00002-000", "BraTS-MEN-00004-000", "BraTS-MET-00010-001"]) == "brats2023"
    for names in (["BraTS-PED-00001-000"], ["BraTS-GLI-00001-000", "BraTS-PED-00002-000"]):
        with pytest.raises(DataError, match="BraTS-PED-0000[12]-000: BraTS 2023 paediatric .* GLI, SSA, MEN and MET labels only"):
            brats.detect_layout(names)


def test_paediatric_cases_are_refused_even_with_the_layout_forced(tmp_path):
    root, _ = tree_2023(tmp_path / "ped", n=2, cohort="PED")
    with pytest.raises(DataError, match="paediatric"):
        brats.discover(root, ("flair", "t1", "t1ce", "t2"), layout="brats2023")


def test_a_meningioma_tree_imports_through_its_parent_folder(tmp_path):
    root, _ = tree_2023(tmp_path / "parent" / "ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData", cohort="MEN")
    manifest = import_brats(tmp_path / "parent", tmp_path / "out", {"train": 2, "val": 1, "test": 1}, 1, ImportOptions(size=64))
    assert set(manifest["release"]) == {"brats2023"} and len(manifest) == 4
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["label_mapping"] == {"3": 4}


def test_a_forced_layout_names_its_folder_pattern(tmp_path):
    src = tree_2021(tmp_path / "t2021", n=2)
    with pytest.raises(DataError, match=r"does not match the brats2023 layout \(BraTS-\{GLI,SSA,MEN,MET\}-NNNNN-NNN\); .* --layout brats2021"):
        brats.discover(src, ("flair",), layout="brats2023")


def test_brats2021_tree_imports(tmp_path):
    src = tree_2021(tmp_path / "BraTS2021_Training_Data")
    manifest = import_brats(src, tmp_path / "out", {"train": 2, "val": 1, "test": 1}, 1, ImportOptions(size=64))
    assert set(manifest["release"]) == {"brats2021"} and len(manifest) == 4
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["release"] == "brats2021" and info["label_mapping"] == {}


def test_brats2023_tree_imports_with_3_mapped_to_enhancing(tmp_path):
    src, segs = tree_2023(tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData")
    out = tmp_path / "out"
    manifest = import_brats(src, out, {"train": 2, "val": 1, "test": 1}, 1, ImportOptions(size=64))
    assert set(manifest["release"]) == {"brats2023"}
    info = json.loads((out / "dataset.json").read_text())
    assert info["release"] == "brats2023" and info["label_mapping"] == {"3": 4} and "3 ET" in info["label_convention"]
    for row in manifest.itertuples():
        mask = tiff.read_mask(out / row.mask)
        original, _ = segs[row.case_id]
        assert set(np.unique(mask)) <= {0, 1, 2, 4}
        # every enhancing (3) voxel of the written slice became internal label 4, the rest unchanged
        expected = np.where(original[:, :, row.slice_index] == 3, 4, original[:, :, row.slice_index])
        np.testing.assert_array_equal(mask[8:56, 8:56], expected)  # 48 -> 64 centred padding


def test_forced_wrong_layout_and_bad_cases_are_one_line(tmp_path):
    src, _ = tree_2023(tmp_path / "gli")
    with pytest.raises(DataError, match=r"does not match the brats2021 layout.*look like brats2023") as err:
        import_brats(src, tmp_path / "out", {"train": 2}, 1, ImportOptions(size=64, layout="brats2021"))
    assert "\n" not in str(err.value)
    # a 2023 label map read as 2020 data: label 3 is named, with the fix
    legacy = tmp_path / "legacy"
    _write(legacy, "BraTS20_Training_001", 1, "_", {m: m for m in GLI_NAMES}, labels_2023=True)
    _write(legacy, "BraTS20_Training_002", 2, "_", {m: m for m in GLI_NAMES})
    with pytest.raises(DataError, match=r"BraTS20_Training_001.*labels \[3\].*brats2020 layout.*--layout brats2023"):
        import_brats(legacy, tmp_path / "out2", {"train": 2}, 1, ImportOptions(size=64))
    # a missing 2023 modality names the expected file
    missing = tmp_path / "missing"
    tree_2023(missing, n=2, drop="t1ce")
    with pytest.raises(DataError, match=r"missing t1ce file: expected .*BraTS-GLI-0000[01]-000-t1c\.nii\.gz"):
        import_brats(missing, tmp_path / "out3", {"train": 2}, 1, ImportOptions(size=64))
    with pytest.raises(DataError, match="--layout brats2019"):
        ImportOptions(layout="brats2019")

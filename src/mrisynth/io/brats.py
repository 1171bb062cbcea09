"""BraTS 2020 folders: find cases and their files, load and check volumes, write phantom cases.

Accepts the official layout (`BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz`),
the common uncompressed `.nii` copy, a mix of both, and case 355's `W39_1998.09.19_Segm.nii`.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mrisynth import BRATS_LABELS
from mrisynth.errors import DataError

TRAINING_DIR = "MICCAI_BraTS2020_TrainingData"
_NIFTI = (".nii.gz", ".nii")
_SEG_FALLBACK = re.compile(r"seg", re.IGNORECASE)


@dataclass
class CaseFiles:
    """Where one case's files are; a missing file is None."""

    case_id: str
    directory: Path
    files: dict[str, Path | None] = field(default_factory=dict)


def find_root(src: Path) -> Path:
    """The folder that holds the case folders: SRC itself, or SRC/MICCAI_BraTS2020_TrainingData."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: expected a BraTS 2020 training folder, found no such directory")
    nested = src / TRAINING_DIR
    return nested if nested.is_dir() else src


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(_NIFTI)


def _find_file(directory: Path, case_id: str, suffix: str) -> Path | None:
    for ending in _NIFTI:
        candidate = directory / f"{case_id}_{suffix}{ending}"
        if candidate.is_file():
            return candidate
    return None


def discover(src: Path, modalities: tuple[str, ...]) -> list[CaseFiles]:
    """All case folders under a BraTS root (sorted by name), with the files for `modalities` + seg."""
    root = find_root(src)
    cases = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        niftis = [p for p in directory.iterdir() if p.is_file() and _is_nifti(p)]
        if not niftis:
            continue
        case_id = directory.name
        files: dict[str, Path | None] = {m: _find_file(directory, case_id, m) for m in modalities}
        seg = _find_file(directory, case_id, "seg")
        if seg is None:  # e.g. case 355: W39_1998.09.19_Segm.nii
            others = sorted(p for p in niftis if _SEG_FALLBACK.search(p.name) and p not in files.values())
            seg = others[0] if others else None
        files["seg"] = seg
        cases.append(CaseFiles(case_id, directory, files))
    if not cases:
        raise DataError(
            f"{root}: expected case folders with NIfTI files (BraTS20_Training_NNN/BraTS20_Training_NNN_flair.nii.gz ...), found none"
        )
    return cases


def _load_volume(case: CaseFiles, name: str) -> tuple[Path, np.ndarray]:
    path = case.files.get(name)
    if path is None:
        raise DataError(
            f"{case.case_id}: missing {name} file: expected {case.directory}/{case.case_id}_{name}.nii.gz (or .nii), found none"
        )
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # truncated gzip, bad header, not a NIfTI...
        raise DataError(
            f"{case.case_id}: cannot read {path}: expected a NIfTI volume, found {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable data'}"
        ) from exc
    if data.ndim != 3:
        raise DataError(f"{case.case_id}: {path}: expected a 3-D volume, found shape {data.shape}")
    return path, data


def load_case(case: CaseFiles, modalities: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one case. Returns (M, X, Y, Z) float32 volumes and (X, Y, Z) uint8 labels.

    Raises DataError (one line: case, file, expected, found) on a missing or unreadable file,
    mismatched shapes, NaN/inf voxels, labels outside {0, 1, 2, 4} or an empty brain."""
    loaded = [_load_volume(case, m) for m in modalities]
    seg_path, seg = _load_volume(case, "seg")
    ref_path, ref = loaded[0]
    for path, data in loaded[1:] + [(seg_path, seg)]:
        if data.shape != ref.shape:
            raise DataError(
                f"{case.case_id}: {path.name} has shape {data.shape}, expected {ref.shape} like {ref_path.name}"
            )
    volumes = np.empty((len(modalities), *ref.shape), dtype=np.float32)
    for i, (path, data) in enumerate(loaded):
        volumes[i] = data
        bad = int(np.count_nonzero(~np.isfinite(volumes[i])))
        if bad:
            raise DataError(f"{case.case_id}: {path.name} has {bad} NaN/inf voxels, expected finite intensities everywhere")
    seg_values = np.unique(seg)
    if not np.all(np.isfinite(seg_values)) or np.any(seg_values != np.round(seg_values)):
        raise DataError(
            f"{case.case_id}: {seg_path.name} has non-integer labels {seg_values[:8].tolist()}, expected integers in {set(BRATS_LABELS)}"
        )
    extra = sorted(set(seg_values.astype(int).tolist()) - set(BRATS_LABELS))
    if extra:
        raise DataError(
            f"{case.case_id}: {seg_path.name} has labels {extra}, expected a subset of {{0, 1, 2, 4}} "
            "(label 3 comes from newer BraTS releases: remap 3 to 4, or pass --skip-invalid)"
        )
    if not np.any(volumes):
        raise DataError(f"{case.case_id}: every modality is zero, expected a skull-stripped brain with non-zero voxels")
    return volumes, seg.astype(np.uint8)


def write_case(root: Path, case_id: str, volumes: dict[str, np.ndarray], seg: np.ndarray, affine: np.ndarray, ending: str = ".nii.gz") -> None:
    """Write one case in the BraTS 2020 layout: root/case_id/case_id_{modality,seg}.nii.gz."""
    directory = root / case_id
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in [*volumes.items(), ("seg", seg)]:
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, str(directory / f"{case_id}_{name}{ending}"))


def write_name_mapping(root: Path, rows: list[tuple[str, str]]) -> None:
    """name_mapping.csv as in BraTS 2020 (Grade and the 2020 subject ID; older IDs left blank)."""
    with open(root / "name_mapping.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID", "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"])
        for case_id, grade in rows:
            writer.writerow([grade, "NA", "NA", "NA", "NA", case_id])

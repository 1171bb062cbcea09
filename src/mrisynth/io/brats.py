"""BraTS folders (2020, 2021, 2023 GLI/SSA/MEN/MET; PED refused): find cases and their files, load and check volumes, write phantom cases.

Layouts (`LAYOUTS`; detected from the case folder names, or forced):
* brats2020: `BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz`, labels {0, 1, 2, 4},
  plus case 355's `W39_1998.09.19_Segm.nii` (folders with other names are read this way too);
* brats2021: `BraTS2021_NNNNN/BraTS2021_NNNNN_{flair,t1,t1ce,t2,seg}.nii.gz`, labels {0, 1, 2, 4};
* brats2023 (GLI, SSA, MEN, MET): `BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{t2f,t1n,t1c,t2w,seg}.nii.gz`, labels {0, 1, 2, 3}
  with 3 = enhancing tumour, mapped to the internal label 4 so WT/TC/ET mean the same everywhere.
`.nii` and `.nii.gz` (or a mix) are accepted.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

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
    layout: str = "brats2020"


@dataclass(frozen=True)
class Layout:
    """One BraTS release's file layout and label convention."""

    name: str
    folder: str                    # case folder name pattern (regex)
    separator: str                 # between the case id and the file suffix
    suffixes: dict[str, str]       # internal modality name (and 'seg') -> file suffix
    labels: tuple[int, ...]        # labels a segmentation of this release may hold
    to_internal: dict[int, int]    # release label -> internal BraTS 2020 label
    convention: str


_CLASSIC = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"}
LAYOUTS = {
    "brats2020": Layout("brats2020", r"BraTS20_Training_\d{3}", "_", _CLASSIC, (0, 1, 2, 4), {},
                        "BraTS 2017-2021: 1 NCR/NET, 2 edema, 4 enhancing tumour"),
    "brats2021": Layout("brats2021", r"BraTS2021_\d{5}", "_", _CLASSIC, (0, 1, 2, 4), {},
                        "BraTS 2017-2021: 1 NCR/NET, 2 edema, 4 enhancing tumour"),
    # the 2023 adult glioma (GLI), Sub-Saharan Africa (SSA), meningioma (MEN) and metastases (MET) data share
    # files and labels; the paediatric (PED) data labels its sub-regions otherwise and is refused (_refuse_other_labels)
    "brats2023": Layout("brats2023", r"BraTS-(?:GLI|SSA|MEN|MET)-\d{5}-\d{3}", "-",
                        {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}, (0, 1, 2, 3), {3: 4},
                        "BraTS 2023 GLI/SSA/MEN/MET: 1 NCR, 2 SNFH (edema), 3 ET (enhancing tumour; stored as internal label 4)"),
}
_OTHER_LABELS = {r"BraTS-PED-\d{5}-\d{3}": "BraTS 2023 paediatric (PED) cases, whose segmentations name the tumour "
                                            "sub-regions with another label set than GLI's"}


def _refuse_other_labels(names: list[str]) -> None:
    """A DataError for case folders of a release whose label convention mrisynth cannot map (rather than
    reading them with the wrong layout or labels)."""
    for pattern, what in _OTHER_LABELS.items():
        hits = [n for n in names if re.fullmatch(pattern, n)]
        if hits:
            raise DataError(f"case folder {hits[0]}: {what}; mrisynth maps BraTS 2020/2021 and BraTS 2023 GLI, SSA, MEN and MET "
                            "labels only - import those, or convert the segmentations to the GLI labels (1 NCR, 2 edema, 3 ET) first")


def _pattern_text(layout: Layout) -> str:
    """The folder pattern for a person: BraTS-{GLI,SSA,MEN,MET}-NNNNN-NNN."""
    text = layout.folder.replace("\\d", "N").replace("(?:", "{").replace(")", "}").replace("|", ",")
    return re.sub(r"N\{(\d+)\}", lambda m: "N" * int(m.group(1)), text)


def detect_layout(names: list[str]) -> str:
    """The release whose folder pattern every case folder name matches; brats2020 (the permissive
    default) when none match all; a DataError when folders of two releases are mixed."""
    _refuse_other_labels(names)
    matched = {name: [n for n in names if re.fullmatch(layout.folder, n)] for name, layout in LAYOUTS.items()}
    full = [name for name, hits in matched.items() if hits and len(hits) == len(names)]
    if full:
        return full[0]
    partial = [name for name, hits in matched.items() if hits]
    if len(partial) > 1:
        examples = ", ".join(f"{name} ({matched[name][0]})" for name in partial)
        raise DataError(f"case folders of several BraTS releases are mixed: {examples}; import one release per folder")
    return "brats2020"


def _has_cases(folder: Path) -> bool:
    return any(p.is_dir() and any(f.is_file() and _is_nifti(f) for f in p.iterdir()) for p in folder.iterdir())


def find_root(src: Path) -> Path:
    """The folder that holds the case folders: SRC itself, SRC/MICCAI_BraTS2020_TrainingData, or SRC's only
    sub-folder when that one holds the case folders (the parent of any release's training folder)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: expected a BraTS training folder (or its parent), found no such directory")
    nested = src / TRAINING_DIR
    if nested.is_dir():
        return nested
    if not _has_cases(src):
        subfolders = [p for p in src.iterdir() if p.is_dir()]
        if len(subfolders) == 1 and _has_cases(subfolders[0]):
            return subfolders[0]
    return src


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(_NIFTI)


def _find_file(directory: Path, case_id: str, suffix: str, separator: str = "_") -> Path | None:
    for ending in _NIFTI:
        candidate = directory / f"{case_id}{separator}{suffix}{ending}"
        if candidate.is_file():
            return candidate
    return None


def discover(src: Path, modalities: tuple[str, ...], layout: str | None = None) -> list[CaseFiles]:
    """All case folders under a BraTS root (sorted by name), with the files for `modalities` + seg.

    layout: one of LAYOUTS, or None to detect it from the folder names."""
    root = find_root(src)
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and any(f.is_file() and _is_nifti(f) for f in p.iterdir())]
    detected = detect_layout([p.name for p in folders])  # refuses a release whose labels cannot be mapped, layout given or not
    if layout is None:
        layout = detected
    elif layout not in LAYOUTS:
        raise DataError(f"--layout {layout}: expected one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    if layout != "brats2020":
        wrong = [p.name for p in folders if not re.fullmatch(spec.folder, p.name)]
        if wrong:
            raise DataError(f"{root}: case folder {wrong[0]} does not match the {layout} layout ({_pattern_text(spec)}); "
                            f"the folders look like {detected} - pass --layout {detected} or fix the folder")
    cases = []
    for directory in folders:
        niftis = [p for p in directory.iterdir() if p.is_file() and _is_nifti(p)]
        case_id = directory.name
        files: dict[str, Path | None] = {m: _find_file(directory, case_id, spec.suffixes[m], spec.separator) for m in modalities}
        seg = _find_file(directory, case_id, "seg", spec.separator)
        if seg is None and layout == "brats2020":  # e.g. case 355: W39_1998.09.19_Segm.nii
            others = sorted(p for p in niftis if _SEG_FALLBACK.search(p.name) and p not in files.values())
            seg = others[0] if others else None
        files["seg"] = seg
        cases.append(CaseFiles(case_id, directory, files, layout))
    if not cases:
        raise DataError(
            f"{root}: expected case folders with NIfTI files (e.g. BraTS20_Training_NNN/BraTS20_Training_NNN_flair.nii.gz, "
            "BraTS2021_NNNNN/BraTS2021_NNNNN_flair.nii.gz or BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-t2f.nii.gz), found none"
        )
    return cases


def _load_volume(case: CaseFiles, name: str) -> tuple[Path, np.ndarray]:
    path = case.files.get(name)
    if path is None:
        spec = LAYOUTS[case.layout]
        raise DataError(
            f"{case.case_id}: missing {name} file: expected {case.directory}/{case.case_id}{spec.separator}{spec.suffixes.get(name, name)}.nii.gz "
            f"(or .nii; {case.layout} layout), found none"
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
    mismatched shapes, NaN/inf voxels, labels outside the release's set or an empty brain. Labels come
    back in the internal convention {0, 1, 2, 4} (BraTS 2023's 3 = enhancing becomes 4)."""
    spec = LAYOUTS[case.layout]
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
    allowed = "{" + ", ".join(map(str, spec.labels)) + "}"
    if not np.all(np.isfinite(seg_values)) or np.any(seg_values != np.round(seg_values)):
        raise DataError(
            f"{case.case_id}: {seg_path.name} has non-integer labels {seg_values[:8].tolist()}, expected integers in {allowed} ({case.layout})"
        )
    extra = sorted(set(seg_values.astype(int).tolist()) - set(spec.labels))
    if extra:
        hint = (" (label 3 is enhancing tumour in BraTS 2023: import such data with --layout brats2023)" if 3 in extra and case.layout != "brats2023"
                else " (label 4 belongs to BraTS 2017-2021: is this really a 2023 case?)" if 4 in extra else "")
        raise DataError(
            f"{case.case_id}: {seg_path.name} has labels {extra}, expected a subset of {allowed} for the {case.layout} layout{hint}; "
            "or pass --skip-invalid"
        )
    if spec.to_internal:
        mapped = seg.astype(np.uint8).copy()
        for release_label, internal in spec.to_internal.items():
            mapped[seg == release_label] = internal
        seg = mapped
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

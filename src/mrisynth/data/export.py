"""`mrisynth export`: an imported dataset (and optionally an augmented arm) for the tools BraTS users train with.

Formats (`--format`):
* nnunet: an nnU-Net v2 raw dataset `OUT/DatasetNNN_Name/` - `imagesTr/<case>_0000.nii.gz ... _0003`
  (one file per modality, in the dataset's modality order), `labelsTr/<case>.nii.gz`, the test split in
  `imagesTs/` / `labelsTs/`, `dataset.json` (channel_names, region-based labels and
  regions_class_order as nnU-Net's own BraTS conversion, numTraining, file_ending) and
  `splits_final.json` (one fold: our train / val split). Labels are converted as nnU-Net's
  Dataset137_BraTS21 does: BraTS 2 (edema) -> 1, 1 (NCR/NET) -> 2, 4 (enhancing) -> 3, so that
  whole tumour = (1, 2, 3), tumour core = (2, 3), enhancing tumour = (3,).
* monai: per-modality NIfTI files plus `datalist.json` ({"training": [{"image": [...], "label": ...}],
  "validation": [...], "test": [...]}, paths relative to the datalist), BraTS labels {0, 1, 2, 4}.
* nifti: per-modality NIfTI only: `<split>/<case>/<case>_<modality>.nii.gz` and `<case>_seg.nii.gz`.

2-D slices are written as NIfTI volumes of shape (H, W, 1) - a singleton third axis, which nnU-Net's
planner treats as 2-D data when that axis has the largest spacing (so nnunet exports give it the
largest in-plane spacing of the export; monai/nifti: 1 mm) - with the pixel spacing from the
manifest's `spacing_mm`.
Every export writes `provenance.csv` (case, split, provenance real / classic / gan, generator
version, source cases) so synthetic cases can be filtered downstream.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from mrisynth import paths
from mrisynth.core import arms
from mrisynth.errors import DataError
from mrisynth.io import tiff
from mrisynth.io.manifest import inside, is_plain_name, read_manifest

FORMATS = ("nnunet", "monai", "nifti")
# nnU-Net's BraTS conversion (Dataset137_BraTS21.py): BraTS label -> nnU-Net label
NNUNET_LABELS = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
CHANNEL_NAMES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}


def write_slice_nifti(array: np.ndarray, spacing: float, path: Path, thickness: float = 1.0) -> None:
    """(H, W) slice -> NIfTI (H, W, 1) with in-plane pixel size `spacing` mm and slice `thickness` mm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array[:, :, None], np.diag([spacing, spacing, thickness, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((spacing, spacing, thickness))
    nib.save(image, str(path))


def _rows(data_dir: Path, arm: str, augmented_dir: Path | None, generator_version: str) -> list[dict]:
    """One entry per exported case: split, arrays source, spacing, provenance."""
    if arm not in arms.TABLE:
        raise DataError(f"--arm {arm}: expected one of {', '.join(arms.ARMS)}")
    real_only = arms.TABLE[arm].real_only
    manifest = read_manifest(data_dir)
    modalities = str(manifest["modalities"].iloc[0]).split(",") if "modalities" in manifest else list(CHANNEL_NAMES)
    spacing = manifest["spacing_mm"].astype(float) if "spacing_mm" in manifest else pd.Series(1.0, index=manifest.index)
    rows = []
    for (i, row) in manifest.iterrows():
        if not real_only and row["split"] == "train":
            continue  # the arm's training set (below) holds the real training slices too
        rows.append({"case": str(row["case_id"]), "split": row["split"], "root": data_dir, "image": row["image"], "mask": row["mask"],
                     "spacing": float(spacing[i]), "provenance": "real", "generator_version": "", "source_cases": str(row["case_id"])})
    if not real_only:
        if augmented_dir is None or not (Path(augmented_dir) / "manifest.csv").is_file():
            raise DataError(f"{augmented_dir}/manifest.csv: the {arm} arm needs the augmented set; run `dvc repro augment`")
        augmented = pd.read_csv(Path(augmented_dir) / "manifest.csv")
        select = arms.get(arm).rows(augmented)
        native = float(np.median(spacing)) if len(spacing) else 1.0
        data_size = int(manifest["height"].iloc[0]) if "height" in manifest else 256
        for _, row in augmented[select].iterrows():
            size = int(row["height"]) if "height" in row else data_size
            rows.append({"case": str(row["case_id"]), "split": "train", "root": Path(augmented_dir), "image": row["image"], "mask": row["mask"],
                         "spacing": native * data_size / size, "provenance": str(row["kind"]),
                         "generator_version": generator_version if row["kind"] == "gan" else "",
                         "source_cases": str(row.get("source_cases", ""))})
    return [r | {"modalities": modalities} for r in rows]


MARKER = ".mrisynth-export"  # written into every export: --force replaces only folders that hold it

def _generator_version() -> str:
    report = paths.TRAIN_GAN
    if report.is_file():
        version = json.loads(report.read_text()).get("model_version")
        return f"mrisynth-generator v{version}" if version is not None else ""
    return ""


def export(data_dir: Path, out: Path, fmt: str, arm: str = "none", augmented_dir: Path | None = None,
           dataset_id: int = 501, name: str = "MriSynth", force: bool = False) -> Path:
    """Write the export; returns the folder holding it (for nnunet: OUT/DatasetNNN_Name)."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if not 1 <= dataset_id <= 999:
        raise DataError(f"--dataset-id {dataset_id}: expected 1..999 (nnU-Net dataset ids have three digits)")
    if not is_plain_name(name):
        raise DataError(f"--name {name!r}: expected a plain name (letters, digits, . _ + -), it becomes a folder name")
    data_dir, out = Path(data_dir), Path(out)
    target = out / f"Dataset{dataset_id:03d}_{name}" if fmt == "nnunet" else out
    for folder in {out, target}:
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder}: exists and is a file, not a folder; choose a folder path for --out")
    if fmt == "nnunet" and out.is_dir():  # nnU-Net finds a dataset by its id: one id, one folder
        clash = sorted(p.name for p in out.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != target)
        if clash:
            raise DataError(f"{out / clash[0]}: dataset id {dataset_id:03d} is taken by another name (nnU-Net refuses an id "
                            f"that names two datasets); pass another --dataset-id, or --name {clash[0].split('_', 1)[1]} to replace it")
    rows = _rows(data_dir, arm, augmented_dir, _generator_version())
    unsafe = [r["case"] for r in rows if not is_plain_name(r["case"])]
    if unsafe:
        raise DataError(f"case id(s) {unsafe[:3]} are not plain names; refusing to write files named after them under {target}")
    if target.exists() and any(target.iterdir()):
        if not force:
            raise DataError(f"{target}: already holds files; choose another --out or pass --force to replace it")
        if not (target / MARKER).is_file():
            raise DataError(f"{target}: --force replaces only a folder this tool exported (it holds {MARKER}); this one does not, "
                            "so nothing was deleted: choose another --out or empty it yourself")
        shutil.rmtree(target)
    modalities = rows[0]["modalities"] if rows else list(CHANNEL_NAMES)
    # nnU-Net plans 2-D only when the singleton axis has the largest spacing (its planner puts the
    # largest-spacing axis first); give it the largest in-plane spacing of the export (ties are fine)
    thickness = max([1.0] + [r["spacing"] for r in rows]) if fmt == "nnunet" else 1.0
    entries = {"train": [], "val": [], "test": []}
    for row in rows:
        image = tiff.read_image(inside(row["root"], row["image"])).astype(np.float32)
        labels = tiff.read_mask(inside(row["root"], row["mask"])).astype(np.uint8)
        case, split = row["case"], row["split"]
        if fmt == "nnunet":
            images_dir, labels_dir = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
            for c in range(image.shape[-1]):
                write_slice_nifti(image[..., c], row["spacing"], target / images_dir / f"{case}_{c:04d}.nii.gz", thickness)
            converted = np.zeros_like(labels)
            for brats_label, nnunet_label in NNUNET_LABELS.items():
                converted[labels == brats_label] = nnunet_label
            write_slice_nifti(converted, row["spacing"], target / labels_dir / f"{case}.nii.gz", thickness)
            entries[split].append(case)
        else:
            folder = target / split / case
            files = []
            for c, modality in enumerate(modalities):
                write_slice_nifti(image[..., c], row["spacing"], folder / f"{case}_{modality}.nii.gz")
                files.append(f"{split}/{case}/{case}_{modality}.nii.gz")
            write_slice_nifti(labels, row["spacing"], folder / f"{case}_seg.nii.gz")
            entries[split].append({"image": files, "label": f"{split}/{case}/{case}_seg.nii.gz"})
    target.mkdir(parents=True, exist_ok=True)
    if fmt == "nnunet":
        dataset = {
            "channel_names": {str(c): CHANNEL_NAMES.get(m, m) for c, m in enumerate(modalities)},
            "labels": NNUNET_REGIONS,
            "regions_class_order": [1, 2, 3],
            "numTraining": len(entries["train"]) + len(entries["val"]),
            "file_ending": ".nii.gz",
            "name": name,
            "description": f"mrisynth export of {data_dir} (arm {arm}); 2-D slices as (H, W, 1) NIfTI; "
                           "labels converted as nnU-Net's BraTS conversion: BraTS 2->1, 1->2, 4->3",
            "reference": "mrisynth", "licence": "see the source data", "release": "1.0",
        }
        (target / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        (target / "splits_final.json").write_text(json.dumps([{"train": entries["train"], "val": entries["val"]}], indent=2) + "\n")
    elif fmt == "monai":
        (target / "datalist.json").write_text(json.dumps({"training": entries["train"], "validation": entries["val"], "test": entries["test"]}, indent=2) + "\n")
    pd.DataFrame([{k: r[k] for k in ("case", "split", "provenance", "generator_version", "source_cases")} | {"spacing_mm": r["spacing"]}
                  for r in rows]).to_csv(target / "provenance.csv", index=False, lineterminator="\n")
    (target / MARKER).write_text(json.dumps({"format": fmt, "source": str(data_dir), "arm": arm}) + "\n")
    return target

"""`mrisynth generate`: render images for label masks with a registered generator; TIFF and NIfTI out.

Masks: DIR/<name>.tif, uint8 (H, W) BraTS labels. Brain masks: --brain DIR/<name>.tif (non-zero =
brain), or, for an imported split (`.../<split>/masks`), the matching images (`.../<split>/images`,
brain = any channel > 0). Output: OUT/<name>.tif float32 (H, W, C) in [0, 1] and OUT/<name>.nii.gz
float32 (H, W, 1, C)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mrisynth.core import encoding
from mrisynth.errors import DataError
from mrisynth.io import tiff


def _brain_for(mask_path: Path, brain_dir: Path | None) -> np.ndarray:
    if brain_dir is not None:
        path = brain_dir / mask_path.name
        if not path.is_file():
            raise DataError(f"{mask_path}: expected a brain mask at {path}, found none")
        return tiff.read_mask(path) > 0
    sibling = mask_path.parent.parent / "images" / mask_path.name
    if mask_path.parent.name == "masks" and sibling.is_file():
        return tiff.read_image(sibling).any(axis=-1)
    raise DataError(f"{mask_path}: no brain mask; pass --brain DIR (DIR/{mask_path.name}, non-zero = brain) or use an imported split's masks folder")


def generate(model_uri: str, masks_dir: Path, out_dir: Path, brain_dir: Path | None = None, batch_size: int = 8) -> list[Path]:
    import mlflow

    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    paths = sorted(masks_dir.glob("*.tif"))
    if not paths:
        raise DataError(f"{masks_dir}: expected label masks (*.tif), found none")
    model = mlflow.pyfunc.load_model(model_uri)
    spec = model.metadata.get_input_schema().inputs[0]
    size = int(spec.shape[1])
    conditions = []
    for path in paths:
        labels = tiff.read_mask(path)
        if labels.ndim != 2 or labels.shape != (size, size):
            raise DataError(f"{path}: mask shape {labels.shape}, expected ({size}, {size}) for model {model_uri}")
        try:
            encoding.check_labels(labels, str(path))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        brain = _brain_for(path, Path(brain_dir) if brain_dir else None)
        conditions.append(encoding.conditioning(labels, brain))
    cond = np.stack(conditions)
    images = np.concatenate([model.predict(cond[i : i + batch_size]) for i in range(0, len(cond), batch_size)])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, image in zip(paths, images):
        tiff.write_image(out_dir / path.name, image.astype(np.float32))
        nib.save(nib.Nifti1Image(image[:, :, None, :].astype(np.float32), np.eye(4)), str(out_dir / f"{path.stem}.nii.gz"))
        written.append(out_dir / path.name)
    return written

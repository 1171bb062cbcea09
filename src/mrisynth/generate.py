"""`mrisynth generate`: render images for label masks with a registered generator; TIFF and NIfTI out.

Masks: DIR/<name>.tif, uint8 (H, W) BraTS labels, any size: masks smaller than the model's input are
centre-padded, larger ones resized (nearest neighbour) to the model's size S (said once on stdout);
the images come out at S x S. Brain masks: --brain DIR/<name>.tif (non-zero =
brain), or, for an imported split (`.../<split>/masks`), the matching images (`.../<split>/images`,
brain = any channel > 0). Output: OUT/<name>.tif float32 (H, W, C) in [0, 1] and OUT/<name>.nii.gz
float32 (H, W, 1, C)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mrisynth.core import encoding, slicing
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
    conditions, fitted = [], set()
    for path in paths:
        labels = tiff.read_mask(path)
        if labels.ndim != 2:
            raise DataError(f"{path}: mask shape {labels.shape}, expected a 2-D (H, W) label map")
        try:
            encoding.check_labels(labels, str(path))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        brain = _brain_for(path, Path(brain_dir) if brain_dir else None)
        if brain.shape != labels.shape:
            raise DataError(f"{path}: brain mask shape {brain.shape} differs from the label map's {labels.shape}")
        if labels.shape != (size, size):
            method = "pad" if max(labels.shape) <= size else "resize"
            fitted.add(f"{labels.shape[0]}x{labels.shape[1]} -> {size}x{size} ({method})")
            labels = slicing.fit(labels, size, method, is_mask=True)
            brain = slicing.fit(brain.astype(np.uint8), size, method, is_mask=True).astype(bool)
        conditions.append(encoding.conditioning(labels, brain))
    for note in sorted(fitted):
        print(f"generate: masks fitted to the model's input size: {note}")
    cond = np.stack(conditions)
    images = np.concatenate([model.predict(cond[i : i + batch_size]) for i in range(0, len(cond), batch_size)])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, image in zip(paths, images):
        tiff.write_image(out_dir / path.name, image.astype(np.float32))
        nib.save(nib.Nifti1Image(image[:, :, None, :].astype(np.float32), np.eye(4)), str(out_dir / f"{path.stem}.nii.gz"))
        written.append(out_dir / path.name)
    return written

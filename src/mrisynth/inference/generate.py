"""`mrisynth generate`: render images for label masks with a registered generator; TIFF and NIfTI out.

Masks: DIR/<name>.tif, uint8 (H, W) BraTS labels, any size: masks smaller than the model's input are
centre-padded, larger ones resized (nearest neighbour) to the model's size S (said once on stdout);
the images come out at S x S. Brain masks: --brain DIR/<name>.tif (non-zero =
brain), or, for an imported split (`.../<split>/masks`), the matching images (`.../<split>/images`,
brain = any channel > 0). Output: OUT/<name>.tif float32 (H, W, C) in [0, 1] and one NIfTI per
modality, OUT/<name>_<modality>.nii.gz (BraTS naming), float32 (H, W, 1) with the pixel spacing: the
imported split's `spacing_mm` for that case (times the resize factor when a mask was resized), else
`spacing` (1 mm). Modality names: the imported dataset's (dataset.json), else flair, t1, t1ce, t2."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mrisynth import MODALITIES
from mrisynth.config import TrainGanParams
from mrisynth.core import encoding, inpaint, slicing
from mrisynth.errors import DataError
from mrisynth.io import tiff
from mrisynth.io.manifest import is_plain_name


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


def _image_for(mask_path: Path, size: int, channels: int) -> np.ndarray:
    """The real slice next to a mask (the split's images/ folder), fitted to `size`: the context of an
    inpainting generator, which re-draws only the tumour region of that slice."""
    sibling = mask_path.parent.parent / "images" / mask_path.name
    if mask_path.parent.name != "masks" or not sibling.is_file():
        raise DataError(f"{mask_path}: this generator inpaints a tumour into the case's own slice, expected it at {sibling}; "
                        "use an imported split's masks folder (images/ beside masks/)")
    image = tiff.read_image(sibling).astype(np.float32)
    if image.shape[-1] != channels:
        raise DataError(f"{sibling}: {image.shape[-1]} channels, the generator draws {channels}")
    if image.shape[:2] != (size, size):
        method = "pad" if max(image.shape[:2]) <= size else "resize"
        image = slicing.fit(image, size, method, is_mask=False)
    return image


def _dataset_facts(masks_dir: Path) -> tuple[list[str] | None, dict[str, float]]:
    """(modality names, {mask file name: spacing_mm}) when masks_dir is an imported split's masks folder."""
    import json

    import pandas as pd

    root = masks_dir.parent.parent
    modalities, spacing = None, {}
    if (root / "dataset.json").is_file():
        modalities = json.loads((root / "dataset.json").read_text()).get("modalities")
        if modalities is not None and not (isinstance(modalities, list) and all(is_plain_name(m) for m in modalities)):
            raise DataError(f"{root / 'dataset.json'}: modalities {modalities!r} are not plain names (they become file names); "
                            "fix the file or re-import the dataset")
    if (root / "manifest.csv").is_file():
        manifest = pd.read_csv(root / "manifest.csv")
        if "spacing_mm" in manifest:
            spacing = {Path(m).name: float(s) for m, s in zip(manifest["mask"], manifest["spacing_mm"])}
    return modalities, spacing


def _save_modalities(image: np.ndarray, names: list[str], spacing: float, out_dir: Path, stem: str) -> None:
    from mrisynth.data.export import write_slice_nifti

    for c, name in enumerate(names):
        write_slice_nifti(image[:, :, c].astype(np.float32), spacing, out_dir / f"{stem}_{name}.nii.gz")


def generate(model_uri: str, masks_dir: Path, out_dir: Path, brain_dir: Path | None = None, batch_size: int = 8,
             spacing: float = 1.0) -> list[Path]:
    from mrisynth.inference.promote import require_model
    from mrisynth.inference.served_model import Generator, InputError

    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    paths = sorted(masks_dir.glob("*.tif"))
    if not paths:
        raise DataError(f"{masks_dir}: expected label masks (*.tif), found none")
    require_model(model_uri)  # a missing model, alias or version: one line saying what to run, no MLflow traceback
    try:
        model = Generator.load(model_uri)  # safe: Keras flavor with safe_mode, no pickles
    except InputError as exc:
        raise DataError(str(exc.message)) from exc
    size = model.size
    modalities, spacings = _dataset_facts(masks_dir)
    conditions, fitted, pixel_mm = [], set(), []
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
        mm = spacings.get(path.name, spacing)
        if labels.shape != (size, size):
            method = "pad" if max(labels.shape) <= size else "resize"
            if method == "resize":
                mm *= labels.shape[0] / size
            fitted.add(f"{labels.shape[0]}x{labels.shape[1]} -> {size}x{size} ({method})")
            labels = slicing.fit(labels, size, method, is_mask=True)
            brain = slicing.fit(brain.astype(np.uint8), size, method, is_mask=True).astype(bool)
        if model.in_channels > encoding.CONDITION_CHANNELS:  # an inpainting generator: the case's own slice is the context
            image = _image_for(path, size, model.channels)
            region = inpaint.region(labels, brain, inpaint.margin_pixels(TrainGanParams.inpaint_margin, size))
            conditions.append(inpaint.conditioning(labels, brain, image, region))
        else:
            conditions.append(encoding.conditioning(labels, brain))
        pixel_mm.append(mm)
    for note in sorted(fitted):
        print(f"generate: masks fitted to the model's input size: {note}")
    cond = np.stack(conditions)
    from tqdm import tqdm

    starts = tqdm(range(0, len(cond), batch_size), desc="generate", unit="batch", disable=None, leave=False)
    images = np.concatenate([model.predict(cond[i : i + batch_size]) for i in starts])
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = images.shape[-1]
    names = modalities if modalities and len(modalities) == channels else (list(MODALITIES) if channels == len(MODALITIES) else [f"ch{c}" for c in range(channels)])
    written = []
    for path, image, mm in zip(paths, images, pixel_mm):
        tiff.write_image(out_dir / path.name, image.astype(np.float32))
        _save_modalities(image, names, mm, out_dir, path.stem)
        written.append(out_dir / path.name)
    return written

"""`mrisynth generate`: render images for label masks with a registered generator; TIFF and NIfTI out.

Masks: DIR/<name>.tif, uint8 (H, W) BraTS labels, any size: masks smaller than the model's input are
centre-padded, larger ones padded to a square (never stretched) and resized (nearest neighbour) to the
model's size S (said once on stdout);
the images come out at S x S. Brain masks: --brain DIR/<name>.tif (non-zero =
brain), or, for an imported split (`.../<split>/masks`), the matching images (`.../<split>/images`,
brain = any channel > 0). Output: OUT/<name>.tif float32 (H, W, C) in [0, 1] and one NIfTI per
modality, OUT/<name>_<modality>.nii.gz (BraTS naming), float32 (H, W, 1) with the pixel spacing: the
imported split's `spacing_mm` for that case (times the resize factor when a mask was resized), else
`spacing` (1 mm). Modality names: the imported dataset's (dataset.json), else flair, t1, t1ce, t2.

An inpainting generator (more than 4 input channels) re-draws only the tumour region of a real slice: the
slice is --images DIR/<name>.tif, float (H, W, C) in [0, 1] (default: the split's images/ beside masks/);
it also gives the brain mask when --brain is not passed. The region and the soft blend at its border are
`augment`'s: the tumour grown by the margin the generator was trained with (`train_gan.inpaint_margin`, read
from the registered version's run; the default when the run cannot be read, said on stdout), and a linear
ramp that wide inside the region's border. Nothing is overwritten by accident: OUT may not be
a folder that is read (masks, brain masks, images, the split's images/), and files already in OUT that would
be written again are refused unless `force`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mrisynth import MODALITIES
from mrisynth.config import TrainGanParams
from mrisynth.core import encoding, inpaint, slicing
from mrisynth.errors import DataError
from mrisynth.io import tiff
from mrisynth.io.manifest import is_plain_name


def _trained_margin(model_uri: str) -> float:
    """`train_gan.inpaint_margin` of the run that registered `model_uri`, else the default (said on stdout)."""
    from mrisynth.io import registry

    value = registry.run_param(model_uri, "inpaint_margin")
    try:
        return float(value)
    except (TypeError, ValueError):
        why = "the training run's inpaint_margin is not readable" if registry.parse_uri(model_uri) else "not a registry URI (models:/NAME/VERSION or @ALIAS), so the training run is unknown"
        print(f"generate: {model_uri}: {why}; using the default inpaint_margin {TrainGanParams.inpaint_margin}")
        return TrainGanParams.inpaint_margin


def _split_images(masks_dir: Path) -> Path | None:
    """An imported split's images/ folder beside its masks/ folder (None for any other masks folder; `.` and
    `..` are made absolute first, so `--masks .` inside a split's masks/ counts too)."""
    masks_dir = Path(os.path.abspath(masks_dir))
    return masks_dir.parent / "images" if masks_dir.name == "masks" else None


def _real_slice(mask_path: Path, images: Path | None) -> tuple[Path | None, np.ndarray | None]:
    """(where the mask's real slice would be, the slice or None when absent): `images` is the real slices' folder
    (--images, else the split's images/; None when there is neither). Read once per mask: it gives both the brain
    (without --brain) and an inpainting generator's context."""
    path = images / mask_path.name if images is not None else None
    return path, (tiff.read_image(path) if path is not None and path.is_file() else None)


def _brain_for(mask_path: Path, brain_dir: Path | None, real: np.ndarray | None) -> np.ndarray:
    """The brain mask from --brain DIR, else from the real slice (any channel > 0)."""
    if brain_dir is not None:
        path = brain_dir / mask_path.name
        if not path.is_file():
            raise DataError(f"{mask_path}: expected a brain mask at {path}, found none")
        return tiff.read_mask(path) > 0
    if real is not None:
        return real.any(axis=-1)
    raise DataError(f"{mask_path}: no brain mask; pass --brain DIR (DIR/{mask_path.name}, non-zero = brain), --images DIR "
                    "(the real slices; brain = any channel > 0) or use an imported split's masks folder")


def _image_for(mask_path: Path, shape: tuple[int, int], size: int, channels: int, path: Path | None,
               real: np.ndarray | None) -> np.ndarray:
    """The mask's real slice (`_real_slice`: read from --images DIR, else the split's images/ folder) checked and
    fitted to `size`: the context of an inpainting generator, which re-draws only the tumour region of that slice."""
    if real is None:
        where = f"expected it at {path}" if path is not None else "found no images folder"
        raise DataError(f"{mask_path}: this generator inpaints a tumour into a real slice, {where}; pass --images DIR "
                        f"(DIR/{mask_path.name}, float (H, W, {channels}) in [0, 1]) or use an imported split's masks folder")
    image = real.astype(np.float32)
    if image.ndim != 3 or image.shape[-1] != channels:
        raise DataError(f"{path}: image shape {image.shape}, expected (H, W, {channels}): the generator draws {channels} channels")
    if image.shape[:2] != shape:
        raise DataError(f"{path}: image {image.shape[:2]} differs from its label map's {shape}")
    low, high = float(image.min()), float(image.max())
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
        raise DataError(f"{path}: intensities {low:g} .. {high:g}, expected [0, 1] (as `mrisynth data import` writes them); "
                        "rescale the slice (e.g. divide 8-bit images by 255)")
    return _fit(image, size, is_mask=False)[0]


def _fit(array: np.ndarray, size: int, *, is_mask: bool) -> tuple[np.ndarray, str, float]:
    """(array fitted to size x size, how, mm per pixel factor): a slice that fits is centre-padded (lossless);
    a larger one is first centre-padded to a square, so it is never stretched, then resized."""
    side = max(array.shape[:2])
    if side <= size:
        return slicing.fit(array, size, "pad", is_mask=is_mask), "pad", 1.0
    return slicing.fit(slicing.pad_or_crop(array, side), size, "resize", is_mask=is_mask), "resize", side / size


def _refuse_overwrite(out_dir: Path, read: dict[str, Path | None], names: list[str], force: bool) -> None:
    """OUT must be a folder (or new), never a folder this command reads (not even with `force`), and the
    files it would write again (`names`) are kept unless `force`."""
    if out_dir.is_symlink() and not out_dir.exists():
        raise DataError(f"--out {out_dir}: a link to nothing; pick a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: exists and is a file, not a folder; pick a folder")
    for what, folder in read.items():
        if folder is not None and folder.exists() and out_dir.exists() and folder.resolve() == out_dir.resolve():
            raise DataError(f"--out {out_dir} is the {what} folder: generating there would overwrite its files; "
                            "pick another output folder")
    if force or not out_dir.is_dir():
        return
    existing = [name for name in names if (out_dir / name).exists()]
    if existing:
        raise DataError(f"{out_dir}: already holds {len(existing)} of the files this run writes (e.g. {existing[0]}); "
                        "pass --force to overwrite them, or pick another --out")


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
             spacing: float = 1.0, images_dir: Path | None = None, force: bool = False) -> list[Path]:
    from mrisynth.inference.promote import require_model
    from mrisynth.inference.served_model import Generator, InputError

    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    brain_dir, images_dir = (Path(d) if d is not None else None for d in (brain_dir, images_dir))
    if not masks_dir.is_dir():
        raise DataError(f"--masks {masks_dir}: no such folder; expected a folder of uint8 label masks <name>.tif")
    paths = sorted(masks_dir.glob("*.tif"))
    if not paths:
        others = sorted(p.name for p in masks_dir.glob("*.tiff"))[:1]
        hint = f" (found {others[0]}: rename *.tiff to *.tif)" if others else ""
        raise DataError(f"{masks_dir}: expected label masks (*.tif), found none{hint}")
    modalities, spacings = _dataset_facts(masks_dir)
    written_names = [n for p in paths for n in (p.name, *(f"{p.stem}_{m}.nii.gz" for m in (modalities or MODALITIES)))]
    split_images = _split_images(masks_dir)
    _refuse_overwrite(out_dir, {"masks": masks_dir, "brain-mask": brain_dir, "images": images_dir,
                                "split's images": split_images}, written_names, force)
    images = images_dir or split_images  # the real slices: an inpainting generator's context, the brain without --brain
    require_model(model_uri)  # a missing model, alias or version: one line saying what to run, no MLflow traceback
    try:
        model = Generator.load(model_uri)  # safe: Keras flavor with safe_mode, no pickles
    except InputError as exc:
        raise DataError(str(exc.message)) from exc
    size = model.size
    inpainting = model.in_channels > encoding.CONDITION_CHANNELS  # each case's own real slice is the context
    margin = inpaint.margin_pixels(_trained_margin(model_uri), size) if inpainting else 0
    conditions, fitted, pixel_mm, blends = [], set(), [], []
    for path in paths:
        labels = tiff.read_mask(path)
        if labels.ndim != 2:
            raise DataError(f"{path}: mask shape {labels.shape}, expected a 2-D (H, W) label map")
        try:
            encoding.check_labels(labels, str(path))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        real_path, real = _real_slice(path, images) if inpainting or brain_dir is None else (None, None)
        brain = _brain_for(path, brain_dir, real)
        if brain.shape != labels.shape:
            raise DataError(f"{path}: brain mask shape {brain.shape} differs from the label map's {labels.shape}")
        mm, shape = spacings.get(path.name, spacing), labels.shape
        if labels.shape != (size, size):
            labels, method, factor = _fit(labels, size, is_mask=True)
            brain = _fit(brain.astype(np.uint8), size, is_mask=True)[0].astype(bool)
            mm *= factor
            fitted.add(f"{shape[0]}x{shape[1]} -> {size}x{size} ({method})")
        if inpainting:
            image = _image_for(path, shape, size, model.channels, real_path, real)
            region = inpaint.region(labels, brain, margin)
            conditions.append(inpaint.conditioning(labels, brain, image, region))
            blends.append((image, inpaint.blend_weight(region, margin)))
        else:
            conditions.append(encoding.conditioning(labels, brain))
        pixel_mm.append(mm)
    for note in sorted(fitted):
        print(f"generate: masks fitted to the model's input size: {note}")
    cond = np.stack(conditions)
    from tqdm import tqdm

    starts = tqdm(range(0, len(cond), batch_size), desc="generate", unit="batch", disable=None, leave=False)
    try:
        images = np.concatenate([model.predict(cond[i : i + batch_size]) for i in starts])
    except InputError as exc:  # the model's own input check: one line, not a traceback
        raise DataError(f"{masks_dir}: {exc.message}") from exc
    if inpainting:   # the served model composites with a hard edge; augment's soft ramp over the margin, as in training
        images = np.stack([inpaint.composite(np.asarray(real, np.float32), generated, weight)
                           for (real, weight), generated in zip(blends, images)])
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = images.shape[-1]
    names = modalities if modalities and len(modalities) == channels else (list(MODALITIES) if channels == len(MODALITIES) else [f"ch{c}" for c in range(channels)])
    written = []
    for path, image, mm in zip(paths, images, pixel_mm):
        tiff.write_image(out_dir / path.name, image.astype(np.float32))
        _save_modalities(image, names, mm, out_dir, path.stem)
        written.append(out_dir / path.name)
    return written

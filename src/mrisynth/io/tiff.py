"""TIFF slices: float32 images (H, W, C) in [0, 1] and uint8 BraTS label masks (H, W)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from mrisynth.errors import DataError


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a float32 (H, W, C) image; the shape is kept in the TIFF description, so C=1 survives."""
    if image.ndim != 3:
        raise ValueError(f"{path}: expected an (H, W, C) image, got shape {image.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image.astype(np.float32, copy=False), photometric="minisblack")


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a uint8 (H, W) label mask."""
    if mask.ndim != 2:
        raise ValueError(f"{path}: expected an (H, W) mask, got shape {mask.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, mask.astype(np.uint8, copy=False), photometric="minisblack")


def read_image(path: Path) -> np.ndarray:
    """Read an (H, W, C) image as stored (dtype unchanged); a 2-D TIFF becomes (H, W, 1)."""
    try:
        image = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for broken files
        raise DataError(f"{path}: cannot read TIFF image ({type(exc).__name__}: {exc}); re-run `mrisynth data import`") from exc
    return image[..., None] if image.ndim == 2 else image


def read_mask(path: Path) -> np.ndarray:
    """Read an (H, W) label mask as stored (dtype unchanged)."""
    try:
        return tifffile.imread(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read TIFF mask ({type(exc).__name__}: {exc}); re-run `mrisynth data import`") from exc

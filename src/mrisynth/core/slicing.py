"""Pure slice-level transforms used by the importer: slice choice, normalisation, fitting to size."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SLICE_RULES = ("max-tumor", "random-tumor", "max-brain", "center")
RANDOM_TUMOR_FRACTION = 0.25  # random-tumor: any slice whose tumour area is at least this share of the largest


def brain_mask(volumes: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool brain mask of a skull-stripped case: any modality non-zero. volumes: (M, X, Y, Z)."""
    return np.any(volumes != 0, axis=0)


def choose_slice(seg: np.ndarray, brain: np.ndarray, rule: str | int = "max-tumor", rng: np.random.Generator | None = None) -> int:
    """Axial index (last axis) of the slice to keep.

    max-tumor: the slice with the most tumour voxels (ties: the one nearest the tumour's centre;
    a case without tumour falls back to max-brain). random-tumor: a slice drawn with `rng` (required)
    among those whose tumour area is at least RANDOM_TUMOR_FRACTION of the largest (no tumour:
    max-brain). max-brain: the most brain voxels.
    center: the middle of the brain's axial extent. An int is taken as given (bounds-checked).
    """
    depth = seg.shape[-1]
    if isinstance(rule, (int, np.integer)) or (isinstance(rule, str) and rule.lstrip("-").isdigit()):
        index = int(rule)
        if not 0 <= index < depth:
            raise ValueError(f"slice index {index} is outside 0..{depth - 1}")
        return index
    if rule == "random-tumor":
        if rng is None:
            raise ValueError("slice rule 'random-tumor' needs a seeded rng")
        area = (seg > 0).sum(axis=(0, 1))
        if area.max() > 0:
            eligible = np.flatnonzero(area >= RANDOM_TUMOR_FRACTION * area.max())
            return int(eligible[rng.integers(len(eligible))])
        rule = "max-brain"
    if rule == "max-tumor":
        area = (seg > 0).sum(axis=(0, 1))
        if area.max() > 0:
            best = np.flatnonzero(area == area.max())
            centre = np.average(np.arange(depth), weights=area)
            return int(best[np.argmin(np.abs(best - centre))])
        rule = "max-brain"
    if rule == "max-brain":
        return int(np.argmax(brain.sum(axis=(0, 1))))
    if rule == "center":
        present = np.flatnonzero(brain.any(axis=(0, 1)))
        return int((present[0] + present[-1]) // 2) if len(present) else depth // 2
    raise ValueError(f"unknown slice rule {rule!r}; use one of {', '.join(SLICE_RULES)} or an integer index")


def normalise_volume(volume: np.ndarray, brain: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile-clip a volume within the brain and scale to [0, 1]; zero outside the brain. float32."""
    values = volume[brain]
    if values.size == 0:
        return np.zeros(volume.shape, dtype=np.float32)
    lo, hi = np.percentile(values, [low, high])
    scale = hi - lo if hi > lo else 1.0
    out = np.clip((volume.astype(np.float32) - lo) / scale, 0.0, 1.0)
    out[~brain] = 0.0
    return out.astype(np.float32)


def pad_or_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Centre the first two axes in a size x size frame: zero-pad if smaller, crop if larger. Lossless padding."""
    out = array
    for axis in (0, 1):
        n = out.shape[axis]
        if n < size:
            before = (size - n) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, size - n - before)
            out = np.pad(out, widths)
        elif n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
    return out


def resize(array: np.ndarray, size: int, *, is_mask: bool) -> np.ndarray:
    """Resize the first two axes to size x size: bilinear for images, nearest for label masks."""
    factors = [size / array.shape[0], size / array.shape[1]] + [1.0] * (array.ndim - 2)
    order = 0 if is_mask else 1
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    return out.astype(array.dtype)


def fit(array: np.ndarray, size: int, method: str, *, is_mask: bool) -> np.ndarray:
    """Fit a (H, W[, C]) slice to (size, size[, C]) with 'pad' (centred pad/crop) or 'resize'."""
    if method == "pad":
        return pad_or_crop(array, size)
    if method == "resize":
        return resize(array, size, is_mask=is_mask)
    raise ValueError(f"unknown fit method {method!r}; use 'pad' or 'resize'")

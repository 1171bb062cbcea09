"""Augmentation transforms (the paper's classic augmentation), pure numpy/scipy.

Geometric transforms act on the label map and brain mask (nearest) and, where an image exists, on
the image (bilinear) with the same matrix, so image and mask stay aligned. Brightness acts on the
image only. Tumour recombination moves a training tumour into another case's brain."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ClassicRanges:
    rotation: float = 15.0          # degrees, uniform in [-rotation, rotation]
    shift: float = 0.08             # fraction of the side, per axis
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True               # left-right flip with probability 0.5
    brightness: float = 0.15        # image multiplied by 1 + U(-b, b) within the brain


@dataclass(frozen=True)
class Geometry:
    """One geometric transform of a (size x size) frame about its centre."""

    angle: float = 0.0
    shift_y: float = 0.0  # pixels
    shift_x: float = 0.0
    scale: float = 1.0
    flip: bool = False

    def describe(self) -> str:
        return f"rot={self.angle:.1f};shift=({self.shift_y:.1f},{self.shift_x:.1f});scale={self.scale:.3f};flip={int(self.flip)}"


def sample_geometry(rng: np.random.Generator, ranges: ClassicRanges, size: int) -> Geometry:
    return Geometry(
        angle=float(rng.uniform(-ranges.rotation, ranges.rotation)),
        shift_y=float(rng.uniform(-ranges.shift, ranges.shift) * size),
        shift_x=float(rng.uniform(-ranges.shift, ranges.shift) * size),
        scale=float(rng.uniform(*ranges.scale)),
        flip=bool(ranges.flip and rng.random() < 0.5),
    )


def _matrix(geometry: Geometry, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) mapping output pixel coordinates to input coordinates (scipy convention)."""
    theta = np.deg2rad(geometry.angle)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rot * geometry.scale
    if geometry.flip:
        forward = forward @ np.diag([1.0, -1.0])
    inverse = np.linalg.inv(forward)
    centre = (np.array(shape, dtype=float) - 1) / 2.0
    shift = np.array([geometry.shift_y, geometry.shift_x])
    offset = centre - inverse @ (centre + shift)
    return inverse, offset


def warp(array: np.ndarray, geometry: Geometry, *, is_mask: bool) -> np.ndarray:
    """Apply `geometry` to an (H, W) or (H, W, C) array: nearest for masks, bilinear for images; zeros outside."""
    matrix, offset = _matrix(geometry, array.shape[:2])
    order = 0 if is_mask else 1
    if array.ndim == 2:
        return ndimage.affine_transform(array, matrix, offset, order=order, mode="constant", cval=0).astype(array.dtype)
    channels = [ndimage.affine_transform(array[..., c], matrix, offset, order=order, mode="constant", cval=0) for c in range(array.shape[-1])]
    return np.stack(channels, axis=-1).astype(array.dtype)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiply intensities by `factor`, clipped to [0, 1]; background stays 0."""
    return np.clip(image * factor, 0.0, 1.0).astype(image.dtype)


def classic(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, ranges: ClassicRanges) -> tuple[np.ndarray, np.ndarray, str]:
    """Rotation, shift, scale, flip (image and labels together) and brightness (image). Returns the description too."""
    out_image, out_labels, _, desc = classic_with_brain(image, labels, None, rng, ranges)
    return out_image, out_labels, desc


def classic_with_brain(image: np.ndarray, labels: np.ndarray, brain: np.ndarray | None, rng: np.random.Generator,
                       ranges: ClassicRanges) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """`classic`, also moving a brain mask (H, W) with the same geometry (None: not given, None returned)."""
    geometry = sample_geometry(rng, ranges, image.shape[0])
    factor = float(1.0 + rng.uniform(-ranges.brightness, ranges.brightness))
    out_image = brightness(warp(image, geometry, is_mask=False), factor)
    out_labels = warp(labels, geometry, is_mask=True)
    out_brain = None if brain is None else warp(brain.astype(np.uint8), geometry, is_mask=True).astype(bool)
    return out_image, out_labels, out_brain, f"{geometry.describe()};brightness={factor:.3f}"


def recombine(
    tumour_labels: np.ndarray,
    host_brain: np.ndarray,
    rng: np.random.Generator,
    ranges: ClassicRanges,
    tries: int = 60,
) -> tuple[np.ndarray, str] | None:
    """Place a (transformed) tumour from one case into another case's brain so that it lies inside it.

    tumour_labels: (H, W) BraTS labels of the donor (only labels > 0 are used).
    host_brain: (H, W) bool brain mask of the host. Returns (labels, description), or None when no
    placement fits after `tries` random positions."""
    if not (tumour_labels > 0).any():
        return None
    size = tumour_labels.shape[0]
    geometry = sample_geometry(rng, ClassicRanges(rotation=ranges.rotation, shift=0.0, scale=ranges.scale, flip=ranges.flip), size)
    moved = warp(tumour_labels, geometry, is_mask=True)
    if not (moved > 0).any():
        return None
    ys, xs = np.nonzero(moved)
    box = moved[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    footprint = box > 0
    h, w = box.shape
    candidates = np.argwhere(host_brain)  # centres to try; containment is checked exactly below
    for _ in range(tries if len(candidates) else 0):
        cy, cx = candidates[rng.integers(len(candidates))]
        top, left = cy - h // 2, cx - w // 2
        if top < 0 or left < 0 or top + h > size or left + w > size:
            continue
        region = host_brain[top : top + h, left : left + w]
        if np.all(region[footprint]):
            out = np.zeros_like(tumour_labels)
            out[top : top + h, left : left + w][footprint] = box[footprint]
            return out, f"{geometry.describe()};at=({int(cy)},{int(cx)})"
    return None

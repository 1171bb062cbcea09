"""Realistic BraTS-format phantom cases (the shipped default data: no download is possible). Pure array code: no file I/O.

Anatomy comes from the MNI152 2009 T1/GM/WM templates that nilearn ships inside its wheel.
Each subject gets a random affine + smooth non-linear deformation of that anatomy, a simulated
glioma (necrotic core 1 inside an enhancing rim 4 inside edema 2 that spreads along white matter),
four modality contrasts from tissue classes, a multiplicative bias field and Rician noise, and is
skull-stripped (zero outside the brain), like BraTS 2020 at 240x240x155, 1 mm.
"""
from __future__ import annotations


from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

SHAPE = (240, 240, 155)
# BraTS 2020 volumes are stored with this (LPS-like) affine.
BRATS_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, -0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# Relative intensities (brain-normalised) per tissue.
# columns: csf, grey matter, white matter, edema (2), necrotic core (1), enhancing (4)
CONTRAST = {
    "t1": (0.20, 0.55, 0.75, 0.45, 0.25, 0.50),
    "t1ce": (0.20, 0.55, 0.75, 0.45, 0.30, 1.00),
    "t2": (1.00, 0.60, 0.45, 0.85, 0.90, 0.70),
    "flair": (0.10, 0.55, 0.45, 0.95, 0.40, 0.70),
}
MODALITY_ORDER = ("flair", "t1", "t1ce", "t2")

# Output region that can hold a (scaled, deformed) MNI brain; outside it every voxel is zero.
_REGION = (slice(28, 212), slice(14, 226), slice(0, 155))


@dataclass(frozen=True)
class PhantomCase:
    """One subject: int16 modality volumes and a uint8 BraTS label volume, all SHAPE.

    `tissue` is the dominant normal tissue per voxel (0 outside, 1 CSF, 2 GM, 3 WM): ground truth
    for checking contrasts, not part of the BraTS output. `info` holds per-case facts for the
    dataset card (grade, location, site, ...); `extra` holds version-2 ground-truth maps for tests."""

    volumes: dict[str, np.ndarray]
    seg: np.ndarray
    grade: str
    tissue: np.ndarray
    info: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3, X, Y, Z) float32 tissue probabilities (csf, gm, wm) in MNI space, brain centre, shape.

    csf + gm + wm is the (soft) brain mask, so it need not be resampled separately."""
    from nilearn import datasets  # heavy import, only when a phantom is made

    t1 = np.asarray(datasets.load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    t1, gm, wm = (a / a.max() for a in (t1, gm, wm))
    brain = ndimage.binary_fill_holes(t1 > 0.05).astype(np.float32)
    brain = ndimage.gaussian_filter(brain, 0.7)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    gm, wm = gm * brain, wm * brain
    stack = np.stack([csf, gm, wm]).astype(np.float32)
    idx = np.argwhere(brain > 0.5)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    return stack, centre, np.asarray(t1.shape)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights that stretch n_in grid points over n_out."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    weights[np.arange(n_out), lo] = 1.0 - frac
    weights[np.arange(n_out), lo + 1] = frac
    return weights


def _smooth_field(rng: np.random.Generator, coarse: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random 3-D field, about N(0, 1): coarse Gaussian noise, trilinearly stretched to shape.

    Separable: three small matrix products instead of a generic zoom (about 20x faster)."""
    field = rng.standard_normal(coarse).astype(np.float32)
    for axis, (n_out, n_in) in enumerate(zip(shape, coarse)):
        field = np.moveaxis(np.tensordot(_interp_matrix(n_out, n_in), field, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(field)


@lru_cache(maxsize=1)
def _template_reach() -> np.ndarray:
    """bool (X+1, Y+1, Z+1): reach[i + 1] is True when a trilinear sample whose floor corner is the voxel
    index i (-1 <= i <= shape - 1 on each axis) can touch a non-zero template voxel."""
    stack, _, _ = _templates()
    nonzero = np.pad(stack.max(axis=0) > 0, 1)
    reach = np.zeros(tuple(n - 1 for n in nonzero.shape), dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                reach |= nonzero[dx : dx + reach.shape[0], dy : dy + reach.shape[1], dz : dz + reach.shape[2]]
    return reach


def sample_tissue(stack: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """(3, *shape) trilinear samples of the (3, X, Y, Z) `stack` at `coords` (3, *shape), zero outside.

    Only points whose eight neighbours include a non-zero template voxel are sampled; every other point
    is exactly 0, so the bytes equal one full `map_coordinates` call per channel while most of the
    work (the air and skull around the brain) is skipped."""
    reach = _template_reach()
    flat = np.zeros(coords.shape[1:], dtype=np.int32)  # (X+1)(Y+1)(Z+1) < 2**31
    inside = np.ones(coords.shape[1:], dtype=bool)
    for axis in range(3):
        corner = np.floor(coords[axis]).astype(np.int32)
        corner += 1  # index into the padded reach grid
        inside &= (corner >= 0) & (corner < reach.shape[axis])
        np.clip(corner, 0, reach.shape[axis] - 1, out=corner)
        flat *= reach.shape[axis]
        flat += corner
    keep = inside & reach.ravel()[flat]
    points = coords[:, keep]
    maps = np.zeros((3, *coords.shape[1:]), dtype=np.float32)
    for c in range(3):
        maps[c][keep] = ndimage.map_coordinates(stack[c], points, order=1, mode="constant", cval=0.0, prefilter=False)
    return maps


def _tissue_maps(rng: np.random.Generator) -> np.ndarray:
    """(4, *region) tissue probabilities (csf, gm, wm, brain) of one deformed subject."""
    stack, centre, _ = _templates()
    region_shape = tuple(s.stop - s.start for s in _REGION)
    out_centre = np.array([(s.start + s.stop) / 2.0 for s in _REGION]) - np.array([s.start for s in _REGION])
    out_centre[2] = 77.0 + rng.uniform(-4, 4)
    # random similarity transform (output -> template): scale 0.92..1.08, small rotations, shift
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, size=3)
    angles = np.deg2rad(rng.uniform(-6, 6, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    matrix = (rot / scale[None, :]).astype(np.float32)
    shift = rng.uniform(-4, 4, size=3)
    # dense coordinates: template = centre + M (o - out_centre) + shift + smooth displacement
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) - c for n, c in zip(region_shape, out_centre)), indexing="ij", sparse=True)
    amplitude = rng.uniform(2.0, 4.0)
    coords = np.empty((3, *region_shape), dtype=np.float32)
    for axis in range(3):
        coords[axis] = (
            centre[axis]
            + shift[axis]
            + matrix[axis, 0] * grids[0]
            + matrix[axis, 1] * grids[1]
            + matrix[axis, 2] * grids[2]
            + amplitude * _smooth_field(rng, (5, 6, 5), region_shape)
        )
    maps = sample_tissue(stack, coords)
    brain = np.clip(maps.sum(axis=0), 0.0, 1.0)
    return np.concatenate([maps, brain[None]])


def _tumour(rng: np.random.Generator, maps: np.ndarray) -> np.ndarray:
    """uint8 labels over the region: core 1 inside enhancing rim 4 inside edema 2, within the brain."""
    csf, gm, wm, brain = maps
    mask = brain > 0.5
    shape = mask.shape
    # pick a centre deep inside the brain, in white matter, away from the midline
    step = 3
    depth = ndimage.distance_transform_edt(mask[::step, ::step, ::step]) * step
    radius = rng.uniform(10.0, 22.0)
    candidates = np.argwhere((depth > radius * 1.35) & (wm[::step, ::step, ::step] > 0.4)) * step
    if len(candidates) == 0:
        candidates = np.argwhere(depth > depth.max() * 0.6) * step
    centre = candidates[rng.integers(len(candidates))].astype(np.float32)

    extent = int(radius * 3.2) + 4
    lo = np.maximum(centre.astype(int) - extent, 0)
    hi = np.minimum(centre.astype(int) + extent, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(b - a for a, b in zip(lo, hi))
    axes_scale = rng.uniform(0.75, 1.25, size=3)
    grids = np.meshgrid(*(np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre)), indexing="ij", sparse=True)
    dist = np.sqrt(sum((g / (radius * s)) ** 2 for g, s in zip(grids, axes_scale)))
    # irregular boundary: radial distance modulated by smooth noise
    r = dist / (1.0 + 0.28 * _smooth_field(rng, (6, 6, 6), box_shape))
    core_radius = rng.uniform(0.35, 0.65)
    edema_reach = rng.uniform(0.2, 0.5) + rng.uniform(0.5, 1.1) * wm[box]
    inside = mask[box]
    labels = np.zeros(box_shape, dtype=np.uint8)
    # a thin shell of edema wraps the rim everywhere; beyond it, edema spreads along white matter
    edema = inside & ((r < 1.2) | ((r < 1.0 + edema_reach) & ((wm[box] + 0.5 * gm[box]) > 0.25)))
    labels[edema] = 2
    labels[(r < 1.0) & inside] = 4
    if rng.random() < 0.85:  # most high-grade gliomas have a necrotic / non-enhancing core
        labels[(r < core_radius) & inside] = 1
    # keep only the component connected to the centre, so the lesion is one tumour
    comp, _ = ndimage.label(labels > 0)
    centre_local = tuple(int(c - a) for c, a in zip(centre, lo))
    keep = comp == comp[centre_local] if comp[centre_local] else comp > 0
    labels[~keep] = 0
    full = np.zeros(shape, dtype=np.uint8)
    full[box] = labels
    return full


def scanner_volume(rng: np.random.Generator, signal: np.ndarray, sigma: float, inside: tuple, region_shape: tuple) -> np.ndarray:
    """Brain-voxel intensities `signal` (at `inside` of the region) -> an int16 SHAPE volume as a scanner
    stores it: Rician magnitude noise of `sigma`, a random scale, >= 1 inside the brain, 0 outside."""
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    signal = np.sqrt((signal + n1) ** 2 + n2**2)  # Rician magnitude noise
    scale = rng.uniform(400.0, 1200.0)
    region = np.zeros(region_shape, dtype=np.int16)
    region[inside] = np.maximum(np.round(signal * scale), 1).astype(np.int16)
    vol = np.zeros(SHAPE, dtype=np.int16)
    vol[_REGION] = region
    return vol


def make_case(seed: int, index: int) -> PhantomCase:
    """Synthesise subject `index` of the phantom population `seed` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    maps = _tissue_maps(rng)
    csf, gm, wm, brain = maps
    labels = _tumour(rng, maps)
    mask = (brain > 0.5) | (labels > 0)
    region_shape = mask.shape

    # tumour maps with partial-volume blur at the borders, computed in the tumour's bounding box
    tumour_box = ndimage.find_objects((labels > 0).astype(np.int8))[0]
    inside = np.nonzero(mask)  # all intensity work happens on brain voxels only (skull-stripped)
    tum = {}
    for label in (1, 2, 4):
        blurred = np.zeros(region_shape, dtype=np.float32)
        blurred[tumour_box] = ndimage.gaussian_filter((labels[tumour_box] == label).astype(np.float32), 0.6)
        tum[label] = blurred[inside]
    tumour_total = np.clip(tum[1] + tum[2] + tum[4], 0.0, 1.0)
    normal_weight = 1.0 - tumour_total + 0.4 * tum[2]  # edema leaves the underlying tissue visible
    csf, gm, wm = csf[inside], gm[inside], wm[inside]
    tissue_sum = np.maximum(csf + gm + wm, 1e-3)

    # tumours are not uniform: a smooth +-25 % texture over the lesion, different per modality
    lesion = tumour_total > 0
    texture_box = tuple(s.stop - s.start for s in tumour_box)
    bias = np.exp(0.15 * _smooth_field(rng, (4, 4, 3), region_shape)[inside])
    gain = rng.uniform(0.9, 1.1)
    volumes = {}
    for modality in MODALITY_ORDER:
        c_csf, c_gm, c_wm, c_ed, c_core, c_enh = (
            v * rng.uniform(0.93, 1.07) for v in CONTRAST[modality]
        )
        tissue = (c_csf * csf + c_gm * gm + c_wm * wm) / tissue_sum
        texture = np.ones(region_shape, dtype=np.float32)
        texture[tumour_box] = 1.0 + 0.25 * np.tanh(_smooth_field(rng, (5, 5, 5), texture_box))
        texture = np.where(lesion, texture[inside], 1.0)
        edema_strength = rng.uniform(0.45, 0.75)  # how far edema departs from the tissue it soaks
        signal = tissue * normal_weight + (c_ed * edema_strength * tum[2] + c_core * tum[1] + c_enh * tum[4]) * texture
        signal = np.clip(signal, 0.0, None) ** rng.uniform(0.9, 1.1) * bias * gain
        volumes[modality] = scanner_volume(rng, signal, rng.uniform(0.02, 0.045), inside, region_shape)
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[_REGION] = labels
    tissue = np.zeros(SHAPE, dtype=np.uint8)
    tissue[_REGION] = np.where(mask, np.argmax(maps[:3], axis=0) + 1, 0)
    grade = "HGG" if (labels == 1).any() else "LGG"
    return PhantomCase(volumes=volumes, seg=seg, grade=grade, tissue=tissue, info={"grade": grade, "phantom_version": 1})

"""Phantom source, version 2: BraTS-format cases with the variety that makes real BraTS hard.

Pure array code (no file I/O), deterministic per (seed, index). Version 1 (`phantom.py`) put one
nested blob in the deep white matter of a lightly warped MNI brain; every knob of version 2 is a
field of `Realism` with a documented default:

* anatomy: head size, atrophy (grey matter partly replaced by sulcal CSF), ventricle size, stronger
  non-rigid warps, and **mass effect** - tissue around the tumour is pushed aside (ventricles
  compressed, midline shifted) instead of being overwritten;
* tumour: ~80/20 high/low grade, low grade mostly without enhancement; complete, incomplete or
  nodular enhancement around a non-concentric core; multifocal minority; sizes from small to
  hemispheric; centres drawn from lobar frequencies (frontal, temporal, parietal, occipital, deep;
  Larjavaara et al. 2007), cortical as well as deep; infiltrative edema with graded margins;
* intensity overlap: non-tumour FLAIR/T2 hyperintensities (periventricular caps, small-vessel white
  matter lesions), non-tumour enhancement on T1ce (cortical vessels, choroid plexus, the superior
  sagittal sinus), weak edema contrast, and per-site protocols (contrast curve, noise, in-plane blur,
  bias field strength) for `sites` sites per dataset;
* annotation: the written `seg` is a rater's label - the true boundary displaced by ~1-2 mm with
  small islands and holes. The images are rendered from the true anatomy; `seg` is the ground truth
  every metric uses (as in BraTS, where the reference is a rater's annotation).

What it still does not model: real anatomy variation beyond one warped template, haemorrhage,
calcification, resection cavities, motion and other artefacts, 3-D acquisition anisotropy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from mrisynth.core.phantom import CONTRAST, MODALITY_ORDER, SHAPE, _REGION, PhantomCase, _smooth_field, _templates, sample_tissue, scanner_volume

VERSION = 2
LOBES = ("frontal", "temporal", "parietal", "occipital", "deep")
# MNI152 1 mm template: voxel index + this offset = MNI millimetres (x right, y anterior, z superior)
_MNI_OFFSET = np.array([-98.0, -134.0, -72.0])
_STEP = 2  # template subsampling for the location tables


@dataclass(frozen=True)
class Realism:
    """Every realism parameter of phantom version 2, with its default (ranges are uniform [low, high])."""

    # anatomy
    head_scale: tuple[float, float] = (0.88, 1.10)      # isotropic brain size factor
    atrophy: tuple[float, float] = (0.0, 0.35)          # fraction of grey matter turned into sulcal CSF
    ventricle_scale: tuple[float, float] = (0.9, 1.45)  # zoom of the central (ventricular) region
    warp_mm: tuple[float, float] = (3.0, 6.0)           # amplitude of the smooth non-rigid deformation
    mass_effect: tuple[float, float] = (0.5, 0.95)      # radius of displaced tissue / tumour radius (HGG; LGG half)
    # tumour
    lgg_fraction: float = 0.2                            # low-grade share (BraTS 2020: 76/369)
    lgg_enhancing: float = 0.1                           # chance a low-grade tumour has an enhancing nodule
    multifocal: float = 0.1                              # chance of a second, separate lesion
    radius_mm: tuple[float, float] = (7.0, 30.0)        # tumour body radius, log-uniform (small .. hemispheric)
    lobe_weights: tuple[float, ...] = (0.40, 0.29, 0.14, 0.03, 0.14)  # LOBES order; Larjavaara et al. 2007
    enhancement: tuple[float, float, float] = (0.45, 0.35, 0.20)       # P(ring), P(incomplete), P(nodular), HGG
    necrosis: float = 0.8                                # chance a high-grade core holds necrosis
    edema_reach: tuple[float, float] = (0.15, 1.3)      # edema extent beyond the body, x radius (more along WM)
    edema_margin: tuple[float, float] = (0.2, 0.6)      # width of the graded (infiltrative) edema margin, x radius
    irregularity: tuple[float, float] = (0.2, 0.45)     # boundary modulation of the tumour body
    # intensity overlap
    edema_contrast: tuple[float, float] = (0.35, 0.8)   # how far edema departs from the tissue it soaks
    wm_lesions: tuple[int, int] = (0, 14)               # small-vessel white-matter hyperintensities per case
    periventricular_caps: float = 0.7                    # chance of FLAIR caps / rims around the ventricles
    vessels: tuple[float, float] = (0.3, 1.0)           # cortical vessel enhancement strength on T1ce
    choroid_plexus: float = 0.9                          # chance of enhancing choroid plexus
    sinus: float = 0.8                                   # chance the superior sagittal sinus enhances
    sites: int = 4                                       # distinct protocols per dataset (case index mod sites)
    site_gamma: tuple[float, float] = (0.75, 1.35)      # per-site, per-modality contrast curve exponent
    site_noise: tuple[float, float] = (0.015, 0.06)     # Rician noise sigma (relative to white matter)
    site_blur: tuple[float, float] = (0.0, 1.2)         # in-plane Gaussian blur (voxels)
    site_bias: tuple[float, float] = (0.08, 0.30)       # bias-field strength (log amplitude)
    # annotation
    rater_mm: tuple[float, float] = (1.0, 2.0)          # boundary displacement of the written label
    rater_edema_level: tuple[float, float] = (0.25, 0.75)  # where in the graded margin the rater draws the edema line
    rater_islands: tuple[int, int] = (0, 3)             # small spurious label islands near the boundary
    rater_holes: tuple[int, int] = (0, 2)               # small holes inside the edema label

    def check(self) -> None:
        if len(self.lobe_weights) != len(LOBES) or min(self.lobe_weights) < 0 or sum(self.lobe_weights) <= 0:
            raise ValueError(f"lobe_weights: expected {len(LOBES)} non-negative weights for {LOBES}, found {self.lobe_weights}")
        if self.sites < 1:
            raise ValueError(f"sites: expected >= 1, found {self.sites}")
        for name in ("lgg_fraction", "lgg_enhancing", "multifocal", "necrosis", "periventricular_caps", "choroid_plexus", "sinus"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], found {getattr(self, name)}")


@dataclass(frozen=True)
class Site:
    gamma: dict[str, float]
    noise: float
    blur: float
    bias: float
    contrast: dict[str, tuple[float, ...]] = field(default_factory=dict)


def site_protocol(seed: int, site: int, realism: Realism = Realism()) -> Site:
    """The acquisition protocol of `site` in population `seed` (shared by all its cases)."""
    rng = np.random.default_rng([seed, 7919, site])
    gamma = {m: float(rng.uniform(*realism.site_gamma)) for m in MODALITY_ORDER}
    contrast = {m: tuple(float(v * rng.uniform(0.9, 1.1)) for v in CONTRAST[m]) for m in MODALITY_ORDER}
    return Site(gamma, float(rng.uniform(*realism.site_noise)), float(rng.uniform(*realism.site_blur)),
                float(rng.uniform(*realism.site_bias)), contrast)


def grade_of(seed: int, index: int, lgg_fraction: float) -> str:
    """HGG/LGG by a golden-ratio sequence: any run of cases holds close to `lgg_fraction` low-grade ones."""
    offset = np.random.default_rng([seed, 104729]).random()
    return "LGG" if ((index + 0.5) * 0.6180339887498949 + offset) % 1.0 < lgg_fraction else "HGG"


@lru_cache(maxsize=1)
def _location_tables() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Candidate tumour centres per lobe (template voxels), white-matter voxels, ventricle centroid."""
    stack, _, _ = _templates()
    sub = stack[:, ::_STEP, ::_STEP, ::_STEP]
    brain = sub.sum(axis=0) > 0.5
    depth = ndimage.distance_transform_edt(brain) * _STEP
    idx = np.argwhere(brain)
    mm = idx * _STEP + _MNI_OFFSET
    x, y, z = mm.T
    d = depth[tuple(idx.T)]
    deep = (np.abs(x) < 28) & (y > -35) & (y < 15) & (z > -10) & (z < 22)
    cortical = (d >= 7) & (d <= 30) & ~deep
    lobes = {
        "frontal": cortical & (y > 0) & (z > -15),
        "temporal": cortical & (z < 5) & (y > -70) & (y <= 10) & (np.abs(x) > 28),
        "parietal": cortical & (y > -75) & (y <= 0) & (z >= 25),
        "occipital": cortical & (y <= -75),
        "deep": deep & (d >= 10),
    }
    tables = {k: idx[v] * _STEP for k, v in lobes.items()}
    wm = idx[(sub[2][tuple(idx.T)] > 0.6) & (d >= 8)] * _STEP
    ventricles = idx[(sub[0][tuple(idx.T)] > 0.6) & (d >= 18)] * _STEP
    return tables, wm, ventricles.mean(axis=0)


class _Subject:
    """The similarity transform output -> template of one subject (plus its inverse)."""

    def __init__(self, rng: np.random.Generator, realism: Realism):
        _, self.centre, _ = _templates()
        region_shape = tuple(s.stop - s.start for s in _REGION)
        self.shape = region_shape
        self.out_centre = np.array([n / 2.0 for n in region_shape])
        self.out_centre[2] = 77.0 + rng.uniform(-4, 4)
        scale = rng.uniform(*realism.head_scale) * rng.uniform(0.95, 1.05, size=3)
        angles = np.deg2rad(rng.uniform(-8, 8, size=3))
        cx, cy, cz = np.cos(angles)
        sx, sy, sz = np.sin(angles)
        rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
               @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
        self.matrix = (rot / scale[None, :]).astype(np.float32)
        self.inverse = np.linalg.inv(self.matrix.astype(np.float64))
        self.shift = rng.uniform(-4, 4, size=3)
        self.warp = float(rng.uniform(*realism.warp_mm))

    def to_output(self, template_point: np.ndarray) -> np.ndarray:
        return self.out_centre + self.inverse @ (np.asarray(template_point, float) - self.centre - self.shift)


def _radial_source(grids, centre, fn):
    """Source coordinates o + (fn(r)/r - 1)(o - c) for a radial map r -> fn(r) about `centre`."""
    d = [g - c for g, c in zip(grids, centre)]
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    factor = fn(r) / np.maximum(r, 1e-3)
    return [np.broadcast_to(c + dd * factor, r.shape) for dd, c in zip(d, centre)]


def _tissue_maps(rng: np.random.Generator, subject: _Subject, tumour_centre: np.ndarray, displaced_mm: float,
                 ventricle_centre: np.ndarray, ventricle_scale: float, atrophy: float) -> np.ndarray:
    """(4, *region) csf, gm, wm, brain of the subject with mass effect and ventricle zoom applied."""
    stack, _, _ = _templates()
    shape = subject.shape
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)  # broadcast lazily
    # mass effect: tissue at radius r is pushed to cbrt(r^3 + R^3); the output at r shows what was at cbrt(r^3 - R^3)
    cube = np.float32(displaced_mm) ** 3
    source = _radial_source(grids, tumour_centre, lambda r: np.cbrt(np.maximum(r**3 - cube, 0.0)))
    # ventricles: zoom the central region by `ventricle_scale`, blended back to identity by twice the radius
    radius = 22.0
    zoom = np.float32(1.0 / ventricle_scale)
    source = _radial_source(source, ventricle_centre,
                            lambda r: r * np.where(r < radius, zoom, np.where(r < 2 * radius, zoom + (1 - zoom) * (r - radius) / radius, 1.0)))
    coords = np.empty((3, *shape), dtype=np.float32)
    rel = [s - c for s, c in zip(source, subject.out_centre)]
    for axis in range(3):
        m = subject.matrix[axis]
        coords[axis] = (subject.centre[axis] + subject.shift[axis] + m[0] * rel[0] + m[1] * rel[1] + m[2] * rel[2]
                        + subject.warp * _smooth_field(rng, (6, 7, 6), shape))
    maps = sample_tissue(stack, coords)
    csf, gm, wm = maps
    # atrophy: part of the cortex becomes CSF (wider sulci), patchily
    patch = np.clip(0.5 + 0.5 * _smooth_field(rng, (5, 5, 4), shape), 0.0, 1.0)
    moved = atrophy * gm * patch
    csf += moved
    gm -= moved
    brain = np.clip(maps.sum(axis=0), 0.0, 1.0)
    return np.concatenate([maps, brain[None]])


def _ball(shape, centre, radius) -> tuple[tuple[slice, ...], np.ndarray]:
    lo = np.maximum(np.floor(centre - radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.meshgrid(*(np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)), indexing="ij", sparse=True)
    return box, sum(g**2 for g in grids) <= radius**2


def _lesion(rng, maps, centre, radius, grade, realism, level: float = 0.5):
    """(box, labels uint8, edema weight float32) of one lesion around `centre` (true anatomy)."""
    csf, gm, wm, brain = maps
    shape = brain.shape
    reach = rng.uniform(*realism.edema_reach)
    margin = rng.uniform(*realism.edema_margin)
    extent = int(radius * (1.0 + reach + 2 * margin + 0.6) * 1.25) + 6
    lo = np.maximum(centre.astype(int) - extent, 0)
    hi = np.minimum(centre.astype(int) + extent, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(b - a for a, b in zip(lo, hi))
    grids = np.meshgrid(*(np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre)), indexing="ij", sparse=True)
    axes_scale = rng.uniform(0.7, 1.3, size=3)
    noise = _smooth_field(rng, (6, 6, 6), box_shape)
    r = np.sqrt(sum((g / (radius * s)) ** 2 for g, s in zip(grids, axes_scale))) / (1.0 + rng.uniform(*realism.irregularity) * noise)
    inside = brain[box] > 0.5
    body = (r < 1.0) & inside
    labels = np.zeros(box_shape, dtype=np.uint8)
    pattern = "none"
    if grade == "HGG":
        offset = rng.normal(0.0, 0.22 * radius, size=3)  # the core need not be concentric
        core_frac = rng.uniform(0.35, 0.7)
        rc = np.sqrt(sum(((g - o) / (radius * core_frac * s)) ** 2 for g, o, s in zip(grids, offset, axes_scale)))
        necrotic = (rc < 1.0) & (r < 0.88) & body if rng.random() < realism.necrosis else np.zeros_like(body)
        shell = body & ~necrotic
        pattern = str(rng.choice(["ring", "incomplete", "nodular"], p=np.asarray(realism.enhancement) / sum(realism.enhancement)))
        if pattern == "ring":
            enhancing = shell
        else:
            angular = _smooth_field(rng, (4, 4, 4), box_shape)
            keep = np.quantile(angular[shell], 0.5 if pattern == "incomplete" else 0.8) if shell.any() else 0.0
            enhancing = shell & (angular > keep)
        labels[body] = 1
        labels[enhancing] = 4
    else:
        labels[body] = 1  # non-enhancing tumour
        if rng.random() < realism.lgg_enhancing:
            nodule = _smooth_field(rng, (4, 4, 4), box_shape)
            labels[body & (nodule > np.quantile(nodule[body], 0.93) if body.any() else body)] = 4
            pattern = "nodular"
    # infiltrative edema: farther along white matter, graded margin; the label line sits at weight `level`
    along = (0.35 + 0.65 * np.clip(wm[box] + 0.5 * gm[box], 0.0, 1.0)) * reach
    weight = np.clip((1.0 + along - r) / margin + 0.5, 0.0, 1.0) * inside
    weight[body] = 0.0
    labels[(weight >= level) & ~body] = 2
    # one connected lesion around its centre
    comp, _ = ndimage.label(labels > 0)
    local = tuple(int(np.clip(c - a, 0, n - 1)) for c, a, n in zip(centre, lo, box_shape))
    if comp[local]:
        stray = comp != comp[local]
        labels[stray] = 0
        weight[stray & (weight >= level)] = 0.0
    return box, labels, weight.astype(np.float32), pattern


def _rater(rng, labels: np.ndarray, brain: np.ndarray, realism: Realism) -> np.ndarray:
    """A rater's annotation of `labels`: boundary displaced ~rater_mm, small islands and holes."""
    found = ndimage.find_objects((labels > 0).astype(np.int8))
    if not found:
        return labels.copy()
    pad = 6
    box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(found[0], labels.shape))
    part = labels[box]
    shape = part.shape
    amp = rng.uniform(*realism.rater_mm)
    coarse = tuple(max(2, n // 10) for n in shape)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    coords = [g + amp * _smooth_field(rng, coarse, shape) for g in grids]
    rated = ndimage.map_coordinates(part, coords, order=0, mode="nearest")
    whole = rated > 0
    band = ndimage.binary_dilation(whole, iterations=4) & ~whole & (brain[box] > 0.5)
    for _ in range(int(rng.integers(realism.rater_islands[0], realism.rater_islands[1] + 1))):
        spots = np.argwhere(band)
        if len(spots) == 0:
            break
        sub, ball = _ball(shape, spots[rng.integers(len(spots))], rng.uniform(1.0, 2.2))
        rated[sub][ball] = 2
    for _ in range(int(rng.integers(realism.rater_holes[0], realism.rater_holes[1] + 1))):
        spots = np.argwhere(rated == 2)
        if len(spots) == 0:
            break
        sub, ball = _ball(shape, spots[rng.integers(len(spots))], rng.uniform(1.0, 1.8))
        view = rated[sub]
        view[ball & (view == 2)] = 0
    rated[brain[box] <= 0.5] = 0
    out = labels.copy()
    out[box] = rated
    return out


def _mimics(rng, maps: np.ndarray, tumour: np.ndarray, realism: Realism) -> tuple[np.ndarray, np.ndarray]:
    """Non-tumour (FLAIR/T2 hyperintensity weight, T1ce enhancement weight) over the region, float32."""
    csf, gm, wm, brain = maps
    shape = brain.shape
    bright = np.zeros(shape, dtype=np.float32)
    enhance = np.zeros(shape, dtype=np.float32)
    free = (tumour == 0) & (brain > 0.5)
    # small-vessel white-matter lesions
    wm_spots = np.argwhere((wm[::2, ::2, ::2] > 0.7) & free[::2, ::2, ::2]) * 2
    for _ in range(int(rng.integers(realism.wm_lesions[0], realism.wm_lesions[1] + 1))):
        if len(wm_spots) == 0:
            break
        box, ball = _ball(shape, wm_spots[rng.integers(len(wm_spots))], rng.uniform(1.5, 5.0))
        bright[box] = np.maximum(bright[box], ndimage.gaussian_filter(ball.astype(np.float32), 0.8) * rng.uniform(0.6, 1.0))
    # the central box holds the ventricles: caps, choroid plexus
    cx, cy, _ = (n // 2 for n in shape)
    centre = (slice(cx - 45, cx + 45), slice(cy - 60, cy + 60), slice(30, 125))
    ventricles = (csf[centre] > 0.6) & (brain[centre] > 0.8)
    ventricles = ventricles & ~ndimage.binary_dilation(brain[centre] < 0.5, iterations=8)
    if rng.random() < realism.periventricular_caps:
        near = ndimage.gaussian_filter(ventricles.astype(np.float32), rng.uniform(1.5, 3.0))
        patch = np.clip(0.3 + _smooth_field(rng, (4, 4, 4), near.shape), 0.0, 1.0)
        cap = np.clip(2.0 * near, 0.0, 1.0) * patch * (wm[centre] > 0.3) * ~ventricles * rng.uniform(0.5, 1.0)
        bright[centre] = np.maximum(bright[centre], cap)
    if rng.random() < realism.choroid_plexus:
        blob = _smooth_field(rng, (5, 5, 5), ventricles.shape)
        plexus = ventricles & (blob > 1.0)
        enhance[centre] = np.maximum(enhance[centre], ndimage.gaussian_filter(plexus.astype(np.float32), 0.7) * rng.uniform(0.6, 1.0))
    # cortical vessels: thin curved sheets where a smooth field crosses zero, in sulcal CSF / grey matter
    strength = rng.uniform(*realism.vessels)
    ridge = np.abs(_smooth_field(rng, (9, 10, 8), shape))
    vessel = np.clip(1.0 - ridge / 0.06, 0.0, 1.0) * np.clip(csf * 2.0, 0, 1) * (gm > 0.15) * (brain > 0.3)
    enhance = np.maximum(enhance, vessel * strength)
    # superior sagittal sinus: the brain's upper-midline border
    if rng.random() < realism.sinus:
        mid = shape[0] // 2
        band = np.zeros(shape, dtype=bool)
        band[mid - 4 : mid + 4, :, 70:] = True
        edge = (brain > 0.2) & (brain < 0.8) & band
        enhance = np.maximum(enhance, edge.astype(np.float32) * rng.uniform(0.6, 1.0))
    bright[~free] = 0.0
    enhance[tumour > 0] = 0.0
    return bright, enhance


def make_case(seed: int, index: int, realism: Realism = Realism(), site: int | None = None) -> PhantomCase:
    """Synthesise subject `index` of the version-2 phantom population `seed` (deterministic).

    The case is scanned at site `index % realism.sites` unless `site` names another (same anatomy)."""
    realism.check()
    rng = np.random.default_rng([seed, index, VERSION])
    subject = _Subject(rng, realism)
    tables, wm_table, ventricle_template = _location_tables()
    grade = grade_of(seed, index, realism.lgg_fraction)
    weights = np.asarray(realism.lobe_weights, float)
    lobe = str(rng.choice(LOBES, p=weights / weights.sum()))
    lo, hi = np.log(realism.radius_mm[0]), np.log(realism.radius_mm[1])
    radius = float(np.exp(rng.uniform(lo, hi)))
    candidates = tables[lobe]
    centre = subject.to_output(candidates[rng.integers(len(candidates))] + rng.uniform(-1, 1, 3))
    centre = np.clip(centre, 20, np.array(subject.shape) - 20)
    displaced = radius * rng.uniform(*realism.mass_effect) * (0.5 if grade == "LGG" else 1.0)
    maps = _tissue_maps(rng, subject, centre, displaced, subject.to_output(ventricle_template),
                        rng.uniform(*realism.ventricle_scale), rng.uniform(*realism.atrophy))
    brain = maps[3]
    shape = brain.shape

    truth = np.zeros(shape, dtype=np.uint8)
    edema_weight = np.zeros(shape, dtype=np.float32)
    lesions = [(centre, radius, grade)]
    multifocal = rng.random() < realism.multifocal
    if multifocal:
        pool = wm_table[::7]
        far = pool[np.linalg.norm(np.array([subject.to_output(p) for p in pool]) - centre, axis=1) > 2.5 * radius + 15]
        if len(far):
            second = np.clip(subject.to_output(far[rng.integers(len(far))]), 20, np.array(shape) - 20)
            lesions.append((second, radius * rng.uniform(0.3, 0.6), grade))
    patterns = []
    level = rng.uniform(*realism.rater_edema_level)  # one rater per case
    for where, size, g in lesions:
        box, labels, weight, pattern = _lesion(rng, maps, np.asarray(where, np.float32), size, g, realism, level)
        patterns.append(pattern)
        view = truth[box]
        view[labels > 0] = labels[labels > 0]
        edema_weight[box] = np.maximum(edema_weight[box], weight)
    edema_weight[(truth == 1) | (truth == 4)] = 0.0
    seg_region = _rater(rng, truth, brain, realism)
    bright, enhance = _mimics(rng, maps, truth, realism)

    mask = (brain > 0.5) | (truth > 0)
    inside = np.nonzero(mask)
    found = ndimage.find_objects((truth > 0).astype(np.int8))
    tumour_box = found[0] if found else tuple(slice(0, n) for n in shape)
    tum = {}
    for label in (1, 4):
        blurred = np.zeros(shape, dtype=np.float32)
        blurred[tumour_box] = ndimage.gaussian_filter((truth[tumour_box] == label).astype(np.float32), 0.6)
        tum[label] = blurred[inside]
    ed = ndimage.gaussian_filter(edema_weight, 0.6)[inside] if found else np.zeros(len(inside[0]), np.float32)
    body = np.clip(tum[1] + tum[4], 0.0, 1.0)
    mimic = bright[inside]
    enh_mimic = enhance[inside]
    csf, gm, wm = (m[inside] for m in maps[:3])
    tissue_sum = np.maximum(csf + gm + wm, 1e-3)

    site_index = index % realism.sites if site is None else site
    site = site_protocol(seed, site_index, realism)
    lesion = body > 0
    texture_box = tuple(s.stop - s.start for s in tumour_box)
    bias = np.exp(site.bias * _smooth_field(rng, (4, 4, 3), shape)[inside])
    edema_strength = rng.uniform(*realism.edema_contrast)
    mimic_strength = rng.uniform(0.5, 0.85)
    volumes = {}
    for modality in MODALITY_ORDER:
        c_csf, c_gm, c_wm, c_ed, c_core, c_enh = (v * rng.uniform(0.95, 1.05) for v in site.contrast[modality])
        tissue = (c_csf * csf + c_gm * gm + c_wm * wm) / tissue_sum
        texture = np.ones(shape, dtype=np.float32)
        texture[tumour_box] = 1.0 + 0.25 * np.tanh(_smooth_field(rng, (5, 5, 5), texture_box))
        texture = np.where(lesion, texture[inside], 1.0)
        soaked = np.clip(ed + mimic, 0.0, 1.0)  # edema and non-tumour lesions leave some tissue visible
        signal = (tissue * (1.0 - body - 0.6 * soaked * (1.0 - body))
                  + c_ed * (edema_strength * ed + mimic_strength * mimic) * (1.0 - body)
                  + (c_core * tum[1] + c_enh * tum[4]) * texture)
        if modality == "t1ce":
            signal = signal + (CONTRAST["t1ce"][5] * rng.uniform(0.7, 1.0) - signal) * enh_mimic
        signal = np.clip(signal, 0.0, None) ** site.gamma[modality]
        volume = np.zeros(shape, dtype=np.float32)
        volume[inside] = signal
        if site.blur > 0.05:
            volume = ndimage.gaussian_filter(volume, (site.blur, site.blur, 0.0))
        signal = volume[inside] * bias * rng.uniform(0.9, 1.1)
        volumes[modality] = scanner_volume(rng, signal, site.noise * rng.uniform(0.85, 1.15), inside, shape)
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[_REGION] = np.where(mask, seg_region, 0)
    tissue_map = np.zeros(SHAPE, dtype=np.uint8)
    tissue_map[_REGION] = np.where(mask, np.argmax(maps[:3], axis=0) + 1, 0)
    info = {"grade": grade, "location": lobe, "site": site_index, "multifocal": int(len(lesions) > 1),
            "enhancement": patterns[0], "radius_mm": round(radius, 2), "phantom_version": VERSION}
    extra = {"truth": _full(truth), "mimic_bright": _full(bright), "mimic_enhance": _full(enhance),
             "tumour_centre": centre + np.array([s.start for s in _REGION])}
    return PhantomCase(volumes=volumes, seg=seg, grade=grade, tissue=tissue_map, info=info, extra=extra)


def _full(region: np.ndarray) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=region.dtype)
    out[_REGION] = region
    return out

"""Tumour-in-context synthesis (`train_gan.synthesis: inpaint`), pure numpy/scipy.

The generator receives a real slice whose tumour region (the tumour and a margin) is blanked, plus the
label map of the tumour to draw there, and fills that region only; every pixel outside the region
stays the real one, and a soft blend (a linear ramp `feather` pixels wide inside the region's border)
hides the seam. The anatomy around the tumour is therefore real, not invented from a brain outline.

Inpainting conditioning, float32 (N, H, W, 5 + C):
    channels 0-2  NCR/NET, edema, enhancing tumour of the label map to draw (0/1), as `encoding.conditioning`
    channel  3    brain mask (0/1), as `encoding.conditioning`
    channel  4    region to fill (0/1)
    channels 5-   the real image in [-1, 1] (tanh scale, as the generator's output), -1 inside the region

Channels 0-3 are the full-synthesis conditioning, so code that reads the brain mask from channel 3
serves both layouts.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mrisynth.core import encoding

BRAIN_CHANNEL = 3
REGION_CHANNEL = 4
CONTEXT_START = 5


def in_channels(image_channels: int) -> int:
    """Generator input channels of the inpainting conditioning for images with `image_channels`."""
    return CONTEXT_START + image_channels


def margin_pixels(fraction: float, size: int) -> int:
    """`train_gan.inpaint_margin` (a fraction of the side) in pixels at this size, at least 1."""
    return max(1, int(round(fraction * size)))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def region(labels: np.ndarray, brain: np.ndarray, margin: int) -> np.ndarray:
    """(H, W) bool: the tumour (labels > 0) grown by a disk of radius `margin` pixels, within the brain."""
    tumour = labels > 0
    if not tumour.any():
        return np.zeros(labels.shape, bool)
    grown = ndimage.binary_dilation(tumour, structure=_disk(margin))
    return grown & ((brain > 0) | tumour)


def blend_weight(region_mask: np.ndarray, feather: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 0 outside the region (so those pixels stay real, bit for bit), rising
    linearly over `feather` pixels inside its border to 1."""
    region_mask = np.asarray(region_mask, bool)
    if not region_mask.any():
        return np.zeros(region_mask.shape, np.float32)
    inside = ndimage.distance_transform_edt(region_mask)  # distance to the nearest pixel outside
    return np.clip(inside / max(feather, 1), 0.0, 1.0).astype(np.float32) * region_mask


def conditioning(labels: np.ndarray, brain: np.ndarray, image: np.ndarray, region_mask: np.ndarray) -> np.ndarray:
    """(..., H, W, 5 + C) inpainting conditioning (module doc) for labels and brain (..., H, W), image
    (..., H, W, C) in [0, 1] and the region to fill (..., H, W)."""
    base = encoding.conditioning(labels, brain)
    hole = np.asarray(region_mask, bool)[..., None]
    context = np.where(hole, -1.0, encoding.to_tanh(np.asarray(image, np.float32)))
    return np.concatenate([base, hole.astype(np.float32), context.astype(np.float32)], axis=-1)


def composite(image: np.ndarray, generated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """image * (1 - w) + generated * w per pixel, w (..., H, W) from `blend_weight`; where w is 0 the
    result is `image` exactly."""
    w = np.asarray(weight, np.float32)[..., None]
    mixed = image * (1.0 - w) + generated * w
    return np.where(w > 0, mixed, image).astype(np.float32)


def harmonise(image: np.ndarray, generated: np.ndarray, region_mask: np.ndarray, labels: np.ndarray, brain: np.ndarray,
              width: int) -> np.ndarray:
    """`augment.harmonise: mean`: `generated` (H, W, C) in [0, 1] shifted per channel so that the mean of its normal
    tissue inside the region (labels == 0) equals the mean of the real `image`'s normal tissue in a ring `width`
    pixels wide just outside the region (inside the brain, labels == 0 there too): the filled region takes the
    host's local intensity level (a scan's contrast and bias field), while the tumour's contrast to its own
    surroundings is the generator's (up to the clip). The shift is applied to the whole region, then clipped to
    [0, 1] and zeroed outside the brain and the tumour (as `rendering.clip_to_brain` keeps tumour pixels). A channel
    keeps its values when either set is empty. Only `region_mask` pixels matter to
    `composite`; outside it the result is the input, bit for bit."""
    region_mask = np.asarray(region_mask, bool)
    generated = np.asarray(generated, np.float32)
    normal = region_mask & (labels == 0)
    ring = ndimage.binary_dilation(region_mask, structure=_disk(max(int(width), 1))) & ~region_mask & (brain > 0) & (labels == 0)
    if not normal.any() or not ring.any():
        return generated
    offset = np.asarray(image, np.float32)[ring].mean(axis=0) - generated[normal].mean(axis=0)        # (C,)
    inside = (np.asarray(brain) > 0) | (labels > 0)
    shifted = np.clip(generated + offset.astype(np.float32), 0.0, 1.0) * inside[..., None]
    return np.where(region_mask[..., None], shifted, generated).astype(np.float32)


def random_blob(brain: np.ndarray, rng: np.random.Generator, low: float = 0.04, high: float = 0.12) -> np.ndarray:
    """(H, W) bool: a random ellipse (semi-axes `low`..`high` of the side, any angle) centred in the
    brain and clipped to it: a region without tumour, so the generator also learns normal tissue."""
    size = brain.shape[0]
    inside = np.argwhere(brain > 0)
    if len(inside) == 0:
        return np.zeros(brain.shape, bool)
    cy, cx = inside[rng.integers(len(inside))]
    ay, ax = rng.uniform(low, high, size=2) * size
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dy * np.cos(theta) + dx * np.sin(theta)
    v = -dy * np.sin(theta) + dx * np.cos(theta)
    return ((u / ay) ** 2 + (v / ax) ** 2 <= 1.0) & (brain > 0)


def training_regions(labels: np.ndarray, brain: np.ndarray, margin: int, blob_probability: float,
                     rng: np.random.Generator) -> np.ndarray:
    """(N, H, W) bool regions for one epoch of inpainting training: each slice's own tumour with a margin,
    plus (with probability `blob_probability`) a random tumour-free ellipse; an empty region is replaced
    by an ellipse, so every slice has something to fill."""
    out = np.zeros(labels.shape, bool)
    for i in range(len(labels)):
        mask = region(labels[i], brain[i], margin)
        if not mask.any() or rng.random() < blob_probability:
            mask = mask | random_blob(brain[i], rng)
        out[i] = mask
    return out


def depths(labels: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(K,) relative depth of each slice's tumour centroid: its distance to the brain's edge divided by
    the deepest point's (0 = at the cortex, 1 = the brain's centre); slices without a tumour are skipped."""
    out = []
    for label, mask in zip(labels, brain):
        tumour = label > 0
        if not tumour.any():
            continue
        inside = ndimage.distance_transform_edt((mask > 0) | tumour)
        cy, cx = (int(round(v)) for v in ndimage.center_of_mass(tumour))
        out.append(inside[cy, cx] / max(inside.max(), 1.0))
    return np.asarray(out, np.float64)


def depth_weights(host_brain: np.ndarray, cells: np.ndarray, prior: np.ndarray, bandwidth: float = 0.1) -> np.ndarray:
    """Sampling probabilities of candidate centres `cells` (K, 2) in a host brain: a Gaussian kernel
    density of the real tumours' relative depths (`depths`) at each candidate's depth, so placed tumours
    sit as deep as real ones do (near the cortex or the ventricles), not uniformly inside."""
    inside = ndimage.distance_transform_edt(host_brain > 0)
    depth = inside[cells[:, 0], cells[:, 1]] / max(inside.max(), 1.0)
    density = np.exp(-0.5 * ((depth[:, None] - prior[None, :]) / bandwidth) ** 2).sum(axis=1) + 1e-12
    return density / density.sum()


def place_away(tumour_labels: np.ndarray, host_brain: np.ndarray, host_labels: np.ndarray, margin: int,
               rng: np.random.Generator, tries: int = 80, prior: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Move a donor tumour (its labels > 0, already transformed) to a random position in the host brain
    where it lies inside the brain and its region (tumour + margin) does not touch the host's own tumour
    region. Centres are drawn uniformly, or (`prior`: real tumours' relative depths) by `depth_weights`.
    Returns (placed labels (H, W), centre) or None when nothing fits after `tries` positions."""
    if not (tumour_labels > 0).any():
        return None
    size = tumour_labels.shape[0]
    ys, xs = np.nonzero(tumour_labels)
    box = tumour_labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    footprint = box > 0
    h, w = box.shape
    keep_out = region(host_labels, host_brain, 2 * margin)
    candidates = np.argwhere((host_brain > 0) & ~keep_out)
    weights = depth_weights(host_brain, candidates, prior) if prior is not None and len(prior) and len(candidates) else None
    for _ in range(tries if len(candidates) else 0):
        cy, cx = candidates[rng.integers(len(candidates)) if weights is None else rng.choice(len(candidates), p=weights)]
        top, left = int(cy) - h // 2, int(cx) - w // 2
        if top < 0 or left < 0 or top + h > size or left + w > size:
            continue
        if not np.all(host_brain[top : top + h, left : left + w][footprint]):
            continue
        if np.any(keep_out[top : top + h, left : left + w][footprint]):
            continue
        out = np.zeros_like(tumour_labels)
        out[top : top + h, left : left + w][footprint] = box[footprint]
        if np.any(region(out, host_brain, margin) & (host_labels > 0)):
            continue
        return out, (int(cy), int(cx))
    return None


def split_inputs(labels: np.ndarray, brain: np.ndarray, images: np.ndarray, margin: int, blob_probability: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(conditioning (N, H, W, 5 + C), blend weight (N, H, W, 1)) re-generating each slice's own tumour
    region (plus random tumour-free regions with `blob_probability`: training only)."""
    regions = training_regions(labels, brain, margin, blob_probability, rng)
    weights = np.stack([blend_weight(r, margin) for r in regions]) if len(regions) else np.zeros(labels.shape, np.float32)
    return conditioning(labels, brain, images, regions), weights[..., None]


def translate(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`array` (H, W, ...) moved by (dy, dx) whole pixels, zeros where nothing moved in."""
    out = np.zeros_like(array)
    h, w = array.shape[:2]
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[dst_y, dst_x] = array[src_y, src_x]
    return out


def paste(host_image: np.ndarray, host_labels: np.ndarray, host_brain: np.ndarray, donor_image: np.ndarray,
          donor_labels: np.ndarray, margin: int, rng: np.random.Generator, prior: np.ndarray | None = None,
          in_place: bool = False):
    """Copy-paste control (no generator): the donor's tumour and its real pixels (tumour + `margin`) moved
    into the host brain by `place_away` (clear of the host's tumour, which is kept) and blended in with the
    same soft ramp as inpainting. `in_place` (CarveMix proper): the donor's region replaces the host's at the
    same position with a hard edge (inside it image and labels are the donor's), so it always fits.
    Returns (image (H, W, C), labels, brain, weight), or None when the donor has no tumour or a moved tumour
    fits nowhere; where weight is 0 the image is the host's, bit for bit."""
    host_labels, host_brain = np.asarray(host_labels), np.asarray(host_brain, bool)
    donor_labels, donor_image = np.asarray(donor_labels), np.asarray(donor_image, np.float32)
    if not (donor_labels > 0).any():
        return None
    if in_place:
        area = region(donor_labels, host_brain | (donor_labels > 0), margin)
        labels = np.where(area, donor_labels, host_labels).astype(np.uint8)
        weight = area.astype(np.float32)
        return composite(np.asarray(host_image, np.float32), donor_image, weight), labels, host_brain | (labels > 0), weight
    placed = place_away(donor_labels, host_brain, host_labels, margin, rng, prior=prior)
    if placed is None:
        return None
    tumour, _ = placed
    (y0, x0), (y1, x1) = np.argwhere(donor_labels > 0).min(axis=0), np.argwhere(tumour > 0).min(axis=0)
    moved = translate(donor_image, int(y1 - y0), int(x1 - x0))
    labels = np.where(tumour > 0, tumour, host_labels).astype(np.uint8)
    brain = host_brain | (labels > 0)
    weight = blend_weight(region(tumour, brain, margin), margin)
    return composite(np.asarray(host_image, np.float32), moved, weight), labels, brain, weight

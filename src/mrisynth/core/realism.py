"""Realism panel: image statistics of generated vs real slices for the same label maps, per modality.

Computed over the pixels the generator drew (`where`: the brain for full synthesis, the re-generated
region for inpainting), on the same label maps and masks for both, so a statistic compares like with like.
Images: (N, H, W, C) in [0, 1]; labels (N, H, W) BraTS labels; where (N, H, W) bool.

Statistics (each per modality; `ratio` = generated / real, 1.0 = the same):
    gradient        mean gradient magnitude (intensity per pixel) inside `where`: sharpness
    high_frequency  share of spectral energy above 1/8 of the sampling frequency, of the image restricted
                    to `where` (mean over images): texture vs blur / checkerboard
    texture_spread  standard deviation of normal-tissue intensities within an image (mean over images)
    site_spread     standard deviation across images of the mean normal-tissue intensity: contrast variety
    tumour_auc      AUC separating tumour pixels from normal tissue by intensity (pooled over images),
                    reported as |AUC - 0.5| + 0.5 so a tumour darker or brighter than the brain both count
"""
from __future__ import annotations

import numpy as np

STATISTICS = ("gradient", "high_frequency", "texture_spread", "site_spread", "tumour_auc")
TOLERANCE = 0.25  # "within 25 % of the real value"


def _gradient(image: np.ndarray, where: np.ndarray) -> float:
    gy, gx = np.gradient(image)
    return float(np.hypot(gy, gx)[where].mean()) if where.any() else float("nan")


def _high_frequency(image: np.ndarray, where: np.ndarray, cutoff: float = 0.125) -> float:
    masked = np.where(where, image - image[where].mean(), 0.0) if where.any() else np.zeros_like(image)
    power = np.abs(np.fft.fft2(masked)) ** 2
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    high = np.hypot(fy, fx) > cutoff
    total = power.sum()
    return float(power[high].sum() / total) if total > 0 else float("nan")


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC: P(a positive value > a negative one), ties counting one half."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2.0
    return float(u / (len(positive) * len(negative)))


def statistics(images: np.ndarray, labels: np.ndarray, where: np.ndarray, channel: int) -> dict[str, float]:
    """The STATISTICS of one modality (`channel`) of a set of images."""
    grads, highs, spreads, means, tumour, normal = [], [], [], [], [], []
    for image, label, mask in zip(images[..., channel], labels, where):
        if not mask.any():
            continue
        grads.append(_gradient(image, mask))
        highs.append(_high_frequency(image, mask))
        tissue = mask & (label == 0)
        if tissue.sum() > 1:
            spreads.append(float(image[tissue].std()))
            means.append(float(image[tissue].mean()))
            normal.append(image[tissue])
        if (mask & (label > 0)).any():
            tumour.append(image[mask & (label > 0)])
    separation = auc(np.concatenate(tumour), np.concatenate(normal)) if tumour and normal else float("nan")
    return {"gradient": float(np.mean(grads)) if grads else float("nan"),
            "high_frequency": float(np.mean(highs)) if highs else float("nan"),
            "texture_spread": float(np.mean(spreads)) if spreads else float("nan"),
            "site_spread": float(np.std(means)) if len(means) > 1 else float("nan"),
            "tumour_auc": abs(separation - 0.5) + 0.5 if np.isfinite(separation) else float("nan")}


def panel(real: np.ndarray, generated: np.ndarray, labels: np.ndarray, where: np.ndarray, modalities: list[str]) -> dict:
    """{modality: {statistic: {real, generated, ratio}}} plus 'worst_deviation' (max |ratio - 1|) and
    'within_tolerance' (every finite ratio within TOLERANCE of 1)."""
    out: dict = {}
    deviations = []
    for c, name in enumerate(modalities):
        r, g = statistics(real, labels, where, c), statistics(generated, labels, where, c)
        out[name] = {}
        for stat in STATISTICS:
            ratio = g[stat] / r[stat] if np.isfinite(r[stat]) and r[stat] != 0 and np.isfinite(g[stat]) else float("nan")
            out[name][stat] = {"real": r[stat], "generated": g[stat], "ratio": ratio}
            if np.isfinite(ratio):
                deviations.append(abs(ratio - 1.0))
    worst = float(max(deviations)) if deviations else float("nan")
    return out | {"worst_deviation": worst, "within_tolerance": bool(deviations) and worst <= TOLERANCE}

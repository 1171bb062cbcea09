"""The non-learned reference: one global intensity threshold on one modality per tumour region.

`fit` picks, on the training split only, the modality and threshold t whose prediction
`(image[..., c] > t) & brain` has the best pooled Dice with the region (WT, TC or ET), among the
in-brain intensity quantiles `QUANTILES` of each modality and the midpoints between them. `apply` scores it per image (BraTS empty
convention: both empty -> 1). It shows how much of the task plain intensity already solves."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrisynth.core.segmetrics import REGIONS, region_dice

QUANTILES = np.linspace(0.50, 0.999, 120)


@dataclass(frozen=True)
class Threshold:
    region: str
    channel: int
    threshold: float
    train_dice: float   # pooled Dice on the split it was fitted on


def _pooled_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, truth).sum() / total)


def fit(images: np.ndarray, classes: np.ndarray, brain: np.ndarray, region: str) -> Threshold:
    """Best (channel, threshold) for `region` on (N, S, S, C) images, (N, S, S) class indices, (N, S, S) brain."""
    truth = np.isin(classes, REGIONS[region])
    best = Threshold(region, 0, float("inf"), -1.0)
    for c in range(images.shape[-1]):
        channel = images[..., c]
        inside = channel[brain]
        if inside.size == 0:
            continue
        levels = np.unique(np.quantile(inside, QUANTILES))
        # candidates: quantiles, midpoints between them, and the maximum (predict nothing)
        for t in np.unique(np.concatenate([levels, (levels[:-1] + levels[1:]) / 2, [inside.max()]])):
            dice = _pooled_dice((channel > t) & brain, truth)
            if dice > best.train_dice:
                best = Threshold(region, c, float(t), dice)
    return best


def apply(rule: Threshold, images: np.ndarray, classes: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per-image Dice (N,) of the rule's region prediction."""
    pred = (images[..., rule.channel] > rule.threshold) & brain
    truth = np.isin(classes, REGIONS[rule.region])
    return np.array([region_dice(t, p) for t, p in zip(truth, pred)])

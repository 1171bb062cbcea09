"""Segmentation metrics (SPEC section 5), pure numpy.

Conventions (also printed under reports/table1.md):
- Classes are 0 background, 1 NCR/NET, 2 edema, 3 enhancing (BraTS labels 0, 1, 2, 4).
- Accuracy, mean IoU and Dice are computed from pixel counts pooled over all images of a split.
- Mean IoU = mean over classes of TP / (TP + FP + FN); a class absent from both truth and
  prediction (TP + FP + FN = 0) is left out of the mean.
- Dice = mean over classes of (2 TP + S) / (|T| + |P| + S) with smoothing S = 1 (an absent class
  scores 1, as the smoothed formula gives). The printed formula sums over classes without averaging;
  we report the mean over classes.
- Both "all classes" (background counted) and "tumour classes" (background left out) are given.
- BraTS regions WT = {1, 2, 3}, TC = {1, 3}, ET = {3} in class indices. Region Dice and HD95 are per
  image, then averaged: both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0, HD95 = the
  image diagonal (the largest possible distance). HD95 is in pixels of the evaluated resolution.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SMOOTH = 1.0
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """(num_classes, num_classes) pixel counts, rows = truth, columns = prediction."""
    index = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    """(TP + TN) / all pixels, i.e. the fraction of correctly classified pixels."""
    return float(np.trace(cm) / max(cm.sum(), 1))


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    denominator = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, tp / denominator, np.nan)


def per_class_dice(cm: np.ndarray, smooth: float = SMOOTH) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    return (2 * tp + smooth) / (cm.sum(1) + cm.sum(0) + smooth)


def mean_iou(cm: np.ndarray, include_background: bool = True) -> float:
    values = per_class_iou(cm)[0 if include_background else 1 :]
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def mean_dice(cm: np.ndarray, include_background: bool = True) -> float:
    return float(np.mean(per_class_dice(cm)[0 if include_background else 1 :]))


def region_dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    t, p = truth.sum(), pred.sum()
    if t + p == 0:
        return 1.0
    return float(2.0 * np.logical_and(truth, pred).sum() / (t + p))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(truth: np.ndarray, pred: np.ndarray) -> float:
    """95th percentile symmetric Hausdorff distance between mask surfaces (pixels)."""
    if not truth.any() and not pred.any():
        return 0.0
    if not truth.any() or not pred.any():
        return float(np.hypot(*truth.shape))
    st, sp = _surface(truth), _surface(pred)
    to_pred = ndimage.distance_transform_edt(~sp)[st]
    to_truth = ndimage.distance_transform_edt(~st)[sp]
    return float(np.percentile(np.concatenate([to_pred, to_truth]), 95))


def region_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean over images of BraTS region Dice and HD95. truth, pred: (N, H, W) class indices."""
    out = {}
    for region, classes in REGIONS.items():
        dices, hds = [], []
        for t, p in zip(truth, pred):
            tm, pm = np.isin(t, classes), np.isin(p, classes)
            dices.append(region_dice(tm, pm))
            hds.append(hd95(tm, pm))
        out[f"dice_{region}"] = float(np.mean(dices)) if dices else float("nan")
        out[f"hd95_{region}"] = float(np.mean(hds)) if hds else float("nan")
    return out


def evaluate(truth: np.ndarray, pred: np.ndarray, num_classes: int = 4) -> dict[str, float]:
    """All split-level metrics for (N, H, W) class-index arrays."""
    cm = confusion(truth, pred, num_classes)
    metrics = {
        "accuracy": accuracy(cm),
        "mean_iou": mean_iou(cm, True),
        "mean_iou_tumour": mean_iou(cm, False),
        "dice": mean_dice(cm, True),
        "dice_tumour": mean_dice(cm, False),
    }
    for c, value in enumerate(per_class_dice(cm)):
        metrics[f"dice_class{c}"] = float(value)
    metrics.update(region_scores(truth, pred))
    return metrics

"""Segmentation metrics (the paper's Table 1 and BraTS conventions), pure numpy.

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
  image, then averaged: both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0, HD95 373.13 mm
  (the BraTS challenges' convention: the diagonal of the 240 x 240 x 155 mm volume). HD95 is in
  millimetres: distances use the pixel spacing (mm) of the evaluated images.
- Per-image tumour Dice (`per_image`) = mean over the three tumour classes of the per-image class
  Dice with the same empty convention (class absent from truth and prediction -> 1, from one -> 0).
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


EMPTY_HD95_MM = 373.13  # BraTS: sqrt(240^2 + 240^2 + 155^2) mm, for a region empty in exactly one mask


def hd95(truth: np.ndarray, pred: np.ndarray, spacing: float | tuple[float, float] = 1.0, empty: float = EMPTY_HD95_MM) -> float:
    """95th percentile symmetric Hausdorff distance between mask surfaces, in the units of `spacing`
    (mm per pixel along each axis). Both masks empty -> 0; exactly one empty -> `empty`."""
    if not truth.any() and not pred.any():
        return 0.0
    if not truth.any() or not pred.any():
        return float(empty)
    sampling = (spacing, spacing) if np.isscalar(spacing) else tuple(spacing)
    st, sp = _surface(truth), _surface(pred)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)[st]
    to_truth = ndimage.distance_transform_edt(~st, sampling=sampling)[sp]
    return float(np.percentile(np.concatenate([to_pred, to_truth]), 95))


def per_image(truth: np.ndarray, pred: np.ndarray, spacing: float | np.ndarray = 1.0, num_classes: int = 4) -> dict[str, np.ndarray]:
    """Per-image scores, each (N,): dice_tumour, dice_WT/TC/ET, hd95_WT/TC/ET (mm).

    truth, pred: (N, H, W) class indices; spacing: mm per pixel, one value or one per image (N,).
    These are the units the paired statistics resample."""
    n = len(truth)
    spacings = np.broadcast_to(np.asarray(spacing, dtype=float), (n,))
    out = {k: np.zeros(n) for k in ("dice_tumour", *(f"dice_{r}" for r in REGIONS), *(f"hd95_{r}" for r in REGIONS))}
    for i, (t, p) in enumerate(zip(truth, pred)):
        out["dice_tumour"][i] = np.mean([region_dice(t == c, p == c) for c in range(1, num_classes)])
        for region, classes in REGIONS.items():
            tm, pm = np.isin(t, classes), np.isin(p, classes)
            out[f"dice_{region}"][i] = region_dice(tm, pm)
            out[f"hd95_{region}"][i] = hd95(tm, pm, float(spacings[i]))
    return out


def region_scores(truth: np.ndarray, pred: np.ndarray, spacing: float = 1.0) -> dict[str, float]:
    """Mean over images of BraTS region Dice and HD95 (mm). truth, pred: (N, H, W) class indices."""
    scores = per_image(truth, pred, spacing)
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in scores.items() if k != "dice_tumour"}


def evaluate(truth: np.ndarray, pred: np.ndarray, num_classes: int = 4, spacing: float = 1.0, regions: bool = True) -> dict[str, float]:
    """All split-level metrics for (N, H, W) class-index arrays (HD95 in the units of `spacing`).

    regions=False leaves out the BraTS region scores (Dice/HD95 per WT/TC/ET), for callers that
    compute them per image anyway (`per_image`), so HD95 is not computed twice."""
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
    if regions:
        metrics.update(region_scores(truth, pred, spacing))
    return metrics

"""The dataset card: the distributions that decide what a segmentation number on this data means.

Pure functions over arrays and the manifest's per-case facts. Conventions:
* images (N, S, S, C) float in [0, 1] (one channel per modality), labels (N, S, S) BraTS {0, 1, 2, 4},
  brain (N, S, S) bool (any channel non-zero);
* areas in pixels and mm^2 (pixel spacing from the manifest);
* contrast of a label vs normal brain = AUC, the probability that a random pixel of the label is
  brighter than a random normal-brain pixel of the same slice set (0.5 = indistinguishable,
  1 = always brighter, 0 = always darker);
* threshold baseline: `core.threshold` (one global threshold on one modality per region, fitted on the
  training split only), mean per-image Dice on each split.
"""
from __future__ import annotations

import numpy as np

from mrisynth.core import encoding, threshold

LABEL_NAMES = {1: "necrotic/non-enhancing core (1)", 2: "edema (2)", 4: "enhancing tumour (4)"}
PERCENTILES = (5, 25, 50, 75, 95)


def presence(labels: np.ndarray) -> dict[str, float]:
    """Share of slices (N, S, S) in which each sub-region label is present, and ET-absent share."""
    n = max(len(labels), 1)
    out = {f"label_{k}_present": float(np.mean([(m == k).any() for m in labels])) if len(labels) else 0.0 for k in (1, 2, 4)}
    out["et_absent"] = 1.0 - out["label_4_present"] if len(labels) else 0.0
    out["slices"] = int(n if len(labels) else 0)
    return out


def area_percentiles(labels: np.ndarray, spacing_mm: np.ndarray) -> dict[str, float]:
    """Whole-tumour area per slice: percentiles in pixels and in mm^2 (pixel area = spacing^2)."""
    pixels = np.array([(m > 0).sum() for m in labels], dtype=float)
    mm2 = pixels * np.asarray(spacing_mm, float) ** 2
    out = {f"wt_area_px_p{p}": float(np.percentile(pixels, p)) for p in PERCENTILES}
    out |= {f"wt_area_mm2_p{p}": float(np.percentile(mm2, p)) for p in PERCENTILES}
    return out


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(X > Y) + 0.5 P(X = Y) for X from `positive`, Y from `negative` (Mann-Whitney U / (n m))."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(1, len(values) + 1)
    # average ranks of ties
    sorted_values = values[order]
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1]):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2.0
    return float(u / (len(positive) * len(negative)))


def contrast(images: np.ndarray, labels: np.ndarray, brain: np.ndarray, modalities: list[str],
             max_pixels: int = 20000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{modality: {label name: AUC vs normal brain}} pooled over slices (subsampled to max_pixels each);
    None where the label never occurs."""
    rng = np.random.default_rng(seed)
    normal = brain & (labels == 0)
    out: dict[str, dict[str, float]] = {}
    for c, modality in enumerate(modalities):
        channel = images[..., c]
        neg = channel[normal]
        neg = neg[rng.choice(len(neg), min(len(neg), max_pixels), replace=False)] if len(neg) else neg
        out[modality] = {}
        for label, name in LABEL_NAMES.items():
            pos = channel[labels == label]
            pos = pos[rng.choice(len(pos), min(len(pos), max_pixels), replace=False)] if len(pos) else pos
            value = auc(pos, neg)
            out[modality][name] = round(value, 4) if np.isfinite(value) else None  # label absent: no contrast (JSON null)
    return out


def threshold_baseline(splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], modalities: list[str]) -> dict[str, dict]:
    """{region: {modality, threshold, <split>: mean per-image Dice}}, fitted on splits['train'] only."""
    images, labels, brain = splits["train"]
    out = {}
    for region in ("WT", "TC", "ET"):
        rule = threshold.fit(images, encoding.labels_to_classes(labels), brain, region)
        row = {"modality": modalities[rule.channel], "threshold": round(rule.threshold, 4)}
        for split, (x, y, b) in splits.items():
            row[split] = round(float(np.mean(threshold.apply(rule, x, encoding.labels_to_classes(y), b))), 4) if len(x) else float("nan")
        out[region] = row
    return out


def counts(values) -> dict[str, int]:
    keys, n = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
    return {str(k): int(c) for k, c in zip(keys, n)}


def markdown(card: dict) -> str:
    """A human-readable card."""
    lines = [f"# Dataset card: {card['source']}", "",
             f"{card['slices']} slices ({', '.join(f'{s} {n}' for s, n in card['split_counts'].items())}); "
             f"slice rule `{card['slice_rule']}`, {card['size']} px, modalities {', '.join(card['modalities'])}.", "",
             "| fact | all | " + " | ".join(card["split_counts"]) + " |", "|---|---|" + "---|" * len(card["split_counts"])]
    for key in ("label_1_present", "label_2_present", "label_4_present", "et_absent"):
        lines.append(f"| slices with {key.replace('_', ' ')} | {card['presence']['all'][key]:.0%} | "
                     + " | ".join(f"{card['presence'][s][key]:.0%}" for s in card["split_counts"]) + " |")
    lines += ["", f"Grades: {card['grades']}  ", f"Locations: {card['locations']}  ", f"Sites: {card['sites']}", "",
              "Whole-tumour area per slice (mm^2): " + ", ".join(f"p{p} {card['area'][f'wt_area_mm2_p{p}']:.0f}" for p in PERCENTILES), "",
              "## Contrast of each label vs normal brain (AUC; 0.5 = indistinguishable)", "",
              "| modality | " + " | ".join(LABEL_NAMES.values()) + " |", "|---|" + "---|" * len(LABEL_NAMES)]
    for modality, row in card["contrast"].items():
        lines.append(f"| {modality} | " + " | ".join("absent" if row[name] is None else f"{row[name]:.3f}" for name in LABEL_NAMES.values()) + " |")
    splits = [s for s in card["split_counts"] if s != "train"]
    lines += ["", "## Non-learned baseline: one global threshold on one modality, fitted on train", "",
              "| region | modality | threshold | train | " + " | ".join(splits) + " |", "|---|---|---|---|" + "---|" * len(splits)]
    for region, row in card["threshold"].items():
        lines.append(f"| {region} | {row['modality']} | {row['threshold']:.3f} | {row['train']:.3f} | "
                     + " | ".join(f"{row[s]:.3f}" for s in splits) + " |")
    lines += ["", "Dice: mean over slices (both empty = 1). A learned model that does not beat this row has learned little beyond intensity."]
    return "\n".join(lines) + "\n"


def flat_metrics(card: dict) -> dict[str, float]:
    """The card's numbers as flat metric names (for MLflow / DVC metrics)."""
    out = {f"data_{k}": v for k, v in card["presence"]["all"].items() if k != "slices"}
    out |= {f"data_{k}": v for k, v in card["area"].items() if "mm2" in k}
    for region, row in card["threshold"].items():
        out |= {f"threshold_{region}_dice_{s}": row[s] for s in card["split_counts"] if s in row}
    out["data_lgg_share"] = card["grades"].get("LGG", 0) / max(card["slices"], 1)
    out["data_locations"] = len([k for k in card["locations"] if k != "unknown"])
    return out

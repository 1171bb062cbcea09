"""Synthetic-sample filter: drop GAN samples that a real-data segmenter cannot segment (`augment.filter_dice`).

A *judge* — a U-Net trained like the `none` arm (the real training slices only, `train_segmenter`'s settings,
its first seed, checkpoint by validation tumour Dice) — segments every candidate GAN sample; its tumour Dice
against the label map the sample was rendered from is the sample's score. `filter_pool` x the wanted number of
candidates are rendered; the kept ones are the first candidates (in rendering order) scoring at least
`filter_dice` (tau); if too few pass, the highest-scoring of the rest fill up (counted as `below_tau_kept`).
A sample whose rendered classes a real-trained segmenter does not find where its label map puts them teaches
a segmenter trained on it the wrong appearance of that class; tau is chosen on validation (a sweep variant),
never on test.

The judge never sees a GAN sample while training and never reads the test split."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mrisynth.core import encoding, segmetrics


def tumour_dice(truth: np.ndarray, pred: np.ndarray, num_classes: int = encoding.NUM_CLASSES) -> np.ndarray:
    """Per-image tumour Dice, (N,): the mean over the tumour classes 1..num_classes-1 of each class's Dice
    (1 for a class absent from both; `segmetrics.per_image`'s dice_tumour without the distances).
    truth, pred: (N, H, W) class indices."""
    return np.array([np.mean([segmetrics.region_dice(t == c, p == c) for c in range(1, num_classes)]) for t, p in zip(truth, pred)])


def select(scores: np.ndarray, keep: int, tau: float) -> tuple[list[int], int]:
    """(indices of the `keep` kept candidates in candidate order, how many of them score below tau).

    The first `keep` candidates with score >= tau; if fewer pass, the highest-scoring of the rest
    (ties: the earlier candidate) fill up."""
    scores = np.asarray(scores, dtype=float)
    if keep > len(scores):
        raise ValueError(f"filter: {keep} samples wanted from {len(scores)} candidates; raise augment.filter_pool")
    passing = [i for i in range(len(scores)) if scores[i] >= tau][:keep]
    short = keep - len(passing)
    rest = sorted((i for i in range(len(scores)) if scores[i] < tau), key=lambda i: (-scores[i], i))[:short]
    return sorted(passing + rest), short


@dataclass
class Judge:
    """The filter's segmenter and settings; `records` collects one summary per filtered draw."""

    model: object
    tau: float
    pool: float
    records: list[dict] = field(default_factory=list)

    def candidates(self, wanted: int) -> int:
        """How many candidates to render for `wanted` kept samples."""
        return math.ceil(self.pool * wanted)

    def score(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-sample tumour Dice of the judge's prediction against the BraTS label maps, (N,)."""
        from mrisynth.training import segmenter

        return tumour_dice(encoding.labels_to_classes(labels), segmenter.predict_classes(self.model, images))

    def record(self, scores: np.ndarray, kept: list[int], below: int, labels: np.ndarray | None = None) -> dict:
        """One draw's summary (appended to `records`). With the candidates' BraTS label maps, also the share of
        candidates and of kept samples that contain each tumour class: a filter that drops small classes more
        often than large ones shows here."""
        kept_scores = np.asarray(scores)[kept]
        row = {"candidates": int(len(scores)), "kept": len(kept), "below_tau_kept": int(below),
               "passing": int((np.asarray(scores) >= self.tau).sum()),
               "candidate_dice_mean": round(float(np.mean(scores)), 4), "kept_dice_mean": round(float(np.mean(kept_scores)), 4),
               "kept_dice_min": round(float(np.min(kept_scores)), 4)}
        if labels is not None:
            for name, value in zip(("ncr", "edema", "enhancing"), encoding.BRATS_LABELS[1:]):
                present = (np.asarray(labels) == value).any(axis=(1, 2))
                row[f"candidates_with_{name}"] = round(float(present.mean()), 4)
                row[f"kept_with_{name}"] = round(float(present[kept].mean()), 4)
        self.records.append(row)
        return row


def train_judge(params, train, val, work_dir) -> object:
    """The judge: a segmenter trained on the real training slices as the `none` arm is (train_segmenter's
    settings and updates per epoch, seed train_segmenter.seeds[0], kept epoch by validation tumour Dice)."""
    from pathlib import Path

    from mrisynth.training import segmenter

    s = params.train_segmenter
    steps = s.steps_per_epoch or (math.ceil(params.augment.factor * len(train) / s.batch_size) if s.equal_steps else None)
    path = Path(work_dir) / "judge.keras"
    segmenter.train(s, s.seeds[0], train.images, encoding.labels_to_classes(train.labels), val.images,
                    encoding.labels_to_classes(val.labels), path, steps_per_epoch=steps)
    return segmenter.load(path)

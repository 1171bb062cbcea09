"""Label and conditioning encodings shared by the GAN, the segmenter and the served model.

Conditioning input of the generator (docs/mlflow.md documents it for serving):
    float32 (N, H, W, 4); channel 0 = NCR/NET (BraTS label 1), 1 = edema (label 2),
    2 = enhancing tumour (label 4), 3 = brain mask; every value 0 or 1.
Generator output: float32 (N, H, W, C) in [-1, 1] (tanh); `from_tanh` maps it to [0, 1] images.
Segmenter classes: BraTS labels 0, 1, 2, 4 -> class indices 0, 1, 2, 3.
"""
from __future__ import annotations

import numpy as np

from mrisynth import BRATS_LABELS

TUMOUR_LABELS = (1, 2, 4)
CONDITION_CHANNELS = len(TUMOUR_LABELS) + 1
NUM_CLASSES = len(BRATS_LABELS)
_LABEL_TO_CLASS = np.zeros(256, dtype=np.uint8)
for _index, _label in enumerate(BRATS_LABELS):
    _LABEL_TO_CLASS[_label] = _index


def check_labels(labels: np.ndarray, where: str = "mask") -> None:
    """Raise ValueError naming `where` when labels fall outside {0, 1, 2, 4}."""
    extra = sorted(set(np.unique(labels).tolist()) - set(BRATS_LABELS))
    if extra:
        raise ValueError(f"{where}: labels {extra} found, expected a subset of {{0, 1, 2, 4}}")


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """BraTS labels (0, 1, 2, 4) -> class indices (0..3), uint8, same shape."""
    check_labels(labels)
    return _LABEL_TO_CLASS[labels.astype(np.uint8)]


def classes_to_labels(classes: np.ndarray) -> np.ndarray:
    """Class indices (0..3) -> BraTS labels (0, 1, 2, 4), uint8."""
    return np.asarray(BRATS_LABELS, dtype=np.uint8)[classes.astype(np.int64)]


def conditioning(labels: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(..., H, W) BraTS labels + (..., H, W) brain mask -> (..., H, W, 4) float32 conditioning."""
    check_labels(labels)
    channels = [labels == value for value in TUMOUR_LABELS] + [(brain > 0) | (labels > 0)]
    return np.stack(channels, axis=-1).astype(np.float32)


def conditioning_to_labels(cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `conditioning`: (labels uint8, brain bool). Later channels win where they overlap."""
    labels = np.zeros(cond.shape[:-1], dtype=np.uint8)
    for channel, value in enumerate(TUMOUR_LABELS):
        labels[cond[..., channel] > 0.5] = value
    return labels, cond[..., -1] > 0.5


def to_tanh(images: np.ndarray) -> np.ndarray:
    """[0, 1] images -> [-1, 1]."""
    return images * 2.0 - 1.0


def from_tanh(images: np.ndarray) -> np.ndarray:
    """[-1, 1] generator output -> [0, 1] images (clipped)."""
    return np.clip((images + 1.0) / 2.0, 0.0, 1.0)

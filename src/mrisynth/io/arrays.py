"""Training-ready split arrays (`work/preprocessed/<split>.npz`) written by `preprocess`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrisynth.errors import DataError


@dataclass
class SplitArrays:
    """One split. images (N, S, S, C) float32 in [0, 1]; labels (N, S, S) uint8 BraTS labels;
    brain (N, S, S) bool; conditioning (N, S, S, 4) float32; case_ids (N,) str;
    spacing (N,) float32: in-plane mm per pixel at this resolution (importer's spacing x resize factor)."""

    images: np.ndarray
    labels: np.ndarray
    brain: np.ndarray
    conditioning: np.ndarray
    case_ids: np.ndarray
    spacing: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.spacing is None:
            self.spacing = np.ones(len(self.images), np.float32)

    def __len__(self) -> int:
        return len(self.images)


def save_split(path: Path, split: SplitArrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, images=split.images, labels=split.labels, brain=split.brain,
        conditioning=split.conditioning, case_ids=split.case_ids.astype(str), spacing=np.asarray(split.spacing, np.float32),
    )


def load_split(directory: Path, split: str) -> SplitArrays:
    path = Path(directory) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path}: expected preprocessed arrays for split '{split}', found no file; run `dvc repro preprocess`")
    with np.load(path) as data:
        if "spacing" not in data:
            raise DataError(f"{path}: no pixel spacing recorded (written by an older version); run `dvc repro -f preprocess`")
        return SplitArrays(**{k: data[k] for k in ("images", "labels", "brain", "conditioning", "case_ids", "spacing")})

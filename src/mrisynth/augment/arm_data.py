"""Augmentation arms of the verdict design: names, the data each arm trains on, the questions asked.

Arms: none = the real training slices; classic = real + classic samples; gan = real + GAN samples;
classic+gan = the augmented set (`in_mix`: the paper's 30 -> 300). Every arm is validated on the
same real, patient-disjoint validation split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mrisynth.config import ARMS  # noqa: F401  (one definition; re-exported for callers of this module)
from mrisynth.core import encoding
from mrisynth.errors import DataError
from mrisynth.io import arrays, tiff


# (baseline arm, augmented arm, question) — each comparison answers one question of the verdict.
COMPARISONS = (
    ("none", "classic", "Classic augmentation vs none"),
    ("none", "gan", "GAN augmentation vs none"),
    ("none", "classic+gan", "Classic+GAN vs none"),
    ("classic", "classic+gan", "GAN beyond classic"),
)


def arm_slug(arm: str) -> str:
    """A name usable in file paths and MLflow keys: 'classic+gan' -> 'classic_gan'."""
    return arm.replace("+", "_")


def comparisons_for(arms) -> list[tuple[str, str, str]]:
    """The comparisons whose two arms are both among `arms`."""
    return [c for c in COMPARISONS if c[0] in arms and c[1] in arms]


GAN_ARMS = ("gan", "classic+gan")  # the arms whose data depend on a generator (one set per generator draw)


def uses_generator(arm: str) -> bool:
    return arm in GAN_ARMS


def _manifest(augmented_dir: Path, draw: int = 0):
    import pandas as pd

    path = Path(augmented_dir) / ("manifest.csv" if draw == 0 else f"manifest-draw-{draw + 1}.csv")
    if not path.is_file():
        raise DataError(f"{path}: the augmented arms need the augmented set, found no manifest; run `dvc repro augment`")
    return path, pd.read_csv(path)


def _read(augmented_dir: Path, rows) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([tiff.read_image(Path(augmented_dir) / r) for r in rows["image"]]).astype(np.float32)
    labels = np.stack([tiff.read_mask(Path(augmented_dir) / r) for r in rows["mask"]])
    return images, labels


def _select(arm: str, manifest):
    """The manifest rows of an augmented arm (a boolean Series)."""
    return {"classic+gan": manifest["in_mix"], "classic": manifest["kind"].isin(["real", "classic"]),
            "gan": manifest["kind"].isin(["real", "gan"])}[arm]


def arm_data(arm: str, train: arrays.SplitArrays, augmented_dir: Path, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S, C) float32, classes (N, S, S) uint8) for one arm (of generator draw `draw`, 0-based)."""
    if arm == "none":
        return train.images, encoding.labels_to_classes(train.labels)
    if arm not in ARMS:
        raise DataError(f"arm {arm!r}: expected one of {list(ARMS)}")
    path, manifest = _manifest(augmented_dir, draw if uses_generator(arm) else 0)
    rows = manifest[_select(arm, manifest)]
    expected = len(train)  # every arm holds at least the real training slices
    if len(rows) < expected:
        raise DataError(f"{path}: arm {arm!r} selects {len(rows)} images, expected at least {expected}; rerun `dvc repro augment`")
    images, labels = _read(augmented_dir, rows)
    if images.shape[1:3] != train.images.shape[1:3]:
        raise DataError(f"{path}: augmented images are {images.shape[1:3]}, expected {train.images.shape[1:3]}; rerun `dvc repro augment`")
    return images, encoding.labels_to_classes(labels)


def arm_real(arm: str, train: arrays.SplitArrays, augmented_dir: Path, draw: int = 0) -> np.ndarray:
    """(N,) bool, aligned with `arm_data`'s images: True where the image is a real training slice."""
    if arm == "none":
        return np.ones(len(train), bool)
    _, manifest = _manifest(augmented_dir, draw if uses_generator(arm) else 0)
    return (manifest.loc[_select(arm, manifest), "kind"] == "real").to_numpy()


def synthetic_only(augmented_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The GAN samples alone (images, classes): the training set of the GAN-train score."""
    path, manifest = _manifest(augmented_dir)
    rows = manifest[manifest["kind"] == "gan"]
    if rows.empty:
        raise DataError(f"{path}: no GAN samples (kind == 'gan'); GAN-train needs augment.synthetic_fraction > 0 or the 'gan' arm")
    images, labels = _read(augmented_dir, rows)
    return images, encoding.labels_to_classes(labels)

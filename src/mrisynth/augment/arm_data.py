"""The training set of each augmentation arm (the arms themselves: `mrisynth.core.arms`), read from
the augmented manifest of the `augment` stage (one manifest per generator draw)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mrisynth import paths
from mrisynth.core import arms, encoding
from mrisynth.errors import DataError
from mrisynth.io import arrays, tiff
from mrisynth.io.manifest import inside


def _manifest(augmented_dir: Path, draw: int = 0):
    import pandas as pd

    path = paths.augmented_manifest(augmented_dir, draw)
    if not path.is_file():
        raise DataError(f"{path}: the augmented arms need the augmented set, found no manifest; run `dvc repro augment`")
    return path, pd.read_csv(path)


def _read(augmented_dir: Path, rows) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([tiff.read_image(inside(Path(augmented_dir), r)) for r in rows["image"]]).astype(np.float32)
    labels = np.stack([tiff.read_mask(inside(Path(augmented_dir), r)) for r in rows["mask"]])
    return images, labels


def arm_data(arm: str, train: arrays.SplitArrays, augmented_dir: Path, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S, C) float32, classes (N, S, S) uint8) for one arm (of generator draw `draw`, 0-based)."""
    if arm in arms.TABLE and arms.TABLE[arm].real_only:
        return train.images, encoding.labels_to_classes(train.labels)
    try:
        spec = arms.get(arm)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    path, manifest = _manifest(augmented_dir, draw if spec.uses_generator else 0)
    rows = manifest[spec.rows(manifest)]
    expected = len(train)  # every arm holds at least the real training slices
    if len(rows) < expected:
        raise DataError(f"{path}: arm {arm!r} selects {len(rows)} images, expected at least {expected}; rerun `dvc repro augment`")
    images, labels = _read(augmented_dir, rows)
    if images.shape[1:3] != train.images.shape[1:3]:
        raise DataError(f"{path}: augmented images are {images.shape[1:3]}, expected {train.images.shape[1:3]}; rerun `dvc repro augment`")
    return images, encoding.labels_to_classes(labels)


def arm_real(arm: str, train: arrays.SplitArrays, augmented_dir: Path, draw: int = 0) -> np.ndarray:
    """(N,) bool, aligned with `arm_data`'s images: True where the image is a real training slice."""
    if arms.get(arm).real_only:
        return np.ones(len(train), bool)
    spec = arms.get(arm)
    _, manifest = _manifest(augmented_dir, draw if spec.uses_generator else 0)
    return (manifest.loc[spec.rows(manifest), "kind"] == "real").to_numpy()


def synthetic_only(augmented_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The GAN samples alone (images, classes): the training set of the GAN-train score."""
    path, manifest = _manifest(augmented_dir)
    rows = manifest[manifest["kind"] == "gan"]
    if rows.empty:
        raise DataError(f"{path}: no GAN samples (kind == 'gan'); GAN-train needs augment.synthetic_fraction > 0 or the 'gan' arm")
    images, labels = _read(augmented_dir, rows)
    return images, encoding.labels_to_classes(labels)

"""Segmenter training: base U-Net, cross-entropy + soft Dice, best checkpoint by validation Dice.

No MLflow here; the stage passes `on_epoch` to log. Classes: BraTS 0, 1, 2, 4 -> 0..3."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from mrisynth.core import models, segmetrics
from mrisynth.core.encoding import NUM_CLASSES


def ce_dice_loss(num_classes: int = NUM_CLASSES, dice_weight: float = 1.0, smooth: float = 1.0):
    """Sparse categorical cross-entropy + dice_weight * (1 - mean soft Dice over classes) of a batch."""

    def loss(y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, y_pred))
        onehot = ops.one_hot(labels, num_classes)
        axes = (0, 1, 2)
        intersection = ops.sum(onehot * y_pred, axis=axes)
        dice = (2.0 * intersection + smooth) / (ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes) + smooth)
        return ce + dice_weight * (1.0 - ops.mean(dice))

    return loss


@dataclass(frozen=True)
class SegSettings:
    epochs: int = 20
    batch_size: int = 8
    depth: int = 4
    base_filters: int = 16
    dropout: float = 0.1
    learning_rate: float = 1e-3
    dice_weight: float = 1.0
    precision: str = "float32"

    @classmethod
    def from_params(cls, params, epochs: int | None = None) -> "SegSettings":
        """From the `train_segmenter` params section (TrainSegmenterParams)."""
        names = ("batch_size", "depth", "base_filters", "dropout", "learning_rate", "dice_weight", "precision")
        return cls(epochs=epochs or params.epochs, **{n: getattr(params, n) for n in names})


def predict_classes(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, S, S) class indices."""
    if len(images) == 0:
        return np.zeros(images.shape[:3], np.uint8)
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return np.argmax(probabilities, axis=-1).astype(np.uint8)


class _BestByValDice(keras.callbacks.Callback):
    def __init__(self, val_images, val_classes, path: Path, on_epoch):
        super().__init__()
        self.val_images, self.val_classes, self.path, self.on_epoch = val_images, val_classes, path, on_epoch
        self.best, self.best_epoch, self.history = -math.inf, -1, []

    def on_epoch_end(self, epoch, logs=None):
        pred = predict_classes(self.model, self.val_images)
        metrics = segmetrics.evaluate(self.val_classes, pred)
        row = {"loss": float((logs or {}).get("loss", float("nan"))), "val_dice": metrics["dice"],
               "val_dice_tumour": metrics["dice_tumour"], "val_mean_iou": metrics["mean_iou"], "val_accuracy": metrics["accuracy"]}
        if not math.isfinite(row["loss"]):
            self.model.stop_training = True
        improved = row["val_dice_tumour"] > self.best
        if improved:
            self.best, self.best_epoch = row["val_dice_tumour"], epoch
            self.model.save(self.path)
        self.history.append(row)
        if self.on_epoch:
            self.on_epoch(epoch + 1, row, improved)


def train(
    settings: SegSettings,
    seed: int,
    images: np.ndarray,
    classes: np.ndarray,
    val_images: np.ndarray,
    val_classes: np.ndarray,
    out_path: Path,
    on_epoch: Callable[[int, dict, bool], None] | None = None,
    steps_per_epoch: int | None = None,
) -> dict:
    """Train one segmenter; the best model by validation tumour Dice is saved to out_path (.keras).

    steps_per_epoch: gradient updates per epoch (default: one pass over the images). Setting it to
    the same value for every arm gives each arm the same number of updates, so an arm with more
    images is not also an arm with more training."""
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(settings.precision)
    keras.utils.set_random_seed(seed)
    model = models.build_segmenter(images.shape[1], images.shape[-1], NUM_CLASSES, settings.depth, settings.base_filters, settings.dropout)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=ce_dice_loss(NUM_CLASSES, settings.dice_weight))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    best = _BestByValDice(val_images, val_classes, out_path, on_epoch)
    steps = steps_per_epoch or math.ceil(len(images) / settings.batch_size)
    data = (
        tf.data.Dataset.from_tensor_slices((images.astype(np.float32), classes.astype(np.int32)))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(settings.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    model.fit(data, steps_per_epoch=steps, epochs=settings.epochs, verbose=0, callbacks=[best])
    if best.best_epoch < 0:
        raise RuntimeError(f"segmenter training produced no checkpoint at {out_path}")
    return {"best_epoch": best.best_epoch + 1, "best_val_dice_tumour": best.best, "history": best.history, "steps_per_epoch": steps}


def load(path: Path) -> keras.Model:
    return keras.models.load_model(path, compile=False)

"""Segmenter training: base U-Net, cross-entropy + soft Dice, best checkpoint by validation Dice,
early stopping with patience.

No MLflow here; the stage passes `on_epoch` to log. Classes: BraTS 0, 1, 2, 4 -> 0..3.
Hyper-parameters come from the `train_segmenter` params section (`config.TrainSegmenterParams`);
callers that need other values pass `dataclasses.replace(params, ...)`."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from mrisynth.config import TrainSegmenterParams
from mrisynth.core import models, segmetrics
from mrisynth.core.encoding import NUM_CLASSES
from mrisynth.io import devices

# On-the-fly jitter (train_segmenter.jitter: true), the same for every arm: left-right flip (p 0.5),
# a shift of up to JITTER_SHIFT of the side (zero fill), a per-channel intensity scale in 1 +- JITTER_SCALE.
JITTER_SHIFT = 0.08
JITTER_SCALE = 0.1


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


def predict_classes(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, S, S) class indices for (N, S, S, C) images (inference mode)."""
    if len(images) == 0:
        return np.zeros(images.shape[:3], np.uint8)
    out = [np.argmax(np.asarray(model(images[i : i + batch_size], training=False)), axis=-1) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.uint8)


class _BestByValDice(keras.callbacks.Callback):
    """select "best": keeps the checkpoint with the best validation tumour Dice; stops after `patience`
    epochs in which that Dice never rose more than `min_delta` above the level of the last such
    improvement. select "last": keeps every epoch's weights in turn (the final ones remain), never
    stops early. Either way it stops on a non-finite loss, keeping the checkpoint of the epoch before
    (none after a first epoch that diverged: `train` raises), and records every epoch's validation
    scores and end time (`times_ms`, for the tracking server's per-epoch timestamps); `diverged` tells."""

    def __init__(self, val_images, val_classes, path: Path, on_epoch, patience: int, min_delta: float = 0.0, min_epochs: int = 1,
                 select: str = "best"):
        super().__init__()
        self.val_images, self.val_classes, self.path, self.on_epoch = val_images, val_classes, path, on_epoch
        self.patience, self.min_delta, self.min_epochs, self.select = patience, min_delta, min_epochs, select
        self.best, self.best_epoch, self.history, self.times_ms = -math.inf, -1, [], []
        self.level, self.level_epoch = -math.inf, -1   # early-stopping reference
        self.stopped_early = self.diverged = False

    def on_epoch_end(self, epoch, logs=None):
        pred = predict_classes(self.model, self.val_images)
        cm = segmetrics.confusion(self.val_classes, pred)
        row = {"loss": float((logs or {}).get("loss", float("nan"))), "val_dice": segmetrics.mean_dice(cm, True),
               "val_dice_tumour": segmetrics.mean_dice(cm, False), "val_mean_iou": segmetrics.mean_iou(cm, True)}
        finite = math.isfinite(row["loss"])
        if not finite:  # diverged: stop, and keep the checkpoint saved before (this epoch's weights are not a model)
            self.model.stop_training = self.diverged = True
        improved = finite and (self.select == "last" or row["val_dice_tumour"] > self.best)
        if improved:
            self.best, self.best_epoch = row["val_dice_tumour"], epoch
            self.model.save(self.path)
        if self.select == "best" and finite:
            if row["val_dice_tumour"] > self.level + self.min_delta:
                self.level, self.level_epoch = row["val_dice_tumour"], epoch
            elif epoch + 1 >= self.min_epochs and epoch - self.level_epoch >= self.patience:
                self.model.stop_training = True
                self.stopped_early = True
        self.history.append(row)
        self.times_ms.append(int(time.time() * 1000))
        if self.on_epoch:
            self.on_epoch(epoch + 1, row, improved)


def jitter_fn(size: int):
    """A tf.data map function (image (S, S, C), classes (S, S)) -> jittered pair (see JITTER_*).

    Its random ops draw from TensorFlow's global seed, which `train` sets per run (seeded, repeatable)."""
    import tensorflow as tf

    max_shift = int(round(JITTER_SHIFT * size))

    def apply(image, classes):
        flip = tf.random.uniform(()) < 0.5
        image = tf.where(flip, tf.reverse(image, [1]), image)
        classes = tf.where(flip, tf.reverse(classes, [1]), classes)
        if max_shift > 0:
            dy, dx = tf.unstack(tf.random.uniform((2,), -max_shift, max_shift + 1, dtype=tf.int32))
            pad = [[max_shift, max_shift], [max_shift, max_shift]]
            image = tf.pad(image, pad + [[0, 0]])[max_shift + dy : max_shift + dy + size, max_shift + dx : max_shift + dx + size]
            classes = tf.pad(classes, pad)[max_shift + dy : max_shift + dy + size, max_shift + dx : max_shift + dx + size]
        scale = tf.random.uniform((1, 1, tf.shape(image)[-1]), 1.0 - JITTER_SCALE, 1.0 + JITTER_SCALE)
        image = tf.clip_by_value(image * scale, 0.0, 1.0)
        return tf.ensure_shape(image, (size, size, None)), tf.ensure_shape(classes, (size, size))

    return apply


def mixed_stream(images: np.ndarray, classes: np.ndarray, real: np.ndarray | None, real_share: float | None, seed: int):
    """An endless, seeded tf.data stream of (image, classes) pairs: shuffled over all images, or (real_share
    set and both real and other images present) drawn from the real ones with probability real_share."""
    import tensorflow as tf

    def stream(rows, shuffle_seed):
        data = tf.data.Dataset.from_tensor_slices((images[rows].astype(np.float32), classes[rows].astype(np.int32)))
        return data.shuffle(int(len(data)), seed=shuffle_seed, reshuffle_each_iteration=True).repeat()

    if real_share is None or real is None or real.all() or not real.any():
        data = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), classes.astype(np.int32)))
        return data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    real = np.asarray(real, bool)
    return tf.data.Dataset.sample_from_datasets([stream(real, seed), stream(~real, seed + 1)],
                                                weights=[real_share, 1.0 - real_share], seed=seed)


_COMPILED: dict[tuple, keras.Model] = {}


def learning_rate(params: TrainSegmenterParams, total_steps: int):
    """Adam's learning rate: params.learning_rate, constant or (schedule "cosine") decaying to 0 over total_steps updates."""
    if params.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=max(1, total_steps))
    return params.learning_rate


def reset_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Return `optimizer` to its state before the first update: moments and step counters 0, a
    LossScaleOptimizer's (mixed_float16) dynamic loss scale back to its initial scale (zeroing it would
    make every later gradient 0/0 and skip every update); learning rates kept."""
    for variable in optimizer.variables:
        name = variable.path.rsplit("/", 1)[-1]
        if name == "learning_rate":
            continue
        value = getattr(optimizer, "initial_scale", 0.0) if name == "dynamic_scale" else 0.0
        variable.assign(np.full(variable.shape, value, variable.dtype))


def _fresh_model(params: TrainSegmenterParams, seed: int, size: int, channels: int, total_steps: int = 0) -> keras.Model:
    """A compiled U-Net with the initial weights of `seed` (total_steps: the updates of the run, for the schedule).

    Tracing the train step costs several seconds; the verdict trains 13 U-Nets of one architecture,
    so a compiled model is kept per architecture and reset for each run: every variable (weights,
    BatchNorm statistics, the dropout seed state) from a newly built model with this seed, the
    optimizer as before its first update (`reset_optimizer`). The result equals a newly built and compiled model
    (tests/training/test_segmenter.py)."""
    keras.utils.set_random_seed(seed)
    fresh = models.build_segmenter(size, channels, NUM_CLASSES, params.depth, params.base_filters, params.dropout)
    key = (size, channels, params.depth, params.base_filters, params.dropout, params.learning_rate, params.dice_weight, params.precision,
           params.schedule, total_steps if params.schedule != "constant" else 0)
    model = _COMPILED.get(key)
    if model is None:
        fresh.compile(optimizer=keras.optimizers.Adam(learning_rate(params, total_steps)), loss=ce_dice_loss(NUM_CLASSES, params.dice_weight))
        _COMPILED.clear()  # one architecture at a time
        _COMPILED[key] = fresh
        return fresh
    for target, source in zip(model.variables, fresh.variables, strict=True):
        target.assign(source)
    reset_optimizer(model.optimizer)
    keras.utils.set_random_seed(seed)  # the same random stream as a newly built model would see
    return model


def train(
    params: TrainSegmenterParams,
    seed: int,
    images: np.ndarray,
    classes: np.ndarray,
    val_images: np.ndarray,
    val_classes: np.ndarray,
    out_path: Path,
    on_epoch: Callable[[int, dict, bool], None] | None = None,
    steps_per_epoch: int | None = None,
    real: np.ndarray | None = None,
) -> dict:
    """Train one segmenter for at most `params.epochs` epochs and save the kept model to out_path (.keras).
    params.select "best": stop (not before `params.min_epochs`) after `params.patience` epochs without a
    validation tumour Dice gain above `params.min_delta` and keep the epoch with the highest validation
    tumour Dice; "last": run every epoch and keep the final weights (validation only recorded); a
    non-finite loss stops either, keeping the epoch before. The
    learning rate follows params.schedule over params.epochs x steps updates. The result's `best_*`
    keys describe the kept epoch; `history` has one row of scores per epoch, `epoch_times_ms` its end time;
    `diverged`: a non-finite loss stopped the run (a first epoch that diverged raises: no model to keep).

    steps_per_epoch: gradient updates per epoch (default: one pass over the images). Setting it to
    the same value for every arm gives each arm the same number of updates, so an arm with more
    images is not also an arm with more training.

    real: (N,) bool, True for the real slices among `images`. With `params.real_share` set and both kinds
    present, each batch element is drawn from the real slices with probability real_share, else from
    the others (seeded), so real slices are not drowned by synthetic ones; otherwise every image alike."""
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(devices.resolve_precision(params.precision))
    tf.config.experimental.enable_op_determinism()
    steps = steps_per_epoch or math.ceil(len(images) / params.batch_size)
    model = _fresh_model(params, seed, images.shape[1], images.shape[-1], params.epochs * steps)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    best = _BestByValDice(val_images, val_classes, out_path, on_epoch, params.patience, params.min_delta, params.min_epochs, params.select)
    data = mixed_stream(images, classes, real, params.real_share, seed)
    if params.jitter:
        data = data.map(jitter_fn(images.shape[1]), num_parallel_calls=1, deterministic=True)
    data = data.batch(params.batch_size).prefetch(tf.data.AUTOTUNE)
    model.fit(data, steps_per_epoch=steps, epochs=params.epochs, verbose=0, callbacks=[best], shuffle=False)  # the stream is shuffled
    if best.best_epoch < 0:
        raise RuntimeError(f"segmenter training (seed {seed}) diverged in its first epoch (loss {best.history[0]['loss'] if best.history else 'none'}), "
                           f"so there is no model to keep at {out_path}; lower train_segmenter.learning_rate or set train_segmenter.precision: float32")
    return {"best_epoch": best.best_epoch + 1, "best_val_dice_tumour": best.best, "history": best.history, "epoch_times_ms": best.times_ms,
            "steps_per_epoch": steps, "epochs_run": len(best.history), "stopped_early": best.stopped_early, "diverged": best.diverged}


def load(path: Path) -> keras.Model:
    return keras.models.load_model(path, compile=False)

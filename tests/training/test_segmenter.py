"""Segmenter training: a reused compiled model equals a newly built one; early stopping; jitter keeps pairs aligned."""
import dataclasses

import numpy as np
import pytest

from mrisynth.training import segmenter
from mrisynth.config import TrainSegmenterParams

P = TrainSegmenterParams(epochs=2, patience=5, batch_size=2, depth=2, base_filters=4, precision="float32", learning_rate=1e-3)


def _data(seed=0, n=6, size=32):
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, 2)).astype(np.float32)
    classes = np.zeros((n, size, size), np.uint8)
    classes[:, 8:16, 8:16] = 1
    classes[:, 10:14, 10:14] = 3
    images[..., 0] += classes / 3
    return images, classes


def _weights(path):
    return [np.asarray(w) for w in segmenter.load(path).get_weights()]


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_reused_compiled_model_trains_like_a_new_one(tmp_path, precision):
    """mixed_float16 (the GPU default) wraps Adam in a LossScaleOptimizer: a reset must restore its loss
    scale, not zero it (a zero scale skips every update of every later run)."""
    import keras

    params = dataclasses.replace(P, precision=precision)
    images, classes = _data()
    segmenter._COMPILED.clear()
    before = keras.mixed_precision.global_policy().name
    try:
        first = segmenter.train(params, 5, images, classes, images[:2], classes[:2], tmp_path / "a.keras", steps_per_epoch=3)
        segmenter.train(params, 9, images, classes, images[:2], classes[:2], tmp_path / "other.keras", steps_per_epoch=3)  # another seed between
        again = segmenter.train(params, 5, images, classes, images[:2], classes[:2], tmp_path / "b.keras", steps_per_epoch=3)  # reused model
        segmenter._COMPILED.clear()
        fresh = segmenter.train(params, 5, images, classes, images[:2], classes[:2], tmp_path / "c.keras", steps_per_epoch=3)  # newly built
    finally:
        segmenter._COMPILED.clear()
        keras.mixed_precision.set_global_policy(before)
    assert first["history"] == again["history"] == fresh["history"]
    for a, b, c in zip(_weights(tmp_path / "a.keras"), _weights(tmp_path / "b.keras"), _weights(tmp_path / "c.keras")):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_reset_optimizer_restores_the_initial_loss_scale():
    import keras

    inner = keras.optimizers.Adam(1e-3)
    optimizer = keras.optimizers.LossScaleOptimizer(inner, initial_scale=256.0)
    weight = keras.Variable(np.ones(3, np.float32))
    optimizer.apply([np.full(3, np.inf, np.float32)], [weight])  # an overflow halves the scale
    optimizer.apply([np.ones(3, np.float32)], [weight])
    assert float(optimizer.dynamic_scale.numpy()) == 128.0 and int(inner.iterations.numpy()) == 1
    segmenter.reset_optimizer(optimizer)
    assert float(optimizer.dynamic_scale.numpy()) == 256.0
    assert int(inner.iterations.numpy()) == 0 and int(optimizer.step_counter.numpy()) == 0
    assert all(not np.asarray(v).any() for v in inner.variables if v.path.rsplit("/", 1)[-1] not in ("learning_rate",))
    assert float(inner.learning_rate.numpy()) == pytest.approx(1e-3)


@pytest.mark.parametrize("select", ["best", "last"])
def test_a_diverged_epoch_stops_training_and_keeps_the_epoch_before(tmp_path, monkeypatch, select):
    """A non-finite loss at epoch 3 stops the run; the kept model is epoch 2's, whatever the selection rule."""
    images, classes = _data()
    losses = iter([1.0, 0.9, float("nan"), 0.5, 0.4])
    scores = iter([0.3, 0.4, 0.9, 0.95, 0.99])  # the NaN epoch's score would look best
    monkeypatch.setattr(segmenter.segmetrics, "mean_dice", lambda cm, include_background=True: next(scores) if not include_background else 0.0)
    callback = segmenter._BestByValDice

    class FakeLoss(callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.save(tmp_path / "epoch2.keras")
            super().on_epoch_end(epoch, {"loss": next(losses)})

    monkeypatch.setattr(segmenter, "_BestByValDice", FakeLoss)
    params = dataclasses.replace(P, epochs=5, patience=5, min_epochs=1, select=select)
    result = segmenter.train(params, 1, images, classes, images[:2], classes[:2], tmp_path / "m.keras", steps_per_epoch=1)
    assert result["epochs_run"] == 3 and result["best_epoch"] == 2 and result["best_val_dice_tumour"] == 0.4 and result["diverged"]
    assert len(result["epoch_times_ms"]) == 3 and result["epoch_times_ms"] == sorted(result["epoch_times_ms"])
    for a, b in zip(_weights(tmp_path / "m.keras"), _weights(tmp_path / "epoch2.keras")):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path, monkeypatch):
    images, classes = _data()
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.9, 0.9])
    monkeypatch.setattr(segmenter.segmetrics, "mean_dice", lambda cm, include_background=True: next(scores) if not include_background else 0.0)
    params = dataclasses.replace(P, epochs=7, patience=3, min_epochs=1, min_delta=0.0)
    result = segmenter.train(params, 1, images, classes, images[:2], classes[:2], tmp_path / "m.keras", steps_per_epoch=1)
    assert result["best_epoch"] == 2 and result["epochs_run"] == 5 and result["stopped_early"]
    # min_delta: gains of at most 0.05 do not reset patience (the checkpoint still follows the best score)
    scores2 = iter([0.5, 0.52, 0.53, 0.54, 0.9, 0.9])
    monkeypatch.setattr(segmenter.segmetrics, "mean_dice", lambda cm, include_background=True: next(scores2) if not include_background else 0.0)
    params = dataclasses.replace(P, epochs=6, patience=3, min_epochs=1, min_delta=0.05)
    result = segmenter.train(params, 1, images, classes, images[:2], classes[:2], tmp_path / "n.keras", steps_per_epoch=1)
    assert result["best_epoch"] == 4 and result["epochs_run"] == 4 and result["stopped_early"]
    # min_epochs: no stop before it, whatever the scores
    scores3 = iter([0.5, 0.4, 0.4, 0.4, 0.4, 0.4])
    monkeypatch.setattr(segmenter.segmetrics, "mean_dice", lambda cm, include_background=True: next(scores3) if not include_background else 0.0)
    params = dataclasses.replace(P, epochs=6, patience=1, min_epochs=5, min_delta=0.0)
    result = segmenter.train(params, 1, images, classes, images[:2], classes[:2], tmp_path / "o.keras", steps_per_epoch=1)
    assert result["epochs_run"] == 5 and result["best_epoch"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jitter_moves_image_and_mask_together(seed):
    import tensorflow as tf

    tf.random.set_seed(seed)
    size = 32
    image = np.zeros((size, size, 2), np.float32)
    classes = np.zeros((size, size), np.int32)
    image[5:12, 20:26, :] = 0.8
    classes[5:12, 20:26] = 2
    out_image, out_classes = segmenter.jitter_fn(size)(tf.constant(image), tf.constant(classes))
    out_image, out_classes = out_image.numpy(), out_classes.numpy()
    assert out_classes.sum() > 0 and set(np.unique(out_classes)) <= {0, 2}
    np.testing.assert_array_equal(out_image[..., 0] > 0.5, out_classes == 2)  # still aligned after flip/shift/scale


def test_select_last_keeps_the_final_epoch_and_never_stops_early(tmp_path, monkeypatch):
    """select "last": the scores that would stop "best" after 3 epochs run all 6; the kept epoch is the 6th."""
    images, classes = _data()
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(segmenter.segmetrics, "mean_dice", lambda cm, include_background=True: next(scores) if not include_background else 0.0)
    params = dataclasses.replace(P, epochs=6, patience=2, min_epochs=1, select="last")
    result = segmenter.train(params, 1, images, classes, images[:2], classes[:2], tmp_path / "m.keras", steps_per_epoch=1)
    assert result["epochs_run"] == 6 and result["best_epoch"] == 6 and not result["stopped_early"]
    assert result["best_val_dice_tumour"] == 0.1  # the kept (last) epoch's score, not the best one


@pytest.mark.parametrize(("step", "expected"), [(0, 2e-3), (5, 1e-3), (10, 0.0)])
def test_cosine_schedule_decays_to_zero_over_the_run(step, expected):
    schedule = segmenter.learning_rate(dataclasses.replace(P, schedule="cosine", learning_rate=2e-3), total_steps=10)
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-9)
    assert segmenter.learning_rate(P, 10) == P.learning_rate  # constant: the plain rate


def test_a_reused_model_restarts_its_cosine_schedule(tmp_path):
    """The schedule follows the optimizer's step count, which a reused compiled model resets: the same seed
    trains the same weights before and after another run."""
    images, classes = _data()
    params = dataclasses.replace(P, schedule="cosine", select="last")
    segmenter._COMPILED.clear()
    first = segmenter.train(params, 5, images, classes, images[:2], classes[:2], tmp_path / "a.keras", steps_per_epoch=3)
    segmenter.train(params, 9, images, classes, images[:2], classes[:2], tmp_path / "other.keras", steps_per_epoch=3)
    again = segmenter.train(params, 5, images, classes, images[:2], classes[:2], tmp_path / "b.keras", steps_per_epoch=3)
    assert first["history"] == again["history"]
    for a, b in zip(_weights(tmp_path / "a.keras"), _weights(tmp_path / "b.keras")):
        np.testing.assert_array_equal(a, b)


def test_a_first_epoch_that_diverges_is_an_error_that_says_so(tmp_path, monkeypatch):
    images, classes = _data()

    class Diverged(segmenter._BestByValDice):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, {"loss": float("nan")})

    monkeypatch.setattr(segmenter, "_BestByValDice", Diverged)
    with pytest.raises(RuntimeError, match=r"diverged in its first epoch \(loss nan\).*learning_rate"):
        segmenter.train(dataclasses.replace(P, epochs=3), 1, images, classes, images[:2], classes[:2], tmp_path / "m.keras", steps_per_epoch=1)
    assert not (tmp_path / "m.keras").exists()

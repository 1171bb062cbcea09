"""Segmenter runs in worker processes: results come back in the order given, and a run's result does not
depend on which worker trains it or what it trained before."""
import dataclasses
import os

import numpy as np
import pytest

from mrisynth.config import TrainSegmenterParams
from mrisynth.io import arrays, workers
from mrisynth.training import parallel, segmenter

P = TrainSegmenterParams(epochs=2, patience=5, batch_size=2, depth=2, base_filters=4, precision="float32", learning_rate=1e-3)


def _split(seed, n, size=32):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.uint8)
    labels[:, 8:16, 8:16] = 2
    labels[:, 10:14, 10:14] = 4
    images = rng.random((n, size, size, 2)).astype(np.float32) * 0.5
    images[..., 0] += (labels > 0) * 0.5
    brain = np.ones((n, size, size), bool)
    return arrays.SplitArrays(images, labels, brain, np.zeros((n, size, size, 4), np.float32),
                              np.array([f"case{seed}_{i}" for i in range(n)]), np.ones(n, np.float32))


def test_worker_count_follows_cores_runs_and_gpus():
    assert parallel.worker_count(3, 10) == 3
    assert parallel.worker_count(4, 2) == 2  # never more workers than runs
    assert parallel.worker_count(0, 100) == workers.usable_cores()
    assert parallel.worker_count(0, 1) == 1
    assert parallel.worker_count(0, 100, gpus=1) == 1  # each TensorFlow process would claim the GPU's memory
    assert parallel.worker_count(2, 100, gpus=1) == 2  # asked for: memory growth lets them share


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None), (None, None)])
def test_usable_cores_honours_a_cgroup_cpu_quota(tmp_path, cpu_max, expected):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert workers.usable_cores(str(path)) == (min(affinity, expected) if expected else affinity)


def test_pooled_runs_come_back_in_order_and_equal_whatever_worker_trains_them(tmp_path):
    pre = tmp_path / "pre"
    arrays.save_split(pre / "train.npz", _split(0, 6))
    arrays.save_split(pre / "val.npz", _split(1, 2))
    # 2 workers, 3 runs: the first two start side by side, the third (seed 5 again) goes to whichever is free,
    # after that worker trained another run (the reused compiled model is reset per run)
    runs = [parallel.Run("none", 0, seed, str(tmp_path / f"{i}" / "best.keras")) for i, seed in enumerate([5, 9, 5])]
    results = list(parallel.train_all(P, str(pre), str(tmp_path / "augmented"), runs, 3, workers=2))
    assert [run for run, _ in results] == runs
    histories = [result["history"] for _, result in results]
    assert histories[0] == histories[2] and histories[0] != histories[1]
    weights = [[np.asarray(w) for w in segmenter.load(run.path).get_weights()] for run in runs]
    for a, b in zip(weights[0], weights[2]):
        np.testing.assert_array_equal(a, b)
    assert all(result["seconds"] > 0 and result["epochs_run"] == P.epochs for _, result in results)


def test_a_failing_run_fails_the_whole_call(tmp_path):
    """A run that cannot train (no preprocessed arrays) raises in the caller, not silently skipped; the workers are stopped."""
    from mrisynth.errors import DataError

    runs = [parallel.Run("none", 0, 1, str(tmp_path / "a.keras")), parallel.Run("none", 0, 2, str(tmp_path / "b.keras"))]
    with pytest.raises(DataError, match="expected preprocessed arrays"):
        list(parallel.train_all(dataclasses.replace(P), str(tmp_path / "missing"), str(tmp_path), runs, 1, workers=2))

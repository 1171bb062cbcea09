"""Segmenter runs side by side: one process per worker, each with its share of the CPU's cores.

The verdict trains one small U-Net per arm, seed and generator draw (21 in the default profile). On a
2-core machine one run with two threads keeps both cores only partly busy: every operation is split in
two and waits for its slower half, and a core the host takes away for a moment stalls the whole step
(steps then run at one core's speed). Two runs with one thread each do not wait for each other
(docs/benchmarks.md: ~1.4x the images per second when the host is quiet, ~2x when it is not).

A run's result depends only on its inputs (seeded, op determinism, a fixed thread count per worker),
not on which worker runs it or in which order. No MLflow here: the stage logs each run's history,
card and model after it returns (`train_segmenter`)."""
from __future__ import annotations

import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mrisynth.io.workers import end_with_parent, usable_cores


@dataclass(frozen=True)
class Run:
    """One segmenter run: an arm's training set (generator draw `draw`, 0-based) and a seed, saved to `path`."""

    arm: str
    draw: int
    seed: int
    path: str


def worker_count(requested: int, runs: int, gpus: int = 0) -> int:
    """`requested` workers (0: one per usable core, or 1 on a machine with GPUs, where each TensorFlow process
    would claim the GPUs' memory), never more than there are runs."""
    default = 1 if gpus else usable_cores()
    return max(1, min(requested or default, runs))


def start_worker(threads: int, parent_pid: int) -> None:
    """A worker's start: TensorFlow gets `threads` threads for one operation and runs one at a time, takes GPU
    memory as it needs it (workers share a GPU); the worker ends itself when the stage's process is gone."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    end_with_parent(parent_pid)  # a stage killed outright leaves no run training on behind it


_DATA: dict[tuple, tuple] = {}


def _arm_arrays(preprocessed: str, augmented: str, arm: str, draw: int):
    """(images, classes, real, val images, val classes) of an arm's training set, loaded once per worker."""
    from mrisynth.augment.arm_data import arm_data, arm_real
    from mrisynth.core import encoding
    from mrisynth.io import arrays

    key = (preprocessed, augmented, arm, draw)
    if key not in _DATA:
        _DATA.clear()  # one training set at a time (runs are submitted arm by arm)
        train, val = (arrays.load_split(Path(preprocessed), s) for s in ("train", "val"))
        images, classes = arm_data(arm, train, Path(augmented), draw)
        _DATA[key] = (images, classes, arm_real(arm, train, Path(augmented), draw), val.images, encoding.labels_to_classes(val.labels))
    return _DATA[key]


def train_run(params, preprocessed: str, augmented: str, run: Run, steps: int | None) -> dict:
    """Train one run (`segmenter.train`) and return its result with `seconds`, the process's `pid` and its
    `peak_rss_kib` so far; prints one line per epoch."""
    from mrisynth.training import segmenter

    images, classes, real, val_images, val_classes = _arm_arrays(preprocessed, augmented, run.arm, run.draw)
    name = f"{run.arm} seed {run.seed}" + (f" generator {run.draw + 1}" if run.draw else "")  # the stage's names, draw 1 unmarked

    def on_epoch(epoch, row, improved):
        print(f"[{name}] epoch {epoch}/{params.epochs}: loss {row['loss']:.4f} "
              f"val_dice_tumour {row['val_dice_tumour']:.4f}{' *kept*' if improved else ''}", flush=True)

    started = time.perf_counter()
    result = segmenter.train(params, run.seed, images, classes, val_images, val_classes, Path(run.path), on_epoch, steps, real)
    return result | {"seconds": round(time.perf_counter() - started, 1), "pid": os.getpid(),
                     "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def train_all(params, preprocessed: str, augmented: str, runs: list[Run], steps: int | None, workers: int) -> Iterator[tuple[Run, dict]]:
    """(run, result) for every run, in the order given, each as soon as it and the runs before it are done.

    workers 1: in this process, TensorFlow's threads as they are. More: a pool of spawned processes (never
    fork a process that may hold TensorFlow), each with cores // workers threads."""
    if workers <= 1:
        for run in runs:
            yield run, train_run(params, preprocessed, augmented, run, steps)
        return
    import multiprocessing

    threads = max(1, usable_cores() // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                               initargs=(threads, os.getpid()))
    try:
        futures = [pool.submit(train_run, params, preprocessed, augmented, run, steps) for run in runs]
        for run, future in zip(runs, futures):
            yield run, future.result()
    except BaseException:  # a failed run, Ctrl-C, SIGTERM or a failure of the caller: stop every worker now
        processes = list((pool._processes or {}).values())  # noqa: SLF001 - the executor offers no other handle
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        raise
    pool.shutdown(wait=True)


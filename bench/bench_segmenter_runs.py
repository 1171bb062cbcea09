"""The segmenter stage's runs side by side in worker processes vs one at a time in this process (not a test).

ours:      `train_segmenter`'s path — `training.parallel.train_all` with `--workers` worker processes
           (default: one per usable core), each with cores // workers TensorFlow threads; the pool's
           start-up (spawned processes importing TensorFlow) is inside every timed round;
reference: the same runs one after the other in this process with TensorFlow's default threads (the
           stage before workers existed).
Runs: `--runs` U-Nets of the `train_segmenter` defaults (128 px, batch 4, mixed precision as `auto`
resolves) on 30 random training and 20 validation images, `--epochs` epochs of 25 updates, no early stop.
Prints and writes trained images/s (median of --repeats interleaved rounds, order alternating) and the
ratio with its min-max to work/bench/segmenter_runs.json. Usage: python bench/bench_segmenter_runs.py [--repeats 3]"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from mrisynth.config import TrainSegmenterParams
from mrisynth.io import arrays
from mrisynth.training import parallel

import common


def _split(rng, n: int, size: int) -> arrays.SplitArrays:
    labels = rng.choice(np.array([0, 1, 2, 4], np.uint8), (n, size, size), p=[0.85, 0.05, 0.05, 0.05])
    return arrays.SplitArrays(rng.random((n, size, size, 4), dtype=np.float32), labels, np.ones((n, size, size), bool),
                              np.zeros((n, size, size, 4), np.float32), np.array([f"c{i}" for i in range(n)]), np.ones(n, np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="0: one per usable core")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="work/bench/segmenter_runs.json")
    args = parser.parse_args()
    p = dataclasses.replace(TrainSegmenterParams(), epochs=args.epochs, min_epochs=args.epochs)
    workers = parallel.worker_count(args.workers, args.runs)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed"
        arrays.save_split(pre / "train.npz", _split(rng, 30, args.size))
        arrays.save_split(pre / "val.npz", _split(rng, 20, args.size))
        runs = [parallel.Run("none", 0, seed, str(Path(tmp) / f"seed{seed}.keras")) for seed in range(1, args.runs + 1)]

        def train(n_workers: int, n_runs: int = args.runs) -> None:
            for _ in parallel.train_all(p, str(pre), str(Path(tmp) / "augmented"), runs[:n_runs], p.steps_per_epoch, n_workers):
                pass

        images = args.runs * args.epochs * p.steps_per_epoch * p.batch_size
        figure = common.interleaved(lambda: train(workers), lambda: train(1), args.repeats, images,
                                    ours_warmup=lambda: train(workers, 1), reference_warmup=lambda: train(1, 1))
    result = {"size": args.size, "batch": p.batch_size, "runs": args.runs, "epochs": args.epochs, "steps_per_epoch": p.steps_per_epoch,
              "workers": workers, "threads_per_worker": max(1, parallel.usable_cores() // workers), "repeats": args.repeats,
              "images_per_round": images, "ours_images_per_s": round(figure["ours_per_s"], 2),
              "reference_images_per_s": round(figure["reference_per_s"], 2), **common.ratio_keys("ratio", figure)}
    common.write(args.out, result)
    print(f"segmenter stage, {args.runs} runs of {args.epochs} x {p.steps_per_epoch} updates at {args.size}px: {workers} workers "
          f"{figure['ours_per_s']:.1f} img/s vs one at a time {figure['reference_per_s']:.1f} img/s = {common.spread(figure)}")


if __name__ == "__main__":
    main()

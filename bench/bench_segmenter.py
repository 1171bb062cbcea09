"""Segmenter train-step throughput, side by side in one process (not a test).

ours:      mrisynth's path — `train_segmenter` params (mixed_bfloat16, batch, U-Net size), tf.data input
           (shuffle/repeat/prefetch), the same compiled model for every run;
reference: the same U-Net trained with a plain `model.fit(x, y, batch_size=...)` on in-memory float32
           arrays, float32 precision, at the same batch size.
Prints and writes images/s (median of --repeats rounds, ours and the reference timed in each round, order
alternating, after a warm-up) and the ratio with its min-max over the rounds to work/bench/segmenter.json (make bench collects it into reports/bench.json). Usage: python bench/bench_segmenter.py [--size 128] [--steps 50] [--repeats 5]"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mrisynth.config import TrainSegmenterParams
from mrisynth.core import models
from mrisynth.io import devices
from mrisynth.training.segmenter import ce_dice_loss

import common


def _model(p: TrainSegmenterParams, size: int, precision: str):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = models.build_segmenter(size, 4, 4, p.depth, p.base_filters, p.dropout)
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss=ce_dice_loss(4, p.dice_weight))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="work/bench/segmenter.json")
    parser.add_argument("--profile", choices=["default", "paper"], default="default",
                        help="paper: the Makefile's paper overrides (16 base filters, batch 8, lr 1e-3; use --size 256)")
    args = parser.parse_args()
    p = TrainSegmenterParams()
    if args.profile == "paper":
        p = dataclasses.replace(p, base_filters=16, batch_size=8, learning_rate=1e-3)
    rng = np.random.default_rng(0)
    x = rng.random((300, args.size, args.size, 4), dtype=np.float32)
    y = rng.integers(0, 4, (300, args.size, args.size)).astype(np.int32)

    precision = devices.resolve_precision(p.precision)
    ours = _model(p, args.size, precision)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(300, seed=0).repeat().batch(p.batch_size).prefetch(tf.data.AUTOTUNE)
    reference = _model(p, args.size, "float32")
    n_images = args.steps * p.batch_size

    def fit_ours(n):
        ours.fit(data, steps_per_epoch=n, epochs=1, verbose=0)

    def fit_reference(n):
        count = n * p.batch_size
        reference.fit(x[:count], y[:count], batch_size=p.batch_size, epochs=1, verbose=0, shuffle=True)

    # interleaved: each round times both, so the ratio of a round compares like with like
    figure = common.interleaved(lambda: fit_ours(args.steps), lambda: fit_reference(args.steps), args.repeats, n_images,
                                ours_warmup=lambda: fit_ours(5), reference_warmup=lambda: fit_reference(5))
    ours_rate, reference_rate = figure["ours_per_s"], figure["reference_per_s"]
    result = {
        "machine": common.machine(),
        "profile": args.profile, "size": args.size, "batch": p.batch_size, "base_filters": p.base_filters, "depth": p.depth,
        "steps": args.steps, "repeats": args.repeats, "images_per_run": n_images,
        "ours_precision": precision, "ours_images_per_s": round(ours_rate, 2),
        "reference_precision": "float32", "reference_images_per_s": round(reference_rate, 2),
        **common.ratio_keys("ratio", figure),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"segmenter train step at {args.size}px, batch {p.batch_size} ({args.repeats} interleaved rounds of {args.steps} steps): "
          f"ours {ours_rate:.1f} img/s ({precision}, tf.data) vs plain model.fit {reference_rate:.1f} img/s (float32) = {common.spread(figure)}")


if __name__ == "__main__":
    main()

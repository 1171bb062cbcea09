"""Train-step throughput of the paper's G+D at 256x256 (not a test).

Compares, in one process, the project's step (params: mixed_bfloat16, batch from --batch, tf.data
pipeline) with a reference step written the way the TensorFlow pix2pix tutorial writes it (same
networks, tf.function + GradientTape, float32, batch 1, tensors fed directly, no input pipeline).
Prints images/s (median of --repeats rounds of --steps steps after warm-up; ours and the reference timed
in every round, order alternating) and the ratio with its min-max over the rounds.
Usage: python bench/bench_gan.py [--size 256] [--batch 4] [--steps 4] [--repeats 5]"""
from __future__ import annotations

import argparse

import keras
import numpy as np
import tensorflow as tf

from mrisynth.core import models
from mrisynth.training.gan import GanTrainer, paper_settings
from mrisynth.io import devices
from mrisynth.io.arrays import SplitArrays

import common


def reference_step_fn(generator, discriminator, g_opt, d_opt, alpha=100.0):
    """The pix2pix tutorial's train_step, with the paper's sigmoid discriminator and BCE."""
    bce = keras.losses.BinaryCrossentropy(from_logits=False)

    @tf.function
    def train_step(input_image, target):
        with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
            gen_output = generator(input_image, training=True)
            disc_real_output = discriminator([input_image, target], training=True)
            disc_generated_output = discriminator([input_image, gen_output], training=True)
            gan_loss = bce(tf.ones_like(disc_generated_output), disc_generated_output)
            l1_loss = tf.reduce_mean(tf.abs(target - gen_output))
            gen_total_loss = gan_loss + alpha * l1_loss
            disc_loss = bce(tf.ones_like(disc_real_output), disc_real_output) + bce(tf.zeros_like(disc_generated_output), disc_generated_output)
        g_opt.apply_gradients(zip(gen_tape.gradient(gen_total_loss, generator.trainable_variables), generator.trainable_variables))
        d_opt.apply_gradients(zip(disc_tape.gradient(disc_loss, discriminator.trainable_variables), discriminator.trainable_variables))
        return gen_total_loss

    return train_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", help="auto: as params.yaml (mrisynth.io.devices)")
    parser.add_argument("--json", help="write the figures here (make bench)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    cond = (rng.random((n, args.size, args.size, 4)) > 0.5).astype(np.float32)
    images = rng.random((n, args.size, args.size, 4)).astype(np.float32)

    keras.mixed_precision.set_global_policy("float32")
    g, d = models.build_generator(args.size, 4, 4), models.build_discriminator(args.size, 4, 4)
    ref_step = reference_step_fn(g, d, keras.optimizers.Adam(1e-4, beta_1=0.5), keras.optimizers.Adam(1e-4, beta_1=0.5))
    ref_inputs = [(tf.constant(cond[i : i + 1]), tf.constant(images[i : i + 1] * 2 - 1)) for i in range(args.steps)]

    def run_reference(limit):
        for x, y in ref_inputs[:limit]:
            ref_step(x, y)

    split = SplitArrays(images, np.zeros(images.shape[:3], np.uint8), images.any(-1), cond, np.arange(n).astype(str))
    figures = {}
    for batch in sorted({1, args.batch}):
        trainer = GanTrainer(paper_settings(batch_size=batch, precision=args.precision), args.size, 4, 4)

        def run_ours(limit, trainer=trainer):
            for i, (x, y) in enumerate(trainer.dataset(split, epoch=0)):
                if i >= (limit or args.steps):
                    break
                trainer._train_step(x, y)

        # interleaved with the reference in every round (order alternating): the ratio of a round compares like with like
        figures[batch] = common.interleaved(lambda run_ours=run_ours: run_ours(None), lambda: run_reference(None), args.repeats,
                                            args.steps * batch, args.steps, ours_warmup=lambda run_ours=run_ours: run_ours(1),
                                            reference_warmup=lambda: run_reference(1))
        f = figures[batch]
        print(f"mrisynth ({args.precision}, batch {batch}, tf.data): {f['ours_per_s']:.3f} images/s vs tutorial step (fp32, batch 1) "
              f"{f['reference_per_s']:.3f} images/s = {common.spread(f)}")
    print(f"ratio at the configured batch {args.batch}: {common.spread(figures[args.batch])}  (target >= 1.5x)")
    precision = devices.resolve_precision(args.precision)
    common.write(args.json, {
        "what": "GAN train step, paper G+D (width 1.0)", "size": args.size, "steps": args.steps, "repeats": args.repeats,
        "reference": "TensorFlow pix2pix tutorial step, float32, tensors fed directly",
        "reference_batch": 1, "reference_images_per_s": figures[args.batch]["reference_per_s"],
        "ours_precision": precision, **{f"ours_batch{b}_images_per_s": f["ours_per_s"] for b, f in figures.items()},
        **{k: v for b, f in figures.items() for k, v in common.ratio_keys(f"ratio_batch{b}", f).items()}})


if __name__ == "__main__":
    main()

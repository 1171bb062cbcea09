"""Helper process for test_distribute.py: trains the tiny GAN under a tf.distribute strategy in a fresh
TensorFlow process (splitting the CPU into logical devices needs one) and writes what the test compares.

    python tests/training/gan_distributed.py --strategy mirrored --out result.json --out-dir gan/ [--epochs 3] ...

Multi-worker: set TF_CONFIG per process. Writes (chief only) result.json: the history and the
generator weights file; a non-chief writes nothing."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest

SIZE, TRAIN, VAL, BATCH = 32, 6, 2, 4  # 6 images at batch 4: a full batch and a 2-row tail, split over 2 replicas


def settings(epochs: int, alpha: float = 100.0):
    from mrisynth.training.gan import paper_settings

    # dropout 0: replicas draw their own dropout masks, so only a dropout-free run can match one device step by step
    return paper_settings(alpha=alpha, epochs=epochs, batch_size=BATCH, width=0.25, precision="float32", seed=3, checkpoint_every=1, dropout=0.0)


def data():
    from conftest import _tiny_split

    return _tiny_split(TRAIN, SIZE, 0), _tiny_split(VAL, SIZE, 10)


def probe(dist) -> dict:
    """Checks of single steps: (1) float16 loss scaling with an overflow: rows 2-3 are scaled up and the
    discriminator's loss scale set to 2^18 - one device skips the step and halves the scale, and so must every
    replica; (1b) when only one replica's gradients overflow, _agree_finite makes every replica skip (each
    LossScaleOptimizer decides on its own replica's gradients); (2) dropout: the same rows on every replica
    must get different masks, as different rows do on one device."""
    import numpy as np
    import tensorflow as tf

    from mrisynth.training.gan import GanTrainer, paper_settings

    train, _ = data()
    trainer = GanTrainer(paper_settings(batch_size=BATCH, width=0.25, precision="mixed_float16", seed=1, dropout=0.3), SIZE, 4, 4, dist)
    cond, real = (np.array(t) for t in next(iter(trainer.dataset(train, None))))
    cond[2:] *= 20.0
    real[2:] *= 20.0
    trainer.d_opt.dynamic_scale.assign(2.0 ** 18)
    before = float(trainer.d_opt.dynamic_scale.numpy())
    trainer._train_step(*trainer._split(cond, real)) if dist.distributed else trainer._train_step(cond, real)
    out = {"scale_before": before, "scale_after": float(trainer.d_opt.dynamic_scale.numpy()),
           "finite": bool(all(np.isfinite(w).all() for w in trainer.discriminator.get_weights() + trainer.generator.get_weights()))}
    if dist.distributed:
        from mrisynth.training.sync import agree_finite as _agree_finite

        def one_replica_overflows():  # replica 1's gradient is inf, replica 0's finite
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return _agree_finite([tf.where(tf.equal(replica, 1), float("inf"), 1.0) * tf.ones(3), None])[0]

        agreed = dist.strategy.experimental_local_results(dist.strategy.run(tf.function(one_replica_overflows)))
        out["all_replicas_skip"] = [bool(np.isnan(np.asarray(g)).all()) for g in agreed]
        same = np.repeat(cond[:1], BATCH, axis=0)
        run = tf.function(lambda c: dist.strategy.run(lambda x: trainer.generator(x, training=True), args=(c,)))
        outputs = dist.strategy.experimental_local_results(run(trainer._split(same, same)[0]))
        out["dropout_difference"] = float(np.abs(np.asarray(outputs[0], np.float32) - np.asarray(outputs[1], np.float32)).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--out", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=100.0)
    parser.add_argument("--interrupt-after", type=int, default=0, help="the chief stops (KeyboardInterrupt) after this epoch")
    parser.add_argument("--peer-timeout", type=float, default=30.0)
    parser.add_argument("--cluster-wait", type=float, default=120.0)
    parser.add_argument("--probe", action="store_true", help="write probe() instead of training")
    args = parser.parse_args()

    from mrisynth.io import distribute

    dist = distribute.make(args.strategy, cpu_replicas=2, cluster_wait_s=args.cluster_wait, peer_timeout_s=args.peer_timeout)
    if args.probe:
        Path(args.out).write_text(json.dumps(probe(dist)))
        return
    import numpy as np

    from mrisynth.training.gan import GanTrainer

    train, val = data()
    trainer = GanTrainer(settings(args.epochs, args.alpha), SIZE, 4, 4, dist)

    def on_epoch(result, trainer_, state):
        print(f"epoch {result.epoch} done", flush=True)
        if result.epoch == args.interrupt_after:
            raise KeyboardInterrupt

    state = trainer.fit(train, val, Path(args.out_dir), on_epoch=on_epoch)
    if trainer.is_chief:
        weights = Path(args.out).with_suffix(".npz")
        np.savez(weights, *[np.asarray(w) for w in trainer.generator.get_weights()])
        Path(args.out).write_text(json.dumps({"history": state.history, "weights": str(weights), "replicas": dist.replicas,
                                              "workers": dist.workers, "task": dist.task}))


if __name__ == "__main__":
    main()

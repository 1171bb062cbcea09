"""tf.distribute helpers of the GAN trainer: per-replica batches, one agreed start state across
workers, agreed gradient overflow, one-line errors for a lost worker (mrisynth.io.distribute makes
the strategies). Nothing here runs on the default one-device path."""
from __future__ import annotations

import hashlib
import json
from typing import Callable

import numpy as np
import tensorflow as tf

from mrisynth.errors import ConfigError
from mrisynth.io import distribute
from mrisynth.training.checkpoints import TrainingError


def split_batch(dist: distribute.Distribution, cond, real) -> tuple:
    """A global batch as per-replica values: contiguous row blocks, one per replica (np.array_split),
    with each block's share of the rows. Every worker builds the same global batch and keeps the
    blocks of its own replicas."""
    n = int(cond.shape[0])
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n), dist.replicas)])
    strategy = dist.strategy

    def block(values):
        def value_fn(ctx):
            i = ctx.replica_id_in_sync_group
            return values[int(bounds[i]):int(bounds[i + 1])]
        return strategy.experimental_distribute_values_from_function(value_fn)

    weights = np.diff(bounds).astype(np.float32) / n
    weight = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(weights[ctx.replica_id_in_sync_group]))
    return block(cond), block(real), weight


def check_batches(dist: distribute.Distribution, batch: int, count: int) -> None:
    """Under tf.distribute every global batch, the last one included, needs a row for each replica."""
    replicas = dist.replicas
    tail = count % batch
    if dist.distributed and (batch < replicas or 0 < tail < replicas):
        raise ConfigError(
            f"train_gan.batch_size={batch} over {count} training images leaves a batch of {tail or batch} rows for "
            f"{replicas} replicas ({dist.kind}); choose a global batch_size >= {replicas} whose last batch "
            f"(count % batch_size) is 0 or >= {replicas}")


def _from_replica_zero(values: list) -> list:
    """In a replica context: every replica gets replica 0's values (a masked sum-all-reduce, one per dtype:
    all-reduce packs its tensors)."""
    ctx = tf.distribute.get_replica_context()
    first = tf.equal(ctx.replica_id_in_sync_group, 0)
    masked = [tf.where(first, v, tf.zeros_like(v)) for v in values]
    out = list(masked)
    for dtype in {value.dtype for value in masked}:
        where = [i for i, value in enumerate(masked) if value.dtype == dtype]
        for i, value in zip(where, ctx.all_reduce(tf.distribute.ReduceOp.SUM, [masked[i] for i in where])):
            out[i] = value
    return out


def sync_from_chief(dist: distribute.Distribution, variables: list, epoch: int, fingerprint: dict) -> int:
    """Multi-worker: check that every worker trains with the same settings and data (a ConfigError
    on every worker otherwise), then copy `variables` (weights, optimizer and RNG state) and the
    start epoch from the chief's first replica to all replicas, so a chief that resumed from its
    checkpoint and fresh workers continue from the same state. Returns the chief's epoch."""
    strategy = dist.strategy
    mine = int(hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:15], 16)

    def differing(value):
        chief = _from_replica_zero([value])[0]
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.not_equal(value, chief), tf.int64))

    count = int(strategy.experimental_local_results(strategy.run(tf.function(differing), args=(tf.constant(mine, tf.int64),)))[0])
    if count:
        raise ConfigError(f"{dist.task}: {count} of {dist.replicas} replicas train with other parameters, data or "
                          "precision than the chief (train_gan params, work/preprocessed, the tuned alpha); give every worker "
                          "the same params.yaml and data (e.g. `dvc pull`) and rerun all of them")

    def replica_fn(epoch_value):
        return _from_replica_zero([v.value for v in variables] + [epoch_value])

    reduced = strategy.run(tf.function(replica_fn), args=(tf.constant(epoch, tf.int64),))
    local = [strategy.experimental_local_results(value)[0] for value in reduced]
    for variable, value in zip(variables, local[:-1]):
        variable.assign(value)
    return int(local[-1])


def cluster_call(dist: distribute.Distribution, epoch: int, call: Callable):
    """Run a step that talks to other workers; a worker that is down becomes a one-line TrainingError."""
    try:
        return call()
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.AbortedError) as exc:
        if dist.kind != "multi_worker":
            raise
        first = cause_line(exc.message or str(exc))
        raise TrainingError(
            f"{dist.task}: the {dist.workers}-worker cluster lost a worker during epoch {epoch + 1} "
            f"({type(exc).__name__}: {first}); training stopped. The resume state written so far is kept; "
            "restart every worker and rerun to resume") from None


def agree_finite(grads: list) -> list:
    """In a replica context: the gradients, or all NaN on every replica when any replica's are not finite."""
    ctx = tf.distribute.get_replica_context()
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]))
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
    return [None if g is None else g * tf.cast(tf.where(bad > 0, float("nan"), 1.0), g.dtype) for g in grads]


def cause_line(message: str) -> str:
    """The informative line of a TensorFlow runtime error (not 'Graph execution error:', node
    traces or source lines), shortened."""
    skip = ("Graph execution error", "Detected at node", "File ", "[[", "in user code", "Traceback", "{{function_node")
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith(skip)]
    return (lines[0] if lines else message.strip())[:300]

"""GAN training: one clear train step, a tf.data pipeline, validation, best checkpoint, resume.

No MLflow here: the `train_gan` stage passes an `on_epoch` callback that does the tracking.

Checkpoint folder (`out_dir`):
    state.json                 epoch done, best validation loss, fingerprint of the parameters, run id
    resume/epoch-NNNN/         one complete resume state: generator/discriminator weights, optimizer
                               variables and RNG (dropout seed-generator) state, state.json, and
                               MANIFEST.json (sha256 of every file) written last; the folder is built
                               under a temporary name and renamed into place, so a kill leaves either
                               the old states or a complete new one. The newest KEEP_STATES are kept.
    best_generator.keras       the generator with the lowest validation loss so far (held in memory between
                               checkpoints; written with each resume state, at the end and on any exception)

Resuming verifies the newest state's checksums and falls back to an older complete one with a
one-line warning. Data order is seeded per epoch and the RNG state is restored, so an interrupted and
resumed run ends with the same weights as an uninterrupted one on the same machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from mrisynth.config import TrainGanParams
from mrisynth.core import diffaugment, encoding, generators, inpaint, losses, models, quality
from mrisynth.errors import ConfigError, MrisynthError
from mrisynth.io import devices, distribute
from mrisynth.io.arrays import SplitArrays


class TrainingError(MrisynthError):
    """Training cannot go on (e.g. a NaN loss); the best checkpoint so far is kept."""


@dataclass(frozen=True)
class GanSettings:
    """What the trainer needs; built from params `train_gan` by the stage (`from_params` copies every
    field, so params.yaml decides). The defaults are the `TrainGanParams` defaults, except the method
    levers (generator, synthesis, select, diffaugment), which default to the paper's method for direct callers;
    only `alpha` is resolved (tuned or given)."""

    alpha: float = TrainGanParams.alpha
    epochs: int = TrainGanParams.epochs
    batch_size: int = TrainGanParams.batch_size
    learning_rate: float = TrainGanParams.learning_rate
    beta_1: float = TrainGanParams.beta_1
    dropout: float = TrainGanParams.dropout
    width: float = TrainGanParams.width
    precision: str = TrainGanParams.precision
    seed: int = TrainGanParams.seed
    checkpoint_every: int = TrainGanParams.checkpoint_every
    generator: str = "pix2pix"
    synthesis: str = "full"  # the method levers default to the paper's method here; the stage builds from params (from_params)
    inpaint_margin: float = TrainGanParams.inpaint_margin
    inpaint_blobs: float = TrainGanParams.inpaint_blobs
    diffaugment: str = ""
    disc_blocks: int = TrainGanParams.disc_blocks
    feature_matching: float = TrainGanParams.feature_matching
    select: str = "val_loss"

    @classmethod
    def from_params(cls, params: TrainGanParams, alpha: float, epochs: int | None = None) -> "GanSettings":
        """From the `train_gan` params section (TrainGanParams), with the alpha actually used: every
        field of this class is copied by name (a new field cannot be forgotten here)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("alpha", "epochs")]
        return cls(alpha=alpha, epochs=epochs or params.epochs, **{n: getattr(params, n) for n in names})

    def in_channels(self, image_channels: int) -> int:
        """Generator input channels: the 4-channel label conditioning, or the inpainting one (core.inpaint)."""
        return inpaint.in_channels(image_channels) if self.synthesis == "inpaint" else encoding.CONDITION_CHANNELS

    def fingerprint(self, data_key: str) -> dict:
        """What must match for a resume: everything but `epochs` (extending a run is allowed) and
        `checkpoint_every`. Fields at their paper defaults are left out, so resume states written
        before those fields existed still match."""
        values = {k: v for k, v in self.__dict__.items() if k not in ("epochs", "checkpoint_every")}
        values = {k: v for k, v in values.items() if k not in _NEWER_DEFAULTS or v != _NEWER_DEFAULTS[k]}
        values["precision"] = devices.resolve_precision(self.precision)  # `auto` may mean another policy elsewhere
        values["data"] = data_key
        return values


_NEWER_DEFAULTS = {"generator": "pix2pix", "synthesis": "full", "inpaint_margin": TrainGanParams.inpaint_margin,
                   "inpaint_blobs": TrainGanParams.inpaint_blobs, "diffaugment": "", "disc_blocks": 0, "select": "val_loss",
                   "feature_matching": 0.0}


@dataclass
class EpochResult:
    epoch: int
    metrics: dict[str, float]
    improved: bool
    seconds: float
    checkpoint_seconds: float = 0.0  # of `seconds`: writing the best checkpoint and the resume state


@dataclass
class TrainState:
    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = -1
    completed: bool = False
    fingerprint: dict = field(default_factory=dict)
    run_id: str | None = None
    history: list[dict] = field(default_factory=list)
    resume_from: str | None = None  # the verified resume folder this state was loaded from


RESUME_DIR = "resume"
KEEP_STATES = 2
MANIFEST = "MANIFEST.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rng_variables(model: keras.Model) -> list:
    """The model's variables that are not weights: Keras seed-generator states (dropout noise)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def verify_resume(folder: Path) -> str | None:
    """None when `folder` is a complete resume state whose files match its manifest, else the problem."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no MANIFEST.json (the write was cut short)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable MANIFEST.json ({exc})"
    for name, checksum in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != checksum:
            return f"{name} does not match its checksum"
    return None


def latest_resume(out_dir: Path) -> tuple[Path, "TrainState"] | None:
    """The newest verified resume state under out_dir/resume, warning (one line each) about broken ones."""
    root = Path(out_dir) / RESUME_DIR
    for folder in sorted(root.glob("epoch-*"), reverse=True) if root.is_dir() else []:
        problem = verify_resume(folder)
        if problem is None:
            state = TrainState(**json.loads((folder / "state.json").read_text()))
            state.resume_from = str(folder)
            return folder, state
        print(f"warning: resume state {folder} is unusable ({problem}); trying an older one", file=sys.stderr)
    return None


def arrays_key(*splits: SplitArrays) -> str:
    """Short content hash of the training data (part of the resume fingerprint)."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(np.ascontiguousarray(split.images).tobytes())
        digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()[:16]


class GanTrainer:
    """pix2pix-style conditional GAN: generator(conditioning) -> image; D(conditioning, image) -> patches.

    `distribution` (mrisynth.io.distribute; default: one device) decides where the steps run. Under a
    tf.distribute strategy `settings.batch_size` is the global batch: each global batch (the same
    shuffled order as on one device) is split row-wise over the replicas, each replica's losses are
    weighted by its share of the rows, gradients are summed over replicas, and BatchNorm statistics
    are synchronised, so one step equals the one-device step on the same batch up to float rounding
    (dropout masks are drawn per replica, so with dropout > 0 runs agree in distribution only). The
    learning rate needs no scaling: the global batch is unchanged."""

    def __init__(self, settings: GanSettings, size: int, in_channels: int, out_channels: int,
                 distribution: distribute.Distribution | None = None):
        self.settings = settings
        self.dist = distribution if distribution is not None else distribute.make("default")
        self.policy = devices.resolve_precision(settings.precision)
        keras.mixed_precision.set_global_policy(self.policy)
        keras.utils.set_random_seed(settings.seed)
        sync = self.dist.distributed
        self._shape = (size, in_channels, out_channels)
        self._portable: keras.Model | None = None  # a plain one-device generator, for writing the best weights
        self._best: tuple[int, float, list] | None = None  # (epoch, val_g_loss, weights) not yet written
        if settings.synthesis == "inpaint" and sync:
            raise ConfigError(f"train_gan.synthesis=inpaint with strategy {self.dist.kind!r}: inpainting trains on one device only "
                              "for now; set train_gan.strategy: default")
        if in_channels != settings.in_channels(out_channels):
            raise ConfigError(f"GanTrainer: {in_channels} conditioning channels given, synthesis {settings.synthesis!r} needs "
                              f"{settings.in_channels(out_channels)} (GanSettings.in_channels)")
        self._augment = diffaugment.parse(settings.diffaugment)
        self._augment_seed = keras.random.SeedGenerator(settings.seed + 1) if self._augment else None
        with self.dist.strategy.scope() if sync else contextlib.nullcontext():
            self.generator = generators.build(settings.generator, size, in_channels, out_channels, settings.dropout, settings.width, distributed=sync)
            self.discriminator = models.build_discriminator(size, in_channels, out_channels, settings.width, distributed=sync,
                                                            blocks=settings.disc_blocks)
            self.g_opt = keras.optimizers.Adam(settings.learning_rate, beta_1=settings.beta_1)
            self.d_opt = keras.optimizers.Adam(settings.learning_rate, beta_1=settings.beta_1)
            if self.policy == "mixed_float16":  # float16 gradients underflow without loss scaling (bfloat16 needs none)
                self.g_opt = keras.optimizers.LossScaleOptimizer(self.g_opt)
                self.d_opt = keras.optimizers.LossScaleOptimizer(self.d_opt)
            self.g_opt.build(self.generator.trainable_variables)
            self.d_opt.build(self.discriminator.trainable_variables)
            # feature matching (pix2pixHD): the same discriminator, also returning every block's output
            blocks = [layer.output for layer in self.discriminator.layers if layer.name.startswith("disc")]
            self._features = (keras.Model(self.discriminator.inputs, [*blocks, self.discriminator.output], name="discriminator_features")
                              if settings.feature_matching > 0 else None)
        self._train_step = tf.function(self._replicated_step if sync else self.train_step)
        self._eval_step = tf.function(self.eval_step)

    def _flush_best(self, out_dir: Path) -> float:
        """Write the best generator held in memory (if newer than the file) to best_generator.keras and
        best.json; returns the seconds spent. The file is a one-device model of plain Keras layers (under
        tf.distribute too: plain BatchNorm and Dropout), the trained weights copied into it."""
        if self._best is None:
            return 0.0
        started = time.perf_counter()
        epoch, value, weights = self._best
        if self._portable is None:
            size, in_channels, out_channels = self._shape
            self._portable = generators.build(self.settings.generator, size, in_channels, out_channels, self.settings.dropout, self.settings.width)
        self._portable.set_weights(weights)
        self._portable.save(Path(out_dir) / "best_generator.keras")
        (Path(out_dir) / "best.json").write_text(json.dumps({"epoch": epoch, "val_g_loss": value}))
        self._best = None
        return time.perf_counter() - started

    @property
    def is_chief(self) -> bool:
        """False on the non-chief workers of a multi-worker run: they train, but never validate or write."""
        return self.dist.is_chief

    # ------------------------------------------------------------------ steps
    def _fake(self, cond, real, blend, training: bool):
        """The generated image; inpainting: real * (1 - blend) + G * blend (real outside the region)."""
        out = self.generator(cond, training=training)
        return out if blend is None else real * (1.0 - blend) + out * blend

    def _discriminate(self, cond, image, training: bool, features: bool = False):
        """D on a pair; while training, DiffAugment first (train_gan.diffaugment: one transform per pair).
        features: (probabilities, [block outputs]) for the feature-matching term."""
        if training and self._augment:
            cond, image = diffaugment.augment(cond, image, self._augment, self._augment_seed)
        if features:
            *blocks, probabilities = self._features([cond, image], training=training)
            return probabilities, blocks
        return self.discriminator([cond, image], training=training)

    def _losses(self, disc_real, disc_fake, real, fake, blend):
        """(g_total, g_gan, g_l1, d_loss); inpainting: the L1 is the mean over the blended region."""
        if blend is None:
            g_total, g_gan, g_l1 = losses.generator_loss(disc_fake, real, fake, self.settings.alpha)
        else:
            g_gan = losses.bce(1.0, disc_fake)
            g_l1 = losses.region_l1(real, fake, blend)
            g_total = g_gan + self.settings.alpha * g_l1
        return g_total, g_gan, g_l1, losses.discriminator_loss(disc_real, disc_fake)

    def train_step(self, cond, real, weight=None, blend=None):
        """One G and one D update on a batch. cond (B, S, S, K), real (B, S, S, C) in [-1, 1].
        weight: this replica's share of the global batch under tf.distribute (None on one device).
        blend (B, S, S, 1): inpainting's blend weight (None: full synthesis, the paper)."""
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = self._fake(cond, real, blend, training=True)
            if self._features is None:
                disc_real = self._discriminate(cond, real, training=True)
                disc_fake = self._discriminate(cond, fake, training=True)
                g_total, g_gan, g_l1, d_loss = self._losses(disc_real, disc_fake, real, fake, blend)
            else:
                disc_real, real_blocks = self._discriminate(cond, real, training=True, features=True)
                disc_fake, fake_blocks = self._discriminate(cond, fake, training=True, features=True)
                g_total, g_gan, g_l1, d_loss = self._losses(disc_real, disc_fake, real, fake, blend)
                g_total = g_total + self.settings.feature_matching * losses.feature_matching(real_blocks, fake_blocks)
            if weight is not None:  # replica means -> shares of the global mean (gradients are summed over replicas)
                g_total, g_gan, g_l1, d_loss = (value * weight for value in (g_total, g_gan, g_l1, d_loss))
            # the identity unless the optimizer scales (LossScaleOptimizer under mixed_float16); inside the tapes
            g_scaled, d_scaled = self.g_opt.scale_loss(g_total), self.d_opt.scale_loss(d_loss)
        g_grads = g_tape.gradient(g_scaled, self.generator.trainable_variables)
        d_grads = d_tape.gradient(d_scaled, self.discriminator.trainable_variables)
        if weight is not None and isinstance(self.g_opt, keras.optimizers.LossScaleOptimizer):
            # LossScaleOptimizer decides "finite?" on each replica's own gradients (before the sum): agree first,
            # so every replica skips an overflowing step together (otherwise some all-reduce and some do not: a hang)
            g_grads, d_grads = _agree_finite(g_grads), _agree_finite(d_grads)
        self.g_opt.apply_gradients(list(zip(g_grads, self.generator.trainable_variables)))  # a list: LossScaleOptimizer reads it twice
        self.d_opt.apply_gradients(list(zip(d_grads, self.discriminator.trainable_variables)))
        return {"g_loss": g_total, "g_gan": g_gan, "g_l1": g_l1, "d_loss": d_loss}

    def _replicated_step(self, cond, real, weight):
        """train_step on every replica (per-replica inputs from `_split`); the global-batch mean losses."""
        strategy = self.dist.strategy
        per_replica = strategy.run(self.train_step, args=(cond, real, weight))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    def _split(self, cond, real) -> tuple:
        """A global batch as per-replica values: contiguous row blocks, one per replica (np.array_split),
        with each block's share of the rows. Every worker builds the same global batch and keeps the
        blocks of its own replicas."""
        n = int(cond.shape[0])
        bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n), self.dist.replicas)])
        strategy = self.dist.strategy

        def block(values):
            def value_fn(ctx):
                i = ctx.replica_id_in_sync_group
                return values[int(bounds[i]):int(bounds[i + 1])]
            return strategy.experimental_distribute_values_from_function(value_fn)

        weights = np.diff(bounds).astype(np.float32) / n
        weight = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(weights[ctx.replica_id_in_sync_group]))
        return block(cond), block(real), weight

    def check_batches(self, count: int) -> None:
        """Under tf.distribute every global batch, the last one included, needs a row for each replica."""
        replicas, batch = self.dist.replicas, self.settings.batch_size
        tail = count % batch
        if self.dist.distributed and (batch < replicas or 0 < tail < replicas):
            raise ConfigError(
                f"train_gan.batch_size={batch} over {count} training images leaves a batch of {tail or batch} rows for "
                f"{replicas} replicas ({self.dist.kind}); choose a global batch_size >= {replicas} whose last batch "
                f"(count % batch_size) is 0 or >= {replicas}")

    def sync_from_chief(self, epoch: int, fingerprint: dict) -> int:
        """Multi-worker: check that every worker trains with the same settings and data (a ConfigError
        on every worker otherwise), then copy every variable (weights, optimizer and RNG state) and the
        start epoch from the chief's first replica to all replicas, so a chief that resumed from its
        checkpoint and fresh workers continue from the same state. Returns the chief's epoch."""
        strategy = self.dist.strategy
        mine = int(hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:15], 16)

        def agree(value):
            ctx = tf.distribute.get_replica_context()
            chief = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(tf.equal(ctx.replica_id_in_sync_group, 0), value, tf.zeros_like(value)))
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.not_equal(value, chief), tf.int64))

        differing = int(strategy.experimental_local_results(strategy.run(tf.function(agree), args=(tf.constant(mine, tf.int64),)))[0])
        if differing:
            raise ConfigError(f"{self.dist.task}: {differing} of {self.dist.replicas} replicas train with other parameters, data or "
                              "precision than the chief (train_gan params, work/preprocessed, the tuned alpha); give every worker "
                              "the same params.yaml and data (e.g. `dvc pull`) and rerun all of them")
        variables = [*self.generator.variables, *self.discriminator.variables, *self.g_opt.variables, *self.d_opt.variables]

        def replica_fn(epoch_value):
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            values = [tf.where(first, v.value, tf.zeros_like(v.value)) for v in variables]
            values.append(tf.where(first, epoch_value, tf.zeros_like(epoch_value)))
            out = list(values)
            for dtype in {value.dtype for value in values}:  # one all-reduce per dtype (it packs its tensors)
                where = [i for i, value in enumerate(values) if value.dtype == dtype]
                for i, value in zip(where, ctx.all_reduce(tf.distribute.ReduceOp.SUM, [values[i] for i in where])):
                    out[i] = value
            return out

        reduced = strategy.run(tf.function(replica_fn), args=(tf.constant(epoch, tf.int64),))
        local = [strategy.experimental_local_results(value)[0] for value in reduced]
        for variable, value in zip(variables, local[:-1]):
            variable.assign(value)
        return int(local[-1])

    def eval_step(self, cond, real, blend=None):
        """Losses on a validation batch in inference mode, and the generated images."""
        fake = self._fake(cond, real, blend, training=False)
        disc_real = self._discriminate(cond, real, training=False)
        disc_fake = self._discriminate(cond, fake, training=False)
        g_total, g_gan, g_l1, d_loss = self._losses(disc_real, disc_fake, real, fake, blend)
        return {"g_loss": g_total, "g_gan": g_gan, "g_l1": g_l1, "d_loss": d_loss}, fake

    # ------------------------------------------------------------------ data
    def inputs(self, split: SplitArrays, epoch: int | None) -> tuple[np.ndarray, ...]:
        """(conditioning, image in [-1, 1]) arrays, plus the blend weight (N, S, S, 1) when inpainting.
        Inpainting regions: each slice's tumour with the margin, plus random tumour-free regions drawn
        per training epoch (seeded by seed and epoch, so a resumed run draws the same); validation
        (epoch None) uses the tumour regions only."""
        images = encoding.to_tanh(split.images).astype(np.float32)
        if self.settings.synthesis != "inpaint":
            return split.conditioning.astype(np.float32), images
        margin = inpaint.margin_pixels(self.settings.inpaint_margin, split.images.shape[1])
        if epoch is None:  # validation: the same regions as rendering.render_split
            rng, blobs = np.random.default_rng(0), 0.0
        else:
            rng, blobs = np.random.default_rng([self.settings.seed, epoch]), self.settings.inpaint_blobs
        cond, blend = inpaint.split_inputs(split.labels, split.brain, split.images, margin, blobs, rng)
        return cond, images, blend

    def dataset(self, split: SplitArrays, epoch: int | None) -> tf.data.Dataset:
        """Batches of `inputs`; shuffled with a per-epoch seed when epoch is given."""
        data = tf.data.Dataset.from_tensor_slices(self.inputs(split, epoch))
        if epoch is not None:
            data = data.shuffle(len(split), seed=self.settings.seed * 1000 + epoch, reshuffle_each_iteration=False)
        return data.batch(self.settings.batch_size).prefetch(tf.data.AUTOTUNE)

    def render(self, split: SplitArrays, count: int) -> np.ndarray:
        """`rendering.render_split` of the first `count` slices with the generator being trained."""
        from mrisynth.inference import rendering

        first = SplitArrays(**{k: getattr(split, k)[:count] for k in ("images", "labels", "brain", "conditioning", "case_ids", "spacing")})
        return rendering.render_split(self.generator, first, self.settings.synthesis, self.settings.inpaint_margin)

    def validate(self, val: SplitArrays) -> dict[str, float]:
        totals: dict[str, float] = {}
        fakes, count = [], 0
        for batch in self.dataset(val, None):
            cond, real, *blend = batch
            step, fake = self._eval_step(cond, real, *blend)
            n = int(cond.shape[0])
            for k, v in step.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            fakes.append(np.asarray(fake, dtype=np.float32))
            count += n
        metrics = {f"val_{k}": v / max(count, 1) for k, v in totals.items()}
        generated = encoding.from_tanh(np.concatenate(fakes))
        for k, v in quality.image_quality(val.images, generated, val.brain).items():
            metrics[f"val_{k}"] = v
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _variables(self) -> dict[str, list]:
        found = {"g": list(self.g_opt.variables), "d": list(self.d_opt.variables),
                 "gr": _rng_variables(self.generator), "dr": _rng_variables(self.discriminator)}
        if self._augment_seed is not None:  # DiffAugment's RNG (absent without it: the paper's files are unchanged)
            found["ar"] = [self._augment_seed.state]
        return found

    def save_last(self, out_dir: Path, state: TrainState) -> Path:
        """Write a complete resume state atomically (see module doc); returns its folder."""
        root = Path(out_dir) / RESUME_DIR
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-epoch-{state.epoch:04d}-", dir=root))
        self.generator.save_weights(tmp / "generator.weights.h5")
        self.discriminator.save_weights(tmp / "discriminator.weights.h5")
        arrays = {f"{prefix}{i}": np.asarray(v) for prefix, variables in self._variables().items() for i, v in enumerate(variables)}
        np.savez(tmp / "variables.npz", **arrays)
        (tmp / "state.json").write_text(json.dumps({**state.__dict__, "resume_from": None}, indent=2, default=float))
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"epoch": state.epoch, "files": files}, indent=2))
        final = root / f"epoch-{state.epoch:04d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        save_state(Path(out_dir), state)
        for old in sorted(root.glob("epoch-*"))[:-KEEP_STATES]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in root.glob(".tmp-epoch-*"):  # cut-short writes of earlier processes
            shutil.rmtree(leftover, ignore_errors=True)
        return final

    def load_last(self, out_dir: Path, folder: Path | None = None) -> Path:
        """Load a resume state: `folder`, or the newest verified one under out_dir. Returns its folder."""
        if folder is None:
            found = latest_resume(out_dir)
            if found is None:
                raise TrainingError(f"{Path(out_dir) / RESUME_DIR}: no complete resume state; rerun with --restart to start over")
            folder = found[0]
        folder = Path(folder)
        self.generator.load_weights(folder / "generator.weights.h5")
        self.discriminator.load_weights(folder / "discriminator.weights.h5")
        with np.load(folder / "variables.npz") as saved:
            for prefix, variables in self._variables().items():
                for i, variable in enumerate(variables):
                    variable.assign(saved[f"{prefix}{i}"])
        return folder

    # ------------------------------------------------------------------ loop
    def fingerprint(self, train: SplitArrays, val: SplitArrays) -> dict:
        """settings.fingerprint, plus the strategy and replica count under tf.distribute (they change the numerics)."""
        values = self.settings.fingerprint(arrays_key(train, val))
        return values | self.dist.tags() if self.dist.distributed else values

    def prepare(self, train: SplitArrays, val: SplitArrays, out_dir: Path, restart: bool = False) -> TrainState:
        """The state to start from: a resumable interrupted run (same parameters and data) or a fresh one.
        Non-chief workers touch no files: they start fresh and take the chief's state in `fit`."""
        if not self.is_chief:
            return TrainState(fingerprint=self.fingerprint(train, val))
        return prepare_state(Path(out_dir), self.fingerprint(train, val), restart)

    def fit(
        self,
        train: SplitArrays,
        val: SplitArrays,
        out_dir: Path,
        restart: bool = False,
        on_epoch: Callable[[EpochResult, "GanTrainer", TrainState], None] | None = None,
        on_start: Callable[[TrainState], None] | None = None,
        state: TrainState | None = None,
    ) -> TrainState:
        """Train to `settings.epochs`, resuming an interrupted run in out_dir when its parameters match
        (or from `state`, as returned by `prepare`).

        After every epoch: validation losses and image quality, and the best generator (kept in memory
        when the validation generator loss improves). Every `checkpoint_every` epochs and at the end: the
        resume state and the best generator on disk (best_generator.keras, best.json); on any exception
        (a NaN loss, an interrupt) the best generator is written before it propagates. A SIGKILL loses
        at most the epochs since the last checkpoint, and the rerun retrains them from that state. A NaN/inf loss raises
        TrainingError and leaves the best checkpoint in place. Non-chief workers only train (no
        validation, no files, no callbacks); a worker that stops answering raises TrainingError."""
        out_dir = Path(out_dir)
        self.check_batches(len(train))
        if state is None:
            state = self.prepare(train, val, out_dir, restart)
        if state.epoch > 0 and self.is_chief:
            self.load_last(out_dir, Path(state.resume_from) if state.resume_from else None)
            best_record = out_dir / "best.json"
            if best_record.is_file():  # the best checkpoint may be newer than the resume state
                record = json.loads(best_record.read_text())
                if record["val_g_loss"] < state.best_val:
                    state.best_val, state.best_epoch = record["val_g_loss"], record["epoch"]
        if self.dist.kind == "multi_worker":
            state.epoch = self._cluster_call(state, lambda: self.sync_from_chief(state.epoch, state.fingerprint | {"epochs": self.settings.epochs}))
        if on_start and self.is_chief:
            on_start(state)
        try:
            for epoch in range(state.epoch, self.settings.epochs):
                start = time.perf_counter()
                sums: dict[str, float] = {}
                batches = 0
                for step, batch in enumerate(self.dataset(train, epoch)):
                    if self.dist.distributed:
                        cond, real = batch
                        result = self._cluster_call(state, lambda: self._train_step(*self._split(cond, real)))
                    elif len(batch) == 3:  # inpainting: (cond, real, blend)
                        result = self._train_step(batch[0], batch[1], None, batch[2])
                    else:
                        result = self._train_step(*batch)
                    values = {k: float(v) for k, v in result.items()}
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:  # state.json stays as the last resume checkpoint wrote it (its epoch matches those weights)
                        raise TrainingError(
                            f"epoch {epoch + 1}, step {step + 1}: {', '.join(bad)} is {values[bad[0]]}; training stopped. "
                            f"The best checkpoint (epoch {state.best_epoch + 1}) is kept in {out_dir / 'best_generator.keras'}; "
                            "lower the learning rate or alpha, or use precision float32, and rerun with --restart"
                        )
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    batches += 1
                metrics = {k: v / max(batches, 1) for k, v in sums.items()}
                if not self.is_chief:  # the chief validates, checkpoints and reports
                    state.epoch = epoch + 1
                    continue
                metrics |= self.validate(val)
                # select val_loss: the lowest validation G loss (the paper); last: every epoch replaces the kept one
                improved = metrics["val_g_loss"] < state.best_val or self.settings.select == "last"
                saving = time.perf_counter()
                if improved:  # kept in memory; written with the next resume state (or on an exception)
                    state.best_val, state.best_epoch = metrics["val_g_loss"], epoch
                    self._best = (epoch, float(metrics["val_g_loss"]), [np.array(w) for w in self.generator.get_weights()])
                state.epoch = epoch + 1
                state.history.append({"epoch": epoch + 1, **metrics})
                state.completed = state.epoch >= self.settings.epochs
                if state.completed or state.epoch % self.settings.checkpoint_every == 0:
                    self._flush_best(out_dir)
                    self.save_last(out_dir, state)  # resume state (~3x the generator's size) every N epochs only
                saved_s = time.perf_counter() - saving
                if on_epoch:
                    on_epoch(EpochResult(epoch + 1, metrics, improved, time.perf_counter() - start, saved_s), self, state)
        except BaseException:  # NaN stop, interrupt, lost worker, a failing callback: keep the best generator
            if self.is_chief:
                self._flush_best(out_dir)
            raise
        state.completed = True
        if self.is_chief:
            save_state(out_dir, state)
        return state

    def _cluster_call(self, state: TrainState, call: Callable):
        """Run a step that talks to other workers; a worker that is down becomes a one-line TrainingError."""
        try:
            return call()
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.AbortedError) as exc:
            if self.dist.kind != "multi_worker":
                raise
            first = _cause_line(exc.message or str(exc))
            raise TrainingError(
                f"{self.dist.task}: the {self.dist.workers}-worker cluster lost a worker during epoch {state.epoch + 1} "
                f"({type(exc).__name__}: {first}); training stopped. The resume state written so far is kept; "
                "restart every worker and rerun to resume") from None


def _agree_finite(grads: list) -> list:
    """In a replica context: the gradients, or all NaN on every replica when any replica's are not finite."""
    ctx = tf.distribute.get_replica_context()
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]))
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
    return [None if g is None else g * tf.cast(tf.where(bad > 0, float("nan"), 1.0), g.dtype) for g in grads]


def _cause_line(message: str) -> str:
    """The informative line of a TensorFlow runtime error (not 'Graph execution error:', node
    traces or source lines), shortened."""
    skip = ("Graph execution error", "Detected at node", "File ", "[[", "in user code", "Traceback", "{{function_node")
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith(skip)]
    return (lines[0] if lines else message.strip())[:300]


def save_state(out_dir: Path, state: TrainState) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "state.json.tmp"
    tmp.write_text(json.dumps({**state.__dict__, "resume_from": None}, indent=2, default=float))
    tmp.replace(out_dir / "state.json")


def load_state(out_dir: Path) -> TrainState | None:
    path = Path(out_dir) / "state.json"
    if not path.is_file():
        return None
    try:
        return TrainState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        print(f"warning: {path} is unreadable; ignoring it", file=sys.stderr)
        return None


def prepare_state(out_dir: Path, fingerprint: dict, restart: bool) -> TrainState:
    """Resume an interrupted run with the same parameters; refuse one with other parameters unless restart.
    A missing or unreadable top-level state.json falls back to the newest verified resume state."""
    previous = load_state(out_dir)
    if previous is None and not restart:
        found = latest_resume(out_dir)
        previous = found[1] if found is not None else None
    if previous is not None and not restart and not previous.completed:
        if previous.fingerprint != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(previous.fingerprint) if fingerprint.get(k) != previous.fingerprint.get(k))
            details = ", ".join(f"{k}: {previous.fingerprint.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{out_dir / 'state.json'}: an interrupted run (epoch {previous.epoch}) was trained with other parameters ({details}); "
                "restore them to resume, or pass --restart (or set MRISYNTH_RESTART=1) to start over"
            )
        found = latest_resume(out_dir)
        if found is not None:
            return found[1]
        print(f"warning: {out_dir}: no complete resume state for the interrupted run (epoch {previous.epoch}); starting over", file=sys.stderr)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return TrainState(fingerprint=fingerprint)

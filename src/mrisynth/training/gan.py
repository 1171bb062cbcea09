"""GAN training: one clear train step, a tf.data pipeline, validation and the epoch loop.

The checkpoint files and resume (`mrisynth.training.checkpoints`) and the tf.distribute helpers
(`mrisynth.training.sync`) live next to this module; no MLflow here: the `train_gan` stage passes an
`on_epoch` callback that does the tracking. Data order is seeded per epoch and the RNG state is part of
the resume state, so an interrupted and resumed run ends with the same weights as an uninterrupted one
on the same machine."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from mrisynth.config import PAPER_METHOD, TrainGanParams
from mrisynth.core import diffaugment, encoding, generators, inpaint, losses, models, quality
from mrisynth.errors import ConfigError
from mrisynth.io import devices, distribute
from mrisynth.io.arrays import SplitArrays
from mrisynth.training import checkpoints, sync
from mrisynth.training.checkpoints import TrainState, TrainingError, prepare_state, save_state

# `train_gan` fields that do not change what is trained (run bookkeeping, where files go, how many draws):
# left out of the resume fingerprint. Any other field, a new one included, must match for a resume.
NOT_FINGERPRINTED = ("epochs", "checkpoint_every", "experiment", "registry_name", "alpha_file", "strategy", "cpu_replicas",
                     "cluster_wait_s", "peer_timeout_s", "draws", "draws_dir", "grid_every", "grid_images", "out_dir", "model_path")
# Fields added after the first resume states were written: left out while at these values, so old states still match.
_NEWER_DEFAULTS = {"generator": "pix2pix", "synthesis": "full", "inpaint_margin": TrainGanParams.inpaint_margin,
                   "inpaint_blobs": TrainGanParams.inpaint_blobs, "diffaugment": "", "disc_blocks": 0, "select": "val_loss",
                   "feature_matching": 0.0, "texture": 0.0}


def paper_settings(**overrides) -> TrainGanParams:
    """`train_gan` settings with the paper's method (PAPER_METHOD: pix2pix, full synthesis, lowest-val-loss
    checkpoint, no DiffAugment) in place of the default profile's, for direct callers (tests, benchmarks).
    The stages train with params.yaml's `train_gan` section itself (its alpha replaced by the tuned one)."""
    return TrainGanParams(**(PAPER_METHOD | overrides))


def fingerprint(settings: TrainGanParams, data_key: str) -> dict:
    """What must match for a resume: every field but NOT_FINGERPRINTED (extending `epochs` is allowed),
    with the resolved precision (`auto` may mean another policy elsewhere) and the data's hash. `diffaugment` is
    compared as the policy it means (`diffaugment.augment` applies its parts in a fixed order: 'cutout+translation'
    and 'translation, cutout' are 'translation,cutout'; 'none' and 'off' are '')."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in NOT_FINGERPRINTED}
    values = canonical_fingerprint(values)
    values["precision"] = devices.resolve_precision(settings.precision)
    values["data"] = data_key
    return values


def canonical_fingerprint(values: dict) -> dict:
    """A fingerprint with `diffaugment` as the policy it means and the levers at their pre-lever defaults left out;
    applied to the fingerprints of saved states too, so states written before this normalisation still resume."""
    values = dict(values)
    if "diffaugment" in values:
        try:
            parts = diffaugment.parse(values["diffaugment"])
        except ValueError:
            parts = None   # an unknown policy stays as written (it cannot match a valid one)
        if parts is not None:
            values["diffaugment"] = ",".join(p for p in diffaugment.POLICIES if p in parts)
    return {k: v for k, v in values.items() if k not in _NEWER_DEFAULTS or v != _NEWER_DEFAULTS[k]}


@dataclass
class EpochResult:
    epoch: int
    metrics: dict[str, float]
    improved: bool
    seconds: float
    checkpoint_seconds: float = 0.0  # of `seconds`: writing the best checkpoint and the resume state


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

    def __init__(self, settings: TrainGanParams, size: int, in_channels: int, out_channels: int,
                 distribution: distribute.Distribution | None = None):
        self.settings = settings
        self.dist = distribution if distribution is not None else distribute.make("default")
        self.policy = devices.resolve_precision(settings.precision)
        keras.mixed_precision.set_global_policy(self.policy)
        keras.utils.set_random_seed(settings.seed)
        distributed = self.dist.distributed
        self._best = checkpoints.BestGenerator(lambda: generators.build(settings.generator, size, in_channels, out_channels,
                                                                        settings.dropout, settings.width))
        if settings.synthesis == "inpaint" and distributed:
            raise ConfigError(f"train_gan.synthesis=inpaint with strategy {self.dist.kind!r}: inpainting trains on one device only "
                              "for now; set train_gan.strategy: default")
        if in_channels != settings.in_channels(out_channels):
            raise ConfigError(f"GanTrainer: {in_channels} conditioning channels given, synthesis {settings.synthesis!r} needs "
                              f"{settings.in_channels(out_channels)} (TrainGanParams.in_channels)")
        self._augment = diffaugment.parse(settings.diffaugment)
        self._augment_seed = keras.random.SeedGenerator(settings.seed + 1) if self._augment else None
        with self.dist.strategy.scope() if distributed else contextlib.nullcontext():
            self.generator = generators.build(settings.generator, size, in_channels, out_channels, settings.dropout, settings.width,
                                              distributed=distributed)
            self.discriminator = models.build_discriminator(size, in_channels, out_channels, settings.width, distributed=distributed,
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
        self._train_step = tf.function(self._replicated_step if distributed else self.train_step)
        self._eval_step = tf.function(self.eval_step)

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

    def _losses(self, disc_real, disc_fake, real, fake, blend) -> dict:
        """{g_loss (G's total), g_gan, g_l1, d_loss[, g_texture]}; inpainting: the L1 (and the texture term) is the
        mean over the blended region. g_texture (unweighted; only when train_gan.texture > 0) is inside g_loss, so
        val_g_loss compares only runs of the same texture weight."""
        if blend is None:
            g_total, g_gan, g_l1 = losses.generator_loss(disc_fake, real, fake, self.settings.alpha)
        else:
            g_gan = losses.bce(1.0, disc_fake)
            g_l1 = losses.region_l1(real, fake, blend)
            g_total = g_gan + self.settings.alpha * g_l1
        metrics = {"g_loss": g_total, "g_gan": g_gan, "g_l1": g_l1, "d_loss": losses.discriminator_loss(disc_real, disc_fake)}
        if self.settings.texture > 0:  # the texture-energy term (inside the region when inpainting); 0 = off (the paper)
            metrics["g_texture"] = losses.texture(real, fake, blend)
            metrics["g_loss"] = g_total + self.settings.texture * metrics["g_texture"]
        return metrics

    def train_step(self, cond, real, weight=None, blend=None):
        """One G and one D update on a batch. cond (B, S, S, K), real (B, S, S, C) in [-1, 1].
        weight: this replica's share of the global batch under tf.distribute (None on one device).
        blend (B, S, S, 1): inpainting's blend weight (None: full synthesis, the paper)."""
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = self._fake(cond, real, blend, training=True)
            if self._features is None:
                disc_real = self._discriminate(cond, real, training=True)
                disc_fake = self._discriminate(cond, fake, training=True)
                metrics = self._losses(disc_real, disc_fake, real, fake, blend)
            else:
                disc_real, real_blocks = self._discriminate(cond, real, training=True, features=True)
                disc_fake, fake_blocks = self._discriminate(cond, fake, training=True, features=True)
                metrics = self._losses(disc_real, disc_fake, real, fake, blend)
                metrics["g_loss"] = metrics["g_loss"] + self.settings.feature_matching * losses.feature_matching(real_blocks, fake_blocks)
            if weight is not None:  # replica means -> shares of the global mean (gradients are summed over replicas)
                metrics = {name: value * weight for name, value in metrics.items()}
            # the identity unless the optimizer scales (LossScaleOptimizer under mixed_float16); inside the tapes
            g_scaled, d_scaled = self.g_opt.scale_loss(metrics["g_loss"]), self.d_opt.scale_loss(metrics["d_loss"])
        g_grads = g_tape.gradient(g_scaled, self.generator.trainable_variables)
        d_grads = d_tape.gradient(d_scaled, self.discriminator.trainable_variables)
        if weight is not None and isinstance(self.g_opt, keras.optimizers.LossScaleOptimizer):
            # LossScaleOptimizer decides "finite?" on each replica's own gradients (before the sum): agree first,
            # so every replica skips an overflowing step together (otherwise some all-reduce and some do not: a hang)
            g_grads, d_grads = sync.agree_finite(g_grads), sync.agree_finite(d_grads)
        self.g_opt.apply_gradients(list(zip(g_grads, self.generator.trainable_variables)))  # a list: LossScaleOptimizer reads it twice
        self.d_opt.apply_gradients(list(zip(d_grads, self.discriminator.trainable_variables)))
        return metrics

    def _replicated_step(self, cond, real, weight):
        """train_step on every replica (per-replica inputs from `_split`); the global-batch mean losses."""
        strategy = self.dist.strategy
        per_replica = strategy.run(self.train_step, args=(cond, real, weight))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    def _split(self, cond, real) -> tuple:
        """A global batch as per-replica (cond, real, weight) values (sync.split_batch)."""
        return sync.split_batch(self.dist, cond, real)

    def check_batches(self, count: int) -> None:
        sync.check_batches(self.dist, self.settings.batch_size, count)

    def sync_from_chief(self, epoch: int, fingerprint: dict) -> int:
        """Multi-worker: every worker starts from the chief's variables and epoch (sync.sync_from_chief)."""
        variables = [*self.generator.variables, *self.discriminator.variables, *self.g_opt.variables, *self.d_opt.variables]
        return sync.sync_from_chief(self.dist, variables, epoch, fingerprint)

    def eval_step(self, cond, real, blend=None):
        """Losses on a validation batch in inference mode, and the generated images."""
        fake = self._fake(cond, real, blend, training=False)
        disc_real = self._discriminate(cond, real, training=False)
        disc_fake = self._discriminate(cond, fake, training=False)
        return self._losses(disc_real, disc_fake, real, fake, blend), fake

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
                 "gr": checkpoints.rng_variables(self.generator), "dr": checkpoints.rng_variables(self.discriminator)}
        if self._augment_seed is not None:  # DiffAugment's RNG (absent without it: the paper's files are unchanged)
            found["ar"] = [self._augment_seed.state]
        return found

    def save_last(self, out_dir: Path, state: TrainState) -> Path:
        """Write a complete resume state atomically (checkpoints.write_resume); returns its folder."""
        return checkpoints.write_resume(out_dir, state, self.generator, self.discriminator, self._variables())

    def load_last(self, out_dir: Path, folder: Path | None = None) -> Path:
        """Load a resume state: `folder`, or the newest verified one under out_dir. Returns its folder."""
        return checkpoints.read_resume(out_dir, folder, self.generator, self.discriminator, self._variables())

    # ------------------------------------------------------------------ loop
    def fingerprint(self, train: SplitArrays, val: SplitArrays) -> dict:
        """`fingerprint` of the settings, plus the strategy and replica count under tf.distribute (they change the numerics)."""
        values = fingerprint(self.settings, arrays_key(train, val))
        return values | self.dist.tags() if self.dist.distributed else values

    def prepare(self, train: SplitArrays, val: SplitArrays, out_dir: Path, restart: bool = False,
                finish_code: str | None = None) -> TrainState:
        """The state to start from: a resumable interrupted run (same parameters and data) or a fresh one.
        finish_code (a digest of the training code): also a run of that code that finished training but was
        not finalised (`TrainState.finalised`); the state returned records it. Non-chief workers touch no
        files: they start fresh and take the chief's state in `fit`."""
        if not self.is_chief:
            return TrainState(fingerprint=self.fingerprint(train, val))
        state = prepare_state(Path(out_dir), self.fingerprint(train, val), restart,
                              self.settings.epochs if finish_code else None, finish_code, canonical=canonical_fingerprint)
        state.code = finish_code
        return state

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
            self._resume(out_dir, state)
        if self.dist.kind == "multi_worker":
            state.epoch = self._cluster_call(state, lambda: self.sync_from_chief(state.epoch, state.fingerprint | {"epochs": self.settings.epochs}))
        if on_start and self.is_chief:
            on_start(state)
        try:
            for epoch in range(state.epoch, self.settings.epochs):
                start = time.perf_counter()
                metrics = self._train_epoch(train, epoch, state, out_dir)
                if not self.is_chief:  # the chief validates, checkpoints and reports
                    state.epoch = epoch + 1
                    continue
                metrics |= self.validate(val)
                improved, saved_s = self._end_epoch(epoch, metrics, state, out_dir)
                if on_epoch:
                    on_epoch(EpochResult(epoch + 1, metrics, improved, time.perf_counter() - start, saved_s), self, state)
        except BaseException:  # NaN stop, interrupt, lost worker, a failing callback: keep the best generator
            if self.is_chief:
                with contextlib.suppress(TrainingError):  # a full disk must not hide the first error
                    self._best.flush(out_dir)
            raise
        state.completed = True
        if self.is_chief:
            save_state(out_dir, state)
        return state

    def _resume(self, out_dir: Path, state: TrainState) -> None:
        """Load the resume state `state` came from; the best checkpoint on disk may be newer than it."""
        self.load_last(out_dir, Path(state.resume_from) if state.resume_from else None)
        record = checkpoints.best_record(out_dir)
        if record is not None and record[1] < state.best_val:
            state.best_epoch, state.best_val = record

    def _train_epoch(self, train: SplitArrays, epoch: int, state: TrainState, out_dir: Path) -> dict[str, float]:
        """One pass over the training batches; the mean of each loss. A NaN/inf loss raises TrainingError."""
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
                kept = (f"the generator of epoch {state.best_epoch + 1} is kept in {out_dir / 'best_generator.keras'}"
                        if state.best_epoch >= 0 else "no epoch finished, so no generator was written")
                raise TrainingError(
                    f"epoch {epoch + 1}, step {step + 1}: {', '.join(bad)} is {values[bad[0]]}; training stopped ({kept}); "
                    "lower the learning rate or alpha, or use precision float32, and rerun with --restart"
                )
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            batches += 1
        return {k: v / max(batches, 1) for k, v in sums.items()}

    def _end_epoch(self, epoch: int, metrics: dict, state: TrainState, out_dir: Path) -> tuple[bool, float]:
        """Keep the generator when it is the one to keep, record the epoch, checkpoint every
        `checkpoint_every` epochs and at the end. Returns (kept, seconds spent checkpointing)."""
        # select val_loss: the lowest validation G loss (the paper); last: every epoch replaces the kept one
        improved = metrics["val_g_loss"] < state.best_val or self.settings.select == "last"
        saving = time.perf_counter()
        if improved:  # kept in memory; written with the next resume state (or on an exception)
            state.best_val, state.best_epoch = metrics["val_g_loss"], epoch
            self._best.keep(epoch, metrics["val_g_loss"], self.generator.get_weights())
        state.epoch = epoch + 1
        state.history.append({"epoch": epoch + 1, **metrics})
        state.completed = state.epoch >= self.settings.epochs
        if state.completed or state.epoch % self.settings.checkpoint_every == 0:
            self._best.flush(out_dir)
            self.save_last(out_dir, state)  # resume state (~3x the generator's size) every N epochs only
        return improved, time.perf_counter() - saving

    def _cluster_call(self, state: TrainState, call: Callable):
        """Run a step that talks to other workers (sync.cluster_call)."""
        return sync.cluster_call(self.dist, state.epoch, call)

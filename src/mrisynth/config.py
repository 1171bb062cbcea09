"""Typed, validated parameters: `params.yaml` is read once, at the edge, into frozen pydantic dataclasses.

Each section is named after the stage (or job) that reads it, as in DVC's example projects. Types are
checked strictly by pydantic (no "1" for 1, no 1 for true; a YAML list is a tuple), unknown keys are
refused with the closest known key, and each section's `check()` adds the rules between values. Every
error is one ConfigError line naming the file and key. `python -m mrisynth.ops.configdoc` prints the
configuration reference (docs/configuration.md) from this schema."""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import field
from pathlib import Path

import pydantic
import yaml
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from mrisynth import MODALITIES
from mrisynth.core.arms import ARMS, BASELINE, TABLE
from mrisynth.core.urls import mask_url, url_password
from mrisynth.errors import ConfigError

# frozen, strict types, unknown keys refused: the one validated schema of params.yaml
dataclass = _pydantic_dataclass(frozen=True, config=pydantic.ConfigDict(strict=True, extra="forbid"))


@dataclass
class DataParams:
    """The shipped default data: phantom cases imported into `out` (versioned by data.dvc)."""

    out: str = "data"  # folder the dataset is imported into (versioned by data.dvc)
    phantom_version: int = 2  # 1: the original easy phantom; 2: realistic variety (grades, sites, sub-regions)
    phantom_cases: int = 100  # phantom cases generated (at least train + val + test)
    seed: int = 2020  # seed of the phantom and of the split; same seed, same bytes
    train: int = 30  # training cases (one axial slice each; the paper's 30)
    val: int = 20  # validation cases (checkpoint choice, tuning, promotion)
    test: int = 50  # test cases (read only by `evaluate`)
    image_size: int = 256  # side of the imported slices in pixels
    modalities: tuple[str, ...] = MODALITIES  # MRI modalities, in channel order
    slice: str = "max-tumor"  # axial slice per case: max-tumor, random-tumor, max-brain, center or an index
    fit: str = "pad"  # 240 -> image_size by pad (lossless) or resize

    def check(self) -> None:
        _positive(self, "phantom_cases", "train", "image_size")
        if self.phantom_version not in (1, 2):
            raise ConfigError(f"data.phantom_version: expected 1 (original) or 2 (realistic), found {self.phantom_version}")
        if self.val < 0 or self.test < 0:
            raise ConfigError("data.val and data.test must be >= 0")
        if self.phantom_cases < self.train + self.val + self.test:
            raise ConfigError(
                f"data.phantom_cases={self.phantom_cases} is fewer than train+val+test={self.train + self.val + self.test}"
            )


@dataclass
class PreprocessParams:
    """Training-ready arrays from `data_dir` at `size` x `size` (resized when it differs from the data)."""

    data_dir: str = "data"  # imported dataset (manifest.csv, TIFFs)
    out_dir: str = "work/preprocessed"  # training-ready arrays (train/val/test .npz)
    image_size: int = 128  # side the GAN and segmenter train at; a power of two >= 16
    experiment: str = "mrisynth"  # MLflow experiment of the `preprocess` run (dataset card numbers)

    def check(self) -> None:
        _positive(self, "image_size")
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ConfigError(f"preprocess.image_size: expected a power of two >= 16 (the GAN halves the image down to 1x1, e.g. 64, 128, 256), found {self.image_size}")


# Old key -> new key. `size` was renamed because DVC 3's run cache drops every param named `size`
# from its hash (dvc/stage/cache.py), so a changed size could restore outputs of another size.
RENAMED = {"size": "image_size"}
# Keys that are no longer parameters, and what replaces them.
REMOVED = {"restart": "`restart` is no longer a tracked parameter (setting it back would retrain): pass "
                      "`python pipelines/train_gan.py --restart` or set MRISYNTH_RESTART=1 for one run"}

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # auto: see mrisynth.io.devices
STRATEGIES = ("default", "mirrored", "multi_worker")  # see mrisynth.io.distribute
SYNTHESES = ("full", "inpaint")  # train_gan.synthesis (mrisynth.core.inpaint)
SELECTIONS = ("val_loss", "last")  # train_gan.select
# The paper's method: the train_gan levers `make paper` sets and direct callers of the trainer get (paper_settings).
PAPER_METHOD = {"generator": "pix2pix", "synthesis": "full", "select": "val_loss", "diffaugment": ""}


@dataclass
class TrainGanParams:
    """The conditional GAN (Novoselov & Smirnov 2024, sections 2.2-2.4). Paper profile: epochs 100, width 1.0, size 256."""

    experiment: str = "mrisynth"  # MLflow experiment of the run
    registry_name: str = "mrisynth-generator"  # MLflow registered model of the generator
    alpha: float = 100.0  # weight of the L1 term (GAN + alpha x L1; the paper's alpha), unless alpha_file holds a tuned one
    alpha_file: str | None = "work/tune/best_alpha.json"  # a tuned alpha (JSON {"alpha": ...}) that overrides `alpha` when present
    epochs: int = 100  # training epochs (the paper: 100)
    batch_size: int = 4  # images per update (the global batch under tf.distribute)
    learning_rate: float = 1e-4  # Adam learning rate of G and D (the paper: 1e-4)
    beta_1: float = 0.5  # Adam beta_1 (the paper: 0.5)
    dropout: float = 0.3  # generator decoder dropout, also active when rendering samples (the paper: 0.3)
    width: float = 0.5  # filter multiplier of G and D (1.0: the paper's filters)
    precision: str = "auto"  # auto, float32, mixed_bfloat16 or mixed_float16 (auto: see mrisynth.io.devices)
    seed: int = 42  # seed of weights, data order and dropout (draw k uses seed + k)
    checkpoint_every: int = 10  # write the resume state every N epochs (and at the end); the best generator with it (in memory in between)
    strategy: str = "default"   # default | mirrored | multi_worker (mrisynth.io.distribute); batch_size is the global batch
    cpu_replicas: int = 2       # mirrored on a machine without GPUs: logical CPU devices
    cluster_wait_s: float = 300.0  # multi_worker: longest wait for every worker to join
    peer_timeout_s: float = 30.0   # multi_worker: a worker silent this long stops the chief with an error
    generator: str = "spade"    # the generator architecture (mrisynth.core.generators.GENERATORS)
    synthesis: str = "inpaint"  # full: the whole image from the label map (the paper) | inpaint: the tumour region of a real slice (mrisynth.core.inpaint)
    inpaint_margin: float = 0.03  # inpaint: region = tumour grown by this fraction of the side; the blend ramp has the same width
    inpaint_blobs: float = 0.5  # inpaint training: probability of adding a random tumour-free region to a slice's region
    diffaugment: str = "translation,cutout,color"  # DiffAugment before the discriminator: comma-separated subset of translation,cutout,color ("" = off, the paper)
    disc_blocks: int = 0        # > 0: a shallower PatchGAN with at most this many blocks (0 = the paper's depth for the size)
    feature_matching: float = 0.0  # weight of pix2pixHD's feature-matching term (L1 between D's block features on real and generated pairs); 0 = off (the paper)
    texture: float = 0.0        # weight of a texture-energy term (L1 between real and generated local high-frequency energy, 8-px windows, 2 scales; inside the inpainting region); 0 = off (the paper)
    select: str = "last"        # the kept generator: val_loss (lowest validation G loss, the paper) | last (the final epoch)
    draws: int = 2              # generators trained (seeds seed, seed+1, ...), each with its own augmentation draw; the verdict resamples them
    draws_dir: str = "models/draws"  # generators of draws 2.. (draw 1 is model_path, the registered one)
    grid_every: int = 5  # log an image grid to MLflow every N epochs
    grid_images: int = 4  # validation slices in that grid
    out_dir: str = "work/gan"  # checkpoints, resume states and the kept generator
    model_path: str = "models/generator.keras"  # the kept generator (draw 1), registered in MLflow

    def in_channels(self, image_channels: int) -> int:
        """Generator input channels: the label conditioning (4), or inpainting's (mrisynth.core.inpaint)."""
        from mrisynth.core import encoding, inpaint

        return inpaint.in_channels(image_channels) if self.synthesis == "inpaint" else encoding.CONDITION_CHANNELS

    def draw_seed(self, draw: int) -> int:
        """The GAN seed of draw `draw` (0-based): seed, seed + 1, ..."""
        return self.seed + draw

    def draw_model_path(self, draw: int) -> str:
        """Where draw `draw`'s generator is written: model_path for draw 0 (registered), draws_dir otherwise."""
        return self.model_path if draw == 0 else str(Path(self.draws_dir) / f"generator-{draw + 1}.keras")

    def draw_out_dir(self, draw: int) -> str:
        """Draw `draw`'s checkpoint folder (resume state, best generator)."""
        return self.out_dir if draw == 0 else str(Path(self.out_dir).parent / f"{Path(self.out_dir).name}_draws" / f"draw-{draw + 1}")

    def check(self) -> None:
        from mrisynth.core import diffaugment, generators

        if self.generator not in generators.GENERATORS:
            raise ConfigError(f"train_gan.generator={self.generator!r}: expected one of {sorted(generators.GENERATORS)}")
        if self.synthesis not in SYNTHESES:
            raise ConfigError(f"train_gan.synthesis={self.synthesis!r}: expected one of {list(SYNTHESES)}")
        if self.select not in SELECTIONS:
            raise ConfigError(f"train_gan.select={self.select!r}: expected one of {list(SELECTIONS)}")
        try:
            diffaugment.parse(self.diffaugment)
        except ValueError as exc:
            raise ConfigError(f"train_gan.diffaugment={self.diffaugment!r}: {exc}") from None
        if not 0 < self.inpaint_margin < 0.5 or not 0 <= self.inpaint_blobs <= 1:
            raise ConfigError(f"train_gan.inpaint_margin={self.inpaint_margin} (expected 0 < m < 0.5) and "
                              f"train_gan.inpaint_blobs={self.inpaint_blobs} (expected a probability in [0, 1])")
        if not 0 <= self.feature_matching < 1e6:
            raise ConfigError(f"train_gan.feature_matching={self.feature_matching}: expected a weight >= 0 (0 = off)")
        if not 0 <= self.texture < 1e6:
            raise ConfigError(f"train_gan.texture={self.texture}: expected a weight >= 0 (0 = off)")
        if self.disc_blocks < 0:
            raise ConfigError(f"train_gan.disc_blocks={self.disc_blocks}: expected 0 (the paper's depth) or a positive count")
        _positive(self, "epochs", "batch_size", "learning_rate", "width", "grid_every", "grid_images", "checkpoint_every",
                  "cpu_replicas", "cluster_wait_s", "peer_timeout_s")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train_gan.strategy={self.strategy!r}: expected one of {STRATEGIES}")
        if self.generator == "spade-noise" and self.strategy != "default":
            raise ConfigError(f"train_gan.generator=spade-noise with strategy {self.strategy!r}: its noise layers would draw the "
                              "same noise on every replica; set train_gan.strategy: default")
        if self.draws < 1:
            raise ConfigError(f"train_gan.draws={self.draws}: expected 1 or more generators")
        if self.draws > 1 and self.strategy != "default":
            raise ConfigError(f"train_gan.draws={self.draws} with strategy {self.strategy!r}: several generator draws train on one device only; set draws: 1 or strategy: default")
        if self.alpha < 0:
            raise ConfigError(f"train_gan.alpha={self.alpha}: expected alpha >= 0")
        if not 0 <= self.dropout < 1 or not 0 <= self.beta_1 < 1:
            raise ConfigError("train_gan.dropout and train_gan.beta_1 must be in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train_gan.precision={self.precision!r}: expected one of {PRECISIONS}")


OBJECTIVES = ("image", "downstream")


@dataclass
class TuneParams:
    """Optuna study over train_gan.alpha. n_trials 0 = use train_gan.alpha as is (no tuning)."""

    n_trials: int = 3  # Optuna trials (0: no tuning, train_gan.alpha as is)
    alpha_low: float = 1.0  # lowest alpha tried (log-uniform)
    alpha_high: float = 300.0  # highest alpha tried
    objective: str = "image"        # image: min validation L1 in the brain; downstream: max validation Dice
    epochs: int = 2                 # GAN epochs per trial
    segmenter_epochs: int = 5       # downstream objective: segmenter epochs per trial
    storage: str = "sqlite:///optuna.db"  # or postgresql+psycopg2://user@host/db (password: PGPASSWORD or ~/.pgpass, never here), or journal:<file>
    study_name: str = "mrisynth-alpha"  # Optuna study name in `storage`
    prune_startup_trials: int = 2  # trials run to the end before the median pruner starts
    prune_warmup_epochs: int = 1  # epochs of a trial before it can be pruned
    seed: int = 0  # seed of the Optuna sampler
    heartbeat_s: int = 60           # RDB storages: a trial whose worker is silent 3 x this long is marked FAIL (0 = off)
    out: str = "work/tune/best_alpha.json"  # the tuned alpha (JSON), read by train_gan through alpha_file

    def check(self) -> None:
        if url_password(self.storage):
            raise ConfigError(f"tune.storage={mask_url(self.storage)!r}: holds a password, which DVC would record in dvc.lock and "
                              "MLflow in the run's params; write the URL without it (postgresql+psycopg2://user@host/db) and give "
                              "the password as PGPASSWORD or in ~/.pgpass (mode 0600), or set the whole URL in MRISYNTH_TUNE_STORAGE")
        if self.heartbeat_s < 0:
            raise ConfigError(f"tune.heartbeat_s={self.heartbeat_s}: expected seconds >= 0 (0 = no heartbeat)")
        if self.n_trials < 0 or self.epochs < 1 or self.segmenter_epochs < 1:
            raise ConfigError("tune.n_trials must be >= 0, tune.epochs and tune.segmenter_epochs >= 1")
        if not 0 < self.alpha_low < self.alpha_high:
            raise ConfigError(f"tune.alpha_low={self.alpha_low}, alpha_high={self.alpha_high}: expected 0 < low < high (log-uniform)")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"tune.objective={self.objective!r}: expected one of {list(OBJECTIVES)}")


def is_validation_metric(name: str) -> bool:
    """Whether a version tag may decide promotion: an allowlist, not a blocklist, so a test result tagged later
    under another prefix cannot slip in. Validation tags are named `val_*` (val_dice_gain_beyond_classic,
    val_gan_train_dice_tumour) or `*_val` (diversity_val); a name that mentions `test` anywhere is refused.
    The one rule for promote.metric in params.yaml (PromoteParams.check) and for `mrisynth promote`."""
    return (name.startswith("val_") or name.endswith("_val")) and "test" not in name.lower()


@dataclass
class PromoteParams:
    """`mrisynth promote`: move alias `champion` to a better generator version."""

    metric: str = "val_dice_gain_beyond_classic"  # the version tag compared (a validation metric; test metrics are refused)
    higher_is_better: bool = True  # direction of `metric`
    margin: float | None = 0.0  # the candidate must beat this on its own (first version too); null = only beat the champion

    def check(self) -> None:
        if not is_validation_metric(self.metric):
            raise ConfigError(f"promote.metric: expected a validation metric, a version tag named val_* or *_val (the test split "
                              f"never decides promotion), found {self.metric!r}")


HARMONISE = ("none", "mean")


@dataclass
class AugmentParams:
    """Grow the training split `factor`-fold (originals included): classic transforms and GAN synthesis."""

    factor: int = 10  # the training split grows factor-fold, originals included (the paper: 30 -> 300)
    synthetic_fraction: float = 0.5   # share of GAN images among the new ones in the classic+gan set
    recombine_fraction: float = 0.5   # share of GAN label maps made by tumour recombination (rest: transformed masks)
    rotation: float = 15.0  # largest rotation of classic transforms, degrees
    shift: float = 0.08  # largest shift, fraction of the side
    scale: tuple[float, ...] = (0.9, 1.1)  # zoom range [low, high]
    flip: bool = True  # random left-right flips
    brightness: float = 0.15  # largest relative intensity change
    sample_dropout: bool = True     # render GAN samples with dropout active (pix2pix's noise z); false = one fixed image per mask
    harmonise: str = "none"  # inpainting only: 'mean' shifts each filled region to the host's local normal-tissue level (core.inpaint.harmonise); withdrawn as default on the full run's validation
    filter_dice: float | None = None  # GAN samples on which a real-data segmenter (the `none` arm's recipe) scores tumour Dice below this are replaced (augment.sample_filter); null: no filter
    filter_pool: float = 2.0  # with filter_dice: candidates rendered per kept GAN sample (if too few pass, the best of the rest fill up)
    seed: int = 7  # seed of the transforms and of the GAN label maps
    out_dir: str = "work/augmented"  # augmented images, masks and manifests

    def check(self) -> None:
        if self.factor < 1:
            raise ConfigError(f"augment.factor={self.factor}: expected >= 1")
        for name in ("synthetic_fraction", "recombine_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name}={getattr(self, name)}: expected a value in [0, 1]")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale={list(self.scale)}: expected [low, high] with 0 < low <= high")
        if self.rotation < 0 or self.shift < 0 or not 0 <= self.brightness < 1:
            raise ConfigError("augment.rotation and augment.shift must be >= 0, augment.brightness in [0, 1)")
        if self.harmonise not in HARMONISE:
            raise ConfigError(f"augment.harmonise={self.harmonise!r}: expected one of {list(HARMONISE)}")
        if self.filter_dice is not None and not 0 <= self.filter_dice <= 1:
            raise ConfigError(f"augment.filter_dice={self.filter_dice}: expected a tumour Dice in [0, 1], or null for no filter")
        if self.filter_pool < 1:
            raise ConfigError(f"augment.filter_pool={self.filter_pool}: expected >= 1 (candidates rendered per kept GAN sample)")


SEGMENTER_SCHEDULES = ("constant", "cosine")
SEGMENTER_SELECT = ("best", "last")


@dataclass
class TrainSegmenterParams:
    """Base U-Net per augmentation arm and seed (the paper's segmentation experiment). Paper profile: 50 epochs, 3 seeds."""

    arms: tuple[str, ...] = ARMS  # augmentation arms trained (mrisynth.core.arms; none and at least one other)
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)  # segmenter seeds per arm and generator draw (the verdict's CI resamples them; the paper profile: 3)
    epochs: int = 40          # the most epochs; training stops earlier after `patience` epochs without a better val Dice
    min_epochs: int = 10      # no early stopping before this epoch (augmented arms start slower than `none`)
    patience: int = 8  # epochs without a better validation Dice before stopping
    min_delta: float = 0.005  # an epoch counts as an improvement for early stopping only if val tumour Dice rises by more
    jitter: bool = False      # on-the-fly flip/shift/intensity jitter for every arm (none included); off as in the paper
    batch_size: int = 4  # images per update
    depth: int = 4  # U-Net levels
    base_filters: int = 8  # filters of the first U-Net level (doubled per level)
    dropout: float = 0.1  # dropout in the U-Net bottleneck
    learning_rate: float = 2e-3  # Adam learning rate (the start of the schedule)
    schedule: str = "constant"  # constant | cosine (decays to 0 over epochs x steps_per_epoch updates)
    select: str = "best"  # best: the epoch with the best validation tumour Dice, early stopping | last: the final weights, all epochs
    dice_weight: float = 1.0  # weight of the soft Dice term next to cross-entropy
    equal_steps: bool = True  # every arm gets the same number of updates per epoch (False: one pass per arm, as the paper)
    real_share: float | None = None  # augmented arms: each batch element is a real slice with this probability (null: every image alike, the paper)
    steps_per_epoch: int = 25  # > 0: this many updates per epoch for every arm (an "epoch" = a validation/early-stopping period)
    precision: str = "auto"  # auto, float32, mixed_bfloat16 or mixed_float16
    workers: int = 0  # runs trained side by side, each in its own process with cores // workers threads (0: one per usable core)
    experiment: str = "mrisynth"  # MLflow experiment of the runs
    registry_name: str = "mrisynth-segmenter"  # MLflow registered model of the segmenters
    out_dir: str = "work/segmenter"  # checkpoints of every arm and seed, runs.json

    def check(self) -> None:
        _positive(self, "epochs", "patience", "batch_size", "depth", "base_filters", "learning_rate")
        if not 1 <= self.min_epochs <= self.epochs:
            raise ConfigError(f"train_segmenter.min_epochs: expected 1..epochs ({self.epochs}), found {self.min_epochs}")
        if self.min_delta < 0:
            raise ConfigError(f"train_segmenter.min_delta: expected >= 0, found {self.min_delta}")
        if self.workers < 0:
            raise ConfigError(f"train_segmenter.workers: expected 0 (one per usable core) or a positive count, found {self.workers}")
        if self.steps_per_epoch < 0:
            raise ConfigError(f"train_segmenter.steps_per_epoch: expected 0 (derive from the data) or a positive count, found {self.steps_per_epoch}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"train_segmenter.arms: expected distinct arms from {list(ARMS)}, found {list(self.arms)}")
        if not any(TABLE[a].real_only for a in self.arms) or len(self.arms) < 2:
            raise ConfigError(f"train_segmenter.arms: expected a real-only arm ('none') and at least one augmented arm (a comparison needs two), found {list(self.arms)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"train_segmenter.seeds: expected one or more distinct integers, found {list(self.seeds)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"train_segmenter.dropout: expected a value in [0, 1), found {self.dropout}")
        if self.schedule not in SEGMENTER_SCHEDULES:
            raise ConfigError(f"train_segmenter.schedule={self.schedule!r}: expected one of {SEGMENTER_SCHEDULES}")
        if self.select not in SEGMENTER_SELECT:
            raise ConfigError(f"train_segmenter.select={self.select!r}: expected one of {SEGMENTER_SELECT}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train_segmenter.precision={self.precision!r}: expected one of {PRECISIONS}")
        if self.real_share is not None and not 0 < self.real_share < 1:
            raise ConfigError(f"train_segmenter.real_share={self.real_share}: expected a share in (0, 1), or null for every image alike")


@dataclass
class GanUsefulnessParams:
    """GAN-train / GAN-test (Shmelkov et al. 2018) and sample diversity of the trained generator."""

    diversity_samples: int = 4      # renders of the same validation mask with dropout active
    seed: int = 11  # seed of the GAN-train segmenter and of the renders
    out_dir: str = "work/gan_usefulness"  # the GAN-train segmenter

    def check(self) -> None:
        if self.diversity_samples < 2:
            raise ConfigError(f"gan_usefulness.diversity_samples: expected >= 2 (a spread needs two samples), found {self.diversity_samples}")


@dataclass
class EvaluateParams:
    baseline: str = BASELINE        # the paper layout's "without" arm
    augmented: str = "classic+gan"  # the paper layout's "with" arm
    examples: int = 4  # test images in reports/test_examples.png
    bootstrap: int = 5000           # bootstrap replicates of the paired CIs (images and seeds resampled)
    ci_level: float = 0.95  # confidence level of the intervals
    seed: int = 0  # seed of the bootstrap

    def check(self) -> None:
        for name in ("baseline", "augmented"):
            if getattr(self, name) not in ARMS:
                raise ConfigError(f"evaluate.{name}: expected one of {list(ARMS)}, found {getattr(self, name)!r}")
        if self.bootstrap < 100 or not 0.5 < self.ci_level < 1:
            raise ConfigError(f"evaluate.bootstrap >= 100 and 0.5 < evaluate.ci_level < 1 expected, found {self.bootstrap} and {self.ci_level}")


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    tune: TuneParams = field(default_factory=TuneParams)
    train_gan: TrainGanParams = field(default_factory=TrainGanParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    train_segmenter: TrainSegmenterParams = field(default_factory=TrainSegmenterParams)
    gan_usefulness: GanUsefulnessParams = field(default_factory=GanUsefulnessParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def check(self) -> None:
        for key in ("baseline", "augmented"):
            arm = getattr(self.evaluate, key)
            if arm not in self.train_segmenter.arms:
                raise ConfigError(f"evaluate.{key}: names arm {arm!r}, which train_segmenter.arms {list(self.train_segmenter.arms)} does not train")
        if self.augment.harmonise != "none" and self.train_gan.synthesis != "inpaint":
            raise ConfigError(f"augment.harmonise={self.augment.harmonise!r} shifts inpainted regions, but train_gan.synthesis is "
                              f"{self.train_gan.synthesis!r}; set augment.harmonise: none or train_gan.synthesis: inpaint")


SECTION_NAMES = {typing.get_type_hints(Params)[f.name].__name__: f.name for f in dataclasses.fields(Params)}  # class -> key


def _positive(section, *names: str) -> None:
    for name in names:
        if getattr(section, name) <= 0:
            raise ConfigError(f"{SECTION_NAMES.get(type(section).__name__, type(section).__name__)}.{name}: expected a positive number, found {getattr(section, name)}")


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _expected(annotation) -> str:
    """A field's type in words: int, str, bool, a number (float), a list of int, ... (or null)."""
    if annotation is float:
        return "a number"
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return "a list of numbers" if item is float else f"a list of {_expected(item)}"
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if options and len(options) < len(typing.get_args(annotation)):
        return " or ".join(_expected(a) for a in options) + " or null"
    return getattr(annotation, "__name__", str(annotation))


def _as_tuples(value):
    """YAML has lists only: a list is the schema's tuple (nested lists too)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def section_from_dict(cls, raw: dict | None, where: str):
    """Build a params section from a dict: unknown keys refused (with the closest known key), types
    checked by the schema, then its check(); every problem is one ConfigError line naming the key."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, found {raw!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    renamed = {k: RENAMED[k] for k in unknown if k in RENAMED and RENAMED[k] in names}
    removed = [REMOVED[k] for k in unknown if k in REMOVED]
    if removed:
        raise ConfigError(f"{where}: " + "; ".join(removed))
    if renamed:
        raise ConfigError(f"{where}: key(s) renamed: " + ", ".join(f"{old} -> {new}" for old, new in sorted(renamed.items()))
                          + " (DVC's run cache ignores any parameter named `size`, so it could restore stale outputs)")
    if unknown:
        hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, names, n=1)) else k for k in unknown]
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}; expected some of {sorted(names)}")
    try:
        section = cls(**{key: _as_tuples(value) for key, value in raw.items()})
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        raise ConfigError(f"{where}.{key}: expected {_expected(typing.get_type_hints(cls).get(key))}, "
                          f"found {_describe(raw.get(key))}") from None
    for f in dataclasses.fields(cls):  # strict types accept .nan and .inf as numbers: refuse them
        values = getattr(section, f.name)
        for value in values if isinstance(values, tuple) else (values,):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}.{f.name}: expected a finite number, found {values!r}")
    try:
        section.check()
    except ConfigError as exc:  # the rules between values name the key; say which file too
        source = where.rsplit(":", 1)[0] if ":" in where else ""
        raise ConfigError(f"{source}:{exc}" if source and not str(exc).startswith(source) else str(exc)) from None
    return section


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml. Every section must be present (a missing key inside one takes its default)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {raw!r}")
    hints = typing.get_type_hints(Params)
    known = [f.name for f in dataclasses.fields(Params)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        hints_text = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, known, n=1)) else k for k in unknown]
        raise ConfigError(f"{path}: unknown section(s) {', '.join(hints_text)}; expected some of {sorted(known)}")
    sections = {k: section_from_dict(hints[k], raw.get(k), f"{path}:{k}") for k in known}
    missing = [k for k in known if not isinstance(raw.get(k), dict) or not raw[k]]
    if missing:
        raise ConfigError(f"{path}: section(s) {', '.join(missing)} missing or empty; write every section out (DVC tracks parameters "
                          "by key, so defaults hidden in the code are invisible to `dvc params diff`): copy them from the "
                          "shipped params.yaml (`git show HEAD:params.yaml`)")
    params = Params(**sections)
    try:
        params.check()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return params


def as_flat_dict(section) -> dict[str, object]:
    """A params dataclass as a flat {dotted.name: value} dict, for MLflow (any password in a URL masked)."""
    flat = {}
    for key, value in dataclasses.asdict(section).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return {k: mask_url(v) if isinstance(v, str) else v for k, v in flat.items()}

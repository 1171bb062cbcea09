"""Every report the pipeline writes, in one place (repository-relative). dvc.yaml declares the same
files as outs, metrics and plots; a test checks that the two agree. The folders of models and work
files are parameters (params.yaml: `out_dir`, `model_path`, ...), not constants."""
from __future__ import annotations

import json
from pathlib import Path

REPORTS = Path("reports")
GX_DOCS = REPORTS / "gx_docs"                          # preprocess: Great Expectations Data Docs
PREPROCESS = REPORTS / "preprocess.json"               # preprocess: split sizes, validation summary
DATA_CARD = REPORTS / "data_card.json"                 # preprocess: the dataset card's numbers
DATA_VALIDATION = REPORTS / "data_validation.html"     # preprocess: every GX expectation and its result, offline HTML
DATA_VALIDATION_MD = REPORTS / "data_validation.md"    # preprocess: the same as Markdown
TRAIN_GAN = REPORTS / "train_gan.json"                 # train_gan: metrics, MLflow run id and registered version
TRAIN_GAN_HISTORY = REPORTS / "train_gan_history.csv"  # train_gan: per-epoch losses and validation scores (CSV)
TRAIN_GAN_CURVES = REPORTS / "train_gan_curves.png"    # train_gan: the same curves as a figure (DVC image plot)
AUGMENT = REPORTS / "augment.json"                     # augment: counts per sample kind
TRAIN_SEGMENTER = REPORTS / "train_segmenter.json"     # train_segmenter: best validation Dice per arm
GAN_USEFULNESS = REPORTS / "gan_usefulness.json"       # gan_usefulness: GAN-train, GAN-test, diversity
REALISM = REPORTS / "realism.json"                     # gan_usefulness: the realism panel
REALISM_PNG = REPORTS / "realism.png"                  # gan_usefulness: mask | real | generated figure
TABLE1 = REPORTS / "table1.md"                         # evaluate: the verdict and Table 1
METRICS = REPORTS / "metrics.json"                     # evaluate: every number of Table 1
PER_IMAGE = REPORTS / "per_image.csv"                  # evaluate: per-image scores of every model
TEST_EXAMPLES = REPORTS / "test_examples.png"          # evaluate: predictions on test images
# The DVC metrics (`dvc metrics show`, `dvc exp show`): the headline numbers only (mrisynth.core.headline)
VERDICT = REPORTS / "verdict.json"                     # evaluate: test verdict, tumour-Dice difference and CI per comparison
SCORES = REPORTS / "scores.json"                       # evaluate: tumour Dice per arm, test and validation
GENERATOR = REPORTS / "generator.json"                 # evaluate: GAN-train / real-train, realism, validation gain
METRIC_FILES = (VERDICT, SCORES, GENERATOR)

BENCH = REPORTS / "bench.json"                         # make bench: every benchmark figure
SWEEP = REPORTS / "sweep"                              # make sweep: one validation record per variant
SWEEP_TABLE = REPORTS / "sweep.md"                     # make sweep: the table of every recorded variant

WRITTEN = (PREPROCESS, DATA_CARD, DATA_VALIDATION, DATA_VALIDATION_MD, TRAIN_GAN, TRAIN_GAN_HISTORY, TRAIN_GAN_CURVES, AUGMENT,
           TRAIN_SEGMENTER, GAN_USEFULNESS, REALISM, REALISM_PNG, TABLE1, METRICS, PER_IMAGE, TEST_EXAMPLES, *METRIC_FILES)


def augmented_manifest(folder: Path, draw: int = 0) -> Path:
    """The augmented set's manifest of generator draw `draw` (0-based) in `folder` (augment.out_dir)."""
    return Path(folder) / ("manifest.csv" if draw == 0 else f"manifest-draw-{draw + 1}.csv")


def write_json(path: Path, data: dict, **dump) -> None:
    """Write a report as indented JSON with a final newline, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, **dump) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def read_json(path: Path) -> dict | None:
    """A report written by an earlier stage, None when it is absent."""
    return json.loads(path.read_text()) if path.is_file() else None

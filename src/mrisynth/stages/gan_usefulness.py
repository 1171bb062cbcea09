"""`gan_usefulness` stage: GAN-train, GAN-test and diversity of the trained generator (see mrisynth.training.usefulness).

Reads  work/preprocessed/{train,val,test}.npz, models/generator.keras, work/augmented/ (the GAN
       samples), work/segmenter/runs.json (the `none` segmenters), params `gan_usefulness`,
       `train_segmenter`, `preprocess`, reports/train_gan.json (generator run and version).
Writes <gan_usefulness.out_dir>/gan_train.keras, reports/gan_usefulness.json, the realism panel
       (reports/realism.json, reports/realism.png: generated vs real on the validation label maps); the scores are logged as
       metrics on the generator's MLflow run and as tags on its registered version.

The GAN-train segmenter uses the `train_segmenter` settings, the first seed and the same number of
updates per epoch as the arms; its checkpoint is chosen on the real validation split (never test)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from mrisynth.inference import rendering
from mrisynth.training import usefulness
from mrisynth.augment.arm_data import synthetic_only
from mrisynth.augment.synthesis import load_generator
from mrisynth import paths
from mrisynth.config import load_params
from mrisynth.core.arms import BASELINE
from mrisynth.core import encoding
from mrisynth.errors import DataError
from mrisynth.stages import params_main
from mrisynth.io import arrays, tracking
from mrisynth.io import registry
from mrisynth.core import figures


def realism_panel(generator, val, gan, sample: bool, seed: int, modalities: list[str], harmonise: str = "none") -> dict:
    """The realism panel (mrisynth.core.realism) on the validation label maps -> reports/realism.json, and a
    labelled figure, mask | real | generated for every modality, of 4 validation slices -> reports/realism.png."""
    from PIL import Image

    from mrisynth.core import realism

    rendered = rendering.render_split(generator, val, gan.synthesis, gan.inpaint_margin, sample=sample, seed=seed, harmonise=harmonise)
    where = rendering.drawn(val, gan.synthesis, gan.inpaint_margin)
    panel = realism.panel(val.images, rendered, val.labels, where, modalities)
    meta = {"split": "val", "images": len(val), "synthesis": gan.synthesis, "generator": gan.generator, "dropout_sampling": sample,
            "seed": seed, "harmonise": harmonise, "where": "inpainted regions" if gan.synthesis == "inpaint" else "brain", "tolerance": realism.TOLERANCE}
    paths.write_json(paths.REALISM, meta | panel, default=float)
    count = min(4, len(val))
    rows = [[figures.label_rgb(val.labels[i])] + [val.images[i, ..., c] for c in range(len(modalities))]
            + [rendered[i, ..., c] for c in range(len(modalities))] for i in range(count)]
    titles = ["mask"] + [f"{m} real" for m in modalities] + [f"{m} generated" for m in modalities]
    grid = figures.titled_grid(figures.image_grid(rows), titles, val.images.shape[1])
    Image.fromarray(grid).save(paths.REALISM_PNG)
    return panel


def run(params_path: str = "params.yaml") -> int:
    from mrisynth.training import segmenter

    params = load_params(params_path)
    g, seg, pre = params.gan_usefulness, params.train_segmenter, params.preprocess
    started = time.perf_counter()
    splits = {name: arrays.load_split(Path(pre.out_dir), name) for name in ("train", "val", "test")}
    gan = params.train_gan
    generator = load_generator(Path(gan.model_path), pre.image_size, splits["train"].images.shape[-1], gan.synthesis)
    runs_path = Path(seg.out_dir) / "runs.json"
    if not runs_path.is_file():
        raise DataError(f"{runs_path}: expected the trained segmenters' registry, found no file; run `dvc repro train_segmenter`")
    runs = json.loads(runs_path.read_text())
    real_models = [segmenter.load(Path(info["path"])) for info in runs["arms"][BASELINE].values()]

    # GAN-train: synthetic pairs only, selected on real validation images
    images, classes = synthetic_only(Path(params.augment.out_dir))
    val_classes = encoding.labels_to_classes(splits["val"].labels)
    largest = max(len(splits["train"]) * params.augment.factor, len(images))
    steps = seg.steps_per_epoch or (math.ceil(largest / seg.batch_size) if seg.equal_steps else None)
    out_dir = Path(g.out_dir)
    result = segmenter.train(seg, seg.seeds[0], images, classes, splits["val"].images, val_classes, out_dir / "gan_train.keras", None, steps)
    gan_train_model = segmenter.load(out_dir / "gan_train.keras")
    report: dict[str, object] = {"seed": seg.seeds[0], "gan_train_images": len(images), "gan_train_best_epoch": result["best_epoch"]}
    for split in ("val", "test"):
        data = splits[split]
        gt = usefulness.scores(gan_train_model, data.images, encoding.labels_to_classes(data.labels))
        gtest = usefulness.gan_test(real_models, generator, data, g.seed, gan.synthesis, gan.inpaint_margin, params.augment.harmonise)
        for key in usefulness.KEYS:
            report[f"{split}_gan_train_{key}"] = gt[key]
            report[f"{split}_real_train_{key}"] = gtest[f"real_{key}"]
            report[f"{split}_gan_test_{key}"] = gtest[f"gan_test_{key}"]
    report["diversity_val"] = rendering.diversity(generator, splits["val"], g.diversity_samples, g.seed, gan.synthesis, gan.inpaint_margin,
                                                  params.augment.harmonise)
    report["diversity_samples"] = g.diversity_samples
    report["harmonise"] = params.augment.harmonise   # GAN-test, diversity and the realism panel render as augment does
    panel = realism_panel(generator, splits["val"], gan, params.augment.sample_dropout, g.seed, list(params.data.modalities),
                          params.augment.harmonise)
    report["realism_worst_deviation"] = panel["worst_deviation"]
    report["realism_within_tolerance"] = panel["within_tolerance"]
    report["seconds"] = round(time.perf_counter() - started, 1)

    paths.write_json(paths.GAN_USEFULNESS, report)
    gan_report = paths.TRAIN_GAN
    info = json.loads(gan_report.read_text()) if gan_report.is_file() else {}
    numbers = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and k not in ("seed", "seconds")}
    numbers |= {f"realism_{m}_{stat}_ratio": v["ratio"] for m in params.data.modalities for stat, v in panel[m].items()
                if np.isfinite(v["ratio"])}
    if info.get("run_id"):
        tracking.configure(params.train_gan.experiment)
        tracking.log_metrics_to_run(info["run_id"], numbers)
    if info.get("model_version") is not None:
        tracking.configure(params.train_gan.experiment)
        registry.tag_version(params.train_gan.registry_name, info["model_version"],
                             {k: v for k, v in numbers.items() if k.startswith(("val_gan", "test_gan", "diversity"))})
    print(f"gan_usefulness: GAN-train val tumour Dice {report['val_gan_train_dice_tumour']:.3f} (real-trained {report['val_real_train_dice_tumour']:.3f}); "
          f"GAN-test val {report['val_gan_test_dice_tumour']:.3f}; diversity {report['diversity_val']:.4f} (std of [0,1] intensities); "
          f"realism: worst statistic {panel['worst_deviation']:.0%} off the real value ({'within' if panel['within_tolerance'] else 'outside'} 25 %)")
    return 0


def main(argv: list[str] | None = None) -> None:
    params_main(run, argv)

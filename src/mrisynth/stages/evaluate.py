"""`evaluate` stage: the paper's Table 1 (with/without augmentation) plus BraTS region scores.

Reads  work/segmenter/runs.json and checkpoints, work/preprocessed/{train,val,test}.npz,
       reports/train_gan.json (generator version), params `evaluate`.
Writes reports/table1.md, reports/metrics.json (`dvc metrics show/diff`), reports/test_examples.png,
       and an MLflow run with the table, per-arm metrics, deltas and links to the arms' runs.

Every arm is scored on the same real slices: its 30 real training slices (Train), the validation
split (Val) and the test split (Test). With several seeds, cells read mean ± std."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrisynth.config import load_params
from mrisynth.core import encoding, segmetrics
from mrisynth.errors import DataError
from mrisynth.stages import stage_main
from mrisynth.io import arrays, tracking
from mrisynth.stages.train_segmenter import arm_slug

SPLITS = (("train", "Train"), ("val", "Val"), ("test", "Test"))
TABLE_ROWS = [
    ("accuracy", "Accuracy"),
    ("mean_iou", "Mean IoU (all 4 classes)"),
    ("mean_iou_tumour", "Mean IoU (tumour classes)"),
    ("dice", "Dice (all 4 classes)"),
    ("dice_tumour", "Dice (tumour classes)"),
    ("dice_WT", "Dice WT"),
    ("dice_TC", "Dice TC"),
    ("dice_ET", "Dice ET"),
    ("hd95_WT", "HD95 WT (px)"),
    ("hd95_TC", "HD95 TC (px)"),
    ("hd95_ET", "HD95 ET (px)"),
]
PAPER = {"accuracy": ((0.90, 0.94), (0.92, 0.85), (0.87, 0.90)), "mean_iou": ((0.43, 0.69), (0.37, 0.58), (0.38, 0.59)),
         "dice": ((0.27, 0.71), (0.25, 0.60), (0.25, 0.66))}


def score_arms(runs: dict, splits: dict[str, arrays.SplitArrays]) -> tuple[dict, dict]:
    """{arm: {split: {metric: [value per seed]}}} and {arm: test predictions of the first seed}."""
    from mrisynth import segmenter

    scores, examples = {}, {}
    for arm, seeds in runs["arms"].items():
        scores[arm] = {split: {} for split in splits}
        for k, (seed, info) in enumerate(seeds.items()):
            path = Path(info["path"])
            if not path.is_file():
                raise DataError(f"{path}: segmenter checkpoint for arm {arm!r} seed {seed} not found; run `dvc repro train_segmenter`")
            model = segmenter.load(path)
            for split, data in splits.items():
                pred = segmenter.predict_classes(model, data.images)
                if split == "test" and k == 0:
                    examples[arm] = pred
                for metric, value in segmetrics.evaluate(encoding.labels_to_classes(data.labels), pred).items():
                    scores[arm][split].setdefault(metric, []).append(value)
    return scores, examples


def summarise(scores: dict) -> dict:
    """{arm: {split: {metric: mean, metric_std: std}}}."""
    out = {}
    for arm, by_split in scores.items():
        out[arm] = {}
        for split, metrics in by_split.items():
            out[arm][split] = {}
            for metric, values in metrics.items():
                out[arm][split][metric] = float(np.mean(values))
                if len(values) > 1:
                    out[arm][split][f"{metric}_std"] = float(np.std(values))
    return out


def _cell(summary: dict, arm: str, split: str, metric: str) -> str:
    values = summary[arm][split]
    std = values.get(f"{metric}_std")
    return f"{values[metric]:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def table_markdown(summary: dict, arms: list[str], baseline: str, augmented: str, seeds: int, size: int) -> str:
    header = ["Metric"] + [f"{title} ({arm})" for _, title in SPLITS for arm in arms]
    lines = ["# Table 1: segmentation without and with augmentation", "",
             f"U-Net trained per arm ({seeds} seed{'s' if seeds > 1 else ''}{', mean ± std' if seeds > 1 else ''}); "
             f"without = `{baseline}`, with = `{augmented}`. Evaluated at {size}x{size} on the real slices of each split.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, title in TABLE_ROWS:
        lines.append("| " + " | ".join([title] + [_cell(summary, arm, split, metric) for split, _ in SPLITS for arm in arms]) + " |")
    lines += ["", "## Paper layout (without → with)", "", "| Metric | Train | Val | Test |", "|---|---|---|---|"]
    for metric, title in (("accuracy", "Accuracy"), ("mean_iou", "Mean IoU"), ("dice", "Dice")):
        cells = [f"{summary[baseline][s][metric]:.2f} → {summary[augmented][s][metric]:.2f}" for s, _ in SPLITS]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Paper's Table 1 for reference (its data, 256 px, real BraTS):", "", "| Metric | Train | Val | Test |", "|---|---|---|---|"]
    for metric, title in (("accuracy", "Accuracy"), ("mean_iou", "Mean IoU"), ("dice", "Dice")):
        lines.append(f"| {title} | " + " | ".join(f"{a:.2f} → {b:.2f}" for a, b in PAPER[metric]) + " |")
    lines += ["", "## Conventions", "",
              "- Accuracy, mean IoU and Dice pool pixel counts over all images of a split; classes 0 background, 1 NCR/NET, 2 edema, 3 enhancing.",
              "- Mean IoU leaves out a class absent from both truth and prediction. Dice uses smoothing S = 1 (an absent class scores 1).",
              "- 'all 4 classes' counts background; 'tumour classes' leaves it out. The paper's row is the all-classes mean.",
              "- WT/TC/ET Dice and HD95 are per image, then averaged. Both masks empty: Dice 1, HD95 0; one empty: Dice 0, HD95 = image diagonal.",
              "- HD95 is in pixels at the evaluated resolution.", ""]
    return "\n".join(lines)


def examples_png(path: Path, data: arrays.SplitArrays, predictions: dict[str, np.ndarray], count: int) -> None:
    """Rows: test image (FLAIR) | truth | prediction per arm."""
    from PIL import Image

    rows = []
    for i in range(min(count, len(data))):
        row = [data.images[i, ..., 0], tracking.label_rgb(data.labels[i])]
        row += [tracking.label_rgb(encoding.classes_to_labels(pred[i])) for pred in predictions.values()]
        rows.append(row)
    Image.fromarray(tracking.image_grid(rows)).save(path)


def run(params_path: str = "params.yaml") -> int:
    import mlflow

    params = load_params(params_path)
    p, pre, seg = params.evaluate, params.preprocess, params.train_segmenter
    runs_path = Path(seg.out_dir) / "runs.json"
    if not runs_path.is_file():
        raise DataError(f"{runs_path}: expected the trained segmenters' registry, found no file; run `dvc repro train_segmenter`")
    runs = json.loads(runs_path.read_text())
    splits = {name: arrays.load_split(Path(pre.out_dir), name) for name, _ in SPLITS}
    scores, predictions = score_arms(runs, splits)
    summary = summarise(scores)
    arms = list(runs["arms"])
    base, aug = p.baseline, p.augmented
    deltas = {split: {m: summary[aug][split][m] - summary[base][split][m] for m in ("accuracy", "mean_iou", "dice", "dice_tumour", "dice_WT", "dice_TC", "dice_ET")}
              for split, _ in SPLITS}
    Path("reports").mkdir(exist_ok=True)
    table = table_markdown(summary, arms, base, aug, len(seg.seeds), pre.size)
    Path("reports/table1.md").write_text(table)
    metrics = {"arms": summary, "delta": deltas, "test_dice_gain": deltas["test"]["dice"]}
    Path("reports/metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    examples_png(Path("reports/test_examples.png"), splits["test"], predictions, p.examples)

    generator_version = None
    gan_report = Path("reports/train_gan.json")
    if gan_report.is_file():
        generator_version = json.loads(gan_report.read_text()).get("model_version")
    tracking.configure(seg.experiment)
    with mlflow.start_run(run_name="evaluate"):
        link_tags = {f"run.{arm_slug(arm)}.seed{seed}": info["run_id"] for arm, seeds in runs["arms"].items() for seed, info in seeds.items()}
        mlflow.set_tags({"stage": "evaluate", "train_segmenter_run": runs["parent_run_id"], "baseline": base, "augmented": aug,
                         "generator_version": str(generator_version), "data_hash": tracking.data_hash(), "git_commit": tracking.git_commit()} | link_tags | tracking.launcher_tags())
        flat = {f"{split}_{metric}_{arm_slug(arm)}": value for arm, by_split in summary.items() for split, ms in by_split.items() for metric, value in ms.items()}
        flat |= {f"delta_{split}_{metric}": value for split, ms in deltas.items() for metric, value in ms.items()}
        flat["test_dice_gain"] = deltas["test"]["dice"]
        mlflow.log_metrics(flat)
        mlflow.log_artifact("reports/table1.md")
        mlflow.log_artifact("reports/metrics.json")
        mlflow.log_artifact("reports/test_examples.png")
        evaluate_run = mlflow.active_run().info.run_id
    if generator_version is not None:  # the promotion gate reads the metric from the generator version
        client = mlflow.MlflowClient()
        name = params.train_gan.registry_name
        client.set_model_version_tag(name, str(generator_version), "test_dice_gain", f"{deltas['test']['dice']:.6g}")
        client.set_model_version_tag(name, str(generator_version), "test_dice_tumour_gain", f"{deltas['test']['dice_tumour']:.6g}")
        client.set_model_version_tag(name, str(generator_version), "evaluate_run_id", evaluate_run)
    print(table.split("## Conventions")[0])
    return 0


def main() -> None:
    stage_main(run)

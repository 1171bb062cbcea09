"""`evaluate` stage: the verdict (paired statistics per question), Table 1 and BraTS region scores.

Reads  work/segmenter/runs.json and checkpoints, work/preprocessed/{train,val,test}.npz,
       reports/train_gan.json (generator run/version), reports/gan_usefulness.json, params `evaluate`.
Writes reports/table1.md, reports/metrics.json (`dvc metrics show/diff`), reports/per_image.csv,
       reports/test_examples.png; an MLflow run with the table, per-arm metrics and the comparisons;
       test/val metrics under the same names in every arm/seed child run; on the generator version a
       VALIDATION gate metric (`val_dice_gain_beyond_classic`) and test results tagged for information.

Every arm and seed is scored on the same real slices: its real training slices (Train), the
validation split (Val: also the checkpoint-selection split, so optimistic) and the test split (Test:
never read by training, tuning, checkpoint choice or promotion)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mrisynth.core.arms import BEYOND_CLASSIC, GAN_VS_NONE, arm_slug, comparisons_for
from mrisynth.config import load_params
from mrisynth.core import encoding, segmetrics, stats, threshold
from mrisynth.errors import DataError
from mrisynth.stages import stage_main
from mrisynth.io import arrays, tracking

SPLITS = (("train", "Train"), ("val", "Val (selection)"), ("test", "Test"))
PAIRED = (("dice_tumour", "tumour Dice"), ("dice_WT", "WT Dice"), ("dice_TC", "TC Dice"), ("dice_ET", "ET Dice"))
# nnU-Net, BraTS 2020 winning entry, test-set Dice (Isensee et al., BrainLes 2020): the difficulty anchor.
NNUNET_BRATS2020 = {"WT": 0.889, "TC": 0.851, "ET": 0.820}

TABLE_ROWS = [
    ("dice_tumour", "Dice (tumour classes)"),
    ("mean_iou_tumour", "Mean IoU (tumour classes)"),
    ("dice_WT", "Dice WT"),
    ("dice_TC", "Dice TC"),
    ("dice_ET", "Dice ET"),
    ("hd95_WT", "HD95 WT (mm)"),
    ("hd95_TC", "HD95 TC (mm)"),
    ("hd95_ET", "HD95 ET (mm)"),
    ("dice_class1", "Dice NCR/NET"),
    ("dice_class2", "Dice edema"),
    ("dice_class3", "Dice enhancing"),
    ("accuracy", "Accuracy (background included)"),
    ("mean_iou", "Mean IoU (all 4 classes, background included)"),
    ("dice", "Dice (all 4 classes, background included; the paper's row)"),
]
PAPER = {"accuracy": ((0.90, 0.94), (0.92, 0.85), (0.87, 0.90)), "mean_iou": ((0.43, 0.69), (0.37, 0.58), (0.38, 0.59)),
         "dice": ((0.27, 0.71), (0.25, 0.60), (0.25, 0.66))}


def score_arms(runs: dict, splits: dict[str, arrays.SplitArrays]) -> tuple[dict, dict, dict]:
    """({arm: {split: {metric: [value per seed]}}}, {arm: {split: {key: (S, N) per-image array}}},
    {arm: test predictions of the first seed})."""
    from mrisynth.training import segmenter

    pooled, per_image, examples = {}, {}, {}
    truths = {split: encoding.labels_to_classes(data.labels) for split, data in splits.items()}
    for arm, seeds in runs["arms"].items():
        pooled[arm] = {split: {} for split in splits}
        rows = {split: [] for split in splits}
        for k, (seed, info) in enumerate(seeds.items()):
            path = Path(info["path"])
            if not path.is_file():
                raise DataError(f"{path}: segmenter checkpoint for arm {arm!r} seed {seed} not found; run `dvc repro train_segmenter`")
            model = segmenter.load(path)
            for split, data in splits.items():
                pred = segmenter.predict_classes(model, data.images)
                if split == "test" and k == 0:
                    examples[arm] = pred
                spacing = float(np.median(data.spacing)) if len(data) else 1.0
                for metric, value in segmetrics.evaluate(truths[split], pred, spacing=spacing, regions=False).items():
                    pooled[arm][split].setdefault(metric, []).append(value)
                rows[split].append(segmetrics.per_image(truths[split], pred, data.spacing))
        per_image[arm] = {split: {key: np.stack([r[key] for r in rows[split]]) for key in rows[split][0]} for split in splits}
        for split in splits:  # region scores: per image with each image's own spacing, then averaged
            for key, values in per_image[arm][split].items():
                if key != "dice_tumour" and values.shape[1]:
                    pooled[arm][split][key] = [float(v) for v in values.mean(axis=1)]
    return pooled, per_image, examples


def summarise(scores: dict) -> dict:
    """{arm: {split: {metric: mean over seeds, metric_std: std over seeds}}}."""
    out = {}
    for arm, by_split in scores.items():
        out[arm] = {}
        for split, metrics in by_split.items():
            out[arm][split] = {}
            for metric, values in metrics.items():
                out[arm][split][metric] = float(np.mean(values))
                out[arm][split][f"{metric}_std"] = float(np.std(values))
    return out


def threshold_reference(splits: dict[str, arrays.SplitArrays]) -> dict:
    """Fit one threshold per region on train; {region: {modality index, threshold, split: mean per-image Dice}}."""
    train = splits["train"]
    out = {}
    for region in ("WT", "TC", "ET"):
        rule = threshold.fit(train.images, encoding.labels_to_classes(train.labels), train.brain, region)
        out[region] = {"channel": rule.channel, "threshold": rule.threshold}
        for split, data in splits.items():
            out[region][split] = float(np.mean(threshold.apply(rule, data.images, encoding.labels_to_classes(data.labels), data.brain))) if len(data) else float("nan")
    return out


def by_draw(values: np.ndarray, units: list[dict]) -> np.ndarray:
    """Per-image scores (U units, N images) in runs.json order -> (D generator draws, S seeds, N), each draw's
    rows in seed order; units without a draw (older runs.json) are draw 1."""
    draws: dict[int, list[tuple[int, np.ndarray]]] = {}
    for row, info in zip(values, units):
        draws.setdefault(int(info.get("draw", 1)), []).append((int(info.get("seed", len(draws.get(1, [])))), row))
    seeds = {d: [s for s, _ in sorted(rows, key=lambda r: r[0])] for d, rows in draws.items()}
    if len({tuple(v) for v in seeds.values()}) > 1:
        raise DataError(f"evaluate: generator draws were trained with different seeds {seeds}; rerun `dvc repro train_segmenter`")
    return np.stack([np.stack([r for _, r in sorted(draws[d], key=lambda r: r[0])]) for d in sorted(draws)])


def comparisons(per_image: dict, arms: list[str], split: str, n_boot: int, level: float, seed: int, runs: dict | None = None) -> dict:
    """{question: {"baseline", "augmented", metric: Comparison dict}} on one split. With several generator
    draws (runs.json units carry `draw`), the generator arms' scores are (draws, seeds, images) and the
    bootstrap resamples draws too (mrisynth.core.stats)."""
    out = {}
    for base, aug, question in comparisons_for(arms):
        units = {arm: list(runs["arms"][arm].values()) if runs else [{}] * len(per_image[arm][split]["dice_tumour"]) for arm in (base, aug)}
        a_tumour, b_tumour = (by_draw(per_image[arm][split]["dice_tumour"], units[arm]) for arm in (base, aug))
        if a_tumour.shape[1:] != b_tumour.shape[1:]:
            raise DataError(f"evaluate: arms {base!r} and {aug!r} were trained with different seeds; pairing needs the same seeds (rerun `dvc repro train_segmenter`)")
        if a_tumour.shape[2] == 0:
            continue  # an empty split has nothing to compare
        entry = {"baseline": base, "augmented": aug}
        for metric, _ in PAIRED:
            a, b = (by_draw(per_image[arm][split][metric], units[arm]) for arm in (base, aug))
            entry[metric] = stats.compare(a, b, n_boot, level, seed).as_dict()
        out[question] = entry
    return out


def _cell(summary: dict, arm: str, split: str, metric: str, seeds: int) -> str:
    values = summary[arm][split]
    return f"{values[metric]:.3f}" + (f" ± {values[metric + '_std']:.3f}" if seeds > 1 else "")


def verdict_lines(tests: dict) -> list[str]:
    lines = []
    for question, entry in tests.items():
        c = stats.Comparison(**entry["dice_tumour"])
        lines.append(f"- **{stats.verdict(question, 'tumour Dice', c)}** (`{entry['augmented']}` − `{entry['baseline']}`)")
    return lines


def table_markdown(summary: dict, arms: list[str], seeds: list, size: int, tests: dict, vals: dict, thresholds: dict,
                   usefulness: dict | None, p, spacing: float, modalities: list[str]) -> str:
    n_seeds = len(seeds)
    n_draws = max(int(entry["dice_tumour"].get("n_draws", 1)) for entry in tests.values())
    draws_text = f" × {n_draws} generator draws (GAN arms)" if n_draws > 1 else ""
    level = f"{p.ci_level:.0%}".replace("%", " %")
    lines = ["# Table 1: does augmentation help the segmenter?", "",
             f"## Verdict (test split, paired over {next(iter(tests.values()))['dice_tumour']['n_images']} test images × {n_seeds} seeds{draws_text})", ""]
    lines += verdict_lines(tests)
    lines += ["", f"Each line: mean paired difference of per-image tumour-class Dice (augmented − baseline), {level} CI from a bootstrap "
              f"resampling test images and training seeds{' and generator draws (independently trained generators, each with its own augmentation draw; an arm without a generator is paired with every draw)' if n_draws > 1 else ''} "
              f"({p.bootstrap} replicates, seed {p.seed}), Wilcoxon signed-rank p over images "
              f"(seed-averaged differences). 'Shown' = the CI excludes 0. The p-value treats the trained seeds as fixed while the CI also "
              f"carries seed-to-seed variation, so a small p can stand next to 'not shown': the CI decides. Seeds {list(seeds)}; units: Dice in [0, 1].", "",
              "### All paired comparisons (test split)", "",
              "| Question | " + " | ".join(title for _, title in PAIRED) + " |", "|---|" + "---|" * len(PAIRED)]
    for question, entry in tests.items():
        cells = []
        for metric, _ in PAIRED:
            c = entry[metric]
            cells.append(f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] p={c['p_value']:.2g}")
        lines.append(f"| {question} (`{entry['augmented']}` − `{entry['baseline']}`) | " + " | ".join(cells) + " |")
    lines += ["", "On the validation split (the checkpoint-selection split, so optimistic; the promotion gate reads the "
              "'GAN beyond classic' mean below as `val_dice_gain_beyond_classic`):", "",
              "| Question | tumour Dice difference |", "|---|---|"]
    for question, entry in vals.items():
        c = entry["dice_tumour"]
        lines.append(f"| {question} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] |")

    header = ["Metric"] + [f"{title} ({arm})" for _, title in SPLITS for arm in arms]
    lines += ["", "## Scores per arm", "",
              f"U-Net per arm, {n_seeds} seed{'s' if n_seeds > 1 else ''} {list(seeds)}{' (mean ± std over seeds)' if n_seeds > 1 else ''}"
              f"{f'; the GAN arms once per generator draw ({n_draws} draws: mean ± std over seeds × draws)' if n_draws > 1 else ''}; "
              f"evaluated at {size}×{size} ({spacing:.2g} mm pixels) on the real slices of each split. Tumour-class metrics lead; "
              "rows marked 'background included' are dominated by background pixels (an all-background prediction scores high accuracy).", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, title in TABLE_ROWS:
        lines.append("| " + " | ".join([title] + [_cell(summary, arm, split, metric, n_seeds) for split, _ in SPLITS for arm in arms]) + " |")

    lines += ["", "## Non-learned reference: one global intensity threshold", "",
              "One threshold on one modality per region, fitted on the training split only (best pooled Dice over in-brain intensity quantiles); "
              "mean per-image Dice.", "", "| Region | Modality | Threshold | Train | Val | Test |", "|---|---|---|---|---|---|"]
    for region, t in thresholds.items():
        lines.append(f"| {region} | {modalities[t['channel']] if t['channel'] < len(modalities) else t['channel']} | {t['threshold']:.3f} | "
                     f"{t['train']:.3f} | {t['val']:.3f} | {t['test']:.3f} |")

    if "none" in summary:
        lines += ["", "## Difficulty anchor", "",
                  "The `none` arm (30 real slices) against nnU-Net's winning BraTS 2020 test result (3-D, all 369 training cases; "
                  "Isensee et al. 2021). A 2-D model on 30 slices scoring above it would mean the data is easier than real BraTS.", "",
                  "| Region | `none` arm, test (mean over seeds) | nnU-Net BraTS 2020 | below the anchor? |", "|---|---|---|---|"]
        for region, anchor in NNUNET_BRATS2020.items():
            value = summary["none"]["test"][f"dice_{region}"]
            lines.append(f"| {region} | {value:.3f} | {anchor:.3f} | {'yes' if value < anchor else 'NO'} |")

    lines += ["", "## GAN usefulness (Shmelkov et al. 2018)", ""]
    if usefulness:
        u = usefulness
        lines += ["| Score | Val | Test |", "|---|---|---|"]
        for key, title in (("dice_tumour", "tumour Dice"), ("dice_WT", "WT Dice"), ("dice_TC", "TC Dice"), ("dice_ET", "ET Dice")):
            lines.append(f"| GAN-train {title} (trained on {u['gan_train_images']} synthetic pairs only, seed {u['seed']}) | "
                         f"{u[f'val_gan_train_{key}']:.3f} | {u[f'test_gan_train_{key}']:.3f} |")
            lines.append(f"| real-train {title} (`none` arm, mean over seeds) | {u[f'val_real_train_{key}']:.3f} | {u[f'test_real_train_{key}']:.3f} |")
            lines.append(f"| GAN-test {title} (`none` arm on rendered images) | {u[f'val_gan_test_{key}']:.3f} | {u[f'test_gan_test_{key}']:.3f} |")
        lines += ["", f"Diversity: mean per-pixel std across {u['diversity_samples']} dropout-active renders of each validation mask, "
                  f"inside the brain: **{u['diversity_val']:.4f}** (intensities in [0, 1])."]
    else:
        lines.append("(not computed: run the `gan_usefulness` stage)")

    base, aug = p.baseline, p.augmented
    lines += ["", f"## Paper layout (without `{base}` → with `{aug}`; background-inclusive metrics as in the paper)", "",
              "| Metric | Train | Val (selection) | Test |", "|---|---|---|---|"]
    for metric, title in (("accuracy", "Accuracy"), ("mean_iou", "Mean IoU"), ("dice", "Dice")):
        cells = [f"{summary[base][s][metric]:.2f} → {summary[aug][s][metric]:.2f}" for s, _ in SPLITS]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Paper's Table 1 for reference (its data, 256 px, real BraTS):", "", "| Metric | Train | Val | Test |", "|---|---|---|---|"]
    for metric, title in (("accuracy", "Accuracy"), ("mean_iou", "Mean IoU"), ("dice", "Dice")):
        lines.append(f"| {title} | " + " | ".join(f"{a:.2f} → {b:.2f}" for a, b in PAPER[metric]) + " |")
    lines += ["", "## Conventions", "",
              "- Classes 0 background, 1 NCR/NET, 2 edema, 3 enhancing (BraTS labels 0, 1, 2, 4); regions WT = {1,2,3}, TC = {1,3}, ET = {3}.",
              "- Accuracy, mean IoU and class Dice pool pixel counts over all images of a split (mean IoU leaves out a class absent from truth "
              "and prediction; class Dice uses smoothing 1). 'tumour classes' leaves background out.",
              "- WT/TC/ET Dice and HD95 are per image, then averaged. Both masks empty: Dice 1, HD95 0; exactly one empty: Dice 0, "
              f"HD95 {segmetrics.EMPTY_HD95_MM} mm (the BraTS challenges' value, the 240×240×155 mm diagonal).",
              "- HD95 is in millimetres: pixel spacing recorded by the importer (1 mm BraTS voxels × the pad/resize factor) × the preprocess resize factor.",
              "- The paired statistics use per-image tumour-class Dice (mean over the three tumour classes with the empty convention above).",
              "- Val is the split each checkpoint was chosen on: its numbers are optimistic. Test is read only here, after all choices.", ""]
    return "\n".join(lines)


def examples_png(path: Path, data: arrays.SplitArrays, predictions: dict[str, np.ndarray], count: int) -> None:
    """Rows: test image (FLAIR) | truth | prediction per arm, with column titles and a label legend."""
    from PIL import Image

    rows = []
    for i in range(min(count, len(data))):
        row = [data.images[i, ..., 0], tracking.label_rgb(data.labels[i])]
        row += [tracking.label_rgb(encoding.classes_to_labels(pred[i])) for pred in predictions.values()]
        rows.append(row)
    grid = tracking.image_grid(rows)
    titled = tracking.titled_grid(grid, ["FLAIR (test)", "truth"] + [f"pred: {arm}" for arm in predictions], data.images.shape[2])
    Image.fromarray(titled).save(path)


def write_per_image(path: Path, per_image: dict, runs: dict, splits: dict) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        keys = list(next(iter(next(iter(per_image.values())).values())))
        writer.writerow(["arm", "seed", "split", "case_id", *keys])
        for arm, by_split in per_image.items():
            for s, seed in enumerate(runs["arms"][arm]):
                for split, values in by_split.items():
                    for i, case in enumerate(splits[split].case_ids):
                        writer.writerow([arm, seed, split, case, *(f"{values[k][s, i]:.6g}" for k in keys)])


def _json_safe(value):
    """NaN/inf -> None, recursively (strict JSON for reports/metrics.json)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def run(params_path: str = "params.yaml") -> int:
    params = load_params(params_path)
    p, pre, seg = params.evaluate, params.preprocess, params.train_segmenter
    runs_path = Path(seg.out_dir) / "runs.json"
    if not runs_path.is_file():
        raise DataError(f"{runs_path}: expected the trained segmenters' registry, found no file; run `dvc repro train_segmenter`")
    runs = json.loads(runs_path.read_text())
    arms = list(runs["arms"])
    missing = [a for a in (p.baseline, p.augmented) if a not in arms]
    if missing:
        raise DataError(f"{runs_path}: evaluate.baseline/augmented name arm(s) {missing} that were not trained (trained: {arms}); rerun `dvc repro train_segmenter`")
    splits = {name: arrays.load_split(Path(pre.out_dir), name) for name, _ in SPLITS}
    pooled, per_image, predictions = score_arms(runs, splits)
    summary = summarise(pooled)
    tests = comparisons(per_image, arms, "test", p.bootstrap, p.ci_level, p.seed, runs)
    vals = comparisons(per_image, arms, "val", p.bootstrap, p.ci_level, p.seed, runs)
    thresholds = threshold_reference(splits)
    usefulness_path = Path("reports/gan_usefulness.json")
    usefulness = json.loads(usefulness_path.read_text()) if usefulness_path.is_file() else None
    seeds = list(next(iter(runs["arms"].values())))
    spacing = float(np.median(splits["test"].spacing)) if len(splits["test"]) else 1.0
    modalities = list(params.data.modalities)
    Path("reports").mkdir(exist_ok=True)
    table = table_markdown(summary, arms, seeds, pre.image_size, tests, vals, thresholds, usefulness, p, spacing, modalities)
    Path("reports/table1.md").write_text(table)
    write_per_image(Path("reports/per_image.csv"), per_image, runs, splits)

    def gain(split: str, base: str, aug: str) -> float | None:
        """Mean paired difference of per-image tumour Dice (aug - base) over images, seeds and draws: the
        quantity of the verdict tables (None when an arm was not trained or the split is empty)."""
        if base not in per_image or aug not in per_image or per_image[base][split]["dice_tumour"].size == 0:
            return None
        a, b = (by_draw(per_image[arm][split]["dice_tumour"], list(runs["arms"][arm].values())) for arm in (base, aug))
        return float((b - a).mean())  # (draws, seeds, images), an arm without a generator broadcast over the draws

    gate = {"val_dice_gain_beyond_classic": gain("val", *BEYOND_CLASSIC[:2]), "val_dice_gain_gan": gain("val", *GAN_VS_NONE[:2]),
            "val_dice_gain": gain("val", p.baseline, p.augmented)}
    info = {"test_dice_gain_beyond_classic": gain("test", *BEYOND_CLASSIC[:2]), "test_dice_gain": gain("test", p.baseline, p.augmented)}
    metrics = {"seeds": seeds, "arms": summary, "comparisons_test": tests, "comparisons_val": vals,
               "threshold_reference": thresholds, "gan_usefulness": usefulness,
               **{k: v for k, v in (gate | info).items() if v is not None}}
    Path("reports/metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    examples_png(Path("reports/test_examples.png"), splits["test"], predictions, p.examples)

    gan_report = Path("reports/train_gan.json")
    generator_version = json.loads(gan_report.read_text()).get("model_version") if gan_report.is_file() else None
    tracking.configure(seg.experiment)
    # each arm/seed child run gets its own scores under the same names: the UI's compare view lines them up.
    # Validation scores of the chosen checkpoint go under best_val_* (val_* are the per-epoch training curves).
    for arm, seeds_info in runs["arms"].items():
        for s, (seed, info_) in enumerate(seeds_info.items()):
            child = {f"{'best_val' if split == 'val' else split}_{metric}": values[s]
                     for split in ("val", "test") for metric, values in pooled[arm][split].items()}
            tracking.log_metrics_to_run(info_["run_id"], child)
    link_tags = {f"run.{arm_slug(arm)}.seed{seed}": info_["run_id"] for arm, seeds_info in runs["arms"].items() for seed, info_ in seeds_info.items()}
    with tracking.stage_run("evaluate", tracking.run_tags("evaluate") | {"train_segmenter_run": runs["parent_run_id"], "arms": ",".join(arms),
                                                                        "generator_version": str(generator_version)} | link_tags) as run:
        flat = {f"{split}_{metric}_{arm_slug(arm)}": value for arm, by_split in summary.items() for split, ms in by_split.items() for metric, value in ms.items()}
        for name, table_ in (("test", tests), ("val", vals)):
            for question, entry in table_.items():
                key = f"{arm_slug(entry['augmented'])}_vs_{arm_slug(entry['baseline'])}"
                for metric, _ in PAIRED:
                    flat |= {f"{name}_diff_{metric}_{key}": entry[metric]["mean"], f"{name}_diff_{metric}_{key}_ci_low": entry[metric]["low"],
                             f"{name}_diff_{metric}_{key}_ci_high": entry[metric]["high"], f"{name}_diff_{metric}_{key}_p": entry[metric]["p_value"]}
        flat |= {f"threshold_{split}_dice_{region}": t[split] for region, t in thresholds.items() for split in ("train", "val", "test")}
        flat |= {k: v for k, v in (gate | info).items() if v is not None}
        run.log_metrics({k: v for k, v in flat.items() if v is not None and np.isfinite(v)})
        for artifact in ("reports/table1.md", "reports/metrics.json", "reports/test_examples.png", "reports/per_image.csv"):
            run.log_artifact(artifact)
        evaluate_run = run.run_id
    if generator_version is not None:
        # the promotion gate reads only the val_* tags; test results are tagged for information
        tags = {k: v for k, v in (gate | info).items() if v is not None} | {"evaluate_run_id": evaluate_run}
        tracking.tag_version(params.train_gan.registry_name, generator_version, tags)
    print(table.split("## Scores per arm")[0])
    return 0


def main() -> None:
    stage_main(run)

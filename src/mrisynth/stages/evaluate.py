"""`evaluate` stage: the verdict (paired statistics per question), Table 1 and BraTS region scores.

Reads  work/segmenter/runs.json and checkpoints, work/preprocessed/{train,val,test}.npz,
       reports/train_gan.json (generator run/version), reports/gan_usefulness.json, params `evaluate`.
Writes reports/table1.md, reports/metrics.json (every number), reports/per_image.csv,
       reports/test_examples.png, the DVC metrics reports/{verdict,scores,generator}.json (headline numbers); an MLflow run with the table, per-arm metrics and the comparisons;
       test/val metrics under the same names in every arm/seed child run; on the generator version a
       VALIDATION gate metric (`val_dice_gain_beyond_classic`, also `val_dice_gain_beyond_paste`) and test
       results tagged for information.

Every arm and seed is scored on the same real slices: its real training slices (Train), the
validation split (Val: also the checkpoint-selection split, so optimistic) and the test split (Test:
never read by training, tuning, checkpoint choice or promotion)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mrisynth.core.arms import BEYOND_CLASSIC, BEYOND_PASTE, GAN_VS_NONE, arm_slug, comparisons_for
from mrisynth import paths
from mrisynth.config import as_flat_dict, load_params
from mrisynth.core import encoding, headline, segmetrics, stats, threshold
from mrisynth.core.table1 import PAIRED, SPLITS, Table1, render
from mrisynth.errors import DataError
from mrisynth.stages import params_main
from mrisynth.io import arrays, tracking
from mrisynth.io import registry
from mrisynth.core import figures

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


def examples_png(path: Path, data: arrays.SplitArrays, predictions: dict[str, np.ndarray], count: int,
                 dice: dict[str, np.ndarray] | None = None) -> None:
    """Rows: test image (FLAIR, captioned with its case id) | truth | prediction per arm (captioned with its
    tumour Dice, `dice[arm][i]`), with column titles and a label legend."""
    from PIL import Image

    rows, captions = [], []
    for i in range(min(count, len(data))):
        row = [data.images[i, ..., 0], figures.label_rgb(data.labels[i])]
        row += [figures.label_rgb(encoding.classes_to_labels(pred[i])) for pred in predictions.values()]
        rows.append(row)
        captions.append([str(data.case_ids[i]), ""] + [f"Dice {dice[arm][i]:.2f}" if dice and arm in dice else "" for arm in predictions])
    grid = figures.caption_panels(figures.image_grid(rows), captions, data.images.shape[2])
    titled = figures.titled_grid(grid, ["FLAIR (test)", "truth"] + [f"pred: {arm}" for arm in predictions], data.images.shape[2])
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


def description(table: str) -> str:
    """The evaluate run's description (MLflow's run note, markdown): the verdict section of Table 1 and where the rest is."""
    verdict = table.split("## Verdict", 1)[1].split("\n### ", 1)[0] if "## Verdict" in table else "\n(no verdict)\n"
    return ("Paired comparisons of the segmenter arms on the test split (the verdict of Table 1); the full table is the "
            "artifact `table1.md`, per-image scores `per_image.csv`; tags `run.<arm>.seed<k>` link each arm's run.\n\n"
            "## Verdict" + verdict.rstrip() + "\n")


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
    usefulness = paths.read_json(paths.GAN_USEFULNESS)
    seeds = list(next(iter(runs["arms"].values())))
    spacing = float(np.median(splits["test"].spacing)) if len(splits["test"]) else 1.0
    modalities = list(params.data.modalities)
    table = render(Table1(summary, arms, seeds, pre.image_size, tests, vals, thresholds, usefulness, spacing, modalities,
                          p.baseline, p.augmented, p.ci_level, p.bootstrap, p.seed))
    paths.write_text(paths.TABLE1, table)
    write_per_image(paths.PER_IMAGE, per_image, runs, splits)

    def gain(split: str, base: str, aug: str) -> float | None:
        """Mean paired difference of per-image tumour Dice (aug - base) over images, seeds and draws: the
        quantity of the verdict tables (None when an arm was not trained or the split is empty)."""
        if base not in per_image or aug not in per_image or per_image[base][split]["dice_tumour"].size == 0:
            return None
        a, b = (by_draw(per_image[arm][split]["dice_tumour"], list(runs["arms"][arm].values())) for arm in (base, aug))
        return float((b - a).mean())  # (draws, seeds, images), an arm without a generator broadcast over the draws

    gate = {"val_dice_gain_beyond_classic": gain("val", *BEYOND_CLASSIC[:2]), "val_dice_gain_gan": gain("val", *GAN_VS_NONE[:2]),
            "val_dice_gain": gain("val", p.baseline, p.augmented), "val_dice_gain_beyond_paste": gain("val", *BEYOND_PASTE[:2])}
    info = {"test_dice_gain_beyond_classic": gain("test", *BEYOND_CLASSIC[:2]), "test_dice_gain": gain("test", p.baseline, p.augmented),
            "test_dice_gain_beyond_paste": gain("test", *BEYOND_PASTE[:2])}
    metrics = {"seeds": seeds, "arms": summary, "comparisons_test": tests, "comparisons_val": vals,
               "threshold_reference": thresholds, "gan_usefulness": usefulness,
               **{k: v for k, v in (gate | info).items() if v is not None}}
    paths.write_json(paths.METRICS, _json_safe(metrics))
    for path, numbers in ((paths.VERDICT, headline.verdict(tests)), (paths.SCORES, headline.scores(summary)),
                          (paths.GENERATOR, headline.generator(usefulness or {}, gate["val_dice_gain_beyond_classic"],
                                                               gate["val_dice_gain_beyond_paste"]))):
        paths.write_json(path, _json_safe(numbers))
    examples_png(paths.TEST_EXAMPLES, splits["test"], predictions, p.examples,
                 {arm: per_image[arm]["test"]["dice_tumour"][0] for arm in predictions})  # the first seed's, as `predictions`

    gan_report = paths.TRAIN_GAN
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
    run_tags = tracking.run_tags("evaluate") | {"train_segmenter_run": runs["parent_run_id"], "arms": ",".join(arms),
                                                "generator_version": str(generator_version or "none"), "mlflow.note.content": description(table)}
    run_params = as_flat_dict(p) | {"arms": ",".join(arms), "seeds": ",".join(map(str, seeds)),
                                    **{f"{split}_images": len(splits[split]) for split in ("val", "test")}}
    with tracking.stage_run("evaluate", run_tags | link_tags, run_params) as run:
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
        for artifact in (paths.TABLE1, paths.METRICS, paths.TEST_EXAMPLES, paths.PER_IMAGE):
            run.log_artifact(artifact)
        evaluate_run = run.run_id
    if generator_version is not None:
        # the promotion gate reads only the val_* tags; test results are tagged for information
        tags = {k: v for k, v in (gate | info).items() if v is not None} | {"evaluate_run_id": evaluate_run}
        registry.tag_version(params.train_gan.registry_name, generator_version, tags)
    print(table.split("## Scores per arm")[0])
    return 0


def main(argv: list[str] | None = None) -> None:
    params_main(run, argv)

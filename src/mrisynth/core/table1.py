"""Table 1 as markdown (pure): the verdict first, then every paired comparison, scores per arm, the
non-learned and nnU-Net references, GAN usefulness, the paper's layout and the conventions.

The `evaluate` stage fills one `Table1` with its results and writes `render(...)` to reports/table1.md."""
from __future__ import annotations

from dataclasses import dataclass

from mrisynth.core import segmetrics, stats
from mrisynth.core.arms import BASELINE

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
# the paper's Table 1 (its data, 256 px, real BraTS): (without, with) per split train, val, test
PAPER = {"accuracy": ((0.90, 0.94), (0.92, 0.85), (0.87, 0.90)), "mean_iou": ((0.43, 0.69), (0.37, 0.58), (0.38, 0.59)),
         "dice": ((0.27, 0.71), (0.25, 0.60), (0.25, 0.66))}


@dataclass(frozen=True)
class Table1:
    """What Table 1 shows. summary: {arm: {split: {metric: value, metric_std: value}}}; tests/vals:
    {question: {"baseline", "augmented", metric: Comparison dict}} (test and validation split);
    thresholds: {region: {"channel", "threshold", split: Dice}}; usefulness: the gan_usefulness report
    (None when not computed); spacing: test pixel spacing in mm; the rest: params `evaluate`."""

    summary: dict
    arms: list[str]
    seeds: list
    size: int
    tests: dict
    vals: dict
    thresholds: dict
    usefulness: dict | None
    spacing: float
    modalities: list[str]
    baseline: str
    augmented: str
    ci_level: float
    bootstrap: int
    seed: int

    @property
    def n_draws(self) -> int:
        return max(int(entry["dice_tumour"].get("n_draws", 1)) for entry in self.tests.values())


def render(t: Table1) -> str:
    sections = (_verdict, _comparisons, _scores, _threshold, _anchor, _usefulness, _paper_layout, _conventions)
    return "\n".join(line for section in sections for line in section(t))


def verdict_lines(tests: dict) -> list[str]:
    lines = []
    for question, entry in tests.items():
        c = stats.Comparison(**entry["dice_tumour"])
        lines.append(f"- **{stats.verdict(question, 'tumour Dice', c)}** (`{entry['augmented']}` − `{entry['baseline']}`)")
    return lines


def _verdict(t: Table1) -> list[str]:
    n_draws = t.n_draws
    draws_text = f" × {n_draws} generator draws (GAN arms)" if n_draws > 1 else ""
    level = f"{t.ci_level:.0%}".replace("%", " %")
    lines = ["# Table 1: does augmentation help the segmenter?", "",
             f"## Verdict (test split, paired over {next(iter(t.tests.values()))['dice_tumour']['n_images']} test images × {len(t.seeds)} seeds{draws_text})", ""]
    lines += verdict_lines(t.tests)
    lines += ["", f"Each line: mean paired difference of per-image tumour-class Dice (augmented − baseline), {level} CI from a bootstrap "
              f"resampling test images and training seeds{' and generator draws (independently trained generators, each with its own augmentation draw; an arm without a generator is paired with every draw)' if n_draws > 1 else ''} "
              f"({t.bootstrap} replicates, seed {t.seed}), Wilcoxon signed-rank p over images "
              f"(seed-averaged differences). 'Shown' = the CI excludes 0. The p-value treats the trained seeds as fixed while the CI also "
              f"carries seed-to-seed variation, so a small p can stand next to 'not shown': the CI decides. Seeds {list(t.seeds)}; units: Dice in [0, 1].", ""]
    return lines


def _comparisons(t: Table1) -> list[str]:
    lines = ["### All paired comparisons (test split)", "",
             "| Question | " + " | ".join(title for _, title in PAIRED) + " |", "|---|" + "---|" * len(PAIRED)]
    for question, entry in t.tests.items():
        cells = []
        for metric, _ in PAIRED:
            c = entry[metric]
            cells.append(f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] p={c['p_value']:.2g}")
        lines.append(f"| {question} (`{entry['augmented']}` − `{entry['baseline']}`) | " + " | ".join(cells) + " |")
    lines += ["", "On the validation split (the checkpoint-selection split, so optimistic; the promotion gate reads the "
              "'GAN beyond classic' mean below as `val_dice_gain_beyond_classic`):", "",
              "| Question | tumour Dice difference |", "|---|---|"]
    for question, entry in t.vals.items():
        c = entry["dice_tumour"]
        lines.append(f"| {question} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] |")
    return lines


def _cell(summary: dict, arm: str, split: str, metric: str, seeds: int) -> str:
    values = summary[arm][split]
    return f"{values[metric]:.3f}" + (f" ± {values[metric + '_std']:.3f}" if seeds > 1 else "")


def _scores(t: Table1) -> list[str]:
    n_seeds, n_draws = len(t.seeds), t.n_draws
    header = ["Metric"] + [f"{title} ({arm})" for _, title in SPLITS for arm in t.arms]
    lines = ["", "## Scores per arm", "",
             f"U-Net per arm, {n_seeds} seed{'s' if n_seeds > 1 else ''} {list(t.seeds)}{' (mean ± std over seeds)' if n_seeds > 1 else ''}"
             f"{f'; the GAN arms once per generator draw ({n_draws} draws: mean ± std over seeds × draws)' if n_draws > 1 else ''}; "
             f"evaluated at {t.size}×{t.size} ({t.spacing:.2g} mm pixels) on the real slices of each split. Tumour-class metrics lead; "
             "rows marked 'background included' are dominated by background pixels (an all-background prediction scores high accuracy).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, title in TABLE_ROWS:
        lines.append("| " + " | ".join([title] + [_cell(t.summary, arm, split, metric, n_seeds) for split, _ in SPLITS for arm in t.arms]) + " |")
    return lines


def _threshold(t: Table1) -> list[str]:
    lines = ["", "## Non-learned reference: one global intensity threshold", "",
             "One threshold on one modality per region, fitted on the training split only (best pooled Dice over in-brain intensity quantiles); "
             "mean per-image Dice.", "", "| Region | Modality | Threshold | Train | Val | Test |", "|---|---|---|---|---|---|"]
    for region, r in t.thresholds.items():
        lines.append(f"| {region} | {t.modalities[r['channel']] if r['channel'] < len(t.modalities) else r['channel']} | {r['threshold']:.3f} | "
                     f"{r['train']:.3f} | {r['val']:.3f} | {r['test']:.3f} |")
    return lines


def _anchor(t: Table1) -> list[str]:
    if BASELINE not in t.summary:
        return []
    lines = ["", "## Difficulty anchor", "",
             "The `none` arm (30 real slices) against nnU-Net's winning BraTS 2020 test result (3-D, all 369 training cases; "
             "Isensee et al. 2021). A 2-D model on 30 slices scoring above it would mean the data is easier than real BraTS.", "",
             "| Region | `none` arm, test (mean over seeds) | nnU-Net BraTS 2020 | below the anchor? |", "|---|---|---|---|"]
    for region, anchor in NNUNET_BRATS2020.items():
        value = t.summary[BASELINE]["test"][f"dice_{region}"]
        lines.append(f"| {region} | {value:.3f} | {anchor:.3f} | {'yes' if value < anchor else 'NO'} |")
    return lines


def _usefulness(t: Table1) -> list[str]:
    lines = ["", "## GAN usefulness (Shmelkov et al. 2018)", ""]
    u = t.usefulness
    if not u:
        return lines + ["(not computed: run the `gan_usefulness` stage)"]
    lines += ["| Score | Val | Test |", "|---|---|---|"]
    for key, title in (("dice_tumour", "tumour Dice"), ("dice_WT", "WT Dice"), ("dice_TC", "TC Dice"), ("dice_ET", "ET Dice")):
        lines.append(f"| GAN-train {title} (trained on {u['gan_train_images']} synthetic pairs only, seed {u['seed']}) | "
                     f"{u[f'val_gan_train_{key}']:.3f} | {u[f'test_gan_train_{key}']:.3f} |")
        lines.append(f"| real-train {title} (`none` arm, mean over seeds) | {u[f'val_real_train_{key}']:.3f} | {u[f'test_real_train_{key}']:.3f} |")
        lines.append(f"| GAN-test {title} (`none` arm on rendered images) | {u[f'val_gan_test_{key}']:.3f} | {u[f'test_gan_test_{key}']:.3f} |")
    lines += ["", f"Diversity: mean per-pixel std across {u['diversity_samples']} dropout-active renders of each validation mask, "
              f"inside the brain: **{u['diversity_val']:.4f}** (intensities in [0, 1])."]
    if u.get("harmonise", "none") != "none":
        lines += ["", f"GAN-test, diversity and the realism panel render as `augment` does, with `augment.harmonise: {u['harmonise']}` "
                  "(each region shifted to its host's local normal-tissue level); the registered generator does not harmonise."]
    return lines


def _paper_layout(t: Table1) -> list[str]:
    base, aug = t.baseline, t.augmented
    lines = ["", f"## Paper layout (without `{base}` → with `{aug}`; background-inclusive metrics as in the paper)", "",
             "| Metric | Train | Val (selection) | Test |", "|---|---|---|---|"]
    for metric, title in (("accuracy", "Accuracy"), ("mean_iou", "Mean IoU"), ("dice", "Dice")):
        cells = [f"{t.summary[base][s][metric]:.2f} → {t.summary[aug][s][metric]:.2f}" for s, _ in SPLITS]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Paper's Table 1 for reference (its data, 256 px, real BraTS):", "", "| Metric | Train | Val | Test |", "|---|---|---|---|"]
    for metric, title in (("accuracy", "Accuracy"), ("mean_iou", "Mean IoU"), ("dice", "Dice")):
        lines.append(f"| {title} | " + " | ".join(f"{a:.2f} → {b:.2f}" for a, b in PAPER[metric]) + " |")
    return lines


def _conventions(t: Table1) -> list[str]:
    return ["", "## Conventions", "",
            "- Classes 0 background, 1 NCR/NET, 2 edema, 3 enhancing (BraTS labels 0, 1, 2, 4); regions WT = {1,2,3}, TC = {1,3}, ET = {3}.",
            "- Accuracy, mean IoU and class Dice pool pixel counts over all images of a split (mean IoU leaves out a class absent from truth "
            "and prediction; class Dice uses smoothing 1). 'tumour classes' leaves background out.",
            "- WT/TC/ET Dice and HD95 are per image, then averaged. Both masks empty: Dice 1, HD95 0; exactly one empty: Dice 0, "
            f"HD95 {segmetrics.EMPTY_HD95_MM} mm (the BraTS challenges' value, the 240×240×155 mm diagonal).",
            "- HD95 is in millimetres: pixel spacing recorded by the importer (1 mm BraTS voxels × the pad/resize factor) × the preprocess resize factor.",
            "- The paired statistics use per-image tumour-class Dice (mean over the three tumour classes with the empty convention above).",
            "- Val is the split each checkpoint was chosen on: its numbers are optimistic. Test is read only here, after all choices.", ""]

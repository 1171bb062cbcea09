"""Compare two sweep records on the VALIDATION split: a baseline and a variant (docs/synthetic-data.md).

Usage: python pipelines/sweep_compare.py BASELINE.json VARIANT.json
       e.g. reports/sweep_baseline.json reports/sweep/seg-long.json

Prints, as markdown: each arm's validation tumour Dice in both records (split-level: the pooled pixels of the
validation images, mean over seeds and draws; the questions' differences are per-image) and the change, the mean over the arms
both have, the class-losing runs (a run whose worst region Dice - WT, TC or ET - is below 0.5) of each, the verdict's
questions with their 95 % CIs, and GAN-train / real-train. It applies no rule: each variant's decision rule is written
in docs/synthetic-data.md before it runs, and reads these figures. Both records come from `sweep_summary.py`, which
scores validation only; this script reads nothing else."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mrisynth.core.arms import ARMS   # the registered arms, in the table's order (the one place they are listed)

QUESTIONS = (("GAN beyond classic", "val_gain_beyond_classic"), ("gan - none", "val_gan_vs_none"),
             ("classic - none", "val_classic_vs_none"), ("classic+gan - none", "val_classic_gan_vs_none"),
             ("copy-paste - none", "val_paste_vs_none"), ("GAN beyond copy-paste", "val_gain_beyond_paste"))
LOSING_BELOW = 0.5   # a run "loses a class" when its worst region's mean validation Dice is below this


def arm_means(record: dict) -> dict[str, float]:
    """Mean validation tumour Dice per arm the record has (keys `val_dice_tumour_<arm>`)."""
    return {arm: record[f"val_dice_tumour_{arm}"] for arm in ARMS if record.get(f"val_dice_tumour_{arm}") is not None}


def losing_runs(record: dict, arms, below: float = LOSING_BELOW) -> tuple[list[tuple[str, str, str, float]], int] | None:
    """Among the runs of `arms` in `val_runs`: those whose worst of WT/TC/ET is below `below`, as (arm, run key, worst
    region, its Dice), and how many runs there are. None when the record has no per-run scores (records written before
    2026-12-07)."""
    if not record.get("val_runs"):
        return None
    found, total = [], 0
    for arm in arms:
        for key, scores in record["val_runs"].get(arm, {}).items():
            total += 1
            region = min(("WT", "TC", "ET"), key=lambda r: scores[f"dice_{r}"])
            if scores[f"dice_{region}"] < below:
                found.append((arm, key, region, scores[f"dice_{region}"]))
    return sorted(found), total


def compare(base: dict, variant: dict) -> dict:
    """The figures a decision rule reads: per-arm means and changes (arms in both records), the mean over those arms,
    the worst arm change (the minimum), class-losing runs among those arms, the questions' [estimate, low, high] and GAN-train / real-train."""
    b, v = arm_means(base), arm_means(variant)
    shared = [arm for arm in ARMS if arm in b and arm in v]
    if not shared:
        raise SystemExit(f"sweep_compare: the two records share no arm (baseline: {sorted(b)}, variant: {sorted(v)}); "
                         "compare records scored with the same arms (SWEEP_PROTOCOL)")
    change = {arm: v[arm] - b[arm] for arm in shared}

    def ratio(record):
        gan, real = record.get("val_gan_train_dice_tumour"), record.get("val_real_train_dice_tumour")
        return gan / real if gan is not None and real else None

    return {"arms": {arm: (b[arm], v[arm], change[arm]) for arm in shared},
            "mean": (sum(b[a] for a in shared) / len(shared), sum(v[a] for a in shared) / len(shared),
                     sum(change.values()) / len(shared)),
            "worst_change": min(change.values()),
            "losing": (losing_runs(base, shared), losing_runs(variant, shared)),
            "questions": {label: (base.get(key), variant.get(key)) for label, key in QUESTIONS},
            "gan_train_ratio": (ratio(base), ratio(variant))}


def _ci(value) -> str:
    if value is None:
        return "—"
    est, low, high = value
    return f"{est:+.3f} ({low:+.3f} … {high:+.3f})"


def render(base_name: str, variant_name: str, figures: dict) -> str:
    lines = [f"| validation tumour Dice | {base_name} | {variant_name} | change |", "|---|---|---|---|"]
    lines += [f"| {arm} | {b:.3f} | {v:.3f} | {d:+.3f} |" for arm, (b, v, d) in figures["arms"].items()]
    b, v, d = figures["mean"]
    lines += [f"| mean of {len(figures['arms'])} arms | {b:.3f} | {v:.3f} | {d:+.3f} |",
              f"| worst arm change (min) | | | {figures['worst_change']:+.3f} |"]
    lb, lv = figures["losing"]

    def count(losing):
        return "— (no per-run scores)" if losing is None else f"{len(losing[0])} of {losing[1]}"

    lines.append(f"| class-losing runs (a region < {LOSING_BELOW}), these arms | {count(lb)} | {count(lv)} | |")
    lines += [f"| {label} | {_ci(b)} | {_ci(v)} | {'' if b is None or v is None else f'{v[0] - b[0]:+.3f}'} |"
              for label, (b, v) in figures["questions"].items()]
    rb, rv = figures["gan_train_ratio"]
    lines.append(f"| GAN-train / real-train | {'—' if rb is None else f'{rb:.2f}'} | {'—' if rv is None else f'{rv:.2f}'} | "
                 f"{'' if rb is None or rv is None else f'{rv - rb:+.2f}'} |")
    for name, losing in ((base_name, lb), (variant_name, lv)):
        if losing and losing[0]:
            lines.append(f"\nclass-losing runs of {name}: " + ", ".join(f"{a} {k} {r} {x:.2f}" for a, k, r, x in losing[0]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    paths = [Path(p) for p in argv]
    for path in paths:
        if not path.is_file():
            print(f"sweep_compare: {path} not found; records are reports/sweep/<name>.json (make sweep) or a baseline "
                  "written by `python pipelines/sweep_summary.py NAME --out PATH`", file=sys.stderr)
            return 2
    base, variant = (json.loads(p.read_text()) for p in paths)
    print(render(paths[0].stem, paths[1].stem, compare(base, variant)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

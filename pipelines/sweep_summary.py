"""Record one sweep variant's VALIDATION numbers (never the test split's) in reports/sweep/<name>.json,
and rewrite reports/sweep.md, the table of every recorded variant (`make sweep`, docs/synthetic-data.md).

Usage: python pipelines/sweep_summary.py NAME   (after `dvc exp run -n NAME ...` left its reports)"""
import json
import sys
from pathlib import Path

import yaml

from mrisynth import paths
from mrisynth.core.arms import COMPARISONS

# the verdict's questions (core.arms.COMPARISONS) -> the keys of a recorded variant (kept: earlier records use them)
QUESTIONS = {"GAN beyond classic": "gain_beyond_classic", "GAN augmentation vs none": "gan_vs_none",
             "Classic augmentation vs none": "classic_vs_none", "Classic+GAN vs none": "classic_gan_vs_none"}
assert set(QUESTIONS) == {question for _, _, question in COMPARISONS}, "a verdict question without a sweep key"
LEVERS = (("train_gan", ("generator", "synthesis", "select", "epochs", "diffaugment", "disc_blocks")),
          ("train_segmenter", ("real_share", "seeds")))


def record(name: str) -> dict:
    metrics = json.loads(paths.METRICS.read_text())
    usefulness = json.loads(paths.GAN_USEFULNESS.read_text())
    gan = json.loads(paths.TRAIN_GAN.read_text())
    params = yaml.safe_load(Path("params.yaml").read_text())
    row = {"name": name, **{f"{section}.{key}": params[section][key] for section, keys in LEVERS for key in keys}}
    for question, key in QUESTIONS.items():
        entry = metrics["comparisons_val"].get(question)
        if entry:
            d = entry["dice_tumour"]
            row[f"val_{key}"] = [d["mean"], d["low"], d["high"]]
            row["val_images"], row["val_seeds"] = d["n_images"], d["n_seeds"]
    row |= {f"val_dice_tumour_{arm}": metrics["arms"][arm]["val"]["dice_tumour"] for arm in metrics["arms"]}
    row |= {"val_gan_train_dice_tumour": usefulness["val_gan_train_dice_tumour"],
            "val_real_train_dice_tumour": usefulness["val_real_train_dice_tumour"], "gan_best_epoch": gan["best_epoch"],
            "alpha": gan["alpha"]}
    return row


def table(rows: list[dict]) -> str:
    def ci(v):
        return "n/a" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"

    lines = ["# Validation sweep (selection split only; test numbers are not part of this table)", "",
             f"{len(rows)} variants tried; the winner's validation gain is optimistic (chosen as the best of {len(rows)}).",
             "Tumour Dice differences, mean over val images x seeds with 95 % bootstrap CI (images and seeds resampled).", "",
             "| variant | generator | synthesis | select | GAN epochs | DiffAugment | real_share | seeds | GAN beyond classic | gan vs none | GAN-train / real-train |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["val_gan_train_dice_tumour"] / max(r["val_real_train_dice_tumour"], 1e-9)
        lines.append(f"| {r['name']} | {r['train_gan.generator']} | {r['train_gan.synthesis']} | {r['train_gan.select']} | "
                     f"{r['train_gan.epochs']} | {r['train_gan.diffaugment'] or 'off'} | {r['train_segmenter.real_share']} | "
                     f"{','.join(map(str, r['train_segmenter.seeds']))} | {ci(r.get('val_gain_beyond_classic'))} | "
                     f"{ci(r.get('val_gan_vs_none'))} | {r['val_gan_train_dice_tumour']:.3f} / {r['val_real_train_dice_tumour']:.3f} = {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    out = paths.SWEEP
    out.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 1:
        (out / f"{sys.argv[1]}.json").write_text(json.dumps(record(sys.argv[1]), indent=2) + "\n")
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    paths.SWEEP_TABLE.write_text(table(rows))
    print(paths.SWEEP_TABLE.read_text())


if __name__ == "__main__":
    main()

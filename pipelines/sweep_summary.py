"""Score one sweep variant on the VALIDATION split only and record it in reports/sweep/<name>.json; rewrite
reports/sweep.md, the table of every recorded variant (`make sweep`, docs/synthetic-data.md).

Usage: python pipelines/sweep_summary.py NAME   (after `dvc exp run -n NAME ... train_segmenter`)
       python pipelines/sweep_summary.py        (only rewrite the table)

`make sweep` stops each variant's pipeline at `train_segmenter`, before the two stages that read the test
split (`gan_usefulness`, `evaluate`), so no test number of a variant exists while the winner is chosen. This
script then scores the variant from the workspace it left (work/, models/): every trained arm and seed on the
validation slices (the verdict's paired comparisons, the same code as `evaluate`), GAN-train (a segmenter trained
on the synthetic pairs only, as `gan_usefulness`) and the realism panel of the first generator, all on validation.
It never loads the test split. Records written before 2026-12-07 came from full runs (test evaluated too, not read
by this table); the table marks them."""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mrisynth import paths
from mrisynth.augment.arm_data import synthetic_only
from mrisynth.augment.synthesis import load_generator
from mrisynth.config import load_params
from mrisynth.core import encoding, inpaint, realism
from mrisynth.core.arms import BASELINE, COMPARISONS
from mrisynth.errors import DataError
from mrisynth.inference import rendering
from mrisynth.io import arrays
from mrisynth.stages.evaluate import comparisons, score_arms
from mrisynth.training import usefulness

# the verdict's questions (core.arms.COMPARISONS) -> the keys of a recorded variant (kept: earlier records use them)
QUESTIONS = {"GAN beyond classic": "gain_beyond_classic", "GAN augmentation vs none": "gan_vs_none",
             "Classic augmentation vs none": "classic_vs_none", "Classic+GAN vs none": "classic_gan_vs_none",
             "Copy-paste vs none": "paste_vs_none", "GAN beyond copy-paste": "gain_beyond_paste"}
assert set(QUESTIONS) == {question for _, _, question in COMPARISONS}, "a verdict question without a sweep key"
LEVERS = (("train_gan", ("generator", "synthesis", "select", "epochs", "diffaugment", "disc_blocks", "feature_matching", "texture", "draws")),
          ("augment", ("harmonise", "filter_dice", "filter_pool")),
          ("tune", ("n_trials", "alpha_low", "alpha_high")),
          ("train_segmenter", ("real_share", "seeds", "arms", "epochs", "patience")))
SCRATCH = Path("work") / "sweep"   # the scorer's GAN-train segmenter (no stage reads or declares it)
PROTOCOL = "validation-only"  # pipeline stopped at train_segmenter; the test split was never evaluated


def score(name: str, params_path: str = "params.yaml") -> dict:
    """One variant's validation record from the workspace a `dvc exp run ... train_segmenter` left."""
    started = time.perf_counter()
    params = load_params(params_path)
    pre, seg, gan, ev = params.preprocess, params.train_segmenter, params.train_gan, params.evaluate
    runs_path = Path(seg.out_dir) / "runs.json"
    if not runs_path.is_file():
        raise DataError(f"{runs_path}: no trained segmenters; run `dvc exp run -n {name} ... train_segmenter` first (make sweep)")
    runs = json.loads(runs_path.read_text())
    arms = list(runs["arms"])
    val = arrays.load_split(Path(pre.out_dir), "val")   # the selection split; the test split is never loaded here
    val_classes = encoding.labels_to_classes(val.labels)

    pooled, per_image, _ = score_arms(runs, {"val": val})
    table = comparisons(per_image, arms, "val", ev.bootstrap, ev.ci_level, ev.seed, runs)
    raw = yaml.safe_load(Path(params_path).read_text())
    row = {"name": name, "protocol": PROTOCOL,
           **{f"{section}.{key}": raw.get(section, {}).get(key) for section, keys in LEVERS for key in keys}}
    for question, key in QUESTIONS.items():
        if question in table:
            d = table[question]["dice_tumour"]
            row[f"val_{key}"] = [d["mean"], d["low"], d["high"]]
            row["val_images"], row["val_seeds"] = d["n_images"], d["n_seeds"]
    row |= {f"val_dice_tumour_{arm}": float(np.mean(pooled[arm]["val"]["dice_tumour"])) for arm in arms}
    row["val_runs"] = per_run(per_image, runs)

    # GAN-train (gan_usefulness's definition, validation only): synthetic pairs of draw 1, first seed
    images, classes = synthetic_only(Path(params.augment.out_dir))
    largest = max(len(arrays.load_split(Path(pre.out_dir), "train")) * params.augment.factor, len(images))  # as gan_usefulness
    steps = seg.steps_per_epoch or (math.ceil(largest / seg.batch_size) if seg.equal_steps else None)
    from mrisynth.training import segmenter

    out = SCRATCH / "gan_train.keras"   # not gan_usefulness.out_dir: that is a DVC output this must not modify
    out.parent.mkdir(parents=True, exist_ok=True)
    segmenter.train(seg, seg.seeds[0], images, classes, val.images, val_classes, out, None, steps)
    row["val_gan_train_dice_tumour"] = usefulness.scores(segmenter.load(out), val.images, val_classes)["dice_tumour"]
    row["val_real_train_dice_tumour"] = row[f"val_dice_tumour_{BASELINE}"]

    # realism panel of draw 1 (gan_usefulness's settings: its seed, augment's dropout sampling)
    generator = load_generator(Path(gan.model_path), pre.image_size, val.images.shape[-1], gan.synthesis)
    row |= realism_of(generator, val, params)
    report = paths.read_json(paths.TRAIN_GAN) or {}
    row["filter"] = (paths.read_json(paths.AUGMENT) or {}).get("filter")  # the sample filter's record per draw (None: off)
    row |= {"gan_best_epoch": report.get("best_epoch"), "alpha": report.get("alpha"),
            "scoring_seconds": round(time.perf_counter() - started, 1)}
    return row


def per_run(per_image: dict, runs: dict, split: str = "val") -> dict:
    """{arm: {run key ('1', '1-g2', ...): {metric: mean over the split's images}}} for dice_tumour and the
    BraTS regions: one segmenter run that loses a tumour class shows as one low row (the arms' means hide it)."""
    keys = ("dice_tumour", "dice_WT", "dice_TC", "dice_ET")
    return {arm: {seed: {k: round(float(per_image[arm][split][k][i].mean()), 4) for k in keys}
                  for i, seed in enumerate(runs["arms"][arm])} for arm in per_image}


def realism_of(generator, val, params) -> dict:
    """The realism panel (validation label maps, gan_usefulness's seed, augment's dropout sampling) over the pixels
    the generator draws, and for inpainting also over the region's inner part: the pixels whose blend weight is 1,
    where no real pixel is mixed in (the ramp's real share flatters the whole-region ratios)."""
    gan, modalities = params.train_gan, list(params.data.modalities)
    rendered = rendering.render_split(generator, val, gan.synthesis, gan.inpaint_margin, sample=params.augment.sample_dropout,
                                      seed=params.gan_usefulness.seed, harmonise=params.augment.harmonise)
    where = rendering.drawn(val, gan.synthesis, gan.inpaint_margin)
    out = {}
    masks = {"realism": where}
    if gan.synthesis == "inpaint":
        margin = inpaint.margin_pixels(gan.inpaint_margin, val.images.shape[1])
        weights = np.stack([inpaint.blend_weight(w, margin) for w in where])   # the ramp render_split composites with
        masks["realism_inner"] = where & (weights >= 1.0)
    for key, mask in masks.items():
        panel = realism.panel(val.images, rendered, val.labels, mask, modalities)
        out[f"{key}_worst_deviation"] = float(panel["worst_deviation"])
        out[f"{key}_ratios"] = {m: {stat: float(v["ratio"]) for stat, v in panel[m].items()} for m in modalities}
    return out


# the segmenter schedule of records written before it was recorded (every earlier variant used these)
SEGMENTER_SCHEDULE_BEFORE = {"train_segmenter.epochs": 20, "train_segmenter.patience": 4}


def segmenter_schedule(row: dict) -> str:
    """'epochs / patience' of a record's segmenters; older records (before 2026-12-07, fifth session) did not record them
    and all ran params.yaml's 20 / 4."""
    epochs, patience = (row.get(key) or before for key, before in SEGMENTER_SCHEDULE_BEFORE.items())
    return f"{epochs} / {patience}"


def table(rows: list[dict]) -> str:
    def ci(v):
        return "n/a" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"

    def number(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    old = [r["name"] for r in rows if r.get("protocol") != PROTOCOL]
    lines = ["# Validation sweep (selection split only; test numbers are not part of this table)", "",
             f"{len(rows)} variants tried; the winner's validation gain is optimistic (chosen as the best of {len(rows)}).",
             "Tumour Dice differences, mean over val images x seeds (x generator draws) with 95 % bootstrap CI (images, seeds and draws resampled).",
             "Realism: the worst of the panel's ratios (generated / real, 4 modalities x 5 statistics, validation label maps, draw 1), as a deviation from 1; "
             "inner: inpainting's regions without their blend ramp (where real pixels are mixed in).",
             "Variants marked * ran the full pipeline (its `evaluate` also scored the test split; nothing here reads it); "
             "the others stopped at train_segmenter (no test number exists)." if old else
             "Every variant stopped at train_segmenter: no test number exists for any of them.", "",
             "| variant | generator | synthesis | select | GAN epochs | DiffAugment | feature matching | texture | harmonise | filter τ | α (tune range → chosen) | real_share | "
             "segmenter epochs / patience | seeds | "
             "GAN beyond classic | gan vs none | GAN-train / real-train | realism worst | realism worst, inner |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["val_gan_train_dice_tumour"] / max(r["val_real_train_dice_tumour"], 1e-9)
        low, high = r.get("tune.alpha_low"), r.get("tune.alpha_high")
        if r.get("tune.n_trials") == 0:
            tuned = f"{number(r.get('alpha'), '.1f')} fixed"
        elif low is not None and r.get("alpha") is not None:
            tuned = f"{low:g}–{high:g} → {r['alpha']:.1f}"
        else:
            tuned = number(r.get("alpha"), ".1f")
        lines.append(f"| {r['name']}{'' if r.get('protocol') == PROTOCOL else ' *'} | {r['train_gan.generator']} | {r['train_gan.synthesis']} | "
                     f"{r['train_gan.select']} | {r['train_gan.epochs']} | {(r['train_gan.diffaugment'] or 'off').replace(',', '+')} | "
                     f"{r.get('train_gan.feature_matching', 0.0) or 'off'} | {r.get('train_gan.texture', 0.0) or 'off'} | {r.get('augment.harmonise') or 'none'} | {number(r.get('augment.filter_dice'), 'g') if r.get('augment.filter_dice') is not None else 'off'} | {tuned} | {r['train_segmenter.real_share']} | "
                     f"{segmenter_schedule(r)} | "
                     f"{','.join(map(str, r['train_segmenter.seeds']))} | {ci(r.get('val_gain_beyond_classic'))} | "
                     f"{ci(r.get('val_gan_vs_none'))} | {r['val_gan_train_dice_tumour']:.3f} / {r['val_real_train_dice_tumour']:.3f} = {ratio:.2f} | "
                     f"{number(r.get('realism_worst_deviation'), '.0%')} | {number(r.get('realism_inner_worst_deviation'), '.0%')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """`sweep_summary.py [NAME [--out PATH]]`: score the workspace as variant NAME into reports/sweep/NAME.json (a row
    of the table), or with --out into PATH only (a baseline: the workspace of a `make run`, not a variant), then
    rewrite the table from reports/sweep/."""
    out = paths.SWEEP
    out.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:]
    if len(args) == 3 and args[1] == "--out":
        Path(args[2]).write_text(json.dumps(score(args[0]), indent=2) + "\n")
        return
    if len(args) == 1:
        (out / f"{args[0]}.json").write_text(json.dumps(score(args[0]), indent=2) + "\n")
    elif args:
        raise SystemExit("usage: python pipelines/sweep_summary.py [NAME [--out PATH]]")
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    paths.SWEEP_TABLE.write_text(table(rows))
    print(paths.SWEEP_TABLE.read_text())


if __name__ == "__main__":
    main()

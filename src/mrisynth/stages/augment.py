"""`augment` stage: grow the training split factor-fold with classic transforms and GAN synthesis.

Reads  work/preprocessed/train.npz, models/generator.keras, params `augment`, `train_segmenter.arms`.
Writes work/augmented/ (images/*.tif, masks/*.tif, manifest.csv with provenance), reports/augment.json.
With `augment.filter_dice` set, a judge segmenter (augment.sample_filter; trained here on the real training
slices, checkpoint by the val split) replaces the GAN samples it cannot segment.

The manifest holds the originals (kind real), classic samples, GAN samples and, for the copy-paste
control arm, pasted samples (kind paste); `in_mix` marks the classic+gan set (factor x training count
images, the paper's 30 -> 300). The `classic`, `gan` and `paste` arms, when requested, use the originals
plus (factor - 1) x count samples of their own kind.
The output is validated (GX: brats_slices + augmented suites); a failure stops the pipeline."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from mrisynth.augment import sample_filter
from mrisynth.augment.synthesis import load_generator, synthesise, synthesise_draw, write, write_draw
from mrisynth import paths
from mrisynth.config import load_params
from mrisynth.core.arms import SAMPLE_KINDS
from mrisynth.stages import params_main
from mrisynth.io import arrays, gx


def validate(out_dir: Path, manifest: pd.DataFrame, expected_mix: int, size: int, channels: int) -> gx.ValidationReport:
    table = gx.image_metadata(out_dir, manifest, {"train": len(manifest)})
    for column in ("kind", "source_cases", "transforms", "in_mix"):
        table[column] = manifest[column].to_numpy()
    table["mix_count"] = int(manifest["in_mix"].sum())
    table["mix_expected"] = expected_mix
    parameters = {"size": size, "channels": channels, "rows": len(manifest)}
    return gx.validate_table(table, parameters, suite=gx.load_suite("brats_slices", "augmented"))


def run(params_path: str = "params.yaml") -> int:
    params = load_params(params_path)
    p, pre = params.augment, params.preprocess
    started = time.perf_counter()
    train = arrays.load_split(Path(pre.out_dir), "train")
    channels = train.images.shape[-1]
    gan = params.train_gan
    judge = None
    if p.filter_dice is not None:  # the judge: the `none` arm's recipe on the real training slices (augment.sample_filter)
        with tempfile.TemporaryDirectory(prefix="augment-judge-") as tmp:
            model = sample_filter.train_judge(params, train, arrays.load_split(Path(pre.out_dir), "val"), tmp)
        judge = sample_filter.Judge(model, p.filter_dice, p.filter_pool)
        real_score = float(judge.score(train.images, train.labels).mean())   # the judge on the slices it learned from: a reference
        print(f"augment: filter judge trained ({time.perf_counter() - started:.0f} s; its tumour Dice on the real training slices "
              f"{real_score:.3f}); GAN samples below {p.filter_dice} replaced")
    generator = load_generator(Path(gan.model_path), pre.image_size, channels, gan.synthesis)
    samples, counts = synthesise(train, generator, p, params.train_segmenter.arms, gan.synthesis, gan.inpaint_margin, judge)
    out_dir = Path(p.out_dir)
    manifest = write(out_dir, samples, p.sample_dropout)
    expected_mix = p.factor * len(train)
    manifests = [manifest]
    for draw in range(1, gan.draws):  # the other generator draws: their own label maps and generator, shared real/classic rows
        draw_generator = load_generator(Path(gan.draw_model_path(draw)), pre.image_size, channels, gan.synthesis)
        samples_k, _ = synthesise_draw(train, draw_generator, p, params.train_segmenter.arms, draw, gan.synthesis, gan.inpaint_margin, judge)
        manifests.append(write_draw(out_dir, manifest, samples_k, draw, p.sample_dropout))
    for draw, table in enumerate(manifests):
        report = validate(out_dir, table, expected_mix, pre.image_size, channels)
        print((f"generator draw {draw + 1}: " if gan.draws > 1 else "") + report.summary())
        if not report.success:
            print(f"augment: {out_dir} failed validation; segmenter training not started", file=sys.stderr)
            return 1
    summary = {
        "train_images": len(train), "factor": p.factor, "mix_images": int(manifest["in_mix"].sum()),
        **{f"{kind}_images": int((manifest["kind"] == kind).sum()) for kind in SAMPLE_KINDS},
        "recombined": int(manifest["transforms"].str.startswith("recombine").sum()),
        **counts, "filter": {"tau": p.filter_dice, "pool": p.filter_pool, "judge_real_train_dice_mean": round(real_score, 4), "draws": judge.records} if judge else None,
        "synthesis": gan.synthesis, "generator_draws": gan.draws, "gan_dropout_sampling": p.sample_dropout, "seconds": round(time.perf_counter() - started, 2),
    }
    paths.write_json(paths.AUGMENT, summary)
    print(f"augment: {len(train)} -> {summary['mix_images']} images in the classic+gan set "
          f"({summary['classic_images']} classic, {summary['gan_images']} GAN made"
          + (f", and as many for each of {gan.draws - 1} more generator draw(s)" if gan.draws > 1 else "") + f") in {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> None:
    params_main(run, argv)

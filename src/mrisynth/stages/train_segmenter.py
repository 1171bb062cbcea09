"""`train_segmenter` stage: one U-Net per augmentation arm and seed, as MLflow child runs.

Reads  work/preprocessed/{train,val}.npz, work/augmented/, params `train_segmenter`, `preprocess.image_size`.
Writes work/segmenter/<arm>/seed<k>/best.keras, work/segmenter/runs.json (run ids, versions),
       reports/train_segmenter.json; one parent MLflow run with a child run per arm and seed, each
       trained segmenter registered (tags augmentation=<arm>, seed=<k>).

Arms (mrisynth.core.arms): none, classic, gan, classic+gan, paste. Every arm: the same real validation split,
the same schedule (`equal_steps`: the same updates per epoch; `schedule`), the same selection rule (`select`:
best validation tumour Dice with early stopping after `patience` epochs, or the last epoch), the same
optional jitter. Runs are trained `train_segmenter.workers` at a time in worker processes
(mrisynth.training.parallel; 0 = one per usable core, 1 with GPUs), then logged here one by one, in a
fixed order."""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np

from mrisynth.augment.arm_data import arm_data, arm_real
from mrisynth.core import arms, cards
from mrisynth.core.progress import clock
from mrisynth.core.arms import arm_slug, uses_generator
from mrisynth import paths
from mrisynth.config import as_flat_dict, load_params
from mrisynth.core import encoding
from mrisynth.stages import note_worker_peak_rss, params_main
from mrisynth.io import arrays, devices, tracking
from mrisynth.io import card as card_io, registry


def dataset_name(arm: str, draw: int) -> str:
    """The MLflow dataset name of an arm's training set: `train-<arm>`, `-g<k>` for generator draw k > 1."""
    return f"train-{arm_slug(arm)}" + (f"-g{draw + 1}" if draw > 0 and uses_generator(arm) else "")


def arm_digest(arm: str, draw: int, augmented: Path, data_hash: str) -> tuple[str, str]:
    """(digest, source) of an arm's training set: the md5 of the arm's own rows of the augmented manifest
    (another arm's samples changing leaves it alone), the data hash for real-only arms."""
    import hashlib

    import pandas as pd

    spec = arms.get(arm)
    if spec.real_only:
        return data_hash, "work/preprocessed/train.npz"
    manifest = paths.augmented_manifest(augmented, draw if spec.uses_generator else 0)
    rows = pd.read_csv(manifest)
    return hashlib.md5(rows[spec.rows(rows)].to_csv(index=False, lineterminator="\n").encode()).hexdigest(), str(manifest)


def run(params_path: str = "params.yaml") -> int:
    from mrisynth.training import parallel, segmenter

    params = load_params(params_path)
    p, pre = params.train_segmenter, params.preprocess
    train, val = (arrays.load_split(Path(pre.out_dir), s) for s in ("train", "val"))
    val_classes = encoding.labels_to_classes(val.labels)
    out_root = Path(p.out_dir)
    tracking.configure(p.experiment)
    tags = tracking.run_tags("train_segmenter", p.precision)
    trained = {"parent_run_id": None, "arms": {}}
    summary: dict[str, dict] = {}
    augmented = Path(params.augment.out_dir)
    draws = {arm: list(range(params.train_gan.draws)) if uses_generator(arm) else [0] for arm in p.arms}
    data = {(arm, d): arm_data(arm, train, augmented, d) for arm in p.arms for d in draws[arm]}
    real = {(arm, d): arm_real(arm, train, augmented, d) for arm in p.arms for d in draws[arm]}
    largest = max(len(images) for images, _ in data.values())
    steps = p.steps_per_epoch or (math.ceil(largest / p.batch_size) if p.equal_steps else None)
    run_params = as_flat_dict(p) | {"size": pre.image_size, "data_hash": tags["data_hash"], "augment_factor": params.augment.factor,
                                    "augment_synthetic_fraction": params.augment.synthetic_fraction,
                                    "augment_sample_dropout": params.augment.sample_dropout,
                                    "steps_per_epoch": steps or "one pass per arm"}
    jobs = [parallel.Run(arm, draw, seed, str(out_root / arm_slug(arm) / (f"seed{seed}" if draw == 0 else f"draw{draw + 1}_seed{seed}") / "best.keras"))
            for arm in p.arms for draw in draws[arm] for seed in p.seeds]
    workers = parallel.worker_count(p.workers, len(jobs), len(devices.gpus()))
    started = time.perf_counter()
    print(f"train_segmenter: {len(jobs)} runs, {workers} at a time", flush=True)
    with tracking.stage_run("train_segmenter", tags, run_params | {"workers": workers}, system_metrics=True) as parent:
        trained["parent_run_id"] = parent.run_id
        tracking.log_split_inputs({"train": train, "val": val}, tags["data_hash"])
        # any failure in this block closes the generator, which stops the workers at once
        with contextlib.closing(parallel.train_all(p, pre.out_dir, str(augmented), jobs, steps, workers)) as trained_runs:
            for done, (job, result) in enumerate(trained_runs, start=1):
                arm, draw, seed = job.arm, job.draw, job.seed
                if workers > 1:
                    note_worker_peak_rss(result["pid"], result["peak_rss_kib"])
                images, classes = data[arm, draw]
                # draw 1 keeps the plain layout (seed keys "1", "2", folders seed<k>); other generator draws add "-g<k>"
                suffix = "" if draw == 0 else f"-g{draw + 1}"
                name = f"{arm} seed {seed}" + (f" generator {draw + 1}" if len(draws[arm]) > 1 else "")
                elapsed = time.perf_counter() - started
                print(f"train_segmenter: run {done}/{len(jobs)} ({name}, {len(images)} images) trained in {result['seconds']:.0f} s: "
                      f"elapsed {clock(elapsed)}, ETA {clock(elapsed / done * (len(jobs) - done))}", flush=True)
                with parent.child(name, tags | {"augmentation": arm, "seed": str(seed), "generator_draw": str(draw + 1)}) as child:
                    child.log_params({"augmentation": arm, "seed": seed, "generator_draw": draw + 1, "train_images": len(images), "val_images": len(val),
                                       "steps_per_epoch": steps or math.ceil(len(images) / p.batch_size), "max_epochs": p.epochs,
                                       "patience": p.patience, "jitter": p.jitter, "schedule": p.schedule, "select": p.select})
                    child.set_tags({"diverged": str(result["diverged"]).lower()})  # a non-finite loss stopped it; the epoch before is kept
                    digest, source = arm_digest(arm, draw, augmented, tags["data_hash"])
                    tracking.log_training_input(dataset_name(arm, draw), images, classes, digest, source)
                    tracking.log_split_inputs({"val": val}, tags["data_hash"])
                    for epoch, (row, stamp) in enumerate(zip(result["history"], result["epoch_times_ms"], strict=True), start=1):
                        child.log_metrics(row, step=epoch, timestamp_ms=stamp)  # when the worker ran the epoch
                    child.log_metrics({"best_val_dice_tumour": result["best_val_dice_tumour"], "best_epoch": result["best_epoch"],
                                        "epochs_run": result["epochs_run"], "train_seconds": result["seconds"]})
                    card = cards.segmenter_card(
                        p.registry_name,
                        {"training set": f"{dataset_name(arm, draw)}: {len(images)} images ({int(real[arm, draw].sum())} real), {source}, digest {digest[:10]}",
                         "validation set": f"{len(val)} real slices (val split)", "data hash (data.dvc)": tags["data_hash"],
                         "data source": card_io.data_source(pre.data_dir)},
                        {"augmentation arm": f"{arm} ({arms.get(arm).label})", "seed": seed,
                         "generator draw": draw + 1 if uses_generator(arm) else None,
                         "epochs": f"{result['epochs_run']} run, kept {result['best_epoch']} (max {p.epochs}, "
                                   + (f"patience {p.patience})" if p.select == "best" else "the last)"),
                         "git commit": tags["git_commit"]},
                        {"validation Dice (tumour) of the kept epoch": result["best_val_dice_tumour"]},
                        images.shape[1], images.shape[-1], encoding.NUM_CLASSES)
                    version = registry.register_keras_model(
                        segmenter.load(Path(job.path)), "segmenter", p.registry_name,
                        registry.segmenter_signature(images.shape[1], images.shape[-1], encoding.NUM_CLASSES),
                        {"augmentation": arm, "seed": seed, "best_val_dice_tumour": result["best_val_dice_tumour"]},
                        description=card, model_description=cards.SEGMENTER_MODEL)
                trained["arms"].setdefault(arm, {})[f"{seed}{suffix}"] = {
                    "run_id": child.run_id, "model_version": version, "path": job.path, "seed": seed, "draw": draw + 1,
                    "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"], "stopped_early": result["stopped_early"], "diverged": result["diverged"],
                    "best_val_dice_tumour": result["best_val_dice_tumour"], "train_images": len(images), "seconds": result["seconds"]}
        for arm in p.arms:
            images, _ = data[arm, draws[arm][0]]
            values = [r["best_val_dice_tumour"] for r in trained["arms"][arm].values()]
            summary[arm] = {"best_val_dice_tumour_mean": float(np.mean(values)), "best_val_dice_tumour_std": float(np.std(values)),
                            "train_images": len(images),
                            "best_epoch_mean": float(np.mean([r["best_epoch"] for r in trained["arms"][arm].values()]))}
            parent.log_metrics({f"best_val_dice_tumour_{arm_slug(arm)}": float(np.mean(values))})
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "runs.json").write_text(json.dumps(trained, indent=2) + "\n")
    paths.write_json(paths.TRAIN_SEGMENTER, summary)
    print("train_segmenter (selection split val): " + "; ".join(
        f"{a}: val Dice (tumour) {s['best_val_dice_tumour_mean']:.4f} ± {s['best_val_dice_tumour_std']:.4f} on {s['train_images']} images"
        for a, s in summary.items()))
    return 0


def main(argv: list[str] | None = None) -> None:
    params_main(run, argv)

"""`train_gan` stage: train the conditional GAN, track it in MLflow, register the best generator.

Reads  work/preprocessed/{train,val}.npz, data/ (GX gate), params `preprocess`, `train_gan`.
Writes models/generator.keras (best checkpoint), work/gan/ (resume state, persisted by DVC),
       reports/train_gan.json (metrics), reports/train_gan_history.csv (loss curves) and
       reports/train_gan_curves.png (the same curves as a figure, a DVC image plot),
       an MLflow run and a registered model version with alias `challenger`.

`train_gan.strategy` (mrisynth.io.distribute): under `multi_worker` the same command runs on every
worker, each with its own TF_CONFIG; the chief (the `dvc repro` process) writes everything above,
the other workers only train and write nothing."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mrisynth import paths
from mrisynth.config import as_flat_dict, load_params
from mrisynth.core import encoding
from mrisynth.stages import skip_resource_record, stage_main
from mrisynth.errors import DataError, MrisynthError
from mrisynth.io import arrays, distribute, gx, tracking
from mrisynth.io import card as card_io, registry
from mrisynth.core import figures
from mrisynth.core.progress import clock

ALIAS = "challenger"


def resolve_alpha(params) -> tuple[float, str]:
    """alpha from the tuned file when configured and present, else from params."""
    if params.alpha_file:
        path = Path(params.alpha_file)
        if not path.is_file():
            raise DataError(f"{path}: train_gan.alpha_file names a tuned alpha, found no file; run `dvc repro tune` or set alpha_file: null")
        value = json.loads(path.read_text()).get("alpha")
        if not isinstance(value, (int, float)) or value < 0:
            raise DataError(f"{path}: expected {{\"alpha\": <number >= 0>}}, found {value!r}")
        return float(value), str(path)
    return float(params.alpha), "params.yaml"


def check_split(split: arrays.SplitArrays, name: str, directory: str, size: int) -> None:
    """Shapes as configured and labels within {0, 1, 2, 4}, or a DataError naming the file."""
    path = Path(directory) / f"{name}.npz"
    if split.images.ndim != 4 or split.images.shape[1:3] != (size, size):
        raise DataError(f"{path}: images have shape {split.images.shape}, expected (N, {size}, {size}, C); rerun `dvc repro preprocess`")
    if len(split) == 0:
        raise DataError(f"{path}: no images in split '{name}'; the GAN needs training and validation images")
    try:
        encoding.check_labels(split.labels, str(path))
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def grid_panels(images: np.ndarray, labels: np.ndarray, generated: np.ndarray) -> list[list[np.ndarray]]:
    """Rows of mask | real | generated, for FLAIR (channel 0) and, with 3+ channels, T1ce (channel 2)."""
    channels = [0, 2] if images.shape[-1] >= 3 else [0]
    return [
        [figures.label_rgb(labels[i])] + [panel for c in channels for panel in (images[i, ..., c], generated[i, ..., c])]
        for i in range(len(images))
    ]


def write_reports(state, metrics: dict) -> None:
    paths.write_json(paths.TRAIN_GAN, metrics, default=float)
    keys = ["epoch", "g_loss", "g_gan", "g_l1", "d_loss", "val_g_loss", "val_g_l1", "val_mae", "val_psnr", "val_ssim"]
    keys += [k for k in ("g_texture", "val_g_texture") if any(k in row for row in state.history)]  # train_gan.texture > 0
    lines = [",".join(keys)] + [",".join(f"{row.get(k, float('nan')):.6g}" for k in keys) for row in state.history]
    paths.write_text(paths.TRAIN_GAN_HISTORY, "\n".join(lines) + "\n")
    from PIL import Image

    title = "train_gan: per-epoch curves of the registered generator" + (" (draw 1)" if len(metrics.get("draws", [])) > 1 else "")
    Image.fromarray(figures.training_curves(state.history, title, kept_epoch=metrics.get("best_epoch"))).save(paths.TRAIN_GAN_CURVES)


def register(params, best: Path, size: int, channels: int, run_id: str, tags: dict, card: dict,
             in_channels: int = encoding.CONDITION_CHANNELS) -> str:
    """Register the best generator (Keras flavor via io/registry: loading runs no code from the artifact
    store) with alias `challenger` and its model card (`card`: data, training and validation facts). The
    logged model maps the tanh output to [0, 1] images, so it is servable without mrisynth installed."""
    import keras

    from mrisynth.core import cards
    from mrisynth.inference.served_model import export_model

    served = export_model(keras.models.load_model(best, compile=False))
    description = cards.generator_card(params.registry_name, card["data"], card["training"] | {"run": run_id}, card["validation"],
                                       size, in_channels, in_channels != encoding.CONDITION_CHANNELS)
    return registry.register_keras_model(
        served, "generator", params.registry_name, registry.generator_signature(size, channels, in_channels), tags,
        alias=ALIAS, description=description, model_description=cards.GENERATOR_MODEL)


def run(params_path: str = "params.yaml", restart: bool = False) -> int:
    from mrisynth.training.gan import GanTrainer

    params = load_params(params_path)
    p, pre = params.train_gan, params.preprocess
    # first: splitting the CPU into logical devices (mirrored without GPUs) must precede TensorFlow's start-up
    dist = distribute.make(p.strategy, p.cpu_replicas, p.cluster_wait_s, p.peer_timeout_s)
    report = gx.validate_dataset(Path(pre.data_dir))
    if not report.success:
        print(report.summary(), file=sys.stderr)
        print(f"train_gan: {pre.data_dir} failed validation; training not started", file=sys.stderr)
        return 1
    train, val = (arrays.load_split(Path(pre.out_dir), s) for s in ("train", "val"))
    for name, split in (("train", train), ("val", val)):
        check_split(split, name, pre.out_dir, pre.image_size)
    alpha, alpha_source = resolve_alpha(p)
    channels = train.images.shape[-1]
    restart = restart or os.environ.get("MRISYNTH_RESTART", "") not in ("", "0")
    if not dist.is_chief:  # a helper worker: trains in step with the chief, writes and tracks nothing
        settings = dataclasses.replace(p, alpha=alpha)
        trainer = GanTrainer(settings, pre.image_size, settings.in_channels(channels), channels, dist)
        skip_resource_record()
        trainer.fit(train, val, Path(p.out_dir))
        print(f"train_gan: {dist.task} of {dist.workers} finished {p.epochs} epochs; the chief wrote the model, reports and MLflow run")
        return 0
    Path(p.draws_dir).mkdir(parents=True, exist_ok=True)  # DVC outputs, also with one draw
    Path(p.draw_out_dir(1)).parent.mkdir(parents=True, exist_ok=True)
    draws = []
    # the extra draws first, the registered generator (draw 1) last: a failure never leaves a registered
    # challenger whose siblings are missing
    for draw in [*range(1, p.draws), 0]:
        settings = dataclasses.replace(p, alpha=alpha, seed=p.draw_seed(draw))
        draws.append(train_draw(p, pre, settings, dist, train, val, draw, restart, alpha, alpha_source))
    summary = draws[-1]
    summary["draws"] = [{k: d[k] for k in ("draw", "seed", "model_path", "best_epoch", "run_id", "val_mae", "val_ssim")}
                        for d in sorted(draws, key=lambda d: d["draw"])]
    write_reports(summary.pop("_state"), {k: v for k, v in summary.items() if not k.startswith("_")})
    print(f"train_gan: best epoch {summary['best_epoch']} (val_g_loss {summary['best_val_g_loss']:.4f}); "
          f"registered {p.registry_name} version {summary['model_version']} as @{ALIAS}"
          + (f"; {p.draws - 1} more generator draw(s) in {p.draws_dir}" if p.draws > 1 else ""))
    return 0


def _reusable(settings, trainer, train, val, out_dir: Path, model_path: Path):
    """The finished state of an extra draw trained earlier with the same parameters and data (its model
    file in place), so a rerun after a later failure does not train it again; else None."""
    from mrisynth.training.checkpoints import load_state

    state = load_state(out_dir)
    if state is None or not state.completed or not model_path.is_file() or not (out_dir / "best_generator.keras").is_file():
        return None
    from mrisynth.training.gan import canonical_fingerprint

    return state if canonical_fingerprint(state.fingerprint) == trainer.fingerprint(train, val) else None


def code_digest() -> str:
    """sha256 of every source file of the mrisynth package: a run is finished later only by the same code."""
    import mrisynth

    root = Path(mrisynth.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def summary_metrics(summary: dict) -> dict[str, float]:
    """The run's summary metrics, named once: `best_epoch`, `best_val_g_loss`, the kept epoch's validation
    scores as `best_<name>` (`best_val_ssim`), totals under `timing/` (`timing/train_seconds_total`); alpha and epochs are params."""
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("alpha", "epochs")}
    # the run's totals, never a per-epoch series' name (`timing/checkpoint_seconds` is one point per epoch)
    timing = {"train_seconds": "timing/train_seconds_total", "checkpoint_seconds": "timing/checkpoint_seconds_total",
              "checkpoint_share": "timing/checkpoint_share"}
    return {timing.get(k, k if k.startswith("best_") or not k.startswith("val_") else f"best_{k}"): v for k, v in numbers.items()}


def _epoch_logger(run, p, size: int, n_train: int, val, label: str, checkpoint_seconds: list[float]):
    """The trainer's on_epoch callback: metrics to the MLflow run, one progress line, an image grid every
    grid_every epochs; appends each epoch's checkpoint seconds to `checkpoint_seconds`."""
    grid_rows = min(p.grid_images, len(val))
    channels = val.images.shape[-1]

    seconds: list[float] = []

    def on_epoch(result, trainer_, state_):
        checkpoint_seconds.append(result.checkpoint_seconds)
        seconds.append(result.seconds)
        eta = clock(float(np.mean(seconds)) * (p.epochs - result.epoch))  # from this process's epochs (a resumed run too)
        # timings under `timing/`: the UI shows them in their own section, after the loss and validation curves
        run.log_metrics(result.metrics | {"timing/epoch_seconds": result.seconds, "timing/checkpoint_seconds": result.checkpoint_seconds,
                                          "timing/train_images_per_s": n_train / result.seconds}, step=result.epoch)
        print(f"{label}epoch {result.epoch}/{p.epochs}: g_loss {result.metrics['g_loss']:.4f} d_loss {result.metrics['d_loss']:.4f} "
              f"val_g_loss {result.metrics['val_g_loss']:.4f} val_ssim {result.metrics['val_ssim']:.3f} ({result.seconds:.1f} s, ETA {eta})"
              f"{' *best*' if result.improved and p.select == 'val_loss' else ''}", flush=True)
        if result.epoch % p.grid_every == 0 or result.epoch == p.epochs:
            generated = trainer_.render(val, grid_rows)
            titles = ["mask"] + [f"{name} {kind}" for name in (("FLAIR", "T1ce") if channels >= 3 else ("ch0",)) for kind in ("real", "generated")]
            grid = figures.titled_grid(figures.image_grid(grid_panels(val.images[:grid_rows], val.labels[:grid_rows], generated)),
                                       titles, size)
            run.log_image(grid, f"grids/epoch_{result.epoch:03d}.png")

    return on_epoch


def train_draw(p, pre, settings, dist, train, val, draw: int, restart: bool, alpha: float, alpha_source: str) -> dict:
    """Train (or resume) generator draw `draw` (0 = the registered one) with its own MLflow run; returns its summary."""
    from mrisynth.training.checkpoints import load_state, save_state
    from mrisynth.training.gan import GanTrainer

    channels = train.images.shape[-1]
    trainer = GanTrainer(settings, pre.image_size, settings.in_channels(channels), channels, dist)
    out_dir, model_path = Path(p.draw_out_dir(draw)), Path(p.draw_model_path(draw))
    label = f"draw {draw + 1}/{p.draws}: " if p.draws > 1 else ""
    if draw > 0 and not restart:
        finished = _reusable(settings, trainer, train, val, out_dir, model_path)
        if finished is not None:
            print(f"train_gan: {label}already trained with these parameters ({model_path}); kept")
            return {"draw": draw + 1, "seed": settings.seed, "model_path": str(model_path), "best_epoch": finished.best_epoch + 1,
                    "run_id": finished.run_id, **{k: finished.history[finished.best_epoch].get(k) for k in ("val_mae", "val_ssim")}}
    # a run that finished training but was stopped before registration is finished, not retrained, when the
    # same code trained it (one process trains every worker's share under multi_worker: never there)
    code = None if dist.kind == "multi_worker" else code_digest()
    state = trainer.prepare(train, val, out_dir, restart=restart, finish_code=code)
    resuming, finishing = state.epoch > 0, state.completed

    tracking.configure(p.experiment)
    tags = tracking.run_tags("train_gan", p.precision) | (dist.tags() if dist.distributed else {}) | {"draw": str(draw + 1)}
    started = time.perf_counter()
    # `alpha` is the weight this run trained with (tuned or not); params.yaml's value is `alpha_requested`
    run_params = as_flat_dict(p) | {"alpha": alpha, "alpha_requested": p.alpha, "alpha_source": alpha_source, "size": pre.image_size, "draw": draw + 1,
                                    "seed_used": settings.seed, "data_hash": tags["data_hash"], "git_commit": tags["git_commit"],
                                    "train_images": len(train), "val_images": len(val), "image_channels": channels}
    with tracking.stage_run("train_gan", tags | {"resumed_from_epoch": str(state.epoch)} if resuming else tags, run_params,
                            resume_run_id=state.run_id if resuming else None, system_metrics=True) as run:
        state.run_id = run.run_id

        checkpoint_seconds: list[float] = []
        on_epoch = _epoch_logger(run, p, pre.image_size, len(train), val, label, checkpoint_seconds)
        try:
            if not finishing:
                state = trainer.fit(train, val, out_dir, on_epoch=on_epoch, state=state)
        except MrisynthError:
            run.set_tags({"failure": "training stopped; see stage output"})
            raise
        except KeyboardInterrupt:  # SIGINT, or SIGTERM (stage_main turns it into KeyboardInterrupt)
            saved = load_state(out_dir)
            epoch = saved.epoch if saved else 0
            run.set_tags({"interrupted": f"stopped by a signal; the resume state holds epoch {epoch}",
                             "resume": "rerun `dvc repro train_gan` (or python pipelines/train_gan.py) to continue from there"})
            run.end_killed()
            print(f"train_gan: {label}interrupted; resume state at epoch {epoch} in {out_dir} (rerun to continue)", file=sys.stderr)
            raise
        best = out_dir / "best_generator.keras"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best, model_path)
        run.log_artifact(best, "checkpoints")
        best_row = state.history[state.best_epoch] if 0 <= state.best_epoch < len(state.history) else state.history[-1]
        train_seconds = time.perf_counter() - started
        summary = {
            "best_epoch": state.best_epoch + 1, "best_val_g_loss": state.best_val, "alpha": alpha, "epochs": p.epochs,
            "select": p.select, "generator": p.generator, "synthesis": p.synthesis,
            **{k: best_row[k] for k in ("val_g_l1", "val_mae", "val_psnr", "val_ssim")},
            "train_seconds": train_seconds,
            # checkpoint I/O (best generator and resume state every checkpoint_every epochs; best weights copied in memory on improvement)
            # of the epochs trained in this process, as a share of train_seconds (budget: <= 5 %)
            "checkpoint_seconds": round(sum(checkpoint_seconds), 2),
            "checkpoint_share": round(sum(checkpoint_seconds) / max(train_seconds, 1e-9), 4),
        }
        if finishing:  # trained by an earlier process that stopped before registration: no timings of its own
            summary["finished_without_retraining"] = True
        run.log_metrics(summary_metrics(summary))
        summary |= {"draw": draw + 1, "seed": settings.seed, "model_path": str(model_path), "run_id": state.run_id, "_state": state}
        if draw == 0:
            card = {"data": {"source": card_io.data_source(pre.data_dir), "data hash (data.dvc)": tags["data_hash"],
                             "training images": f"{len(train)} real slices (train split)", "validation images": f"{len(val)} (val split)"},
                    "training": {"generator": p.generator, "synthesis": p.synthesis, "alpha (L1 weight)": f"{alpha:.4g} ({alpha_source})",
                                 "epochs": p.epochs, "kept epoch": f"{state.best_epoch + 1} (select: {p.select})", "seed": settings.seed,
                                 "resolution": f"{pre.image_size} px", "git commit": tags["git_commit"]},
                    "validation": {k: best_row[k] for k in ("val_ssim", "val_mae", "val_psnr")}}
            version = register(p, best, pre.image_size, channels, state.run_id,
                               {"val_g_loss": f"{state.best_val:.5f}", "best_epoch": state.best_epoch + 1, "alpha": str(alpha),
                                "data_hash": tags["data_hash"], "git_commit": tags["git_commit"], "size": pre.image_size, "run_id": state.run_id,
                                "generator": p.generator, "synthesis": p.synthesis, "select": p.select},
                               card, in_channels=settings.in_channels(channels))
            summary["model_version"] = int(version)
        state.finalised = True  # a rerun now trains afresh (as DVC asks), instead of finishing this run again
        save_state(out_dir, state)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--restart", action="store_true",
                        help="discard an interrupted run and start over (also MRISYNTH_RESTART=1); not a tracked parameter")
    args = parser.parse_args(argv)
    stage_main(lambda: run(args.params, args.restart))

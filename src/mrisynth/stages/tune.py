"""`tune` stage: an Optuna study over the L1 weight alpha, written for `train_gan` to read.

Reads  work/preprocessed/{train,val}.npz (when n_trials > 0), params `tune`, `train_gan`, ...
Writes work/tune/best_alpha.json ({"alpha": ..., "source": ...}); with trials, one MLflow tuning run
       with a nested run per trial, the optimisation history and parameter importance as artifacts.

`tune.n_trials: 0` skips tuning and passes `train_gan.alpha` through. Several workers (processes or
machines) can share one study through `tune.storage` (PostgreSQL for machines, SQLite or
`journal:<file>` on one machine): run `python pipelines/tune.py --worker --n-trials N` in each."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from mrisynth.config import as_flat_dict, load_params
from mrisynth.core.urls import mask_url
from mrisynth.core import arms
from mrisynth.stages import stage_main
from mrisynth.errors import ConfigError, MrisynthError, ServiceError


def write_alpha(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _rdb(url: str, attempts: int = 6, **kwargs):
    """RDBStorage, retried: workers that start together may race to create the schema."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with stable_api():  # heartbeat_interval is experimental
                return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))


def storage_url(t) -> str:
    """The study storage: MRISYNTH_TUNE_STORAGE when set (a team's shared database, `source .team/env.sh`),
    else `tune.storage`. Either way the study name is scoped by data, params and code (study_scope), so
    where the study lives never changes the tuned alpha."""
    return os.environ.get("MRISYNTH_TUNE_STORAGE") or t.storage


def _trial_worker_lost(study, trial) -> None:
    """Optuna's heartbeat_stale_trial_callback: another worker found `trial` stale (its worker stopped
    heartbeating, e.g. killed) and marked it FAIL; end its MLflow run as KILLED to match."""
    from mrisynth.io import tracking

    print(f"tune: trial {trial.number} (worker pid {trial.user_attrs.get('worker_pid')}) stopped heartbeating; marked FAIL", file=sys.stderr)
    runs = ((trial.user_attrs.get("mlflow_run_id"), {"state": "FAIL", "failure": "its worker stopped heartbeating; marked failed by another worker"}),
            (trial.user_attrs.get("mlflow_parent_run_id"), {"failure": f"this worker stopped heartbeating during trial {trial.number}"}))
    for run_id, tags in runs:  # the trial's run and its worker's run end KILLED
        if not run_id:
            continue
        try:
            tracking.terminate_run(run_id, "KILLED", tags)
        except Exception as exc:  # noqa: BLE001 - bookkeeping only: never stop the surviving worker
            print(f"tune: could not mark MLflow run {run_id} of trial {trial.number} KILLED ({exc})", file=sys.stderr)


@contextlib.contextmanager
def stable_api():
    """Silence Optuna's ExperimentalWarning for the features this stage uses on purpose (heartbeats, the
    matplotlib plots, fail_stale_trials): the user can do nothing about them. Other warnings still show."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage(url: str, heartbeat_s: int = 0):
    """An Optuna storage for a URL: sqlite:/// and postgresql:// (RDB, with a lock timeout), or journal:<file>.

    RDB storages with heartbeat_s > 0: every running trial heartbeats; a trial silent for 3 x heartbeat_s
    (its worker was killed) is marked FAIL by the next worker that starts a trial (or by the tune stage
    before it picks the best alpha), and its MLflow run ends KILLED.
    A database server that does not answer fails within about 3 x 10 s with one line naming it."""
    import optuna

    beat = {"heartbeat_interval": heartbeat_s, "grace_period": 3 * heartbeat_s, "heartbeat_stale_trial_callback": _trial_worker_lost} if heartbeat_s else {}
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:"):
        return _rdb(url, engine_kwargs={"connect_args": {"timeout": 60}}, **beat)
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy.exc

        connect = {"connect_timeout": 10}
        try:
            return _rdb(url, attempts=3, engine_kwargs={"connect_args": connect, "pool_pre_ping": True}, **beat)
        except sqlalchemy.exc.OperationalError as exc:
            raise ServiceError(f"tune storage {mask_url(url)} did not answer within 3 x {connect['connect_timeout']} s "
                               f"({(str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]}); start it (`make team-up`) or set "
                               "tune.storage / MRISYNTH_TUNE_STORAGE to sqlite:///optuna.db") from exc
    raise ConfigError(f"tune.storage={mask_url(url)!r}: expected sqlite:///file.db, postgresql+psycopg2://user@host/db "
                      "(password in PGPASSWORD or ~/.pgpass) or journal:<file>")


def study_scope(params, train, val) -> str:
    """12 hex digits naming what a trial's value depends on: the training/validation arrays, every
    parameter that shapes a trial, and the package's source code. Part of the study name, so a study
    left in the storage by other data, settings or code never decides alpha."""
    from mrisynth.training.gan import arrays_key

    t = params.tune
    shaping = {
        "tune": {k: v for k, v in dataclasses.asdict(t).items() if k not in ("n_trials", "storage", "study_name", "out", "heartbeat_s")},
        "train_gan": {k: v for k, v in dataclasses.asdict(params.train_gan).items()
                      if k not in ("alpha", "alpha_file", "epochs", "grid_every", "grid_images", "out_dir", "model_path", "experiment", "registry_name",
                                   "strategy", "cpu_replicas", "cluster_wait_s", "peer_timeout_s")},  # trials train on one device
        "size": params.preprocess.image_size,
        "augment": dataclasses.asdict(params.augment) if t.objective == "downstream" else None,
        "train_segmenter": dataclasses.asdict(params.train_segmenter) if t.objective == "downstream" else None,
        "data": arrays_key(train, val),
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def make_study(t, scope: str | None = None, worker: bool = False):
    """The study `<study_name>-<scope>` in the shared storage (created when absent).

    The main process samples with `tune.seed`; each worker adds its process id, so parallel workers
    never propose the same alpha sequence."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = storage(storage_url(t), t.heartbeat_s)
    name = f"{t.study_name}-{scope}" if scope else t.study_name
    seed = t.seed + (os.getpid() if worker else 0)
    for attempt in range(6):  # concurrent workers may both try to create the study
        try:
            return optuna.create_study(
                study_name=name,
                storage=shared,
                direction="minimize" if t.objective == "image" else "maximize",
                sampler=optuna.samplers.TPESampler(seed=seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=t.prune_startup_trials, n_warmup_steps=t.prune_warmup_epochs),
                load_if_exists=True,
            )
        except optuna.exceptions.DuplicatedStudyError:
            if attempt == 5:
                raise
            time.sleep(0.5)


def report_epoch(trial, value: float, epoch: int) -> None:
    """Report an intermediate value; raise TrialPruned when the pruner says this trial is worse than the rest."""
    import optuna

    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch} with value {value:.5f}")


def _gan(params, alpha: float, train, epochs: int):
    from mrisynth.training.gan import GanTrainer

    settings = dataclasses.replace(params.train_gan, alpha=alpha, epochs=epochs or params.train_gan.epochs)
    channels = train.images.shape[-1]
    return GanTrainer(settings, params.preprocess.image_size, settings.in_channels(channels), channels)


def objective_image(trial, params, alpha: float, train, val, log) -> float:
    """Short GAN training; value = the lowest validation L1 (MAE within the brain) over the epochs."""
    trainer = _gan(params, alpha, train, params.tune.epochs)
    best = np.inf

    def on_epoch(result, trainer_, state):
        nonlocal best
        best = min(best, result.metrics["val_mae"])
        log({"val_mae": result.metrics["val_mae"], "val_ssim": result.metrics["val_ssim"], "val_psnr": result.metrics["val_psnr"]}, result.epoch)
        report_epoch(trial, result.metrics["val_mae"], result.epoch)

    with tempfile.TemporaryDirectory(prefix="tune-gan-") as tmp:
        trainer.fit(train, val, Path(tmp), on_epoch=on_epoch)
    return float(best)


def objective_downstream(trial, params, alpha: float, train, val, log) -> float:
    """Short GAN training, GAN augmentation of the training split, a short segmenter; value = best validation Dice."""
    from mrisynth.augment import synthesis
    from mrisynth.training import segmenter
    from mrisynth.core import encoding

    trainer = _gan(params, alpha, train, params.tune.epochs)
    with tempfile.TemporaryDirectory(prefix="tune-gan-") as tmp:
        trainer.fit(train, val, Path(tmp))
        samples, _ = synthesis.synthesise(train, trainer.generator, params.augment, ("gan",), params.train_gan.synthesis,
                                             params.train_gan.inpaint_margin)
    gan_images = [s for s in samples if s.kind in arms.get("gan").kinds]
    images = np.stack([s.image for s in gan_images]).astype(np.float32)
    classes = encoding.labels_to_classes(np.stack([s.labels for s in gan_images]))
    s = params.train_segmenter
    settings = dataclasses.replace(s, epochs=params.tune.segmenter_epochs)

    def on_epoch(epoch, row, improved):
        log({"val_dice_tumour": row["val_dice_tumour"], "seg_loss": row["loss"]}, epoch)
        report_epoch(trial, row["val_dice_tumour"], epoch)

    with tempfile.TemporaryDirectory(prefix="tune-seg-") as tmp:
        result = segmenter.train(settings, s.seeds[0], images, classes, val.images, encoding.labels_to_classes(val.labels),
                                 Path(tmp) / "best.keras", on_epoch)
    return float(result["best_val_dice_tumour"])


def _log_study_artifacts(study, run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    import matplotlib.pyplot as plt

    # optuna's plots switch the global style (plt.style.use("ggplot")): keep that inside this block
    with tempfile.TemporaryDirectory() as tmp, stable_api(), matplotlib.rc_context():
        ax = ovm.plot_optimization_history(study)
        ax.figure.savefig(Path(tmp) / "optimization_history.png", bbox_inches="tight")
        plt.close(ax.figure)
        history = [{"number": t.number, "state": t.state.name, "alpha": t.params.get("alpha"), "value": t.value} for t in study.trials]
        (Path(tmp) / "trials.json").write_text(json.dumps(history, indent=2))
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        tuned = {name for t in completed for name in t.params}
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. fewer than two completed trials
            importances = {"note": f"not computable: {exc}"}
        if len(tuned) == 1:  # one parameter (alpha): its importance is 1.0 by definition, a plot tells nothing
            importances = {"note": f"only {tuned.pop()} is tuned: its importance is 1 by definition (no plot)"}
        if len(completed) >= 2 and "note" not in importances:
            ax = ovm.plot_param_importances(study)
            ax.figure.savefig(Path(tmp) / "param_importances.png", bbox_inches="tight")
            plt.close(ax.figure)
        (Path(tmp) / "param_importances.json").write_text(json.dumps(importances, indent=2))
        run.log_artifacts(tmp, "optuna")


def optimise(params, n_trials: int, parent_name: str = "tune", worker: bool = False):
    """Run n_trials trials of the study (shared through its storage), each a nested MLflow run."""
    import optuna

    from mrisynth.io import arrays, tracking

    t, pre = params.tune, params.preprocess
    train, val = (arrays.load_split(Path(pre.out_dir), s) for s in ("train", "val"))
    scope = study_scope(params, train, val)
    study = make_study(t, scope, worker)
    tracking.configure(params.train_gan.experiment)
    objective_fn = objective_image if t.objective == "image" else objective_downstream
    tags = tracking.run_tags("tune") | {"study": study.study_name, "study_scope": scope, "storage": mask_url(storage_url(t))}
    with tracking.stage_run(parent_name, tags, as_flat_dict(t) | {"n_trials_this_run": n_trials}, system_metrics=False) as parent:

        def objective(trial):
            alpha = trial.suggest_float("alpha", t.alpha_low, t.alpha_high, log=True)
            with parent.child(f"trial {trial.number}") as child:
                trial.set_user_attr("mlflow_run_id", child.run_id)  # for _trial_worker_lost
                trial.set_user_attr("worker_pid", os.getpid())
                trial.set_user_attr("mlflow_parent_run_id", parent.run_id)
                child.log_params({"alpha": alpha, "trial": trial.number, "objective": t.objective})
                try:
                    value = objective_fn(trial, params, alpha, train, val, child.log_metrics)
                except optuna.TrialPruned as exc:
                    # pruning is the study working as designed: the run ends FINISHED (not a red failure), named and tagged pruned
                    child.set_tags({"state": "PRUNED", "mlflow.runName": f"trial {trial.number} (pruned)"})
                    pruned = exc
                else:
                    pruned = None
                    child.set_tags({"state": "COMPLETE"})
                    child.log_metrics({"objective": value})
            if pruned is not None:
                raise pruned
            return value

        study.optimize(objective, n_trials=n_trials, catch=())
        completed = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
        if completed:
            parent.log_metrics({"best_alpha": study.best_params["alpha"], "best_value": study.best_value})
            _log_study_artifacts(study, parent)
    return study, parent.run_id


def run(params_path: str = "params.yaml", worker: bool = False, n_trials: int | None = None) -> int:
    params = load_params(params_path)
    t = params.tune
    trials = t.n_trials if n_trials is None else n_trials
    out = Path(t.out)
    if trials == 0 and not worker:
        write_alpha(out, {"alpha": params.train_gan.alpha, "source": "params.yaml (tune.n_trials: 0)"})
        print(f"tune: n_trials 0, using train_gan.alpha = {params.train_gan.alpha}")
        return 0
    study, run_id = optimise(params, trials, "tune worker" if worker else "tune", worker)
    if worker:
        print(f"tune worker: study {study.study_name} now has {len(study.trials)} trials")
        return 0
    import optuna

    with stable_api():
        optuna.storages.fail_stale_trials(study)  # trials of killed workers -> FAIL, never the best (no-op without heartbeat)
    completed = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise MrisynthError(f"tune: no trial of study {study.study_name!r} completed (all pruned or failed); raise tune.epochs or n_trials")
    best = study.best_trial
    write_alpha(out, {"alpha": best.params["alpha"], "source": "optuna", "objective": t.objective, "value": best.value,
                      "trial": best.number, "study": study.study_name, "completed_trials": len(completed),
                      "pruned_trials": sum(tr.state == optuna.trial.TrialState.PRUNED for tr in study.trials), "mlflow_run_id": run_id})
    print(f"tune: best alpha {best.params['alpha']:.4g} ({t.objective} objective {best.value:.5f}, trial {best.number}) -> {out}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--worker", action="store_true", help="only add trials to the shared study; write nothing")
    parser.add_argument("--n-trials", type=int, default=None)
    args = parser.parse_args(argv)
    stage_main(lambda: run(args.params, args.worker, args.n_trials))

"""MLflow side effects: tracking URI, run context (params, provenance tags, system metrics), images.

Default store: the embedded SQLite file `sqlite:///mlflow.db` with artifacts in `./mlartifacts`;
MLFLOW_TRACKING_URI overrides it (e.g. a shared tracking server)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import yaml

DEFAULT_URI = "sqlite:///mlflow.db"


# A tracking server that stops answering must fail a stage in bounded time, not after MLflow's
# default 7 retries with exponential backoff and a 120 s timeout per request.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 10.0


OBJECT_STORE_HINT = ("start it (`make team-up`, then `source .team/env.sh`) or unset MLFLOW_S3_ENDPOINT_URL "
                     "(and MLFLOW_TRACKING_URI) to use the local stores")


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S, what: str = "MLflow tracking server", path: str = "/health",
                 hint: str = "start it (`make team-up`, then `source .team/env.sh`) or unset MLFLOW_TRACKING_URI to use the local sqlite store") -> None:
    """Raise ServiceError (one line naming `what` and the URI) unless something answers HTTP at `uri` + `path`
    within `timeout`.

    Any HTTP answer counts (200 from /health, but also 401/403 behind an authenticating proxy, 404
    under a path prefix, or an S3 endpoint's 403 to an anonymous request): only a refused,
    unreachable or silent server is an error. TLS follows MLFLOW_TRACKING_INSECURE_TLS and
    MLFLOW_TRACKING_SERVER_CERT_PATH as MLflow does."""
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    from mrisynth.errors import ServiceError

    context = None
    if uri.startswith("https://"):
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context = ssl._create_unverified_context()  # noqa: S323 - the user asked MLflow for exactly this
        else:
            context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}{path}", timeout=timeout, context=context):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        problem = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise ServiceError(f"{what} {uri} did not answer within {timeout:.0f} s ({problem}); {hint}")


def configure_uri() -> str:
    """Point MLflow at MLFLOW_TRACKING_URI or the embedded default store; returns the URI.

    A server URI (http/https) is probed first, and MLflow's HTTP retries and timeout are bounded
    (HTTP_DEFAULTS, unless set in the environment). An S3 object store named by MLFLOW_S3_ENDPOINT_URL
    (the team stack's artifact store) is probed too, so a stage fails at its start, in bounded time and
    with one line, instead of in the middle of an artifact upload."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        probe_server(uri)
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL", "")
    if endpoint.startswith(("http://", "https://")):
        probe_server(endpoint, what="S3 object store (MLFLOW_S3_ENDPOINT_URL)", path="/", hint=OBJECT_STORE_HINT)
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock beside an SQLite store while it is created or migrated.

    MLflow builds the schema of a new `sqlite:///` file on first use; two processes doing so at once
    (parallel tune workers on one machine) collide ("table experiments already exists"). Servers
    (http://, postgresql://) serialise this themselves, so no lock is taken for them."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def configure(experiment: str) -> str:
    """Point MLflow at the tracking store and select (creating if needed) the experiment. Returns the URI."""
    import mlflow

    uri = configure_uri()
    # Under `mlflow run`, MLFLOW_RUN_ID names the launcher's run; each stage opens runs of its own
    # (several stages in one entry point would otherwise write into one run), tagged with that id.
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher:
        os.environ["MRISYNTH_LAUNCHER_RUN_ID"] = launcher
    with _store_lock(uri):  # schema creation and experiment creation are both first-come races
        if mlflow.get_experiment_by_name(experiment) is None:
            artifact_root = None
            if uri.startswith("sqlite:"):
                artifact_root = (Path(os.environ.get("MLFLOW_ARTIFACT_ROOT", "mlartifacts")) / experiment).resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=artifact_root)
        mlflow.set_experiment(experiment)
        tag_experiment(mlflow.get_experiment_by_name(experiment).experiment_id)
    return uri


# The MLflow UI opens an experiment without this tag in its GenAI mode (traces, tokens); with it, in
# "Model training" mode (runs, metrics, models) - the value the UI's own switch writes.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A saved runs-table view (the UI's "share view" state, read from an experiment tag): the scores
# that matter as columns, runs grouped by arm. Open it with `#/experiments/<id>?viewStateShareKey=arms`.
VIEW_KEY = "arms"
ARMS_VIEW = {
    "selectedColumns": ["metrics.`test_dice_tumour`", "metrics.`best_val_dice_tumour`", "metrics.`best_epoch`",
                        "params.`augmentation`", "params.`seed`", "params.`generator_draw`", "params.`train_images`"],
    "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": "augmentation"}]},
    "orderByKey": "metrics.`best_val_dice_tumour`", "orderByAsc": False,  # sorted by validation: never pick by test
}


def experiment_id(name: str) -> str | None:
    """The id of experiment `name` in the configured tracking store (None when it does not exist)."""
    import mlflow

    configure_uri()
    experiment = mlflow.MlflowClient().get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


def experiment_tags() -> dict[str, str]:
    """The tags every mrisynth experiment carries: its kind (model training) and the saved arms view."""
    import json

    return EXPERIMENT_KIND | {f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(ARMS_VIEW)}


def tag_experiment(experiment_id: str) -> None:
    """Set `experiment_tags()` on the experiment where they differ (idempotent)."""
    import mlflow

    client = mlflow.MlflowClient()
    current = client.get_experiment(experiment_id).tags
    for key, value in experiment_tags().items():
        if current.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def data_hash(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 recorded in data.dvc ('unknown' when there is none)."""
    try:
        return str(yaml.safe_load(Path(dvc_file).read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


# What the pipeline itself rewrites: their changes say nothing about the code that ran.
PIPELINE_WRITTEN = ("dvc.lock", "data.dvc", "reports")


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD, with `-dirty` when tracked files other than the pipeline's own outputs (PIPELINE_WRITTEN)
    differ from it: a run in the middle of `dvc repro` (dvc.lock and reports rewritten) is clean when
    the code is."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=cwd)
        excluded = [f":(exclude){p}" for p in PIPELINE_WRITTEN]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                               capture_output=True, text=True, timeout=10, cwd=cwd)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_tags(precision: str) -> dict[str, str]:
    """Device and precision tags (the GPU names when TensorFlow sees any, else the CPU; the policy that
    `precision` resolved to, as requested, and why), and the `mlflow run` launcher's run id."""
    from mrisynth.io import devices

    gpus = devices.gpus()
    device = f"GPU:{','.join(gpus)}" if gpus else f"CPU:{platform.processor() or platform.machine()}"
    memory = {"gpu_memory_mib": ",".join(map(str, devices.gpu_memory_mib()))} if gpus else {}
    return ({"device": device, "device_kind": "gpu" if gpus else "cpu", "gpu_count": str(len(gpus)), "cpu_count": str(os.cpu_count())}
            | memory | devices.precision_tags(precision) | launcher_tags())


def launcher_tags() -> dict[str, str]:
    """{"launched_by_run": id} when started by `mlflow run` (see `configure`), else {}."""
    launcher = os.environ.get("MRISYNTH_LAUNCHER_RUN_ID")
    return {"launched_by_run": launcher} if launcher else {}


# ---------------------------------------------------------------- runs
def _numbers(metrics: dict[str, object]) -> dict[str, float]:
    """The metrics as floats, None skipped (NaN and infinities pass, as MLflow stores them)."""
    return {key: float(value) for key, value in metrics.items() if value is not None}


class StageRun:
    """One MLflow run (a stage's, or a nested child): the only logging surface a stage uses.

    Calls go to MLflow's active run, which is this run while its `with` block (and no child's) is open."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_params(self, params: dict[str, object]) -> None:
        import mlflow

        mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, object], step: int | None = None, timestamp_ms: int | None = None) -> None:
        """`metrics` (None skipped) at `step`, stamped `timestamp_ms` (default: now)."""
        import mlflow

        values = _numbers(metrics)
        if values:
            mlflow.log_metrics(values, step=step, timestamp=timestamp_ms)

    def set_tags(self, tags: dict[str, object]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=folder)

    def log_artifacts(self, directory: str | Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifacts(str(directory), artifact_path=folder)

    def log_dict(self, data: dict, file: str) -> None:
        import mlflow

        mlflow.log_dict(data, file)

    def log_text(self, text: str, file: str) -> None:
        import mlflow

        mlflow.log_text(text, file)

    def log_image(self, image: np.ndarray, file: str) -> None:
        import mlflow

        mlflow.log_image(image, artifact_file=file)

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, object] | None = None):
        """A nested run under this one (an arm/seed, a tuning trial); yields its StageRun."""
        import mlflow

        with mlflow.start_run(run_name=name, nested=True) as active:
            run = StageRun(active.info.run_id)
            if tags:
                run.set_tags(tags)
            yield run

    def end_killed(self) -> None:
        """Mark the run KILLED (interrupted by a signal; resumable) and end it."""
        import mlflow

        mlflow.end_run(status="KILLED")


def terminate_run(run_id: str, status: str, tags: dict[str, object] | None = None) -> None:
    """End a run that its own process can no longer end (the process was killed): tags, then status
    (FINISHED, FAILED or KILLED)."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value))
    client.set_terminated(run_id, status)


@contextlib.contextmanager
def stage_run(name: str, tags: dict[str, object] | None = None, params: dict[str, object] | None = None,
              resume_run_id: str | None = None, system_metrics: bool | None = None):
    """Open (or, with `resume_run_id`, reopen) a stage's MLflow run; yields its StageRun.

    The caller has called `configure(experiment)`. An exception inside marks the run FAILED (MLflow's
    context manager); `params` are logged only for a new run (a resumed run keeps its own).
    system_metrics None leaves MLflow's default (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING); its monitor's
    start/stop/"skip GPU metrics" INFO lines are silenced (its warnings and errors still print)."""
    import logging

    import mlflow

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else name, log_system_metrics=system_metrics) as active:
        run = StageRun(active.info.run_id)
        if tags:
            run.set_tags(tags)
        if params and not resume_run_id:
            run.log_params(params)
        yield run


def log_metrics_to_run(run_id: str, metrics: dict[str, float]) -> None:
    """Log metrics into an existing (possibly finished) run, e.g. test scores into each arm's child run."""
    import time

    import mlflow
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    items = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    for start in range(0, len(items), 900):
        mlflow.MlflowClient().log_batch(run_id, metrics=items[start : start + 900])


def _local_source(path: str):
    """A local-file dataset source, named explicitly: from a bare path string MLflow guesses, and warns that
    two registered local sources match."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    local = next(s for s in get_registered_sources() if s._get_source_type() == "local")  # noqa: SLF001 - its documented type name
    return local(path)


def log_split_inputs(splits: dict[str, object], data_digest: str, source: str = "work/preprocessed") -> None:
    """MLflow dataset tracking for the active run: one dataset per split (name `<split>`, digest = the
    data.dvc hash + split size), with the split as context, so the UI's Dataset column is filled."""
    import mlflow

    for split, data in splits.items():
        dataset = mlflow.data.from_numpy(
            np.asarray(data.images), targets=np.asarray(data.labels), source=_local_source(f"{source}/{split}.npz"),
            name=f"{split}", digest=f"{data_digest[:10]}-{split}{len(data)}")
        mlflow.log_input(dataset, context=split)


def log_training_input(name: str, images: np.ndarray, classes: np.ndarray, digest: str, source: str, context: str = "train") -> None:
    """MLflow dataset tracking of one arm's actual training set (name e.g. `train-gan-g2`, its own digest
    and size) in the active run: the UI's Dataset column then tells 300 augmented images from 30 real ones."""
    import mlflow

    dataset = mlflow.data.from_numpy(np.asarray(images), targets=np.asarray(classes), source=_local_source(source), name=name,
                                     digest=f"{digest[:10]}-{len(images)}")
    mlflow.log_input(dataset, context=context)


def run_tags(stage: str, precision: str | None = None) -> dict[str, str]:
    """Provenance tags every stage run carries: stage, data hash, git commit, launcher (+ device/precision)."""
    tags = {"stage": stage, "data_hash": data_hash(), "git_commit": git_commit()} | launcher_tags()
    if precision is not None:
        tags |= device_tags(precision)
    return tags

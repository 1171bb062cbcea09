"""MLflow side effects: tracking URI, run context (params, provenance tags, system metrics), images.

Default store: the embedded SQLite file `sqlite:///mlflow.db` with artifacts in `./mlartifacts`;
MLFLOW_TRACKING_URI overrides it (e.g. a shared tracking server)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import yaml

DEFAULT_URI = "sqlite:///mlflow.db"


def configure_uri() -> str:
    """Point MLflow at MLFLOW_TRACKING_URI or the embedded default store; returns the URI."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    mlflow.set_tracking_uri(uri)
    return uri


def configure(experiment: str) -> str:
    """Point MLflow at the tracking store and select (creating if needed) the experiment. Returns the URI."""
    import mlflow

    uri = configure_uri()
    # Under `mlflow run`, MLFLOW_RUN_ID names the launcher's run; each stage opens runs of its own
    # (several stages in one entry point would otherwise write into one run), tagged with that id.
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher:
        os.environ["MRISYNTH_LAUNCHER_RUN_ID"] = launcher
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_root = None
        if uri.startswith("sqlite:"):
            artifact_root = (Path(os.environ.get("MLFLOW_ARTIFACT_ROOT", "mlartifacts")) / experiment).resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifact_root)
    mlflow.set_experiment(experiment)
    return uri


def data_hash(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 recorded in data.dvc ('unknown' when there is none)."""
    try:
        return str(yaml.safe_load(Path(dvc_file).read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_tags(precision: str) -> dict[str, str]:
    """Device and precision tags (the GPU name when TensorFlow sees one, else the CPU), and the
    `mlflow run` launcher's run id when there is one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = "GPU:" + ",".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus) if gpus else f"CPU:{platform.processor() or platform.machine()}"
    return {"device": device, "precision": precision, "cpu_count": str(os.cpu_count())} | launcher_tags()


def launcher_tags() -> dict[str, str]:
    """{"launched_by_run": id} when started by `mlflow run` (see `configure`), else {}."""
    launcher = os.environ.get("MRISYNTH_LAUNCHER_RUN_ID")
    return {"launched_by_run": launcher} if launcher else {}


def image_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 RGB grid of [0, 1] panels (H, W) or (H, W, 3); rows of equal length, 2 px white gaps."""
    def rgb(panel):
        panel = np.clip(panel, 0.0, 1.0)
        return np.repeat(panel[..., None], 3, axis=-1) if panel.ndim == 2 else panel

    gap = 2
    lines = []
    for row in rows:
        panels = [rgb(p) for p in row]
        h = panels[0].shape[0]
        sep = np.ones((h, gap, 3))
        line = np.concatenate([x for p in panels for x in (p, sep)][:-1], axis=1)
        lines.append(line)
        lines.append(np.ones((gap, line.shape[1], 3)))
    return (np.concatenate(lines[:-1], axis=0) * 255).astype(np.uint8)


def label_rgb(labels: np.ndarray) -> np.ndarray:
    """BraTS labels (H, W) as colours: edema green, core red, enhancing yellow."""
    out = np.zeros((*labels.shape, 3))
    out[labels == 2] = (0.1, 0.8, 0.2)
    out[labels == 1] = (0.9, 0.1, 0.1)
    out[labels == 4] = (1.0, 0.9, 0.1)
    return out

"""A `models:/` URI that names no version (`@champion` before any promotion, a typo, a missing version):
`serve` and `generate` stop with one `error:` line saying what is missing and what to run, not an MLflow
traceback. The store is a fresh SQLite file holding what `train_gan` leaves: a version with @challenger only."""
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from mrisynth.inference.promote import ModelNotFound, require_model


@pytest.fixture
def unpromoted(tmp_path):
    """MLFLOW_TRACKING_URI of a store where 'mrisynth-generator' v1 is @challenger and nothing is @champion."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("mrisynth-generator")
    version = client.create_model_version("mrisynth-generator", source=(tmp_path / "model").as_uri())
    client.set_registered_model_alias("mrisynth-generator", "challenger", version.version)
    return uri


def _cli(uri: str, cwd, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_REGISTRY_URI", None)
    return subprocess.run([sys.executable, "-m", "mrisynth.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len([line for line in r.stderr.splitlines() if line.strip() and "INFO" not in line]) == 1, r.stderr[-3000:]
    return errors[0]


def test_serve_and_generate_name_a_missing_champion_in_one_line(unpromoted, tmp_path):
    import tifffile

    line = _one_error_line(_cli(unpromoted, tmp_path, "serve", "--model", "models:/mrisynth-generator@champion", "--port", 0))
    assert "models:/mrisynth-generator@champion" in line and "@champion" in line
    assert "`mrisynth promote --name mrisynth-generator`" in line and "models:/mrisynth-generator@challenger" in line

    masks = tmp_path / "masks"
    masks.mkdir()
    tifffile.imwrite(masks / "x.tif", np.zeros((8, 8), np.uint8))
    line = _one_error_line(_cli(unpromoted, tmp_path, "generate", "--model", "models:/mrisynth-generator@champion",
                                "--masks", masks, "--brain", masks, "--out", tmp_path / "out"))
    assert "mrisynth promote" in line and not (tmp_path / "out").exists()


def test_require_model_says_what_is_missing(unpromoted):
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(unpromoted)
    try:
        require_model("models:/mrisynth-generator@challenger")  # exists: no error
        require_model("models:/mrisynth-generator/1")
        require_model("runs:/abc/model")  # not a registry URI: left to the loader
        for uri, expected in (("models:/mrisynth-generator@champion", "mrisynth promote --name mrisynth-generator"),
                              ("models:/mrisynth-generator/7", "has no version 7"),
                              ("models:/mrisynth-generator@staging", "holds alias @staging"),
                              ("models:/mrisynth-generatr@champion", "no registered model 'mrisynth-generatr'")):
            with pytest.raises(ModelNotFound, match=expected) as err:
                require_model(uri)
            assert "\n" not in str(err.value) and str(err.value).startswith(uri)
    finally:
        mlflow.set_tracking_uri(before)

"""A tiny end-to-end `dvc repro` (preprocess -> evaluate) in a temporary copy of the repository."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, write_tiny_case
from mrisynth.ingest import ImportOptions, import_brats

TINY_PARAMS = {
    "preprocess": {"size": 64},
    "train_gan": {"epochs": 1, "batch_size": 2, "width": 0.25, "grid_every": 1, "grid_images": 2, "precision": "float32"},
    "augment": {"factor": 3},
    "train_segmenter": {"epochs": 1, "batch_size": 4, "depth": 2, "base_filters": 4, "precision": "float32"},
    "evaluate": {"examples": 2},
}


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if f and not f.startswith(("tests/", "reports/", "dvc.lock"))]


@pytest.mark.slow
def test_tiny_dvc_repro_produces_table1_and_mlflow_runs(tmp_path):
    repo = tmp_path / "repo"
    for name in _tracked_files():
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / "data.dvc").unlink()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    brats = tmp_path / "brats"
    for i in range(1, 9):
        write_tiny_case(brats, f"BraTS20_Training_{i:03d}", seed=i)
    import_brats(brats, repo / "data", {"train": 4, "val": 2, "test": 2}, 1, ImportOptions(size=64))

    bin_dir = Path(sys.executable).parent
    # a clean MLflow environment: earlier tests' set_experiment() exports MLFLOW_EXPERIMENT_ID for subprocesses
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    subprocess.run([str(bin_dir / "dvc"), "init", "--no-scm", "-f", "-q"], cwd=repo, check=True, env=env)
    result = subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=repo, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("preprocess", "tune", "train_gan", "augment", "train_segmenter", "evaluate"):
        assert f"Running stage '{stage}'" in result.stdout

    table = (repo / "reports" / "table1.md").read_text()
    assert "| Accuracy |" in table and "Test (none)" in table and "Test (classic+gan)" in table
    accuracy_row = next(line for line in table.splitlines() if line.startswith("| Accuracy |"))
    cells = [c.strip() for c in accuracy_row.strip("|").split("|")[1:]]
    assert len(cells) == 6 and all(0.0 <= float(c) <= 1.0 for c in cells)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics["arms"]) == {"none", "classic+gan"} and "test_dice_gain" in metrics
    assert (repo / "reports" / "test_examples.png").stat().st_size > 0
    augmented = (repo / "work" / "augmented" / "manifest.csv").read_text().splitlines()
    assert sum(line.endswith("True") for line in augmented[1:]) == 3 * 4

    shown = subprocess.run([str(bin_dir / "dvc"), "metrics", "show"], cwd=repo, capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "test_dice_gain" in shown.stdout

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("mrisynth")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["train_segmenter"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {c.data.tags["augmentation"] for c in children} == {"none", "classic+gan"}
    evaluation = by_name["evaluate"]
    assert "test_dice_gain" in evaluation.data.metrics
    assert evaluation.data.tags["run.classic_gan.seed1"] in {c.info.run_id for c in children}
    versions = client.search_model_versions("name='mrisynth-segmenter'")
    assert {v.tags["augmentation"] for v in versions} == {"none", "classic+gan"}
    assert client.get_model_version_by_alias("mrisynth-generator", "challenger").version

    # an MLproject entry point, run the way the README says
    ran = subprocess.run([str(bin_dir / "mlflow"), "run", ".", "-e", "evaluate", "--env-manager", "local", "--experiment-name", "mrisynth"],
                         cwd=repo, capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    evaluations = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stage") == "evaluate"]
    assert len(evaluations) == 2 and all("test_dice_gain" in r.data.metrics for r in evaluations)
    launcher = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mlflow.project.entryPoint") == "evaluate")
    assert any(r.data.tags.get("launched_by_run") == launcher.info.run_id for r in evaluations)

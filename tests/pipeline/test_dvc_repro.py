"""A tiny end-to-end `dvc repro` (preprocess -> evaluate) in a temporary copy of the repository."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import TINY_PARAMS, copy_tracked_repo, write_tiny_case
from offline_render import browser, colour_pixels, non_white_share, page_text, screenshot
from mrisynth.data.ingest import ImportOptions, import_brats
from mrisynth.ops import next_steps

STAGES = ("preprocess", "tune", "train_gan", "augment", "train_segmenter", "gan_usefulness", "evaluate")
QUESTIONS = ("Classic augmentation vs none", "GAN augmentation vs none", "Classic+GAN vs none", "GAN beyond classic",
             "Copy-paste vs none", "GAN beyond copy-paste")


def _mlflow_ui_text(repo: Path, env: dict, bin_dir: Path, route: str) -> str:
    """Start `mlflow ui` on the run's store, return the visible text of `route` in headless Chromium."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", env["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1",
                               "--port", str(port)], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not start"
                time.sleep(1)
        return page_text(f"http://127.0.0.1:{port}/{route}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def _check_sweep_scoring(repo: Path, metrics: dict, monkeypatch) -> None:
    """`make sweep`'s scorer (pipelines/sweep_summary.py) on this workspace: it never loads the test split, and its
    validation comparisons are evaluate's (same code, same bootstrap seed)."""
    import importlib.util

    from mrisynth.io import arrays

    spec = importlib.util.spec_from_file_location("sweep_summary", repo / "pipelines" / "sweep_summary.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    load_split = arrays.load_split

    def validation_only(folder, split):
        assert split != "test", "the sweep's scorer loaded the test split"
        return load_split(folder, split)

    monkeypatch.setattr(arrays, "load_split", validation_only)
    monkeypatch.chdir(repo)
    row = sweep.score("tiny")
    for question, key in sweep.QUESTIONS.items():
        expected = metrics["comparisons_val"][question]["dice_tumour"]
        assert row[f"val_{key}"] == pytest.approx([expected["mean"], expected["low"], expected["high"]], abs=1e-12), question
    assert row["protocol"] == sweep.PROTOCOL and row["train_gan.draws"] == 2 and not any("test" in k for k in row)
    usefulness = json.loads((repo / "reports" / "gan_usefulness.json").read_text())   # the stage's own numbers (same definitions)
    assert 0.0 <= row["val_gan_train_dice_tumour"] <= 1.0
    # the per-run table is evaluate's per-image validation scores averaged per run (one row per arm, seed and draw)
    import pandas as pd

    per_image = pd.read_csv(repo / "reports" / "per_image.csv", dtype={"seed": str})
    val = per_image[per_image["split"] == "val"].groupby(["arm", "seed"])[["dice_tumour", "dice_ET"]].mean()
    assert sum(len(v) for v in row["val_runs"].values()) == len(val)
    for (arm, seed), expected in val.iterrows():
        assert row["val_runs"][arm][seed]["dice_tumour"] == pytest.approx(expected["dice_tumour"], abs=6e-5), (arm, seed)
        assert row["val_runs"][arm][seed]["dice_ET"] == pytest.approx(expected["dice_ET"], abs=6e-5), (arm, seed)
    assert row["filter"] == json.loads((repo / "reports" / "augment.json").read_text())["filter"]   # the filter's record, on or off
    assert row["val_real_train_dice_tumour"] == pytest.approx(usefulness["val_real_train_dice_tumour"], abs=1e-9)
    assert row["realism_worst_deviation"] >= 0.0 and set(row["realism_ratios"]) == set(row["realism_inner_ratios"]) == {"flair", "t1", "t1ce", "t2"}
    assert row["realism_inner_ratios"] != row["realism_ratios"]   # the inner part (no blend ramp) is another set of pixels
    line = next(x for x in sweep.table([row]).splitlines() if x.startswith("| tiny |"))
    assert "spade" in line and "inpaint" in line and line.count("[") >= 2   # two CIs, no '*' (validation-only)
    assert f"1–300 → {row['alpha']:.1f}" in line or row["tune.n_trials"] == 0   # tune's range and its choice
    assert f"| {row['alpha']:.1f} fixed |" in sweep.table([row | {"tune.n_trials": 0}])   # tune off: alpha as given
    old = {k: v for k, v in row.items() if k not in ("protocol", "realism_worst_deviation", "realism_inner_worst_deviation")}
    assert "| tiny * |" in sweep.table([old]) and "n/a |" in sweep.table([old])   # an older full-run record is marked


@pytest.mark.slow
def test_tiny_dvc_repro_produces_table1_and_mlflow_runs(tmp_path, monkeypatch):
    repo = copy_tracked_repo(tmp_path / "repo")
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
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout

    table = (repo / "reports" / "table1.md").read_text()
    verdict = table.split("## Verdict")[1].split("###")[0]
    for question in QUESTIONS:  # the table opens with one sentence per comparison, with a CI
        assert f"**{question}: " in verdict and "95 % CI" in verdict
    assert "Test (none)" in table and "Test (classic+gan)" in table and "Val (selection) (gan)" in table and "Test (paste)" in table
    assert "HD95 WT (mm)" in table and "Non-learned reference" in table and "GAN-train" in table and "GAN-test" in table
    assert "Diversity" in table and "background included" in table
    accuracy_row = next(line for line in table.splitlines() if line.startswith("| Accuracy (background included) |"))
    cells = [c.strip() for c in accuracy_row.strip("|").split("|")[1:]]
    assert len(cells) == 15 and all(0.0 <= float(c.split(" ± ")[0]) <= 1.0 for c in cells)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics["arms"]) == {"none", "classic", "gan", "classic+gan", "paste"} and metrics["seeds"] == ["1", "2"]
    beyond = metrics["comparisons_test"]["GAN beyond classic"]["dice_tumour"]
    assert beyond["low"] <= beyond["mean"] <= beyond["high"] and beyond["n_seeds"] == 2 and beyond["n_images"] == 2
    assert beyond["n_draws"] == 2 and "× 2 generators" in verdict and "generator draws" in table   # the CI resamples 2 generators
    assert (repo / "models" / "draws" / "generator-2.keras").is_file() and (repo / "work" / "augmented" / "manifest-draw-2.csv").is_file()
    assert [d["seed"] for d in json.loads((repo / "reports" / "train_gan.json").read_text())["draws"]] == [42, 43]
    assert "val_dice_gain_beyond_classic" in metrics and set(metrics["threshold_reference"]) == {"WT", "TC", "ET"}
    usefulness = json.loads((repo / "reports" / "gan_usefulness.json").read_text())
    for key in ("val_gan_train_dice_tumour", "test_gan_train_dice_tumour", "val_gan_test_dice_tumour", "diversity_val"):
        assert usefulness[key] == usefulness[key] and 0.0 <= usefulness[key] <= 1.0  # finite, in range
    assert (repo / "reports" / "test_examples.png").stat().st_size > 0
    per_image = (repo / "reports" / "per_image.csv").read_text().splitlines()
    assert per_image[0].startswith("arm,seed,split,case_id,dice_tumour") and len(per_image) == 1 + (1 + 1 + 2 + 2 + 1) * 2 * (4 + 2 + 2)
    augmented = (repo / "work" / "augmented" / "manifest.csv").read_text().splitlines()
    assert sum(",True," in line for line in augmented[1:]) >= 3 * 4
    best_alpha = json.loads((repo / "work" / "tune" / "best_alpha.json").read_text())
    assert best_alpha["source"] == "optuna" and best_alpha["study"].startswith("mrisynth-alpha-")

    _check_sweep_scoring(repo, metrics, monkeypatch)

    shown = subprocess.run([str(bin_dir / "dvc"), "metrics", "show"], cwd=repo, capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "classic_gan-classic.diff" in shown.stdout and "val_gain_beyond_classic" in shown.stdout
    rows = shown.stdout.splitlines()  # the headline files only: a header and 3 rows, no ids or seconds
    assert len(rows) == 4 and max(map(len, rows)) < 700, [len(r) for r in rows]
    assert not any(word in rows[0] for word in ("run_id", "seconds", "version", "path"))
    status = subprocess.run([str(bin_dir / "dvc"), "status"], cwd=repo, capture_output=True, text=True, env=env)
    assert "up to date" in status.stdout, status.stdout

    # the web views open offline: `dvc plots show` embeds the stages' PNGs (no Vega from a CDN), and
    # preprocess's validation report is one self-contained page
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    shown = subprocess.run([str(bin_dir / "dvc"), "plots", "show", "-o", str(tmp_path / "dvc_plots")], cwd=repo,
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    index = tmp_path / "dvc_plots" / "index.html"
    page = index.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page and page.count("<img") == len(plots)
    validation = (repo / "reports" / "data_validation.html").read_text()
    assert "PASSED" in validation.split("</h1>")[0] and "http://" not in validation and "https://" not in validation
    if browser():  # else only the HTML is checked (`apt-get install chromium` renders it too)
        shot = screenshot(index, tmp_path / "plots.png", size=(1200, 2400))
        assert non_white_share(shot) > 0.02 and colour_pixels(shot, (31, 119, 180)) > 100  # the GAN curves drawn
        shot = screenshot(repo / "reports" / "data_validation.html", tmp_path / "validation.png")
        assert non_white_share(shot) > 0.05 and colour_pixels(shot, (212, 237, 218), 8) > 500  # styled: passed cells in green

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("mrisynth")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["train_segmenter"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {c.data.tags["augmentation"] for c in children} == {"none", "classic", "gan", "classic+gan", "paste"} and len(children) == 14
    assert sorted(c.data.tags["generator_draw"] for c in children if c.data.tags["augmentation"] == "gan") == ["1", "1", "2", "2"]
    assert sorted(r.data.tags.get("draw") for r in runs if r.info.run_name == "train_gan") == ["1", "2"]
    for child in children:  # same metric names in every arm's run: the UI's compare view lines them up
        assert {"test_dice_tumour", "test_dice_WT", "best_val_dice_tumour", "best_val_dice_WT", "test_hd95_WT"} <= set(child.data.metrics)
        inputs = {i.dataset.name: i.dataset for i in client.get_run(child.info.run_id).inputs.dataset_inputs}
        tags = child.data.tags  # each arm's own training set (name, digest, size), and the validation set
        arm_set = "train-" + tags["augmentation"].replace("+", "_") + ("-g2" if tags["generator_draw"] == "2" and "gan" in tags["augmentation"] else "")
        assert set(inputs) == {arm_set, "val"}, (tags["augmentation"], set(inputs))
        assert inputs[arm_set].digest.endswith(f"-{child.data.params['train_images']}")
    assert len({c.data.params["train_images"] for c in children}) > 1  # 4 real slices for `none`, more for the augmented arms
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens in model-training mode
    view = json.loads(experiment.tags["mlflow.sharedViewState.arms"])
    assert "metrics.`test_dice_tumour`" in view["selectedColumns"] and view["groupBy"]["groupByKeys"][0]["groupByData"] == "augmentation"
    evaluation = by_name["evaluate"]
    assert "val_dice_gain_beyond_classic" in evaluation.data.metrics
    assert "## Verdict" in evaluation.data.tags["mlflow.note.content"] and evaluation.data.params["bootstrap"] == "200"
    assert evaluation.data.params["test_images"] == "2" and evaluation.data.params["arms"] == "none,classic,gan,classic+gan,paste"
    gan_params = by_name["train_gan"].data.params  # the alpha it trained with; params.yaml's separately
    assert float(gan_params["alpha"]) == pytest.approx(json.loads((repo / "work" / "tune" / "best_alpha.json").read_text())["alpha"])
    assert "alpha_requested" in gan_params and "best_epoch" in by_name["train_gan"].data.metrics
    assert not any(k.startswith("best_best") for r in runs for k in r.data.metrics)
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if any(n in line for n in ("Warning:", "WARNING", "already exists", "oneDNN", "retracing"))]
    assert not noise, noise  # a user cannot act on any of these
    after = subprocess.run([sys.executable, "-m", "mrisynth.ops.next_steps"], cwd=repo, capture_output=True, text=True, env=env)
    assert after.returncode == 0 and "GAN beyond classic" in after.stdout, after.stdout + after.stderr  # what `make run` ends with
    assert next_steps.view_path(experiment.experiment_id) in after.stdout
    if browser():  # the printed link in the real MLflow UI: model-training mode, arms grouped, the Dice columns
        text = _mlflow_ui_text(repo, env, bin_dir, next_steps.view_path(experiment.experiment_id))
        for part in ("Model training", "Group by: augmentation", "Group: none", "test_dice_tumour", "best_val_dice_tumour"):
            assert part in text, part
    assert evaluation.data.tags["run.classic_gan.seed1"] in {c.info.run_id for c in children}
    versions = client.search_model_versions("name='mrisynth-segmenter'")
    assert {v.tags["augmentation"] for v in versions} == {"none", "classic", "gan", "classic+gan", "paste"}
    generator = client.get_model_version_by_alias("mrisynth-generator", "challenger")
    assert {"val_dice_gain_beyond_classic", "test_dice_gain_beyond_classic", "val_gan_train_dice_tumour", "diversity_val"} <= set(generator.tags)
    gan_run = client.get_run(json.loads((repo / "reports" / "train_gan.json").read_text())["run_id"])
    assert "val_gan_test_dice_tumour" in gan_run.data.metrics
    default_runs = client.search_runs(["0"]) if client.get_experiment("0") else []
    assert not default_runs, [r.info.run_name for r in default_runs]  # no stray runs in the Default experiment

    # the promotion gate reads the validation tag
    promoted = subprocess.run([str(bin_dir / "mrisynth"), "promote"], cwd=repo, capture_output=True, text=True, env=env)
    assert promoted.returncode == 0 and "val_dice_gain_beyond_classic" in promoted.stdout, promoted.stdout + promoted.stderr
    assert client.get_model_version("mrisynth-generator", generator.version).tags["promotion_metric"] == "val_dice_gain_beyond_classic"

    # an MLproject entry point, run the way the README says
    ran = subprocess.run([str(bin_dir / "mlflow"), "run", ".", "-e", "evaluate", "--env-manager", "local", "--experiment-name", "mrisynth"],
                         cwd=repo, capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    evaluations = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stage") == "evaluate"]
    assert len(evaluations) == 2 and all("val_dice_gain_beyond_classic" in r.data.metrics for r in evaluations)
    launcher = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mlflow.project.entryPoint") == "evaluate")
    assert any(r.data.tags.get("launched_by_run") == launcher.info.run_id for r in evaluations)

    # the dataset card's numbers: DVC metrics and an MLflow `preprocess` run
    card = json.loads((repo / "reports" / "data_card.json").read_text())
    assert {"threshold_WT_dice_test", "threshold_ET_dice_val", "data_et_absent", "data_wt_area_mm2_p50"} <= set(card)
    preprocess_run = by_name["preprocess"]
    assert preprocess_run.data.metrics["threshold_WT_dice_test"] == pytest.approx(card["threshold_WT_dice_test"])

    # DVC's run cache must not restore outputs of another image size (it ignores params named `size`)
    def npz_side() -> int:
        import numpy as np
        with np.load(repo / "work" / "preprocessed" / "train.npz") as saved:
            return int(saved["images"].shape[1])

    for side in (32, 64, 32):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["preprocess"]["image_size"] = side
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        ran = subprocess.run([str(bin_dir / "dvc"), "repro", "preprocess"], cwd=repo, capture_output=True, text=True, env=env)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        assert npz_side() == side, f"image_size {side}: dvc restored {npz_side()} px arrays\n{ran.stdout[-1500:]}"

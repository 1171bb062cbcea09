"""The tune stage: Optuna tuning of alpha (pruning, shared storage, parallel and killed workers)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from conftest import REPO
from mrisynth.config import TuneParams
from mrisynth.stages import train_gan, tune


def _params_file(project: Path, name: str, overrides: dict) -> Path:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    path = project / name
    path.write_text(yaml.safe_dump(params))
    return path


def test_bad_trial_is_pruned(tmp_path):
    study = tune.make_study(TuneParams(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="prune", prune_startup_trials=1, prune_warmup_epochs=0))
    curves = iter([[0.10, 0.09, 0.08], [0.09, 0.08, 0.07], [5.0, 4.0, 3.0]])

    def objective(trial):
        values = next(curves)
        for epoch, value in enumerate(values, start=1):
            tune.report_epoch(trial, value, epoch)
        return values[-1]

    study.optimize(objective, n_trials=3)
    states = [t.state for t in study.trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE] * 2
    assert states[2] == optuna.trial.TrialState.PRUNED and len(study.trials[2].intermediate_values) == 1


def test_n_trials_zero_passes_alpha_through(tiny_project):
    path = _params_file(tiny_project, "params_t0.yaml", {"tune": {"n_trials": 0, "out": "work/tune0/best_alpha.json"}, "train_gan": {"alpha": 42.0}})
    assert tune.run(str(path)) == 0
    assert json.loads((tiny_project / "work/tune0/best_alpha.json").read_text())["alpha"] == 42.0


def test_tiny_study_writes_alpha_that_train_gan_uses(trained_copy):
    trained = trained_copy
    storage = f"sqlite:///{trained / 'optuna_tiny.db'}"
    path = _params_file(trained, "params_tune.yaml", {
        "tune": {"n_trials": 3, "epochs": 2, "storage": storage, "study_name": "tiny-alpha", "out": "work/tune/best_alpha.json",
                 "prune_startup_trials": 1, "prune_warmup_epochs": 0},
        "train_gan": {"experiment": "tiny-tune", "registry_name": "tiny-tune-generator", "alpha_file": "work/tune/best_alpha.json",
                      "epochs": 1, "out_dir": "work/gan_tuned", "model_path": "models/generator_tuned.keras"},
    })
    import matplotlib

    def style() -> dict:  # every rcParam but the backend choice (tune selects Agg on purpose)
        return {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")}

    before = style()
    assert tune.run(str(path)) == 0
    # optuna's ggplot style stays inside tune's plotting (no later figure of the process is recoloured)
    assert style() == before
    best = json.loads((trained / "work/tune/best_alpha.json").read_text())
    assert best["source"] == "optuna" and 1.0 <= best["alpha"] <= 300.0 and best["completed_trials"] >= 1
    assert best["study"].startswith("tiny-alpha-")  # scoped by a hash of data + params + code
    study = optuna.load_study(study_name=best["study"], storage=storage)
    assert len(study.trials) == 3 and study.best_params["alpha"] == pytest.approx(best["alpha"])

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("tiny-tune")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "tune")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 3 and all(r.data.tags["state"] in ("COMPLETE", "PRUNED") for r in trials)
    assert parent.data.metrics["best_alpha"] == pytest.approx(best["alpha"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/trials.json", "optuna/param_importances.json"} <= artifacts

    assert train_gan.run(str(path)) == 0
    assert json.loads((trained / "reports/train_gan.json").read_text())["alpha"] == pytest.approx(best["alpha"])


def test_two_workers_share_one_storage(tiny_project):
    storage = f"sqlite:///{tiny_project / 'optuna_shared.db'}"
    path = _params_file(tiny_project, "params_workers.yaml", {
        "tune": {"epochs": 1, "storage": storage, "study_name": "shared"},
        "train_gan": {"experiment": "tiny-workers"},
    })
    cmd = [sys.executable, str(REPO / "pipelines" / "tune.py"), "--params", str(path), "--worker", "--n-trials", "2"]
    workers = [subprocess.Popen(cmd, cwd=tiny_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    failed = [out[-3000:] for w, out in zip(workers, outputs) if w.returncode != 0]
    assert not failed, "\n----\n".join(failed)
    (name,) = optuna.get_all_study_names(storage)
    assert name.startswith("shared-")
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 4 and len({t.number for t in study.trials}) == 4
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # distinct alphas: some get pruned
    assert all(t.state in finished for t in study.trials)
    # each worker samples with its own seed: no alpha proposed twice
    assert len({round(t.params["alpha"], 12) for t in study.trials}) == 4


def test_a_killed_worker_leaves_its_trial_failed_and_the_others_carry_on(tiny_project):
    """Two workers on one SQLite study with a 1 s heartbeat; one is SIGKILLed inside a trial. The
    survivor finishes its trials; the silent trial is marked FAIL by the next trial start after 3 s (the
    survivor's or the stage's: Optuna's stale-trial check), its MLflow run and its worker's run end
    KILLED, and the stage picks the best alpha from completed trials only."""
    storage = f"sqlite:///{tiny_project / 'optuna_killed.db'}"
    path = _params_file(tiny_project, "params_killed.yaml", {
        "tune": {"epochs": 1, "storage": storage, "study_name": "killed", "heartbeat_s": 1, "prune_startup_trials": 10,
                 "out": "work/tune/killed_alpha.json"},
        "train_gan": {"experiment": "tiny-killed"},
    })
    cmd = [sys.executable, str(REPO / "pipelines" / "tune.py"), "--params", str(path), "--worker", "--n-trials"]
    victim = subprocess.Popen(cmd + ["5"], cwd=tiny_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    survivor = subprocess.Popen(cmd + ["3"], cwd=tiny_project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        running = []
        while not running and time.monotonic() < deadline:  # the victim is inside a trial
            time.sleep(0.3)
            # the workers may still be creating the schema: connect as they do (retried), never race them
            shared = tune.storage(storage) if (tiny_project / "optuna_killed.db").exists() else None
            names = optuna.get_all_study_names(shared) if shared else []
            if names:
                trials = optuna.load_study(study_name=names[0], storage=shared).get_trials(deepcopy=False)
                running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("worker_pid") == victim.pid]
        assert running, "the victim never started a trial"
        victim.kill()
        victim.communicate()
        out, _ = survivor.communicate(timeout=300)
    finally:
        for proc in (victim, survivor):
            proc.kill()
    assert survivor.returncode == 0, out[-3000:]
    # the stage itself: one more trial (its start, like every worker's trial start, fails stale trials), then the best
    assert tune.run(str(path), n_trials=1) == 0
    study = optuna.load_study(study_name=names[0], storage=storage)
    killed = study.trials[running[0].number]
    assert killed.state == optuna.trial.TrialState.FAIL, killed.state
    theirs = [t for t in study.trials if t.user_attrs.get("worker_pid") == survivor.pid]
    assert len(theirs) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in theirs)
    client = mlflow.MlflowClient()
    trial_run, worker_run = (client.get_run(killed.user_attrs[key]) for key in ("mlflow_run_id", "mlflow_parent_run_id"))
    assert trial_run.info.status == "KILLED" and trial_run.data.tags["state"] == "FAIL"
    assert worker_run.info.status == "KILLED" and worker_run.info.run_name == "tune worker"
    written = json.loads((tiny_project / "work" / "tune" / "killed_alpha.json").read_text())
    assert written["trial"] != killed.number and written["completed_trials"] == 4


def test_a_pruned_trial_run_ends_finished_and_named_pruned(tiny_project, monkeypatch):
    path = _params_file(tiny_project, "params_prune.yaml", {
        "tune": {"n_trials": 2, "storage": f"sqlite:///{tiny_project / 'optuna_prune.db'}", "study_name": "prune-ui"},
        "train_gan": {"experiment": "tiny-prune"},
    })

    def objective(trial, params, alpha, train, val, log):  # noqa: ARG001 - the objective_fn signature
        if trial.number == 1:
            raise optuna.TrialPruned()
        return 0.5

    monkeypatch.setattr(tune, "objective_image", objective)
    from mrisynth.config import load_params

    study, parent_id = tune.optimise(load_params(str(path)), 2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tiny-prune").experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"trial 0", "trial 1 (pruned)"}
    assert all(r.info.status == "FINISHED" for r in runs)  # not FAILED: the UI shows no red failure
    assert by_name["trial 1 (pruned)"].data.tags["state"] == "PRUNED"

"""Issue 5: Optuna tuning (pruning, shared storage), the promotion gate, the served generator, generate."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
import yaml

from conftest import REPO
from mrisynth.config import TuneParams
from mrisynth.inference.promote import PromotionError, promote
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
    assert tune.run(str(path)) == 0
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
            names = optuna.get_all_study_names(storage) if (tiny_project / "optuna_killed.db").exists() else []
            if names:
                trials = optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)
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


# ---------------------------------------------------------------- promotion
@pytest.fixture(scope="module")
def promo(trained_base):
    """Registered versions of a separate generator model ('promo-generator') for promotion tests,
    logged in their own experiment ('promo') so the `tiny` experiment keeps its single train_gan run."""
    settings = SimpleNamespace(registry_name="promo-generator")
    best = trained_base / "work" / "gan" / "best_generator.keras"
    example = np.zeros((1, 64, 64, 4), np.float32)
    versions = []
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("promo")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "promo", artifact_location=(trained_base / "mlartifacts" / "promo").resolve().as_uri())
    for _ in range(3):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            versions.append(train_gan.register(settings, best, 64, 4, run.info.run_id, {}, example))
    return versions


GATE = "val_dice_gain_beyond_classic"


def _tag(version: str, value: float, metric: str = GATE) -> None:
    mlflow.MlflowClient().set_model_version_tag("promo-generator", version, metric, str(value))


def _reset(versions) -> None:
    """Promotion tests share the 'promo-generator' versions: start each from no tags and no champion."""
    client = mlflow.MlflowClient()
    for version in versions:
        for key in list(client.get_model_version("promo-generator", version).tags):
            client.delete_model_version_tag("promo-generator", version, key)
    try:
        client.delete_registered_model_alias("promo-generator", "champion")
    except mlflow.exceptions.MlflowException:
        pass
    client.set_registered_model_alias("promo-generator", "challenger", versions[-1])


def test_promotion_gate(promo):
    v1, v2, v3 = promo
    _reset(promo)
    client = mlflow.MlflowClient()
    with pytest.raises(PromotionError, match=f"lacks the metric tag '{GATE}'.*dvc repro evaluate"):
        promote("promo-generator", v1)
    with pytest.raises(PromotionError, match="expected a validation metric"):
        promote("promo-generator", v1, metric="test_dice_gain")
    _tag(v1, -0.010)  # worse than classic augmentation on validation: never champion, not even the first version
    refused = promote("promo-generator", v1)
    assert not refused.promoted and "not above the margin 0" in refused.reason and "--force" in refused.reason
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("promo-generator", "champion")
    assert not promote("promo-generator", v1, margin=0.02).promoted
    _tag(v1, 0.010)
    assert not promote("promo-generator", v1, margin=0.02).promoted  # a configured margin binds too
    assert promote("promo-generator", v1).promoted  # no champion yet, gain above 0
    _tag(v1, 0.0, "test_dice_gain_beyond_classic")
    _tag(v2, 0.005)
    _tag(v2, 0.9, "test_dice_gain_beyond_classic")  # a far better TEST tag must not matter
    kept = promote("promo-generator", v2)
    assert not kept.promoted and "does not beat champion" in kept.reason
    assert str(client.get_model_version_by_alias("promo-generator", "champion").version) == v1
    assert client.get_model_version("promo-generator", v2).tags["promotion_decision"] == "kept as is"
    _tag(v3, 0.020)  # v3 is the challenger (latest registration): the default candidate
    assert promote("promo-generator").promoted
    version = client.get_model_version("promo-generator", v3)
    assert version.tags["promotion_champion_before"] == v1 and "Promotion: promoted" in version.description
    assert promote("promo-generator", v2, force=True).promoted
    assert str(client.get_model_version_by_alias("promo-generator", "champion").version) == v2
    promote("promo-generator", v3)  # back to the best one for the serving test
    assert str(client.get_model_version_by_alias("promo-generator", "champion").version) == v3


def test_promotion_refuses_missing_signature(trained):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("promo-nosig")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), registered_model_name="promo-nosig", pip_requirements=["mlflow"])
    mlflow.MlflowClient().set_model_version_tag("promo-nosig", info.registered_model_version, GATE, "0.5")
    with pytest.raises(PromotionError, match="no input/output signature"):
        promote("promo-nosig", str(info.registered_model_version))


def test_promote_cli(promo, trained):
    # self-contained: v1 is the champion with a better validation gain than v2
    _reset(promo)
    client = mlflow.MlflowClient()
    _tag(promo[0], 0.010)
    _tag(promo[1], 0.005)
    client.set_registered_model_alias("promo-generator", "champion", promo[0])
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "promote", "--name", "promo-generator", "--version", promo[1]],
                       cwd=trained, capture_output=True, text=True)
    assert r.returncode == 0 and "NOT promoted" in r.stdout, r.stderr


# ---------------------------------------------------------------- serving and generate
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture
def champion(promo):
    mlflow.MlflowClient().set_registered_model_alias("promo-generator", "champion", promo[-1])
    return promo[-1]


def _start_server(trained, *extra) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mrisynth.cli", "serve", "--model", "models:/promo-generator@champion",
                               "--port", str(port), *map(str, extra)], cwd=trained, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None:
                pytest.fail(server.stdout.read())
            time.sleep(1)
    server.kill()
    pytest.fail("server did not start")


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_served_champion_answers_and_rejects(champion, trained):
    from mrisynth.io import arrays

    server, base = _start_server(trained, "--max-batch", 4)
    try:
        val = arrays.load_split(trained / "work" / "preprocessed", "val")
        url = f"{base}/invocations"
        status, body = _post(url, {"inputs": val.conditioning[:1].tolist()})
        assert status == 200, body
        images = np.asarray(body["predictions"])
        assert images.shape == (1, 64, 64, 4) and 0 <= images.min() and images.max() <= 1
        assert np.all(images[0][val.conditioning[0, ..., 3] == 0] == 0)  # nothing outside the brain
        status, body = _post(url, {"inputs": val.conditioning[0].tolist()})  # one (S, S, 4) image: one image, not S
        assert status == 200 and np.asarray(body["predictions"]).shape == (1, 64, 64, 4), body

        bad_values = val.conditioning[:1].copy()
        bad_values[0, 0, 0, 0] = 0.5
        for payload, expected in (
            ({"inputs": bad_values.tolist()}, "expected only 0 and 1"),
            ({"inputs": np.zeros((1, 32, 32, 4)).tolist()}, "shape"),
            ({"inputs": [["a", "b"]]}, "expected numbers"),
            ({"wrong": 1}, "key 'inputs'"),
        ):
            status, body = _post(url, payload)
            assert status == 400, (status, body)
            assert expected in body.get("message", "") and len(body["message"]) < 300  # short, no input dump
            assert "Traceback" not in json.dumps(body)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_oversized_requests_are_refused_at_once_and_the_server_stays_up(champion, trained):
    from mrisynth.io import arrays

    server, base = _start_server(trained, "--max-batch", 2)
    try:
        url = f"{base}/invocations"
        val = arrays.load_split(trained / "work" / "preprocessed", "val")
        one = {"inputs": val.conditioning[:1].tolist()}
        assert _post(url, one)[0] == 200
        before = _rss_mb(server.pid)
        # a 25 MB body is over the byte limit: 413 before the body is read, with or without Expect: 100-continue
        port = int(base.rsplit(":", 1)[1])
        for expect in ("Expect: 100-continue\r\n", ""):
            started = time.time()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall((f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              f"Content-Length: 25000000\r\n{expect}\r\n").encode())  # headers only: the body never comes
                chunks = []
                while chunk := conn.recv(65536):  # the server closes the connection after its answer
                    chunks.append(chunk)
                reply = b"".join(chunks).decode()
            assert reply.startswith("HTTP/1.1 413") and "exceeds the limit" in reply, reply
            assert time.time() - started < 10
        # the client sends the whole 25 MB anyway: the server never reads it, its memory does not grow
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            try:
                conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 25000000\r\n\r\n" + b"[" * 25_000_000)
            except OSError:  # the server answered 413 and closed: the rest of the body is refused
                pass
        assert _rss_mb(server.pid) - before < 20
        # three images fit the byte limit but not the batch limit
        status, body = _post(url, {"inputs": np.zeros((3, 64, 64, 4)).tolist()})
        assert status == 413 and "limit is 2" in body["message"]
        assert _rss_mb(server.pid) - before < 50  # the refused work never happened
        assert _post(url, one)[0] == 200  # and the next normal request is served
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_loading_a_registered_generator_runs_no_code_from_the_artifact_store(champion, trained, tmp_path):
    """The old format kept a cloudpickled `python_model.pkl`; a replaced pickle ran code on load.
    Plant one (and a malicious MLmodel loader entry) and show that nothing runs."""
    import pickle

    from mrisynth.inference.served_model import Generator, InputError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("promo-generator", "champion")
    local = Path(mlflow.artifacts.download_artifacts(version.source))
    assert "python_function" in (local / "MLmodel").read_text() and "keras" in (local / "MLmodel").read_text()
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))  # nothing pickled was logged
    # plant the pickle where the old pyfunc format kept it, in the artifact store itself
    store_dir = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "planted")))
    (store_dir / "python_model.pkl").write_bytes(pickle.dumps(Evil()))
    (store_dir / "artifacts").mkdir(exist_ok=True)
    generator = Generator.load(str(store_dir))
    generator.predict(np.zeros((1, 64, 64, 4), np.float32))
    assert not marker.exists()
    # a Keras file whose Lambda layer would run code on load (here: create the marker) is refused by safe_mode
    import keras

    touch = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # no closure: the path is in the code
    evil = keras.Sequential([keras.Input((64, 64, 4)), keras.layers.Lambda(touch)])
    keras_file = next(store_dir.rglob("model.keras"))
    evil.save(keras_file)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once; loading must not
    with pytest.raises(InputError, match="refused to load model.keras"):
        Generator.load(str(store_dir))
    assert not marker.exists()
    # a model that only offers the pickled pyfunc is refused, not loaded
    (store_dir / "MLmodel").write_text("flavors:\n  python_function:\n    python_model: python_model.pkl\n    loader_module: mlflow.pyfunc.model\n")
    with pytest.raises(InputError, match="expected the `keras` flavor"):
        Generator.load(str(store_dir))
    assert not marker.exists()


def test_generate_writes_tiff_and_nifti(champion, trained, tmp_path):
    import nibabel as nib
    import tifffile

    out = tmp_path / "generated"
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "generate", "--model", "models:/promo-generator@champion",
                        "--masks", "data/test/masks", "--out", str(out)], cwd=trained, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tifs = sorted(out.glob("*.tif"))
    assert len(tifs) == 2
    image = tifffile.imread(tifs[0])
    assert image.shape == (64, 64, 4) and image.dtype == np.float32
    for c, modality in enumerate(("flair", "t1", "t1ce", "t2")):  # one NIfTI per modality, BraTS naming, spacing kept
        nifti = nib.load(str(out / f"{tifs[0].stem}_{modality}.nii.gz"))
        assert nifti.shape == (64, 64, 1) and nifti.header.get_zooms() == (1.0, 1.0, 1.0)
        np.testing.assert_allclose(np.asarray(nifti.dataobj)[..., 0], image[..., c])

    # masks of another size are fitted to the model's 64 x 64 input: smaller padded, larger resized
    for side, how in ((32, "pad"), (96, "resize")):
        masks, brains = tmp_path / f"m{side}", tmp_path / f"b{side}"
        masks.mkdir()
        brains.mkdir()
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4 : side // 2, side // 4 : side // 2] = 2
        tifffile.imwrite(masks / "x.tif", mask)
        tifffile.imwrite(brains / "x.tif", np.ones((side, side), np.uint8))
        r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "generate", "--model", "models:/promo-generator@champion",
                            "--masks", str(masks), "--brain", str(brains), "--out", str(tmp_path / f"o{side}")], cwd=trained, capture_output=True, text=True)
        assert r.returncode == 0 and f"{side}x{side} -> 64x64 ({how})" in r.stdout, r.stdout + r.stderr
        assert tifffile.imread(tmp_path / f"o{side}" / "x.tif").shape == (64, 64, 4)
        expected_mm = 1.5 if how == "resize" else 1.0  # 96 px resized to 64: each pixel covers 1.5 mm
        assert nib.load(str(tmp_path / f"o{side}" / "x_t1ce.nii.gz")).header.get_zooms()[:2] == (expected_mm, expected_mm)

    bad = tmp_path / "bad"
    bad.mkdir()
    tifffile.imwrite(bad / "x.tif", np.full((64, 64), 3, np.uint8))
    r = subprocess.run([sys.executable, "-m", "mrisynth.cli", "generate", "--model", "models:/promo-generator@champion",
                        "--masks", str(bad), "--out", str(tmp_path / "o2")], cwd=trained, capture_output=True, text=True)
    assert r.returncode == 2 and "x.tif: labels [3]" in r.stderr and "Traceback" not in r.stderr

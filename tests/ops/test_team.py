"""The team stack end to end: `mrisynth team up` (PostgreSQL, SeaweedFS S3, MLflow server), the tiny pipeline
(preprocess, two parallel tune workers on one PostgreSQL study, the tune stage, then the rest of the tiny `dvc repro`
with train_gan on two worker processes under MultiWorkerMirroredStrategy) tracked on the server,
`dvc push`/`dvc pull` through the S3 remote, a stopped tracking server failing fast, `team down`."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PARAMS, copy_tracked_repo, tf_configs, write_tiny_case
from mrisynth.data.ingest import ImportOptions, import_brats

PG_BIN = Path(os.environ.get("MRISYNTH_PG_BIN", "/usr/lib/postgresql/15/bin"))
BIN = Path(sys.executable).parent
WORKER_TRIALS = 2  # per worker; the tune stage adds TINY_PARAMS' n_trials
FAULT_BOUND_S = 20  # a stage pointed at a stopped tracking server fails within this (probe: 10 s + start-up)

pytestmark = pytest.mark.skipif(not (PG_BIN / "postgres").exists(),
                                reason=f"PostgreSQL 15 server binaries not found in {PG_BIN} (apt-get install postgresql-15)")


def _run(cmd, cwd, env, timeout=300, check=True):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _env_sh(path: Path) -> dict[str, str]:
    """The exports of env.sh, as `source` would set them."""
    out = subprocess.run(["bash", "-c", f"set -a; source {path}; env -0"], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"})
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in ("PWD", "SHLVL", "_", "PATH")}


def _api(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One call of the tracking server's REST API (GET with query, or POST with a JSON body)."""
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _digests(root: Path, parts: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for part in parts:
        target = root / part
        files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for f in files:
            out[f.relative_to(root).as_posix()] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_team_stack_end_to_end(tmp_path, monkeypatch):
    from mrisynth.ops import processes, team

    started = time.monotonic()
    # PostgreSQL runs as an unprivileged user when we are root: the team folder must be enterable by it,
    # which pytest's 0700 tmp_path is not; a folder of our own under the system temp dir is.
    team_dir = Path(tempfile.mkdtemp(prefix="mrisynth-team-"))
    monkeypatch.setenv("MRISYNTH_TEAM_DIR", str(team_dir))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "MRISYNTH_TUNE"))}
    base |= {"PATH": f"{BIN}:{os.environ['PATH']}", "MRISYNTH_TEAM_DIR": str(team_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}

    repo = copy_tracked_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    params["tune"]["n_trials"] = 1  # the stage's own trials, after the two workers'
    params["train_gan"] |= {"strategy": "multi_worker", "cluster_wait_s": 120, "peer_timeout_s": 20,  # 2 workers (TF_CONFIG)
                            "draws": 1, "synthesis": "full"}  # several draws and inpainting train on one device only
    # the arms and seeds are the tiny repro's business (tests/pipeline): here the fewest the stages accept
    params["train_segmenter"] |= {"seeds": [1], "arms": ["none", "classic+gan"]}
    params["augment"]["harmonise"] = "none"   # inpainting only
    params["augment"]["filter_dice"] = None   # the judge's own tests: tests/augment/test_sample_filter.py
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    brats = tmp_path / "brats"
    for i in range(1, 9):
        write_tiny_case(brats, f"BraTS20_Training_{i:03d}", seed=i)
    import_brats(brats, repo / "data", {"train": 4, "val": 2, "test": 2}, 1, ImportOptions(size=64))
    _run([BIN / "dvc", "init", "--no-scm", "-f", "-q"], repo, base)
    _run([BIN / "dvc", "add", "-q", "data"], repo, base)

    try:
        # ---- up: one command, every server answering, env.sh and the DVC remote written
        t0 = time.monotonic()
        shown = _run([BIN / "mrisynth", "team", "up", "--repo", repo], repo, base, timeout=240)
        up_s = time.monotonic() - t0
        assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:" in shown.stdout
        env_vars = _env_sh(team_dir / "env.sh")
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION", "MRISYNTH_TUNE_STORAGE"} <= set(env_vars)
        assert env_vars["MRISYNTH_TUNE_STORAGE"].startswith("postgresql+psycopg2://") and env_vars["MRISYNTH_TUNE_STORAGE"].endswith("/optuna")
        status = _run([BIN / "mrisynth", "team", "status"], repo, base)
        assert status.stdout.count(" up ") == 3, status.stdout
        assert "url = s3://dvc" in (repo / ".dvc" / "config.local").read_text()
        # secrets stay out of process command lines (`ps`) and out of files others can read
        password = json.loads((team_dir / "state.json").read_text())["pg_password"]
        for pid in team.stack_processes(team_dir):
            try:
                assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), f"pid {pid} shows the password"
            except FileNotFoundError:
                pass
        for secret in (team_dir / "state.json", team_dir / "env.sh", repo / ".dvc" / "config.local"):
            assert secret.stat().st_mode & 0o077 == 0, f"{secret} is readable by others"
        env = base | env_vars
        tracking = env_vars["MLFLOW_TRACKING_URI"]

        # ---- pipeline against the stack: preprocess, two tune workers in parallel on the PostgreSQL study, the tune
        # stage (adds its own trial), then train_gan ... evaluate, with train_gan on two workers: the helper worker is
        # `python pipelines/train_gan.py` with its TF_CONFIG, the chief is the `dvc repro` process
        t0 = time.monotonic()
        _run([BIN / "dvc", "repro", "preprocess"], repo, env)
        workers = [subprocess.Popen([BIN / "python", "pipelines/tune.py", "--worker", "--n-trials", str(WORKER_TRIALS)], cwd=repo, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = [w.communicate(timeout=240)[0] for w in workers]
        assert all(w.returncode == 0 for w in workers), "\n".join(o[-2000:] for o in outputs)
        ran = _run([BIN / "dvc", "repro", "tune"], repo, env)
        assert "Running stage 'tune'" in ran.stdout, ran.stdout[-2000:]
        tf_config = tf_configs(2)
        gan_worker = subprocess.Popen([BIN / "python", "pipelines/train_gan.py"], cwd=repo, env=env | {"TF_CONFIG": tf_config[1]},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ran = _run([BIN / "dvc", "repro"], repo, env | {"TF_CONFIG": tf_config[0]})
            gan_worker_out = gan_worker.communicate(timeout=120)[0]
        finally:
            gan_worker.kill()  # a no-op once it has finished
            gan_worker.communicate()
        assert gan_worker.returncode == 0 and "worker 1 of 2 finished" in gan_worker_out, gan_worker_out[-3000:]
        for stage in ("train_gan", "augment", "train_segmenter", "gan_usefulness", "evaluate"):
            assert f"Running stage '{stage}'" in ran.stdout, ran.stdout[-2000:]
        pipeline_s = time.monotonic() - t0

        # every trial recorded once in the shared study, none lost, none left running
        best = json.loads((repo / "work" / "tune" / "best_alpha.json").read_text())
        import optuna

        study = optuna.load_study(study_name=best["study"], storage=env_vars["MRISYNTH_TUNE_STORAGE"])
        expected = 2 * WORKER_TRIALS + params["tune"]["n_trials"]
        numbers = sorted(t.number for t in study.trials)
        assert numbers == list(range(expected)), numbers
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials), [t.state.name for t in study.trials]

        # ---- the tracking server's REST API: stage runs, one trial run per Optuna trial, registered models
        experiment = _api(tracking, "experiments/get-by-name", experiment_name=params["train_gan"]["experiment"])["experiment"]
        runs = _api(tracking, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})["runs"]
        names = [r["info"]["run_name"] for r in runs]
        for stage in ("preprocess", "tune", "train_gan"):
            assert names.count(stage) == 1, names
        assert names.count("tune worker") == 2, names
        trial_runs = sorted(int(n.split()[1]) for n in names if n.startswith("trial "))
        assert trial_runs == numbers, (trial_runs, numbers)  # each trial once in MLflow too
        stage_runs = [r for r in runs if not r["info"]["run_name"].startswith("trial ")]
        assert all(r["info"]["status"] == "FINISHED" for r in stage_runs), [(r["info"]["run_name"], r["info"]["status"]) for r in stage_runs]
        optuna_state = {t.number: t.state.name for t in study.trials}
        for r in runs:  # a pruned trial's run ends FAILED (the pruning exception) with tag state=PRUNED
            if r["info"]["run_name"].startswith("trial "):
                tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
                assert tags.get("state") == optuna_state[int(r["info"]["run_name"].split()[1])], (r["info"], tags)
        gan_run = json.loads((repo / "reports" / "train_gan.json").read_text())["run_id"]
        (gan_info,) = [r for r in runs if r["info"]["run_id"] == gan_run]
        gan_tags = {t["key"]: t["value"] for t in gan_info["data"].get("tags", [])}
        assert (gan_tags["strategy"], gan_tags["workers"], gan_tags["replicas"]) == ("multi_worker", "2", "2"), gan_tags
        registry = params["train_gan"]["registry_name"]
        versions = _api(tracking, "model-versions/search", filter=f"name='{registry}'")["model_versions"]
        assert [v["run_id"] for v in versions] == [gan_run], versions
        models = _api(tracking, "registered-models/search")["registered_models"]
        assert {registry, params["train_segmenter"]["registry_name"]} <= {m["name"] for m in models}

        # the UI shows the runs, checked in a headless browser where one is installed (apt-get install chromium): the
        # rendered runs table names every stage run; MRISYNTH_TEAM_SCREENSHOT=path keeps a screenshot (docs/team-mlflow-ui.png)
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser:
            page = f"{tracking}/#/experiments/{experiment['experiment_id']}/runs"
            chrome = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1800,1100",
                      "--virtual-time-budget=20000"]
            dom = _run(chrome + ["--dump-dom", page], tmp_path, base, timeout=120).stdout
            top = {r["info"]["run_name"] for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))}
            assert {"preprocess", "tune", "tune worker", "train_gan", "train_segmenter", "evaluate"} <= top, top
            missing = [name for name in top if f">{name}<" not in dom]
            assert not missing, (missing, dom[-2000:])  # nested runs (trials, arm/seed runs) sit folded under these
            if os.environ.get("MRISYNTH_TEAM_SCREENSHOT"):
                _run(chrome + [f"--screenshot={os.environ['MRISYNTH_TEAM_SCREENSHOT']}", page], tmp_path, base, timeout=120)

        # artifacts are in the object store (listed with boto3, not through MLflow)
        import boto3

        s3 = boto3.client("s3", endpoint_url=env_vars["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id=env_vars["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env_vars["AWS_SECRET_ACCESS_KEY"], region_name=env_vars["AWS_DEFAULT_REGION"])
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow") for o in page.get("Contents", [])]
        assert any(gan_run in k for k in keys), keys[:20]
        assert any(k.endswith("MLmodel") for k in keys), keys[:20]  # the registered generator's files
        assert any("optuna/trials.json" in k for k in keys), keys[:20]

        # ---- DVC: push to the team remote, pull into a fresh copy, identical bytes
        t0 = time.monotonic()
        _run([BIN / "dvc", "push", "-r", "team"], repo, env)
        assert any(True for page in s3.get_paginator("list_objects_v2").paginate(Bucket="dvc") for _ in page.get("Contents", []))
        clone = copy_tracked_repo(tmp_path / "clone")
        for name in ("data.dvc", "dvc.lock", "params.yaml"):
            shutil.copy2(repo / name, clone / name)
        _run([BIN / "dvc", "init", "--no-scm", "-f", "-q"], clone, base)
        again = _run([BIN / "mrisynth", "team", "up", "--repo", clone], clone, base)  # running already: only configures the remote
        assert "up at" not in again.stdout, again.stdout
        # credentials from .dvc/config.local, not the environment
        _run([BIN / "dvc", "pull", "-r", "team"], clone, base)
        parts = ("data", "work/preprocessed", params["train_gan"]["model_path"], "work/augmented", "work/segmenter", "work/gan_usefulness")
        pushed, pulled = _digests(repo, parts), _digests(clone, parts)
        assert pushed and pulled == pushed
        assert len([k for k in pushed if k.startswith("data/")]) > 8
        dvc_s = time.monotonic() - t0

        # ---- faults: the object store, then the tracking server stopped; a stage fails in bounded time with one line
        # naming the URI, before it writes anything
        assert team.stop_component("weed")
        t0 = time.monotonic()
        failed = _run([BIN / "python", "pipelines/tune.py", "--worker", "--n-trials", "1"], repo, env, timeout=120, check=False)
        store_fault_s = time.monotonic() - t0
        assert failed.returncode == 2 and store_fault_s < FAULT_BOUND_S, (failed.returncode, store_fault_s, failed.stderr[-1500:])
        lines = [line for line in (failed.stdout + failed.stderr).splitlines() if env_vars["MLFLOW_S3_ENDPOINT_URL"] in line]
        assert len(lines) == 1 and "S3 object store" in lines[0] and "Traceback" not in failed.stderr, failed.stderr[-1500:]
        assert team.stop_component("mlflow")
        t0 = time.monotonic()
        failed = _run([BIN / "python", "pipelines/tune.py", "--worker", "--n-trials", "1"], repo, env, timeout=120, check=False)
        fault_s = time.monotonic() - t0
        assert failed.returncode != 0 and fault_s < FAULT_BOUND_S, (failed.returncode, fault_s)
        lines = [line for line in (failed.stdout + failed.stderr).splitlines() if tracking in line]
        print("\nfault:", lines)
        assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stdout[-1500:] + failed.stderr[-1500:]
        status = _run([BIN / "mrisynth", "team", "status"], repo, base, check=False)
        assert status.returncode == 1 and "mlflow    down" in status.stdout, status.stdout
    finally:
        # ---- down: nothing of the stack keeps running (each server leads its own process group)
        groups = {int(f.read_text().split()[0]) for f in (team_dir / "pids").glob("*.pid")}
        t0 = time.monotonic()
        _run([BIN / "mrisynth", "team", "down"], tmp_path, base, timeout=120)
        down_s = time.monotonic() - t0
        left = team.stack_processes(team_dir) + [p for g in groups for p in processes._group_members(g)]
    assert not list((team_dir / "pids").glob("*.pid"))
    assert left == [], [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:200]) for p in left]
    print(f"\nteam stack timings: up {up_s:.1f} s, preprocess + 2 tune workers + tiny dvc repro {pipeline_s:.1f} s, "
          f"dvc push/pull {dvc_s:.1f} s, object-store fault {store_fault_s:.1f} s, tracking fault {fault_s:.1f} s, down {down_s:.1f} s, total {time.monotonic() - started:.1f} s")
    shutil.rmtree(team_dir, ignore_errors=True)


def test_dvc_remote_credentials_never_touch_a_command_line(tmp_path, monkeypatch):
    import stat

    from mrisynth.ops import team

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=repo, check=True)
    (repo / ".dvc" / "config.local").write_text("[core]\n    autostage = true\n")
    state = {"ports": {"s3": 8333, "mlflow": 5000, "postgres": 5432}, "s3_access_key": "mrisynth", "s3_secret_key": "s3cr3t"}
    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"a command ran: {a}"))
        patched.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail(f"a command ran: {a}"))
        assert team.configure_dvc_remote(state, repo)
    path = repo / ".dvc" / "config.local"
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "autostage = true" in text and "secret_access_key = s3cr3t" in text
    listed = subprocess.run([str(BIN / "dvc"), "remote", "list", "--local"], cwd=repo, capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["team", "s3://dvc"]  # DVC reads the file it would have written


def test_an_unreadable_team_state_stops_instead_of_inventing_new_passwords(tmp_path):
    from mrisynth.ops import team
    from mrisynth.ops.processes import Paths, TeamError

    paths = Paths(tmp_path)
    assert team.load_state(paths) == {}  # before the first `up`
    team._save_state(paths, {"pg_password": "old"})
    assert team.load_state(paths) == {"pg_password": "old"} and not list(tmp_path.glob(".state.json.tmp-*"))
    paths.state.write_text('{"pg_password": "ol')  # cut short
    with pytest.raises(TeamError, match="state.json is unreadable.*restore it"):
        team.load_state(paths)


def test_team_down_works_with_an_unreadable_state(tmp_path, monkeypatch):
    from mrisynth.ops import team

    monkeypatch.setenv("MRISYNTH_TEAM_DIR", str(tmp_path))
    (tmp_path / "state.json").write_text("{not json")
    assert team.down(quiet=True) == []  # nothing ran; stopping needs no credentials

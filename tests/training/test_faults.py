"""Fault injection: kills during training and during the checkpoint write, corrupted resume state,
SIGTERM through the stage entry point. Tiny sizes; every case ends with the weights an uninterrupted
run reaches (bit-exact, same machine) or with a named, recoverable state."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO, _tiny_split
from mrisynth.training.checkpoints import RESUME_DIR, latest_resume, load_state
from mrisynth.training.gan import GanTrainer, paper_settings

SETTINGS = paper_settings(alpha=100.0, epochs=3, batch_size=2, width=0.25, precision="float32", seed=5, checkpoint_every=1)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def splits():
    return _tiny_split(4), _tiny_split(2, seed=10)


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    """Generator weights after an uninterrupted run of SETTINGS."""
    out = tmp_path_factory.mktemp("reference") / "gan"
    trainer = GanTrainer(SETTINGS, 64, 4, 4)
    trainer.fit(*splits, out)
    return [w.copy() for w in trainer.generator.get_weights()]


def _final_weights(splits, out):
    trainer = GanTrainer(SETTINGS, 64, 4, 4)
    state = trainer.fit(*splits, out)
    assert state.completed and state.epoch == SETTINGS.epochs and len(state.history) == SETTINGS.epochs
    return trainer.generator.get_weights()


def _assert_same(weights, reference):
    assert len(weights) == len(reference)
    for a, b in zip(weights, reference):
        np.testing.assert_array_equal(a, b)


def _interrupt_after(splits, out, epoch: int) -> None:
    """Train SETTINGS in `out` and stop (as an exception would) right after `epoch`'s end-of-epoch work."""
    def stop(result, trainer, state):
        if result.epoch == epoch:
            raise Interrupt

    with pytest.raises(Interrupt):
        GanTrainer(SETTINGS, 64, 4, 4).fit(*splits, out, on_epoch=stop)


def test_interrupted_and_resumed_run_ends_with_the_uninterrupted_weights(splits, reference, tmp_path):
    out = tmp_path / "gan"
    _interrupt_after(splits, out, 1)
    assert load_state(out).epoch == 1
    _assert_same(_final_weights(splits, out), reference)  # RNG (dropout) and data order restored


def test_corrupted_newest_state_falls_back_to_the_older_one(splits, reference, tmp_path, capsys):
    out = tmp_path / "gan"
    _interrupt_after(splits, out, 2)
    newest = out / RESUME_DIR / "epoch-0002"
    data = (newest / "variables.npz").read_bytes()
    (newest / "variables.npz").write_bytes(data[: len(data) // 3])  # cut short
    folder, state = latest_resume(out)
    assert folder.name == "epoch-0001" and state.epoch == 1
    assert "epoch-0002 is unusable (variables.npz does not match its checksum)" in capsys.readouterr().err
    _assert_same(_final_weights(splits, out), reference)


_CHILD = textwrap.dedent("""
    import sys, numpy as np
    sys.path[:0] = [{here!r}, {tests!r}]
    from test_faults import SETTINGS, _tiny_split
    from mrisynth.training.gan import GanTrainer
    import mrisynth.training.gan as gan
    mode = sys.argv[2]
    if mode == "write":  # die with SIGKILL in the middle of the second checkpoint write
        real = np.savez
        calls = []
        def dying_savez(path, **arrays):
            calls.append(path)
            if len(calls) == 2:
                with open(path, "wb") as handle:
                    handle.write(b"PK partial")
                import os, signal
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, **arrays)
        gan.np.savez = dying_savez
    import time
    def on_epoch(result, trainer, state):
        print("epoch", result.epoch, flush=True)
        if mode == "plain" and result.epoch < SETTINGS.epochs:
            time.sleep(0.5)  # the parent's kill lands here or in the next epoch (train step, validation, checkpoint)
    trainer = GanTrainer(SETTINGS, 64, 4, 4)
    trainer.fit(_tiny_split(4), _tiny_split(2, seed=10), sys.argv[1], on_epoch=on_epoch)
    print("done", flush=True)
""")


def _child(out, mode):
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(here=str(REPO / "tests" / "training"), tests=str(REPO / "tests")), str(out), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_during_the_checkpoint_write_leaves_a_resumable_state(splits, reference, tmp_path):
    out = tmp_path / "gan"
    child = _child(out, "write")
    child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL
    leftovers = list((out / RESUME_DIR).glob(".tmp-epoch-*"))
    assert leftovers, "the cut-short write should have left its temporary folder"
    assert [p.name for p in (out / RESUME_DIR).glob("epoch-*")] == ["epoch-0001"]  # nothing half-written under a final name
    _assert_same(_final_weights(splits, out), reference)
    assert not list((out / RESUME_DIR).glob(".tmp-epoch-*"))  # cleaned up by the next write


@pytest.mark.parametrize("delay", [0.2, 0.75])
def test_sigkill_at_a_random_point_then_resume(splits, reference, tmp_path, delay):
    """Killed after epoch 1's checkpoint: at 0.2 s while idle, at 0.75 s inside epoch 2 (training,
    validation or the next checkpoint write)."""
    out = tmp_path / "gan"
    child = _child(out, "plain")
    for line in child.stdout:
        if line.startswith("epoch 1"):
            break
    time.sleep(delay)
    child.kill()
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL  # really interrupted, not finished
    state = load_state(out)
    assert state is not None and not state.completed and state.epoch < SETTINGS.epochs
    _assert_same(_final_weights(splits, out), reference)


def test_sigterm_to_the_stage_ends_the_run_killed_and_resumable(trained_copy):
    import mlflow
    import yaml

    params = yaml.safe_load((trained_copy / "params.yaml").read_text())
    params["train_gan"] |= {"epochs": 40, "checkpoint_every": 1, "out_dir": "work/gan_sigterm", "experiment": "sigterm"}
    (trained_copy / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"MRISYNTH_WATCH_LAUNCHER": "0"}
    log = trained_copy / "stderr.log"
    with open(log, "w") as stderr:  # a file, not a pipe: TF/MLflow warnings cannot fill it and block the child
        proc = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "train_gan.py")], cwd=trained_copy, env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.time() + 300
        for line in proc.stdout:
            if line.startswith("epoch 2/") or time.time() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    err = log.read_text()
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted; resume state at epoch" in err and "Traceback" not in err
    state = load_state(trained_copy / "work" / "gan_sigterm")
    assert state is not None and not state.completed and state.epoch >= 2
    client = mlflow.MlflowClient()
    run = client.get_run(state.run_id)
    assert run.info.status == "KILLED" and "rerun" in run.data.tags["resume"]
    assert json.loads((trained_copy / "work" / "gan_sigterm" / "state.json").read_text())["epoch"] == state.epoch


_KILL_AT_REGISTRATION = textwrap.dedent("""
    import os, signal
    from mrisynth.io import registry

    def dying_register(*args, **kwargs):  # the slow upload on a team stack: a kill lands here
        os.kill(os.getpid(), signal.SIGKILL)

    registry.register_keras_model = dying_register
    from mrisynth.stages.train_gan import main
    main()
""")


def test_a_kill_at_registration_keeps_the_trained_generator(trained_copy):
    """Killed after training, before the model is registered: the rerun registers the kept generator
    without retraining and ends the old MLflow run instead of leaving it RUNNING."""
    import mlflow
    import yaml

    params = yaml.safe_load((trained_copy / "params.yaml").read_text())
    params["train_gan"] |= {"out_dir": "work/gan_kill", "model_path": "models/killed.keras", "experiment": "kill-at-registration"}
    (trained_copy / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"MRISYNTH_WATCH_LAUNCHER": "0"}
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_REGISTRATION], cwd=trained_copy, env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    out = trained_copy / "work" / "gan_kill"
    state = load_state(out)
    assert state.completed and not state.finalised
    trained_bytes = (out / "best_generator.keras").read_bytes()
    assert mlflow.MlflowClient().get_run(state.run_id).info.status == "RUNNING"

    rerun = subprocess.run([sys.executable, str(REPO / "pipelines" / "train_gan.py")], cwd=trained_copy, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "never finalised; finishing it without retraining" in rerun.stderr and "epoch 1/" not in rerun.stdout
    after = load_state(out)
    assert after.finalised and after.run_id == state.run_id and len(after.history) == len(state.history)
    assert (out / "best_generator.keras").read_bytes() == trained_bytes  # the same generator, not a retrained one
    assert (trained_copy / "models" / "killed.keras").is_file()
    assert mlflow.MlflowClient().get_run(state.run_id).info.status == "FINISHED"
    report = json.loads((trained_copy / "reports" / "train_gan.json").read_text())
    assert report["run_id"] == state.run_id and int(report["model_version"]) >= 1


_SLOW_STAGE = textwrap.dedent("""
    import os, pathlib, time
    from mrisynth.stages import stage_main

    def run():
        pathlib.Path("started").write_text(str(os.getpid()))
        for _ in range(120):  # a long training stage
            time.sleep(0.25)
        pathlib.Path("registered").write_text("a model would have been registered now")
        return 0

    stage_main(run)
""")


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in handle)
    except FileNotFoundError:
        return False


def test_killed_dvc_repro_leaves_no_orphan_stage(tmp_path):
    """SIGKILL to `dvc repro` (the launcher): the stage notices within about a second and stops,
    instead of finishing later and registering models behind a stale dvc.lock."""
    bin_dir = os.path.dirname(sys.executable)
    (tmp_path / "slow.py").write_text(_SLOW_STAGE)
    (tmp_path / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python slow.py\n    deps: [slow.py]\n")
    env = {k: v for k, v in os.environ.items() if k != "MRISYNTH_WATCH_LAUNCHER"} | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run([os.path.join(bin_dir, "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    dvc = subprocess.Popen([os.path.join(bin_dir, "dvc"), "repro"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "started").is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "started").is_file(), "the stage did not start"
    time.sleep(0.5)
    stage_pid = int((tmp_path / "started").read_text())
    dvc.kill()  # not reaped until the end: the stage must also notice a zombie launcher
    gone = False
    for _ in range(50):  # up to 10 s
        if not _alive(stage_pid):
            gone = True
            break
        time.sleep(0.2)
    if not gone:
        os.kill(stage_pid, signal.SIGKILL)
    dvc.wait(timeout=30)
    assert gone, "the stage outlived its killed launcher"
    time.sleep(1)
    assert not (tmp_path / "registered").exists()

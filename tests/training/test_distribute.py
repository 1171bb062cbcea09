"""tf.distribute for the GAN (train_gan.strategy): TF_CONFIG parsing, MirroredStrategy on two logical CPU
devices and MultiWorkerMirroredStrategy with two worker processes on localhost, each compared with the
one-device run on the same data and seed; resume across workers; a hung worker, a missing worker and a
worker with other parameters each stop the run with one line in bounded time.

Stated tolerance: with dropout 0 and float32, the generator weights after the same number of global
steps agree with the one-device run within 1e-5 (absolute; the weights are O(1)). Measured here:
~1.3e-7 (float rounding in the cross-replica sums and the synchronised BatchNorm moments)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tf_configs
from mrisynth.config import TrainGanParams
from mrisynth.errors import ConfigError
from mrisynth.io import distribute

HELPER = Path(__file__).parent / "gan_distributed.py"
TOLERANCE = 1e-5
EPOCHS = 3


# ---------------------------------------------------------------- pure parts
@pytest.mark.parametrize("cluster, task_type, index, chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),       # no chief task: worker 0 is the chief
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
])
def test_chief_is_tensorflows_convention(cluster, task_type, index, chief):
    assert distribute.is_chief(cluster, task_type, index) is chief


@pytest.mark.parametrize("tf_config, needle", [
    (None, "needs the TF_CONFIG environment variable"),
    ("not json", "expected JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "expected JSON"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task index 3 is outside cluster.worker (1 entries)"),
])
def test_bad_tf_config_says_what_is_wrong(tf_config, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        distribute.cluster_from_env({} if tf_config is None else {"TF_CONFIG": tf_config})


def test_cluster_from_env_reads_the_task():
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 1}})}
    assert distribute.cluster_from_env(env) == ({"worker": ["h1:2222", "h2:2222"]}, "worker", 1)


def test_strategy_param_is_checked():
    with pytest.raises(ConfigError, match="train_gan.strategy='ring'"):
        TrainGanParams(strategy="ring").check()
    with pytest.raises(ConfigError, match="train_gan.peer_timeout_s"):
        TrainGanParams(peer_timeout_s=0).check()


@pytest.mark.parametrize("count, ok", [(8, True), (7, True), (6, False), (5, False)])
def test_batches_too_small_for_the_replicas_are_refused(count, ok):
    """Global batch 4 over 3 replicas: a tail of 0 or 3 rows is fine, 2 or 1 rows leave a replica empty."""
    from mrisynth.training.gan import GanTrainer, paper_settings

    trainer = GanTrainer(paper_settings(batch_size=4, width=0.125, precision="float32"), 32, 4, 2)
    trainer.dist = distribute.Distribution("mirrored", trainer.dist.strategy, replicas=3)
    if ok:
        trainer.check_batches(count)
    else:
        with pytest.raises(ConfigError, match=f"leaves a batch of {count % 4} rows for 3 replicas"):
            trainer.check_batches(count)


# ---------------------------------------------------------------- real strategies in fresh processes
def _start(tmp: Path, name: str, strategy: str, tf_config: str | None = None, *extra) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if tf_config:
        env["TF_CONFIG"] = tf_config
    cmd = [sys.executable, str(HELPER), "--strategy", strategy, "--out", str(tmp / f"{name}.json"), "--out-dir", str(tmp / f"{name}-gan"), *map(str, extra)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _weights(result: Path) -> list[np.ndarray]:
    with np.load(json.loads(result.read_text())["weights"]) as saved:
        return [saved[k] for k in saved.files]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> dict:
    """The reference: the same tiny training on one device (in this process: `default` needs no fresh TensorFlow)."""
    sys.path.insert(0, str(HELPER.parent))
    import gan_distributed as helper
    from mrisynth.training.gan import GanTrainer

    train, val = helper.data()
    trainer = GanTrainer(helper.settings(EPOCHS), helper.SIZE, 4, 4)
    state = trainer.fit(train, val, tmp_path_factory.mktemp("one-device") / "gan")
    return {"weights": [np.asarray(w) for w in trainer.generator.get_weights()], "history": state.history}


def _max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path, one_device):
    code, out = _finish(_start(tmp_path, "mirrored", "mirrored", None, "--epochs", EPOCHS))
    assert code == 0, out[-3000:]
    result = json.loads((tmp_path / "mirrored.json").read_text())
    assert result["replicas"] == 2
    assert _max_difference(_weights(tmp_path / "mirrored.json"), one_device["weights"]) <= TOLERANCE
    for mine, theirs in zip(result["history"], one_device["history"]):
        assert mine["val_g_loss"] == pytest.approx(theirs["val_g_loss"], rel=1e-5)


@pytest.mark.slow
def test_overflow_skips_on_every_replica_and_replicas_draw_their_own_dropout(tmp_path):
    """float16 loss scaling with an overflow: like one device, every replica skips the step and halves the scale;
    an overflow in one replica's gradients only makes every replica skip (each deciding alone left NaN weights,
    or a hang across workers). Dropout: the same input rows on both replicas get different masks."""
    results = {}
    for strategy in ("default", "mirrored"):
        code, out = _finish(_start(tmp_path, strategy, strategy, None, "--probe"))
        assert code == 0, out[-3000:]
        results[strategy] = json.loads((tmp_path / f"{strategy}.json").read_text())
    for strategy, result in results.items():
        assert result["finite"] and result["scale_after"] == result["scale_before"] / 2, (strategy, result)
    assert results["mirrored"]["all_replicas_skip"] == [True, True], results["mirrored"]
    assert results["mirrored"]["dropout_difference"] > 1e-3, results["mirrored"]


@pytest.mark.slow
def test_two_workers_resume_together_and_match_one_device(tmp_path, one_device):
    """Two worker processes; the chief is stopped after epoch 2 (its resume state holds epoch 2), the
    helper worker then fails; both are restarted: the chief resumes, the fresh worker takes the chief's
    state, and after the same global steps the weights match the one-device run. Only the chief writes."""
    configs = tf_configs()
    worker = _start(tmp_path, "worker", "multi_worker", configs[1], "--interrupt-after", 2)
    chief = _start(tmp_path, "chief", "multi_worker", configs[0], "--interrupt-after", 2)
    chief_code, chief_out = _finish(chief)
    worker_code, worker_out = _finish(worker)
    assert chief_code != 0 and "KeyboardInterrupt" in chief_out, chief_out[-2000:]
    assert worker_code != 0 and "lost a worker" in worker_out, worker_out[-2000:]
    assert (tmp_path / "chief-gan" / "resume" / "epoch-0002").is_dir()

    configs = tf_configs()
    worker = _start(tmp_path, "worker", "multi_worker", configs[1])
    chief = _start(tmp_path, "chief", "multi_worker", configs[0])
    chief_code, chief_out = _finish(chief)
    worker_code, worker_out = _finish(worker)
    assert chief_code == 0, chief_out[-3000:]
    assert worker_code == 0, worker_out[-3000:]
    assert "epoch 3 done" in chief_out and "epoch 1 done" not in chief_out  # resumed at epoch 3
    result = json.loads((tmp_path / "chief.json").read_text())
    assert result["workers"] == 2 and result["replicas"] == 2 and result["task"] == "worker 0"
    assert _max_difference(_weights(tmp_path / "chief.json"), one_device["weights"]) <= TOLERANCE
    assert not (tmp_path / "worker-gan").exists() and not (tmp_path / "worker.json").exists()


@pytest.mark.slow
def test_a_hung_worker_stops_the_chief_within_the_peer_timeout(tmp_path):
    peer_timeout = 6
    configs = tf_configs()
    worker = _start(tmp_path, "worker", "multi_worker", configs[1], "--epochs", 500, "--peer-timeout", peer_timeout)
    chief = _start(tmp_path, "chief", "multi_worker", configs[0], "--epochs", 500, "--peer-timeout", peer_timeout)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "chief-gan" / "resume").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)  # training has started on both
        os.kill(worker.pid, signal.SIGSTOP)  # alive but silent: only the heartbeat timeout can tell
        stopped = time.monotonic()
        code, out = _finish(chief, timeout=peer_timeout + 60)
        took = time.monotonic() - stopped
    finally:
        worker.kill()
        worker.communicate()
    assert code != 0, out[-2000:]
    (line,) = [x for x in out.splitlines() if "lost a worker" in x]
    assert "TrainingError: worker 0: the 2-worker cluster lost a worker during epoch" in line and "restart every worker" in line
    assert took < peer_timeout + 30, took


@pytest.mark.slow
def test_a_missing_worker_fails_the_start_within_cluster_wait(tmp_path):
    configs = tf_configs()
    started = time.monotonic()
    code, out = _finish(_start(tmp_path, "chief", "multi_worker", configs[0], "--cluster-wait", 3), timeout=90)
    took = time.monotonic() - started
    assert code != 0
    assert "not all of them joined within train_gan.cluster_wait_s=3 s" in out, out[-2000:]
    assert took < 60, took
    assert not (tmp_path / "chief-gan").exists()


@pytest.mark.slow
def test_workers_with_other_parameters_refuse_to_train(tmp_path):
    configs = tf_configs()
    worker = _start(tmp_path, "worker", "multi_worker", configs[1], "--alpha", 5.0)
    chief = _start(tmp_path, "chief", "multi_worker", configs[0])
    for proc in (chief, worker):
        code, out = _finish(proc)
        assert code != 0 and "1 of 2 replicas train with other parameters" in out, out[-2000:]

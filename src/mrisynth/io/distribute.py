"""Where the GAN trains: one device, several local devices, or several worker processes/machines.

`train_gan.strategy` (params.yaml):
- `default`      one device, no tf.distribute machinery (the published numbers come from this);
- `mirrored`     `tf.distribute.MirroredStrategy` over all local GPUs; on a machine without GPUs the
                 CPU is split into `train_gan.cpu_replicas` logical devices (how it is tested here);
- `multi_worker` `tf.distribute.MultiWorkerMirroredStrategy` over the processes named in the
                 `TF_CONFIG` environment variable (the standard TensorFlow cluster description).
                 The chief (task `chief`, or `worker` 0 when the cluster has no chief) checkpoints,
                 validates and owns the MLflow run; the other workers only train.

Side effects (device configuration, gRPC servers, the cluster health check) live here, not in the
trainer. Fault handling for `multi_worker`:
- at start, every worker waits at most `cluster_wait_s` for the whole cluster to join;
- during training, a health check pings every peer; a peer that does not answer for about
  `peer_timeout_s` aborts the collectives, and the trainer stops with a one-line error.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from mrisynth.errors import ConfigError


@dataclass
class Distribution:
    """The strategy the trainer runs under, and this process' role in it."""

    kind: str                 # default | mirrored | multi_worker (config.STRATEGIES)
    strategy: object          # a tf.distribute.Strategy (the default strategy for `default`)
    replicas: int = 1         # replicas in sync, over all workers
    workers: int = 1
    is_chief: bool = True
    task: str = "local"       # e.g. "worker 1" under multi_worker

    @property
    def distributed(self) -> bool:
        return self.kind != "default"

    def tags(self) -> dict[str, str]:
        return {"strategy": self.kind, "replicas": str(self.replicas), "workers": str(self.workers)}


def cluster_from_env(env: dict[str, str] | None = None) -> tuple[dict, str, int]:
    """(cluster, task type, task index) from TF_CONFIG, or a ConfigError that says what is wrong."""
    raw = (os.environ if env is None else env).get("TF_CONFIG", "")
    if not raw:
        raise ConfigError("train_gan.strategy=multi_worker needs the TF_CONFIG environment variable "
                          '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}); '
                          "set it on every worker, or use strategy default/mirrored")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        members = cluster[task_type]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TF_CONFIG={raw!r}: expected JSON with cluster.<type> host lists and task.type/task.index ({exc})") from exc
    if not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG: task index {index} is outside cluster.{task_type} ({len(members)} entries)")
    return cluster, task_type, index


def is_chief(cluster: dict, task_type: str, index: int) -> bool:
    """The chief task, or worker 0 in a cluster without one (TensorFlow's convention)."""
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


def _split_cpu(count: int) -> list[str]:
    """`count` logical CPU devices; must run before TensorFlow initialises its devices in this process."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError as exc:
            raise ConfigError(f"train_gan.cpu_replicas={count}: TensorFlow was already initialised in this process, "
                              "so the CPU cannot be split into logical devices; run the stage in a fresh process") from exc
    return [f"/cpu:{i}" for i in range(count)]


def _coordination(cluster: dict, peer_timeout_s: float, cluster_wait_s: float) -> None:
    """Configure TensorFlow's coordination service (what MultiWorkerMirroredStrategy uses to find its
    peers and to detect dead ones) with bounded waits; TensorFlow's own configuration, used when none
    is set, waits for missing workers without limit. Same jobs and leader as the strategy would pick.
    - cluster_register_timeout: every task must register within cluster_wait_s, else start fails;
    - heartbeat_timeout: a task silent for peer_timeout_s is declared dead and collectives abort;
    - shutdown_barrier_timeout: at exit, wait at most peer_timeout_s for the other tasks."""
    import tensorflow as tf
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    spec = tf.train.ClusterSpec(cluster)
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec), coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=int(cluster_wait_s * 1000), heartbeat_timeout_in_ms=int(peer_timeout_s * 1000),
        shutdown_barrier_timeout_in_ms=int(peer_timeout_s * 1000))


WATCHDOG = """
import os, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if os.getppid() != parent:  # the parent is gone (this process was re-parented): nothing to guard
        sys.exit(0)
sys.stderr.write(message + chr(10))
sys.stderr.flush()
os.kill(parent, 9)
"""


@contextlib.contextmanager
def _deadline(seconds: float, message: str):
    """Kill this process with `message` (one line on stderr) unless the block ends within `seconds`.
    TensorFlow's cluster join blocks in C++ while holding the GIL, so neither SIGTERM, an alarm
    handler nor a Python thread can stop it; a small watchdog process can. The watchdog exits as soon
    as this process is gone, keeps no pipe open (stdin/stdout closed; stderr only for the message)
    and never signals another process (it checks that this one is still its parent)."""
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds), message],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def make(kind: str, cpu_replicas: int = 2, cluster_wait_s: float = 300.0, peer_timeout_s: float = 30.0) -> Distribution:
    """Build the strategy for `kind` (see the module docstring). Call before any model is built."""
    import tensorflow as tf

    if kind not in ("default", "mirrored", "multi_worker"):  # config.STRATEGIES (io does not import config)
        raise ConfigError(f"train_gan.strategy={kind!r}: expected default, mirrored or multi_worker")
    if kind == "default":
        return Distribution(kind, tf.distribute.get_strategy())
    if kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        devices = None if gpus else _split_cpu(cpu_replicas)  # None: MirroredStrategy takes every GPU
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution(kind, strategy, replicas=strategy.num_replicas_in_sync)
    cluster, task_type, index = cluster_from_env()
    _coordination(cluster, peer_timeout_s, cluster_wait_s)
    members = sum(len(v) for v in cluster.values())
    message = (f"train_gan: TF_CONFIG names {members} tasks, but not all of them joined within train_gan.cluster_wait_s="
               f"{cluster_wait_s:g} s; start every worker (same params, same data) and rerun")
    # TensorFlow's join can neither be interrupted (not even by SIGTERM) nor relied on to honour its register
    # timeout (measured: it waited on past it), so the watchdog enforces cluster_wait_s
    with _deadline(cluster_wait_s, message):
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, tf.errors.OpError) as exc:  # a join that fails by itself (e.g. a bad address)
            raise ConfigError(f"{message} ({exc})") from exc
    workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return Distribution(kind, strategy, replicas=strategy.num_replicas_in_sync, workers=workers,
                        is_chief=is_chief(cluster, task_type, index), task=f"{task_type} {index}")

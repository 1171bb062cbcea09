"""Helpers for worker processes (segmenter training workers, the server's decode workers): how many cores
this process may use, and a worker that ends itself when the process that started it is gone.

Standard library only: decode workers import this and must not pay for MLflow or TensorFlow."""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (v2) CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or an unexpected format: the affinity stands
        pass
    return cores


def end_with_parent(parent_pid: int, interval_s: float = 1.0, exit_code: int = 1) -> threading.Thread:
    """Start a daemon thread that ends this process (os._exit(exit_code)) once its parent is no longer
    `parent_pid` (the parent died, even by SIGKILL, and this process was re-parented); checks every interval_s."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(exit_code)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread

"""Worker-process helpers: a worker whose parent is gone ends itself (segmenter workers, decode workers)."""
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = ("import sys, time; from mrisynth.io.workers import end_with_parent; end_with_parent(int(sys.argv[1]), 0.05, 3); "
         "print('ready', flush=True); time.sleep(60)")
# the middle process starts the worker, prints its pid and exits at once (as a killed stage or server would)
MIDDLE = (f"import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {CHILD!r}, str(os.getpid())], "
          "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid, flush=True)")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_worker_ends_itself_when_its_parent_is_gone():
    out = subprocess.run([sys.executable, "-c", MIDDLE], capture_output=True, text=True, check=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the worker outlived its parent by 30 s"


def test_a_worker_keeps_running_while_its_parent_lives():
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(os.getpid())], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # its watch is running
        time.sleep(1.5)  # 30 checks of its parent
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()

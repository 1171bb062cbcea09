"""One module per DVC stage; each exposes `run(...) -> exit code` and `main()` (its entry point)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from mrisynth.errors import MrisynthError

EXIT_SIGTERM = 143
EXIT_SIGINT = 130


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt("SIGTERM")


LAUNCHERS = ("dvc", "mlflow")


def _ancestors(max_depth: int = 4) -> list[int]:
    """The processes between this one and its launcher (`dvc repro`, `mlflow run`), launcher included,
    from /proc; [] when no launcher is found within max_depth (a stage run by hand, e.g. under nohup,
    is not tied to its shell) or without /proc."""
    chain, pid = [], os.getppid()
    while pid > 1 and len(chain) < max_depth:
        chain.append(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                words = [os.path.basename(w.decode(errors="replace")) for w in handle.read().split(b"\0")[:3]]
            if any(w in LAUNCHERS for w in words):
                return chain
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return []


def _gone(pid: int) -> bool:
    """The process no longer runs: absent, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False


def _watch_launcher(interval: float = 1.0) -> None:
    """Stop this stage (as SIGTERM would) when a launching process dies - e.g. `dvc repro` killed -
    so no orphaned stage later registers models while dvc.lock stays stale."""
    watched = _ancestors()

    def watch():
        event = threading.Event()
        while not event.wait(interval):
            for pid in watched:
                if _gone(pid):
                    print(f"stage: launcher process {pid} is gone; stopping", file=sys.stderr)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

    if watched:
        threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


RESOURCES_DIR = Path("work/resources")


_WORKER_PEAKS: dict[int, float] = {}


def note_worker_peak_rss(pid: int, peak_kib: float) -> None:
    """A worker process running beside the stage's own (e.g. a segmenter worker) reports its peak resident
    memory (KiB, as ru_maxrss); `record_resources` adds each worker's highest report to the stage's own."""
    _WORKER_PEAKS[pid] = max(_WORKER_PEAKS.get(pid, 0.0), float(peak_kib))


def record_resources(stage: str, wall_s: float, folder: Path = RESOURCES_DIR) -> dict:
    """Write this process's wall time, CPU time and peak resident memory to work/resources/<stage>.json
    (read by `make bench`; not a DVC output, so it never invalidates a stage). Peak memory: the larger of
    the largest single process (this one or a child) and this one plus every reported worker's peak
    (`note_worker_peak_rss`; workers that run side by side hold their memory at the same time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib = max(usage.ru_maxrss, children.ru_maxrss, usage.ru_maxrss + sum(_WORKER_PEAKS.values()))  # ru_maxrss is in KiB on Linux
    record = {"stage": stage, "wall_s": round(wall_s, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime, 1),
              "peak_rss_mib": round(peak_kib / 1024, 1),
              "cpu_count": os.cpu_count(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


_RECORD = {"resources": True}


def skip_resource_record() -> None:
    """This process is a helper (a non-chief training worker), not the stage: write no resources file."""
    _RECORD["resources"] = False


def stage_main(run: Callable[[], int]) -> None:
    """Run a stage and exit with its code; a user-facing error prints one readable block and exits 2.

    SIGTERM is handled like Ctrl-C (KeyboardInterrupt): stages end their MLflow runs as KILLED and
    keep a consistent resume state; the exit code is 143 (SIGTERM) or 130 (SIGINT)."""
    terminated = {"flag": False}

    def on_term(signum, frame):
        terminated["flag"] = True
        _on_sigterm(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("MRISYNTH_WATCH_LAUNCHER", "1") != "0":
        _watch_launcher()
    started = time.perf_counter()
    try:
        code = run()
        if not code and _RECORD["resources"]:
            try:
                record_resources(str(getattr(run, "__module__", "stage")).rsplit(".", 1)[-1], time.perf_counter() - started)
            except OSError as exc:  # a bookkeeping file must not fail a finished stage
                print(f"warning: could not record resources in {RESOURCES_DIR}: {exc}", file=sys.stderr)
        sys.exit(code)
    except MrisynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("stage interrupted" + (" (SIGTERM)" if terminated["flag"] else ""), file=sys.stderr)
        sys.exit(EXIT_SIGTERM if terminated["flag"] else EXIT_SIGINT)


def params_main(run: Callable[[str], int], argv: list[str] | None = None) -> None:
    """The `main()` of a stage whose one option is `--params FILE`: parse it (other options are refused
    with a usage line, never ignored) and run the stage through `stage_main`."""
    stage = run.__module__.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(prog=f"pipelines/{stage}.py", description=(sys.modules[run.__module__].__doc__ or "").split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    args = parser.parse_args(argv)

    def call() -> int:
        return run(args.params)

    call.__module__ = run.__module__  # the resource record is named after the stage
    stage_main(call)

"""Shared by the benchmarks: the machine description and the JSON each script leaves for `make bench`."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write(path: str | None, result: dict) -> None:
    """Write `result` (with the machine) to `path` as JSON, when a path was given."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine()} | result, indent=2) + "\n")


def timings(run, repeats: int, warmup=None) -> list[float]:
    """Seconds of each of `repeats` calls of run(), after one untimed warm-up call (warmup() if given,
    else run()) that pays for tracing."""
    (warmup or run)()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def median_rate(items: int, times: list[float]) -> float:
    """Median items per second over timed runs that each handled `items`."""
    return statistics.median(items / t for t in times)

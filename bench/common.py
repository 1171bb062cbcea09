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


def interleaved(ours, reference, repeats: int, ours_items: float, reference_items: float | None = None,
                ours_warmup=None, reference_warmup=None, clock=time.perf_counter) -> dict:
    """Time `ours()` and `reference()` side by side: one untimed warm-up each, then `repeats` rounds, each
    timing both (the order alternates per round, so a slow spell of the machine hits both alike). Each
    round gives a ratio of rates (ours / reference); the result carries the median rates, the median
    ratio, its min-max over the rounds and `crosses_1` when that spread includes 1 (no speed-up shown)."""
    (ours_warmup or ours)()
    (reference_warmup or reference)()
    reference_items = ours_items if reference_items is None else reference_items
    ours_rates, reference_rates = [], []
    for round_ in range(repeats):
        pair = ((ours, ours_rates, ours_items), (reference, reference_rates, reference_items))
        for run, rates, items in (pair if round_ % 2 == 0 else pair[::-1]):
            start = clock()
            run()
            rates.append(items / (clock() - start))
    ratios = [o / r for o, r in zip(ours_rates, reference_rates)]
    return {"ours_per_s": round(statistics.median(ours_rates), 3), "reference_per_s": round(statistics.median(reference_rates), 3),
            "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "rounds": repeats, "crosses_1": min(ratios) < 1.0 < max(ratios)}


def load_average() -> dict:
    """The machine's 1/5/15-minute load averages and its core count (a busy machine makes every figure slower)."""
    one, five, fifteen = os.getloadavg()
    return {"load_1min": round(one, 2), "load_5min": round(five, 2), "load_15min": round(fifteen, 2), "cpu_count": os.cpu_count()}


def spread(figure: dict) -> str:
    """`1.23x (1.10-1.35, 5 rounds)`, flagged when the min-max includes 1."""
    flag = "; crosses 1: not shown" if figure["crosses_1"] else ""
    return f"{figure['ratio']}x ({figure['ratio_min']}-{figure['ratio_max']}, {figure['rounds']} rounds{flag})"


def ratio_keys(prefix: str, figure: dict) -> dict:
    """An `interleaved` figure's ratio as flat JSON keys: prefix, prefix_min, prefix_max, prefix_rounds, prefix_crosses_1."""
    return {prefix: figure["ratio"], f"{prefix}_min": figure["ratio_min"], f"{prefix}_max": figure["ratio_max"],
            f"{prefix}_rounds": figure["rounds"], f"{prefix}_crosses_1": figure["crosses_1"]}

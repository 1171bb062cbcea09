"""Benchmark of the data path (not a test): phantom seconds per full-size case (version 2, the default,
next to version 1), and a 65-case import.

Budgets: phantom <= 3 s per 240x240x155 case on one core; importing 65 cases <= 120 s.
Usage: python bench/bench_data.py [--cases 65] [--workers 2]"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mrisynth.core import phantom, phantom_v2
from mrisynth.io import brats
from mrisynth.data.ingest import ImportOptions, import_brats, make_phantom

import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=65)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the figures here (make bench)")
    args = parser.parse_args()
    phantom._templates()  # one-off template and location-table loads, not per case
    phantom_v2._location_tables()
    with tempfile.TemporaryDirectory() as tmp:
        times = {1: [], 2: []}
        for i in range(5):  # serial, one core: make + write one case, the two versions interleaved
            for version, make in ((1, phantom.make_case), (2, phantom_v2.make_case)):
                start = time.perf_counter()
                case = make(1, i)
                brats.write_case(Path(tmp) / f"serial{version}", f"BraTS20_Training_{i + 1:03d}", case.volumes, case.seg, phantom.BRATS_AFFINE)
                times[version].append(time.perf_counter() - start)
        for version, per_case in times.items():
            print(f"phantom v{version}, one core: median {statistics.median(per_case):.2f} s/case "
                  f"(min {min(per_case):.2f}, max {max(per_case):.2f}, 5 cases); budget 3 s")
        print(f"phantom v2 / v1 time ratio: {statistics.median(times[2]) / statistics.median(times[1]):.2f}")
        start = time.perf_counter()
        make_phantom(Path(tmp) / "raw", args.cases, seed=1, workers=args.workers)
        made = time.perf_counter() - start
        print(f"phantom, {args.workers} workers: {args.cases} cases in {made:.1f} s ({made / args.cases:.2f} s/case wall)")
        start = time.perf_counter()
        counts = {"train": 30, "val": args.cases - 55, "test": 25}
        import_brats(Path(tmp) / "raw", Path(tmp) / "out", counts, 1, ImportOptions(), workers=args.workers)
        took = time.perf_counter() - start
        print(f"import: {args.cases} full-size cases in {took:.1f} s ({args.workers} workers); budget 120 s")
    common.write(args.json, {
        "what": "phantom (make + write one 240x240x155 case, one core) and import", "repeats": 5,
        "phantom_v2_s_per_case": round(statistics.median(times[2]), 3), "phantom_v1_s_per_case": round(statistics.median(times[1]), 3),
        "ratio_v2_to_v1": round(statistics.median(times[2]) / statistics.median(times[1]), 3), "phantom_budget_s": 3.0,
        "phantom_workers": args.workers, "phantom_cases": args.cases, "phantom_parallel_s_per_case": round(made / args.cases, 3),
        "import_cases": args.cases, "import_workers": args.workers, "import_s": round(took, 1),
        "import_cases_per_s": round(args.cases / took, 3), "import_budget_s": 120})


if __name__ == "__main__":
    main()

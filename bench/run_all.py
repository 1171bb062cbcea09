"""`make bench`: every benchmark, side by side in one run, into reports/bench.json, the
benchmark table of docs/benchmarks.md (between the `bench:start` / `bench:end` markers) and an MLflow run named `bench`.

Each figure is a median of repeats measured next to its reference in the same process (see each
script's docstring); peak memory per pipeline stage comes from work/resources/<stage>.json, which
every stage writes when it finishes (so it describes the last `dvc repro` on this machine).
Usage: python bench/run_all.py [--quick]   (--quick: fewer repeats and cases, for a smoke check)"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

from mrisynth import paths  # noqa: E402
from mrisynth.config import AugmentParams, DataParams  # noqa: E402
from mrisynth.core import arms  # noqa: E402

STAGES = ("preprocess", "tune", "train_gan", "augment", "train_segmenter", "gan_usefulness", "evaluate")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _scripts(quick: bool) -> dict[str, list[str]]:
    if quick:
        return {"data": ["bench_data.py", "--cases", "56"], "gan": ["bench_gan.py", "--size", "128", "--steps", "2", "--repeats", "2"],
                "segmenter": ["bench_segmenter.py", "--steps", "10", "--repeats", "2"],
                "segmenter_paper": ["bench_segmenter.py", "--profile", "paper", "--size", "128", "--steps", "4", "--repeats", "2"],
                "segmenter_runs": ["bench_segmenter_runs.py", "--size", "64", "--runs", "2", "--epochs", "1", "--repeats", "1"],
                "serving": ["bench_serving.py", "--images", "16", "--requests", "8", "--repeats", "2"]}
    return {"data": ["bench_data.py"], "gan": ["bench_gan.py"], "segmenter": ["bench_segmenter.py"],
            "segmenter_paper": ["bench_segmenter.py", "--profile", "paper", "--size", "256", "--steps", "12", "--repeats", "5"],
            "segmenter_runs": ["bench_segmenter_runs.py", "--runs", "6"], "serving": ["bench_serving.py"]}


# The paper profile's segmenter work (Makefile PAPER_OVERRIDES): every arm x seeds 1-3, 50 epochs, one pass
# over each arm's images per epoch: the training split for the real-only arm, factor x that for the others
# (30 / 300 / 300 / 300 images at data.train 30, augment.factor 10).
PAPER_ARMS = ("none", "classic", "gan", "classic+gan")  # the Makefile's paper profile trains no copy-paste control
PAPER_ARM_IMAGES = {arm: DataParams().train * (1 if arms.TABLE[arm].real_only else AugmentParams().factor) for arm in PAPER_ARMS}
PAPER_SEEDS, PAPER_EPOCHS = 3, 50


def paper_segmenter_minutes(images_per_s: float) -> dict:
    """Lower bound of the paper profile's segmenter stage from the measured train-step rate (no
    validation, loading or registration counted)."""
    images = sum(PAPER_ARM_IMAGES.values()) * PAPER_SEEDS * PAPER_EPOCHS
    return {"paper_segmenter_train_images": images, "paper_segmenter_min_lower_bound": round(images / images_per_s / 60, 1)}


def stage_resources(folder: Path = Path("work/resources")) -> dict:
    found = {}
    for stage in STAGES:
        path = folder / f"{stage}.json"
        if path.is_file():
            found[stage] = json.loads(path.read_text())
    return found


def _ratio(figures: dict, prefix: str = "ratio") -> str:
    """`2.5x`, or with its spread over interleaved rounds when recorded: `2.5x (2.3-2.7, 5 rounds)`, flagged
    `crosses 1` when the min-max includes 1."""
    if f"{prefix}_min" not in figures:
        return f"{figures[prefix]}x"
    return common.spread({"ratio": figures[prefix], "ratio_min": figures[f"{prefix}_min"], "ratio_max": figures[f"{prefix}_max"],
                          "rounds": figures[f"{prefix}_rounds"], "crosses_1": figures[f"{prefix}_crosses_1"]})


def table(result: dict) -> str:
    """The benchmark table of docs/benchmarks.md, generated from reports/bench.json."""
    b = result["benchmarks"]
    rows = []
    if "gan" in b:
        g = b["gan"]
        for batch in (1, 4):
            if f"ours_batch{batch}_images_per_s" in g:
                rows.append((f"GAN train step, G+D {g['size']} px, batch {batch} ({g['ours_precision']})", f"{g[f'ours_batch{batch}_images_per_s']} img/s",
                             f"tutorial step, fp32, batch 1: {g['reference_images_per_s']} img/s", _ratio(g, f"ratio_batch{batch}")))
    if "segmenter" in b:
        s = b["segmenter"]
        rows.append((f"segmenter train step, {s['size']} px, batch {s['batch']} ({s['ours_precision']})", f"{s['ours_images_per_s']} img/s",
                     f"plain model.fit, fp32: {s['reference_images_per_s']} img/s", _ratio(s)))
    if "segmenter_paper" in b:
        s = b["segmenter_paper"]
        rows.append((f"segmenter train step, paper U-Net ({s['base_filters']} filters) {s['size']} px, batch {s['batch']} ({s['ours_precision']})",
                     f"{s['ours_images_per_s']} img/s", f"plain model.fit, fp32: {s['reference_images_per_s']} img/s", _ratio(s)))
        rows.append((f"paper profile segmenter stage, lower bound ({len(PAPER_ARMS)} arms x {PAPER_SEEDS} seeds x {PAPER_EPOCHS} epochs)",
                     f"{s['paper_segmenter_min_lower_bound']} min for {s['paper_segmenter_train_images']} training images", "budget for all of make paper: 60 min", ""))
    if "segmenter_runs" in b:
        s = b["segmenter_runs"]
        rows.append((f"segmenter stage, {s['runs']} runs of {s['epochs']} x {s['steps_per_epoch']} updates, {s['size']} px: {s['workers']} workers "
                     f"x {s['threads_per_worker']} thread(s), pool start included", f"{s['ours_images_per_s']} img/s",
                     f"one run at a time, default threads: {s['reference_images_per_s']} img/s", _ratio(s)))
    if "serving" in b:
        v = b["serving"]
        rows.append((f"generation (augment render), {v['size']} px", f"{v['generation_images_per_s']} img/s",
                     f"model.predict: {v['reference_predict_images_per_s']} img/s", _ratio(v, "generation_ratio")))
        for c in (1, 4):
            rows.append((f"served generator, 1 image/request, concurrency {c}",
                         f"p50 {v[f'serving_c{c}_p50_ms']} ms, p95 {v[f'serving_c{c}_p95_ms']} ms, {v[f'serving_c{c}_requests_per_s']} req/s",
                         f"bare predict: {v['direct_predict_ms']} ms", f"{round(v[f'serving_c{c}_p50_ms'] / v['direct_predict_ms'], 2)}x latency"))
        if "serving_c4_c1_ratio" in v:
            rows.append(("served generator, throughput at concurrency 4 / concurrency 1", f"{v['serving_c4_c1_ratio']}x",
                         "target >= 1.8x", _ratio(v, "serving_c4_c1_ratio")))
    if "data" in b:
        d = b["data"]
        rows.append(("phantom v2, make + write one full case, one core", f"{d['phantom_v2_s_per_case']} s/case",
                     f"phantom v1: {d['phantom_v1_s_per_case']} s/case (budget {d['phantom_budget_s']} s)", f"{d['ratio_v2_to_v1']}x time"))
        rows.append((f"import {d['import_cases']} full-size cases, {d['import_workers']} workers", f"{d['import_cases_per_s']} cases/s ({d['import_s']} s)",
                     f"budget {d['import_budget_s']} s", ""))
    lines = ["| figure | mrisynth | reference (same run) | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b_} | {c} | {d_} |" for a, b_, c, d_ in rows]
    resources = result.get("stage_resources", {})
    if resources:
        lines += ["", "| stage (last `dvc repro` here) | wall | CPU time | peak RSS |", "|---|---|---|---|"]
        lines += [f"| {s} | {r['wall_s']} s | {r['cpu_s']} s | {r['peak_rss_mib']} MiB |" for s, r in resources.items()]
    load = result.get("load_at_start")
    load_text = f"; load average at start {load['load_1min']} / {load['load_5min']} / {load['load_15min']} (1/5/15 min, {load['cpu_count']} cores)" if load else ""
    lines += ["", f"Machine: {result['machine']}; {result['finished']}{load_text}; medians of the rounds each script states; "
              f"a ratio's brackets are its min-max over rounds in which ours and the reference were timed one after the "
              f"other, order alternating (`reports/bench.json` has every figure, its batch, size, precision and rounds)."]
    return "\n".join(lines)


def update_readme(text: str, readme: Path = Path("docs/benchmarks.md")) -> bool:
    content = readme.read_text()
    if START not in content or END not in content:
        return False
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return True


def log_to_mlflow(result: dict) -> str:
    from mrisynth.config import load_params
    from mrisynth.io import tracking

    tracking.configure(load_params("params.yaml").train_gan.experiment)
    flat = {f"{name}.{k}": v for name, figures in result["benchmarks"].items() for k, v in figures.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat |= {f"stage.{s}.{k}": r[k] for s, r in result.get("stage_resources", {}).items() for k in ("wall_s", "cpu_s", "peak_rss_mib")}
    with tracking.stage_run("bench", tracking.run_tags("bench") | {"machine": result["machine"], "quick": str(result["quick"])}) as run:
        run.log_metrics(flat)
        run.log_dict(result, "bench.json")
        return run.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(paths.BENCH))
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--table-from", metavar="BENCH_JSON", help="only regenerate the docs/benchmarks.md table from this bench.json")
    args = parser.parse_args()
    if args.table_from:
        update_readme(table(json.loads(Path(args.table_from).read_text())))
        return
    work = Path("work/bench")
    work.mkdir(parents=True, exist_ok=True)
    benchmarks, failed = {}, []
    load = common.load_average()  # a busy machine slows every figure: the table says how busy it was
    for name, command in _scripts(args.quick).items():
        target = work / f"{name}.json"
        target.unlink(missing_ok=True)
        started = time.perf_counter()
        print(f"== bench {name}: {' '.join(command)}", flush=True)
        flag = "--out" if name.startswith("segmenter") else "--json"
        code = subprocess.call([sys.executable, str(HERE / command[0]), *command[1:], flag, str(target)])
        if code or not target.is_file():
            failed.append(f"{name} (exit {code})")
            continue
        benchmarks[name] = json.loads(target.read_text()) | {"bench_seconds": round(time.perf_counter() - started, 1)}
        if name == "segmenter_paper":
            benchmarks[name] |= paper_segmenter_minutes(benchmarks[name]["ours_images_per_s"])
    result = {"machine": common.machine(), "finished": time.strftime("%Y-%m-%d %H:%M %Z"), "quick": args.quick, "load_at_start": load,
              "benchmarks": benchmarks, "stage_resources": stage_resources(), "failed": failed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if not args.quick and not failed and update_readme(table(result)):
        print("docs/benchmarks.md: benchmark table regenerated")
    if not args.no_mlflow:
        try:
            print(f"MLflow run `bench`: {log_to_mlflow(result)}")
        except Exception as exc:  # noqa: BLE001 - the figures are on disk already; say why they are not in MLflow
            failed.append(f"MLflow logging ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""The benchmark plumbing (not the timings): stage resource records, bench.json -> the table in docs/benchmarks.md."""
import json
import sys
from pathlib import Path

import pytest

from mrisynth.stages import record_resources

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run_all  # noqa: E402


def test_record_resources_writes_wall_cpu_and_peak_memory(tmp_path):
    record = record_resources("train_gan", 12.34, tmp_path)
    saved = json.loads((tmp_path / "train_gan.json").read_text())
    assert saved == record
    assert saved["stage"] == "train_gan" and saved["wall_s"] == 12.3
    assert saved["peak_rss_mib"] > 10  # this Python process holds more than 10 MiB
    assert saved["cpu_s"] >= 0


@pytest.mark.parametrize(("self_kib", "children_kib", "expected_mib"), [
    (100 * 1024, 50 * 1024, 1000.0),    # this process (100 MiB) + workers 500 + 400 MiB
    (100 * 1024, 2000 * 1024, 2000.0),  # one child alone held more than all of them together
])
def test_record_resources_adds_the_peaks_of_workers_that_ran_beside_the_stage(tmp_path, monkeypatch, self_kib, children_kib, expected_mib):
    import resource
    import types

    import mrisynth.stages as stages

    def usage(who):
        return types.SimpleNamespace(ru_utime=1.0, ru_stime=0.5, ru_maxrss=self_kib if who == resource.RUSAGE_SELF else children_kib)

    monkeypatch.setattr(stages.resource, "getrusage", usage)
    monkeypatch.setattr(stages, "_WORKER_PEAKS", {})
    stages.note_worker_peak_rss(101, 500 * 1024)
    stages.note_worker_peak_rss(101, 300 * 1024)   # a later, lower report of the same worker changes nothing
    stages.note_worker_peak_rss(102, 400 * 1024)
    record = record_resources("train_segmenter", 1.0, tmp_path)
    assert record["peak_rss_mib"] == expected_mib and record["cpu_s"] == 3.0


RESULT = {
    "machine": "x86_64, 2 cores", "finished": "2026-11-27 15:00 UTC", "quick": False, "failed": [],
    "benchmarks": {
        "gan": {"size": 256, "ours_precision": "mixed_bfloat16", "reference_images_per_s": 1.0,
                "ours_batch1_images_per_s": 1.5, "ours_batch4_images_per_s": 2.5, "ratio_batch1": 1.5, "ratio_batch4": 2.5},
        "segmenter": {"size": 128, "batch": 8, "ours_precision": "mixed_bfloat16", "ours_images_per_s": 30.0,
                      "reference_images_per_s": 20.0, "ratio": 1.5},
    },
    "stage_resources": {"train_gan": {"wall_s": 100.0, "cpu_s": 180.0, "peak_rss_mib": 2048.0}},
}


def test_table_lists_each_figure_next_to_its_reference():
    text = run_all.table(RESULT)
    assert "| GAN train step, G+D 256 px, batch 4 (mixed_bfloat16) | 2.5 img/s | tutorial step, fp32, batch 1: 1.0 img/s | 2.5x |" in text
    assert "| segmenter train step, 128 px, batch 8 (mixed_bfloat16) | 30.0 img/s | plain model.fit, fp32: 20.0 img/s | 1.5x |" in text
    assert "| train_gan | 100.0 s | 180.0 s | 2048.0 MiB |" in text
    assert "serving" not in text  # absent benchmarks leave no empty rows


def test_readme_table_replaced_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{run_all.START}\nold table\n{run_all.END}\nafter\n")
    assert run_all.update_readme("new table", readme)
    assert readme.read_text() == f"# title\nbefore\n{run_all.START}\nnew table\n{run_all.END}\nafter\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not run_all.update_readme("x", plain) and plain.read_text() == "no markers\n"


@pytest.mark.parametrize("stage", run_all.STAGES)
def test_every_pipeline_stage_is_benchmarked(stage):
    dvc = (Path(__file__).resolve().parents[2] / "dvc.yaml").read_text()
    assert f"\n  {stage}:\n" in dvc


def test_paper_segmenter_lower_bound_is_images_over_rate():
    # (30 + 300 + 300 + 300) images x 3 seeds x 50 epochs = 139 500 images; at 10 images/s: 13 950 s = 232.5 min
    assert run_all.paper_segmenter_minutes(10.0) == {"paper_segmenter_train_images": 139500, "paper_segmenter_min_lower_bound": 232.5}


def test_interleaved_times_both_in_every_round_and_reports_the_spread():
    import common

    clock, calls = [0.0], []

    def timed(name, seconds):
        def run():
            calls.append(name)
            clock[0] += seconds.pop(0)
        return run

    # rounds: ours 1 s / ref 2 s -> 2.0; then (order swapped) ref 2 s / ours 4 s -> 0.5; then ours 1 s / ref 1 s -> 1.0
    ours, reference = timed("ours", [9.0, 1.0, 4.0, 1.0]), timed("ref", [9.0, 2.0, 2.0, 1.0])
    figure = common.interleaved(ours, reference, 3, 10.0, clock=lambda: clock[0])
    assert calls == ["ours", "ref", "ours", "ref", "ref", "ours", "ours", "ref"]  # warm-ups, then the order alternates
    assert figure == {"ours_per_s": 10.0, "reference_per_s": 5.0, "ratio": 1.0, "ratio_min": 0.5, "ratio_max": 2.0,
                      "rounds": 3, "crosses_1": True}
    assert common.spread(figure) == "1.0x (0.5-2.0, 3 rounds; crosses 1: not shown)"
    assert common.ratio_keys("generation_ratio", figure)["generation_ratio_crosses_1"] is True


def test_table_shows_each_ratio_with_its_spread_and_the_load():
    result = json.loads(json.dumps(RESULT))
    result["benchmarks"]["segmenter"] |= {"ratio_min": 1.4, "ratio_max": 1.6, "ratio_rounds": 5, "ratio_crosses_1": False}
    result["load_at_start"] = {"load_1min": 0.5, "load_5min": 0.4, "load_15min": 0.3, "cpu_count": 2}
    text = run_all.table(result)
    assert "| 30.0 img/s | plain model.fit, fp32: 20.0 img/s | 1.5x (1.4-1.6, 5 rounds) |" in text
    assert "load average at start 0.5 / 0.4 / 0.3" in text

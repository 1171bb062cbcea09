"""`make sweep` chooses the default profile on the validation split: its variants' pipelines stop before the stages
that read the test split (the scorer itself is checked on a real workspace in test_dvc_repro.py)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
READS_TEST = {"gan_usefulness", "evaluate"}   # the stages that score the test split (for reporting)


def _sweep_recipe() -> str:
    """The `sweep` target's recipe in the Makefile (up to the next blank line)."""
    return (REPO / "Makefile").read_text().split("\nsweep:", 1)[1].split("\n\n", 1)[0]


def _upstream(stages: dict, target: str) -> set[str]:
    """`target` and every stage whose outputs it depends on, transitively (dvc.yaml's deps vs outs)."""
    def outs(name):
        return {next(iter(o)) if isinstance(o, dict) else o for o in stages[name].get("outs", [])}

    found, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        deps = set(stages[name].get("deps", []))
        todo += [other for other in stages if other not in found and outs(other) & deps]
    return found


def test_the_sweep_stops_before_the_stages_that_read_the_test_split():
    runs = re.findall(r"dvc exp run [^>]*", _sweep_recipe())
    assert runs and all(run.split()[-1] == "$(SWEEP_TARGETS)" for run in runs), runs
    makefile = (REPO / "Makefile").read_text()
    targets = re.findall(r"^SWEEP_TARGETS := (.*)$", makefile, re.M)
    # the small protocol runs train_segmenter and its upstream; the full one exactly augment and train_segmenter (-s)
    assert sorted(targets) == ["-s augment train_segmenter", "train_segmenter"], targets
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # resolve ${section.key} in deps/outs with params.yaml, as DVC does
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def resolve(value):
        return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(params[m[1]][m[2]]), value)

    for stage in stages.values():
        stage["deps"] = [resolve(d) for d in stage.get("deps", [])]
        stage["outs"] = [resolve(o) if isinstance(o, str) else {resolve(next(iter(o))): None} for o in stage.get("outs", [])]
    ran = _upstream(stages, "train_segmenter")
    assert ran == {"preprocess", "tune", "train_gan", "augment", "train_segmenter"}, f"the sweep would also run {ran & READS_TEST}"


def test_no_stage_the_sweep_runs_after_preprocess_names_the_test_split():
    """preprocess writes all three splits; tune, train_gan, augment and train_segmenter must never load `test`."""
    for stage in ("tune", "train_gan", "augment", "train_segmenter"):
        source = (REPO / "src" / "mrisynth" / "stages" / f"{stage}.py").read_text()
        assert not re.search(r"""["']test["']""", source), f"stages/{stage}.py names the test split"


def _run_sweep(tmp_path: Path, variants: str, protocol: str = "full") -> tuple[subprocess.CompletedProcess, list[str]]:
    """`make sweep` in a copy of the Makefile and params.yaml, with `dvc` and `python` replaced by stubs on the recipe's
    PATH (its VENV/bin): each stub logs a checksum of the params.yaml it found and its arguments; the dvc stub then
    appends to params.yaml, as a workspace `dvc exp run` leaves its -S values applied. `-o data` skips the data target
    (and set-up). make runs without the MAKEFLAGS of a surrounding `make test` and without sweep-* from the environment.
    Returns make's result and the log lines: `<tool> <checksum> <arguments>`."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path)
    stubs = tmp_path / "venv" / "bin"
    stubs.mkdir(parents=True)
    log = 'echo "$(basename "$0") $(cksum < params.yaml | cut -d" " -f1) $*" >> calls.log\n'
    (stubs / "dvc").write_text("#!/bin/sh\n" + log + 'echo "leftover: 1" >> params.yaml\n')
    (stubs / "python").write_text("#!/bin/sh\n" + log)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES") and not k.startswith(("sweep-", "SWEEP_"))}
    done = subprocess.run(["make", "-s", "-o", "data", "sweep", "VENV=venv", f"SWEEP_VARIANTS={variants}",
                           f"SWEEP_PROTOCOL={protocol}"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    calls = tmp_path / "calls.log"
    return done, calls.read_text().splitlines() if calls.exists() else []


def _overrides(tmp_path: Path, name: str) -> str:
    """The value of the Makefile variable sweep-<name>, as make expands it."""
    done = subprocess.run(["make", "-s", "--no-print-directory", "--eval", f"show-it: ; @echo '$(sweep-{name})'", "show-it"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_each_variant_runs_its_own_overrides_from_the_same_params_and_params_are_restored(tmp_path):
    """Every defined `sweep-<name>` is dispatched with its own -S set; each variant starts from the saved params.yaml
    (the 2026-12-07 sweep's second variant silently inherited the first's feature_matching before the restore), and
    params.yaml is restored afterwards."""
    original = (REPO / "params.yaml").read_text()
    done, calls = _run_sweep(tmp_path, "seg-long real-half filter")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [c.split(" ", 2) for c in calls if c.startswith("dvc ")]
    assert [r[2] for r in runs] == [
        "exp run -f -n seg-long -S train_segmenter.epochs=40 -S train_segmenter.patience=8 -s augment train_segmenter",
        "exp run -f -n real-half -S train_segmenter.real_share=0.5 -s augment train_segmenter",
        "exp run -f -n filter -S augment.filter_dice=0.6 -S augment.filter_pool=2.0 -s augment train_segmenter"]
    saved = {r[1] for r in runs}
    assert len(saved) == 1, "a variant started from another variant's params.yaml"
    summaries = [c.split(" ", 2) for c in calls if c.startswith("python ")]
    assert [s[2] for s in summaries] == ["pipelines/sweep_summary.py " + v for v in ("seg-long", "real-half", "filter")] + [
        "pipelines/sweep_summary.py"]
    # each variant's scorer reads the params its experiment left (scored before the next variant's restore)
    assert all(s[1] not in saved for s in summaries[:3])
    assert (tmp_path / "params.yaml").read_text() == original


def test_the_small_protocol_adds_its_seeds_and_arms_and_stops_at_train_segmenter(tmp_path):
    done, calls = _run_sweep(tmp_path, "paper", protocol="small")
    assert done.returncode == 0, done.stdout + done.stderr
    run = next(c for c in calls if c.startswith("dvc "))
    assert "-S train_segmenter.seeds=[1,2] -S train_segmenter.arms=[none,classic,gan,classic+gan]" in run
    assert "-S train_gan.generator=pix2pix" in run and run.endswith(" train_segmenter") and " -s " not in run


def test_an_unknown_variant_stops_the_sweep_naming_the_defined_ones(tmp_path):
    done, calls = _run_sweep(tmp_path, "seg-long no-such-variant real-half")
    assert done.returncode != 0
    defined = sorted(re.findall(r"^sweep-([\w-]+) :=", (REPO / "Makefile").read_text(), re.M))
    assert f"unknown variant no-such-variant (defined: {' '.join(defined)})" in done.stdout
    assert [c.split()[6] for c in calls if c.startswith("dvc ")] == ["seg-long"]   # real-half never ran
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_every_variable_named_sweep_something_is_a_runnable_variant(tmp_path):
    """The case branches are generated from the `sweep-<name> :=` variables: a variant defined in the Makefile runs."""
    defined = re.findall(r"^sweep-([\w-]+) :=", (REPO / "Makefile").read_text(), re.M)
    assert {"seg-long", "real-half", "filter", "paper", "default"} <= set(defined)
    done, calls = _run_sweep(tmp_path, " ".join(defined))
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [c.split(" ", 2)[2] for c in calls if c.startswith("dvc ")]
    assert [run.split()[4] for run in runs] == defined
    for name, run in zip(defined, runs):   # each with its own overrides, as make expands sweep-<name> (quotes removed by eval)
        assert run == f"exp run -f -n {name} {_overrides(tmp_path, name).replace(chr(39), '')} -s augment train_segmenter", name


def test_a_sweep_variable_from_the_environment_or_command_line_is_not_a_variant(tmp_path):
    _run_sweep(tmp_path, "seg-long")   # sets up the copy and stubs
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "-s", "-o", "data", "sweep", "VENV=venv", "SWEEP_VARIANTS=from-cli", "sweep-from-cli=-S x=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "unknown variant from-cli" in done.stdout


def _compare_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("sweep_compare", REPO / "pipelines" / "sweep_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(none, classic, gan, worst_et, gain):
    runs = {"none": {"1": {"dice_tumour": none, "dice_WT": 0.9, "dice_TC": 0.8, "dice_ET": 0.7}},
            "classic": {"1": {"dice_tumour": classic, "dice_WT": 0.9, "dice_TC": 0.8, "dice_ET": worst_et}}}
    return {"val_dice_tumour_none": none, "val_dice_tumour_classic": classic, "val_dice_tumour_gan": gan,
            "val_runs": runs, "val_gain_beyond_classic": gain, "val_gan_train_dice_tumour": 0.6,
            "val_real_train_dice_tumour": 0.8}


def test_sweep_compare_figures_by_hand():
    """Arms in both records only (the variant lacks gan); hand-computed: changes +0.10 and -0.02, mean +0.04."""
    compare = _compare_module().compare
    base = _record(0.70, 0.80, 0.75, worst_et=0.40, gain=[0.01, -0.02, 0.04])
    variant = _record(0.80, 0.78, None, worst_et=0.60, gain=[0.03, 0.00, 0.06])
    figures = compare(base, variant)
    assert list(figures["arms"]) == ["none", "classic"]
    assert figures["arms"]["none"][2] == pytest.approx(0.10) and figures["arms"]["classic"][2] == pytest.approx(-0.02)
    assert figures["mean"] == pytest.approx((0.75, 0.79, 0.04))
    assert figures["worst_change"] == pytest.approx(-0.02)
    assert figures["losing"] == (([("classic", "1", "ET", 0.40)], 2), ([], 2))   # 0.60 is not below 0.5
    old = dict(base, val_runs=None)   # records written before 2026-12-07 have no per-run scores: unknown, not 0
    assert compare(old, variant)["losing"][0] is None
    assert figures["questions"]["GAN beyond classic"] == ([0.01, -0.02, 0.04], [0.03, 0.00, 0.06])
    assert figures["gan_train_ratio"] == pytest.approx((0.75, 0.75))


def test_sweep_compare_cli_on_the_committed_records(capsys):
    """The committed baseline and seg-long records: the table docs/synthetic-data.md quotes (mean of 5 arms +0.037,
    class-losing runs 1 -> 0)."""
    module = _compare_module()
    assert module.main([str(REPO / "reports" / "sweep_baseline.json"), str(REPO / "reports" / "sweep" / "seg-long.json")]) == 0
    out = capsys.readouterr().out
    assert "| mean of 5 arms | 0.798 | 0.836 | +0.037 |" in out and "| class-losing runs (a region < 0.5), these arms | 1 of 35 | 0 of 35 | |" in out
    assert module.main(["reports/no-such.json", "reports/sweep_baseline.json"]) == 2

"""`make sweep` chooses the default profile on the validation split: its variants' pipelines stop before the stages
that read the test split (the scorer itself is checked on a real workspace in test_dvc_repro.py)."""
import re
from pathlib import Path

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


def test_every_variant_starts_from_the_same_params():
    """A workspace experiment leaves its -S values in params.yaml: the recipe restores the saved params.yaml before
    every variant and on any exit (the 2026-12-07 sweep's second variant silently inherited the first's
    feature_matching without it)."""
    recipe = _sweep_recipe()
    save, trap, loop = (recipe.index(text) for text in ("cp params.yaml work/sweep-params.yaml",
                                                         "trap 'cp work/sweep-params.yaml params.yaml' EXIT", "for v in"))
    restore, run = recipe.index("cp work/sweep-params.yaml params.yaml;", loop), recipe.index("dvc exp run", loop)
    assert save < trap < loop < restore < run


def test_every_defined_variant_can_be_run_and_every_runnable_one_is_defined():
    """Each `sweep-<name> :=` override set has its `<name>)` branch in the recipe's case statement and the other way
    round: a variant added to one list only would be 'unknown variant' or a silent no-op."""
    makefile = (REPO / "Makefile").read_text()
    defined = set(re.findall(r"^sweep-([\w-]+) :=", makefile, re.M))
    branches = dict(re.findall(r"([\w-]+)\) o=\"\$\(sweep-([\w-]+)\)\"", _sweep_recipe()))
    assert defined and set(branches) == defined, (sorted(defined ^ set(branches)))
    assert all(name == target for name, target in branches.items()), branches   # `x)` runs sweep-x, not another's set
    assert {"seg-long", "real-half", "filter"} <= defined

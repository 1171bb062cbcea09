"""The arms table (mrisynth.core.arms) is the one place an arm is defined: every reader agrees with it."""
import json
from pathlib import Path

import pandas as pd
import pytest

from mrisynth.cli import build_parser
from mrisynth.config import Params
from mrisynth.core import arms

REPO = Path(__file__).resolve().parents[2]

MANIFEST = pd.DataFrame({"kind": ["real", "real", "classic", "classic", "gan", "gan", "paste"],
                         "in_mix": [True, True, True, False, True, False, False]})


@pytest.mark.parametrize("name, expected", [
    ("none", [True, True, False, False, False, False, False]),
    ("classic", [True, True, True, True, False, False, False]),
    ("gan", [True, True, False, False, True, True, False]),
    ("classic+gan", [True, True, True, False, True, False, False]),  # the in_mix subset, not every row
    ("paste", [True, True, False, False, False, False, True]),  # the copy-paste control: real + pasted tumours
])
def test_each_arm_selects_its_rows_of_the_manifest(name, expected):
    assert arms.get(name).rows(MANIFEST).tolist() == expected


def test_generator_use_and_slugs():
    assert [a for a in arms.ARMS if arms.uses_generator(a)] == ["gan", "classic+gan"]
    assert arms.arm_slug("classic+gan") == "classic_gan"
    with pytest.raises(ValueError, match="expected one of"):
        arms.get("mixup")


def test_kinds_wanted_counts_full_arms_only():
    assert arms.kinds_wanted(("none", "classic+gan")) == {"real"}
    assert arms.kinds_wanted(("none", "classic", "gan", "classic+gan")) == {"real", "classic", "gan"}
    assert arms.kinds_wanted(("none", "paste")) == {"real", "paste"}


def test_comparisons_name_arms_of_the_table():
    assert all(base in arms.TABLE and aug in arms.TABLE for base, aug, _ in arms.COMPARISONS)
    assert arms.BEYOND_CLASSIC[:2] == ("classic", "classic+gan")
    assert arms.comparison("GAN beyond copy-paste")[:2] == ("paste", "gan")  # does the generator add anything beyond pasting?
    assert arms.comparisons_for(("none", "classic+gan")) == [("none", "classic+gan", "Classic+GAN vs none")]


def test_readers_use_the_table():
    assert Params().train_segmenter.arms == arms.ARMS
    export = next(a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions if a.dest == "arm")
    assert tuple(export.choices) == arms.ARMS
    suite = json.loads((REPO / "expectations" / "augmented.json").read_text())
    kind_sets = [e["kwargs"]["value_set"] for e in suite["expectations"] if e["kwargs"].get("column") == "kind"
                 and e["type"] == "expect_column_values_to_be_in_set"]
    assert kind_sets == [list(arms.SAMPLE_KINDS)]
    assert set().union(*(a.kinds for a in arms.TABLE.values())) == set(arms.SAMPLE_KINDS)

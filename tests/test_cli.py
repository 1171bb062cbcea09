"""The `mrisynth` CLI end to end (as a user runs it) and the versioned default data."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO

CLI = [sys.executable, "-m", "mrisynth.cli"]


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_phantom_import_validate_end_to_end(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "data"
    r = _run("data", "phantom", raw, "--cases", 3, "--seed", 11, "--workers", 1)
    assert r.returncode == 0, r.stderr
    r = _run("data", "import", raw, "--out", out, "--train", 1, "--val", 1, "--test", 1, "--size", 64, "--fit", "resize", "--workers", 1)
    assert r.returncode == 0, r.stderr
    assert "imported 3 slices (train 1, val 1, test 1)" in r.stdout
    r = _run("validate", out, "--docs", tmp_path / "docs")
    assert r.returncode == 0 and "PASSED" in r.stdout
    # a second import into the same folder is refused, with one readable line and no traceback
    r = _run("data", "import", raw, "--out", out, "--train", 1, "--val", 1, "--test", 1, "--size", 64, "--workers", 1)
    assert r.returncode == 2 and "already holds data" in r.stderr and "Traceback" not in r.stderr


# DVC's listings of data/ (every file and its md5), one per NumPy SIMD level that rebuilt the default data: NumPy
# picks float32 exp/log/power kernels by CPU (AVX2 vs AVX-512), so a few pixels of some images differ in the last
# digits between CPU families (masks never do); data.dvc records one of them (docs/data.md: Versioned data).
LISTINGS = {path.stem: path for path in sorted((Path(__file__).parent / "data" / "listings").glob("*.json"))}
SIMD_LEVELS = ("AVX512_SPR", "AVX512_ICL", "X86_V4", "X86_V3", "X86_V2")  # NumPy's x86 dispatch targets, highest first
FULL_DATA_CHECK = "MRISYNTH_FULL_DATA_CHECK"


def _recorded_data() -> dict:
    return yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]


def _listing(path: Path) -> dict[str, str]:
    return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_bytes())}


def simd_level() -> str:
    """The highest NumPy SIMD dispatch level this CPU supports (a listing's name), e.g. X86_V3 (AVX2)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return next((level for level in SIMD_LEVELS if __cpu_features__.get(level)), "other")


def test_data_dvc_records_one_of_the_committed_listings_and_they_differ_in_images_only():
    """data.dvc's hash is the md5 of one committed listing (byte for byte DVC's listing of data/), so the
    case-by-case check below compares with exactly what data.dvc versions; the listings of other SIMD levels
    name the same files with the same masks, manifest and card."""
    recorded = _recorded_data()
    hashes = {level: hashlib.md5(path.read_bytes()).hexdigest() + ".dir" for level, path in LISTINGS.items()}
    cache = f".dvc/cache/files/md5/{recorded['md5'][:2]}/{recorded['md5'][2:]}"
    assert recorded["md5"] in hashes.values(), (
        f"data.dvc's {recorded['md5']} is none of tests/data/listings/*.json: after `dvc add data`, copy {cache} to "
        f"tests/data/listings/<this machine's level: {simd_level()}>.json")
    listings = {level: _listing(path) for level, path in LISTINGS.items()}
    first = next(iter(listings.values()))
    assert all(len(listing) == recorded["nfiles"] and listing.keys() == first.keys() for listing in listings.values())
    for relpath in first:
        if "/images/" not in relpath:
            assert len({listing[relpath] for listing in listings.values()}) == 1, f"{relpath} differs between SIMD levels"


@pytest.mark.slow
def test_default_data_recreation_matches_data_dvc_case_by_case(tmp_path):
    """`mrisynth data default`'s recipe (phantom case, then import) rebuilds, byte for byte, the files recorded
    for the first and last case of every split: masks as data.dvc records them (on any CPU), images as the
    listing of this CPU's SIMD level records them (skipped where no listing was recorded); and every case lies
    in the split the import's seeded order puts it in. (Each case's slice depends only on the case: the split
    only names its folder.) The whole folder, manifest and card included: make data-check."""
    from mrisynth.config import load_params
    from mrisynth.data.ingest import _phantom_case, default_recipe, import_brats
    from mrisynth.io.manifest import SPLITS

    recorded_md5 = _recorded_data()["md5"]
    listing = next(_listing(p) for p in LISTINGS.values() if hashlib.md5(p.read_bytes()).hexdigest() + ".dir" == recorded_md5)
    level = simd_level()
    images_listing = _listing(LISTINGS[level]) if level in LISTINGS else None
    data = load_params(REPO / "params.yaml").data
    split_of = {path.split("/")[-1][: -len(".tif")]: path.split("/")[0] for path in listing if path.split("/")[1:2] == ["images"]}
    chosen = [ids[i] for split in SPLITS if (ids := sorted(c for c, s in split_of.items() if s == split)) for i in (0, -1)]
    assert {split_of[c] for c in chosen} == {"train", "val", "test"} and len(set(chosen)) == 6
    # which case went to which split: the import's seeded order over every phantom case, cut 30 / 20 / 50
    ids = [f"BraTS20_Training_{i + 1:03d}" for i in range(data.phantom_cases)]
    order = [ids[i] for i in np.random.default_rng(data.seed).permutation(len(ids))]
    cuts = np.cumsum([0, data.train, data.val, data.test])
    assert split_of == {c: split for split, a, b in zip(("train", "val", "test"), cuts, cuts[1:]) for c in order[a:b]}
    raw = tmp_path / "raw"
    for case_id in chosen:  # BraTS20_Training_007 is the phantom's case index 6
        _phantom_case((raw, data.seed, int(case_id.rsplit("_", 1)[1]) - 1, data.phantom_version))
    _, options, _ = default_recipe(data)
    import_brats(raw, tmp_path / "data", {"train": len(chosen), "val": 0, "test": 0}, data.seed, options)
    for case_id in chosen:
        for kind, expected in (("masks", listing), ("images", images_listing)):
            if expected is None:
                continue
            rebuilt = hashlib.md5((tmp_path / "data" / "train" / kind / f"{case_id}.tif").read_bytes()).hexdigest()
            assert rebuilt == expected[f"{split_of[case_id]}/{kind}/{case_id}.tif"], (
                f"{case_id} {kind}: the rebuilt bytes differ from the listing of {'data.dvc' if kind == 'masks' else level}")
    if images_listing is None:
        pytest.skip(f"masks checked; no image listing recorded for this CPU's NumPy SIMD level {level} (tests/data/listings)")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(FULL_DATA_CHECK), reason=f"the whole folder takes ~7 min: `make data-check` ({FULL_DATA_CHECK}=1)")
def test_default_data_recreation_matches_data_dvc(tmp_path):
    """`mrisynth data default` rebuilds exactly the bytes whose hash data.dvc records (all 100 cases)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    r = _run("data", "default", "--out", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True)
    recorded = _recorded_data()
    rebuilt = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    assert rebuilt["md5"] == recorded["md5"] and rebuilt["nfiles"] == recorded["nfiles"]


# ---------------------------------------------------------------- what a user reads: --help, --version
def _parsers():
    """(command, parser) for `mrisynth` and every subcommand, nested ones included."""
    import argparse

    from mrisynth.cli import build_parser

    found, todo = [], [("mrisynth", build_parser())]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def test_every_option_has_help_and_shows_its_default():
    import argparse

    for name, parser in _parsers():
        text = " ".join(parser.format_help().split())  # unwrapped
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                option = max(action.option_strings, key=len)
                helped = " ".join(parser._get_formatter()._expand_help(action).split())
                assert "(default" in helped and helped in text, f"{name} {option}: default not shown: {helped!r}"


def test_help_shows_examples_that_parse():
    import shlex

    from mrisynth.cli import build_parser

    parsers = dict(_parsers())
    assert "Grow a small brain-MRI tumour dataset" in parsers["mrisynth"].format_help()
    assert "Errors meant for users" not in parsers["mrisynth"].format_help()  # the developer note is gone
    for name in ("mrisynth", "mrisynth data", "mrisynth validate", "mrisynth export", "mrisynth promote",
                 "mrisynth generate", "mrisynth serve", "mrisynth team"):
        help_text = parsers[name].format_help()
        assert "examples:" in help_text, name
        commands = [shlex.split(line, comments=True) for line in help_text.split("examples:")[1].splitlines()]
        commands = [words[1:] for words in commands if words and words[0] == "mrisynth"]
        assert commands, name
        for words in commands:  # every example is a command the parser accepts
            assert build_parser().parse_args(words).func, words
    assert "(default: 5001)" in parsers["mrisynth serve"].format_help()


def test_version_and_subcommand_help_as_a_user_runs_them():
    from importlib import metadata

    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mrisynth {metadata.version('mrisynth')}", r.stdout + r.stderr
    r = _run("generate", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--masks data/test/masks" in r.stdout

"""The `mrisynth` CLI end to end (as a user runs it) and the versioned default data."""
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_default_data_recreation_matches_data_dvc(tmp_path):
    """`mrisynth data default` rebuilds exactly the bytes whose hash data.dvc records."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    r = _run("data", "default", "--out", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True)
    recorded = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    rebuilt = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    assert rebuilt["md5"] == recorded["md5"] and rebuilt["nfiles"] == recorded["nfiles"]

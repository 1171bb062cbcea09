"""The `mrisynth` CLI end to end (as a user runs it), preprocess, and the versioned default data."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from mrisynth.io import arrays
from mrisynth.stages import preprocess

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


def _write_params(tmp_path: Path, data_dir: Path, size: int) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preprocess": {"data_dir": str(data_dir), "out_dir": str(tmp_path / "pre"), "image_size": size}}))
    return params


def test_preprocess_writes_arrays_and_stops_on_bad_data(tiny_brats, tmp_path, monkeypatch):
    from mrisynth.data.ingest import ImportOptions, import_brats

    data = tmp_path / "data"
    import_brats(tiny_brats, data, {"train": 4, "val": 2, "test": 2}, 1, ImportOptions(size=64))
    monkeypatch.chdir(tmp_path)
    assert preprocess.run(str(_write_params(tmp_path, data, 32))) == 0
    train = arrays.load_split(tmp_path / "pre", "train")
    assert train.images.shape == (4, 32, 32, 4) and train.conditioning.shape == (4, 32, 32, 4)
    assert set(np.unique(train.labels)) <= {0, 1, 2, 4}
    assert (tmp_path / "reports" / "preprocess.json").is_file()

    shutil.rmtree(tmp_path / "pre")
    (data / "val" / "masks").joinpath(sorted((data / "val" / "masks").iterdir())[0].name).unlink()
    assert preprocess.run(str(_write_params(tmp_path, data, 32))) == 1
    assert not (tmp_path / "pre").exists()


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

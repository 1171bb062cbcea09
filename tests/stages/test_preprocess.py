"""The preprocess stage: arrays from an imported dataset, and a stop (nothing written) on bad data."""
import shutil
from pathlib import Path

import numpy as np
import yaml

from conftest import REPO

from mrisynth.io import arrays
from mrisynth.stages import preprocess


def _write_params(tmp_path: Path, data_dir: Path, size: int) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # every section written out, as the stages require
    params["preprocess"] |= {"data_dir": str(data_dir), "out_dir": str(tmp_path / "pre"), "image_size": size}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


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

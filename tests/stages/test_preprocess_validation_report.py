"""preprocess writes the offline validation report (reports/data_validation.{html,md}) from the GX results:
every expectation of the suite with its result and observed value, also when validation stops the stage."""
import json
import re
import shutil

import tifffile
import yaml

from conftest import REPO

from mrisynth import paths
from mrisynth.stages import preprocess

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _params(tmp_path, data_dir) -> str:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["preprocess"] |= {"data_dir": str(data_dir), "out_dir": str(tmp_path / "pre"), "image_size": 32}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _rows(page: str) -> list[str]:
    return re.findall(r"<tr class=\"(?:pass|fail)\"><td>\d+</td>.*?</tr>", page, re.S)


def test_preprocess_writes_the_offline_validation_report_and_still_stops_on_bad_data(tiny_brats, tmp_path, monkeypatch):
    import pandas as pd

    from mrisynth.data.ingest import ImportOptions, import_brats

    data = tmp_path / "data"
    import_brats(tiny_brats, data, {"train": 4, "val": 2, "test": 2}, 1, ImportOptions(size=64))
    monkeypatch.chdir(tmp_path)
    suite = json.loads((REPO / "expectations" / "brats_slices.json").read_text())["expectations"]

    assert preprocess.run(_params(tmp_path, data)) == 0
    page = (tmp_path / paths.DATA_VALIDATION).read_text()
    assert not EXTERNAL.search(page) and "<script" not in page and "<link" not in page
    assert "PASSED" in page.split("</h1>")[0]
    rows = _rows(page)
    assert len(rows) == len(suite)
    for entry in suite:  # each expectation of the suite, with its column and its result
        target = entry["kwargs"].get("column") or entry["kwargs"].get("column_A") or "table"
        assert any(entry["type"] in row and target in row and "passed" in row for row in rows), (entry["type"], target)
    row_count = next(row for row in rows if "expect_table_row_count_to_equal" in row)
    assert re.search(r"<td>8</td>", row_count), row_count  # the observed value: 4 + 2 + 2 rows
    markdown = (tmp_path / paths.DATA_VALIDATION_MD).read_text()
    assert markdown.startswith("# Data validation: PASSED") and markdown.count("| passed |") == len(suite)

    # a mask with label 3: the stage stops (exit 1, no arrays), and the report says which expectation failed and why
    (tmp_path / paths.DATA_VALIDATION).unlink()
    manifest = pd.read_csv(data / "manifest.csv")
    mask_path = data / manifest.loc[0, "mask"]
    mask = tifffile.imread(mask_path)
    mask[0, 0] = 3
    tifffile.imwrite(mask_path, mask)
    shutil.rmtree(tmp_path / "pre")
    assert preprocess.run(_params(tmp_path, data)) == 1
    assert not (tmp_path / "pre").exists()
    page = (tmp_path / paths.DATA_VALIDATION).read_text()
    assert "FAILED" in page.split("</h1>")[0]
    failed = [row for row in _rows(page) if "FAILED" in row]
    assert len(failed) == 1 and "labels_ok" in failed[0] and manifest.loc[0, "case_id"] in failed[0]
    assert "label 3 not in" in failed[0] and "1 of 8 rows unexpected" in failed[0]
    assert len(_rows(page)) == len(suite)
    assert "**FAILED**" in (tmp_path / paths.DATA_VALIDATION_MD).read_text()

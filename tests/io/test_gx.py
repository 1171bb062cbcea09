"""Great Expectations suite: passes on an import, fails (with readable reasons) on broken data."""
import json

import numpy as np
import pandas as pd
import tifffile

from mrisynth.cli import main
from mrisynth.data.ingest import ImportOptions, import_brats
from mrisynth.io.gx import validate_dataset


def _dataset(tiny_brats, tmp_path):
    out = tmp_path / "data"
    import_brats(tiny_brats, out, {"train": 5, "val": 2, "test": 3}, 3, ImportOptions(size=64))
    return out


def test_valid_import_passes_and_builds_docs(tiny_brats, tmp_path, capsys):
    out = _dataset(tiny_brats, tmp_path)
    docs = tmp_path / "docs"
    assert main(["validate", str(out), "--docs", str(docs)]) == 0
    printed = capsys.readouterr().out
    assert "PASSED" in printed
    index = docs / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert index.is_file() and str(index) in printed
    page = (docs / "validation.html").read_text()  # the offline page beside GX's own Data Docs
    assert str(docs / "validation.html") in printed and "PASSED" in page and "https://" not in page
    assert (docs / "validation.md").is_file()


def test_broken_data_fails_with_named_expectations(tiny_brats, tmp_path, capsys):
    out = _dataset(tiny_brats, tmp_path)
    manifest = pd.read_csv(out / "manifest.csv")
    mask_path = out / manifest.loc[0, "mask"]
    mask = tifffile.imread(mask_path)
    mask[0, 0] = 3
    tifffile.imwrite(mask_path, mask)
    image_path = out / manifest.loc[1, "image"]
    image = tifffile.imread(image_path)
    image[0, 0, 0] = np.nan
    image[1, 1, 1] = 1.5
    tifffile.imwrite(image_path, image, photometric="minisblack")
    (out / manifest.loc[2, "mask"]).unlink()
    # one case copied into a second split
    dup = manifest.iloc[[3]].assign(split="test")
    pd.concat([manifest, dup]).to_csv(out / "manifest.csv", index=False)

    report = validate_dataset(out)
    assert not report.success
    text = "\n".join(report.failures)
    for column in ("labels_ok", "nan_count", "max", "has_mask", "splits_of_case", "split_count == split_expected"):
        assert column in text, column
    # each failure names the case, the file and the offending value
    labels = next(f for f in report.failures if "labels_ok" in f)
    assert f"{manifest.loc[0, 'case_id']} mask {manifest.loc[0, 'mask']}: label 3 not in {{0, 1, 2, 4}}" in labels, labels
    assert f"{manifest.loc[1, 'case_id']} image {manifest.loc[1, 'image']}: max=1.5" in text, text
    assert f"{manifest.loc[2, 'case_id']}: mask {manifest.loc[2, 'mask']} is missing" in text, text
    assert main(["validate", str(out), "--docs", str(tmp_path / "docs")]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_unreadable_file_is_reported_as_unreadable_not_as_labels(tiny_brats, tmp_path):
    out = _dataset(tiny_brats, tmp_path)
    manifest = pd.read_csv(out / "manifest.csv")
    mask_path = out / manifest.loc[0, "mask"]
    mask_path.write_bytes(mask_path.read_bytes()[:20])  # truncated TIFF
    report = validate_dataset(out)
    assert not report.success
    text = "\n".join(report.failures)
    assert "readable" in text and f"{manifest.loc[0, 'case_id']}: " in text and "unreadable" in text
    assert "labels_ok" not in text, text


def test_wrong_size_and_counts_fail(tiny_brats, tmp_path):
    out = _dataset(tiny_brats, tmp_path)
    report = validate_dataset(out, size=128, counts={"train": 30, "val": 2, "test": 3})
    text = "\n".join(report.failures)
    assert "height" in text and "width" in text and "expect_table_row_count_to_equal" in text
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"] == {"train": 5, "val": 2, "test": 3} and info["size"] == 64

"""The imported dataset's manifest (`DIR/manifest.csv`), read with a clear error."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mrisynth.errors import DataError

SPLITS = ("train", "val", "test")


def read_manifest(directory: Path) -> pd.DataFrame:
    """DIR/manifest.csv as a DataFrame, with a clear error when it is missing or lacks columns."""
    path = Path(directory) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: expected an imported dataset manifest, found no file; run `mrisynth data import SRC --out {directory}`")
    manifest = pd.read_csv(path)
    missing = {"case_id", "split", "slice_index", "image", "mask", "tumor_pixels"} - set(manifest.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}; re-run `mrisynth data import`")
    return manifest

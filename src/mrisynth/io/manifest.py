"""The imported dataset's manifest (`DIR/manifest.csv`), read with a clear error.

A manifest is data from outside: every file it names must be a relative path that stays inside its
dataset folder, and every case id a plain file name (it becomes part of written file names), or it is
refused at read time (`read_manifest`, `inside`) and flagged by the `paths_inside` expectation of the
Great Expectations suite."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from mrisynth.errors import DataError

SPLITS = ("train", "val", "test")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")  # a case id usable as a file name, no separators


def is_plain_name(name) -> bool:
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None and ".." not in name


def is_inside(directory: Path, relative) -> bool:
    """True when `relative` is a relative path that stays inside `directory` as written (no absolute path, no
    '..' climbing out). Checked on the text, not the resolved file: a file that is a symlink (DVC's symlink
    cache) is the folder's own file."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or os.path.isabs(relative):
        return False
    normal = os.path.normpath(relative)
    return normal != ".." and not normal.startswith(".." + os.sep) and not os.path.isabs(normal)


def inside(directory: Path, relative: str, where: str = "manifest") -> Path:
    """directory / relative, refused with a DataError when it would leave `directory` (absolute, ../, symlink)."""
    if not is_inside(directory, relative):
        raise DataError(f"{where}: path {relative!r} leaves the dataset folder {directory}; a manifest may only name "
                        "files inside its folder (relative paths, no '..'): fix or re-import the dataset")
    return Path(directory) / relative


def unsafe_rows(directory: Path, manifest: pd.DataFrame) -> list[str]:
    """'case_id: reason' for every row whose case id is not a plain name or whose files leave `directory`."""
    problems = []
    for _, row in manifest.iterrows():
        if not is_plain_name(str(row["case_id"])):
            problems.append(f"case_id {row['case_id']!r} is not a plain name (letters, digits, . _ + -)")
        if "split" in row and row["split"] not in SPLITS:
            problems.append(f"{row['case_id']}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        if "modalities" in row and not all(is_plain_name(m) for m in str(row["modalities"]).split(",")):
            problems.append(f"{row['case_id']}: modalities {row['modalities']!r} are not plain names")
        for column in ("image", "mask"):
            if column in row and not is_inside(directory, row[column]):
                problems.append(f"{row['case_id']}: {column} {row[column]!r} leaves the dataset folder")
    return problems


def read_manifest(directory: Path, check_paths: bool = True) -> pd.DataFrame:
    """DIR/manifest.csv as a DataFrame, with a clear error when it is missing, lacks columns or (check_paths)
    names a file outside DIR or a case id that is not a plain name."""
    path = Path(directory) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: expected an imported dataset manifest, found no file; run `mrisynth data import SRC --out {directory}`")
    manifest = pd.read_csv(path)
    missing = {"case_id", "split", "slice_index", "image", "mask", "tumor_pixels"} - set(manifest.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}; re-run `mrisynth data import`")
    problems = unsafe_rows(directory, manifest) if check_paths else []
    if problems:
        raise DataError(f"{path}: {len(problems)} unsafe entr{'y' if len(problems) == 1 else 'ies'} refused ({'; '.join(problems[:3])}"
                        + (" ..." if len(problems) > 3 else "") + "); a manifest may only name files inside its folder")
    return manifest

"""Dataset card files: `DIR/card.json` and `DIR/card.md`, built from an imported dataset (see core.datacard)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mrisynth.core import datacard
from mrisynth.io import tiff
from mrisynth.io.manifest import inside, read_manifest

SPLIT_ORDER = ("train", "val", "test")


def _load(directory: Path, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.stack([tiff.read_image(inside(directory, p)) for p in rows["image"]]).astype(np.float32)
    labels = np.stack([tiff.read_mask(inside(directory, p)) for p in rows["mask"]]).astype(np.uint8)
    return images, labels, images.any(axis=-1)


def data_source(directory: str | Path) -> str:
    """Where an imported dataset came from (`DIR/dataset.json`: source and release), for model cards;
    `unknown` when the file is missing or unreadable."""
    try:
        info = json.loads((Path(directory) / "dataset.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    return f"{info.get('source', 'unknown')} ({info.get('release', 'unknown release')})"


def build(directory: Path, manifest: pd.DataFrame | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """The card of an imported dataset folder (manifest.csv + TIFFs; dataset.json when present).
    `progress` gets one line per step (reading, statistics, threshold baseline) with the elapsed time."""
    started = time.perf_counter()

    def say(step: str) -> None:
        if progress:
            progress(f"{step} ({time.perf_counter() - started:.0f} s elapsed)")

    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    say(f"reading {len(manifest)} slices in {directory}")
    info_file = directory / "dataset.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    modalities = str(manifest["modalities"].iloc[0]).split(",")
    splits = [s for s in SPLIT_ORDER if (manifest["split"] == s).any()]
    arrays = {s: _load(directory, manifest[manifest["split"] == s]) for s in splits}
    say("tumour presence, areas and contrasts")
    every = tuple(np.concatenate([arrays[s][i] for s in splits]) for i in range(3))
    facts = {c: manifest[c] if c in manifest else pd.Series(["unknown"] * len(manifest)) for c in ("grade", "location", "site")}
    card = {
        "source": info.get("source", directory.name),
        "slice_rule": info.get("slice", "unknown"),
        "size": int(manifest["height"].iloc[0]),
        "modalities": modalities,
        "slices": int(len(manifest)),
        "split_counts": {s: int((manifest["split"] == s).sum()) for s in splits},
        "grades": datacard.counts(facts["grade"]),
        "locations": datacard.counts(facts["location"]),
        "sites": datacard.counts(facts["site"]),
        "presence": {"all": datacard.presence(every[1])} | {s: datacard.presence(arrays[s][1]) for s in splits},
        "area": datacard.area_percentiles(every[1], manifest["spacing_mm"].to_numpy() if "spacing_mm" in manifest else np.ones(len(manifest))),
        "contrast": datacard.contrast(*every, modalities),
    }
    say("threshold baseline (fitted on train, scored on every split)")
    card["threshold"] = datacard.threshold_baseline(arrays, modalities) if "train" in arrays else {}
    say("done")
    return card


def write(directory: Path, card: dict) -> None:
    directory = Path(directory)
    (directory / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (directory / "card.md").write_text(datacard.markdown(card))


def load_or_build(directory: Path) -> dict:
    """The card written at import, or a fresh one for a folder imported before cards existed."""
    path = Path(directory) / "card.json"
    return json.loads(path.read_text()) if path.is_file() else build(directory)

"""`preprocess` stage: validate data/ with Great Expectations, then write training-ready arrays.

Reads  data/ (manifest.csv + TIFF splits), params `preprocess`.
Writes work/preprocessed/{train,val,test}.npz, reports/preprocess.json (split sizes, validation summary),
       reports/data_card.json (the dataset card's numbers; also MLflow metrics of a `preprocess` run
       with card.md/card.json), reports/gx_docs (GX Data Docs: their index needs network),
       reports/data_validation.{html,md} (every expectation and its result; self-contained, opens offline;
       written when validation fails too). Stops with exit 1 and the GX summary if validation fails."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mrisynth import paths
from mrisynth.config import load_params
from mrisynth.core import encoding, slicing
from mrisynth.io import manifest as manifest_io
from mrisynth.io.manifest import SPLITS, read_manifest
from mrisynth.stages import params_main
from mrisynth.io import arrays, gx, tiff


def build_split(data_dir: Path, manifest, split: str, size: int) -> arrays.SplitArrays:
    """Read one split's TIFFs, resize to size x size when needed, and encode the conditioning."""
    rows = manifest[manifest["split"] == split]
    images, labels = [], []
    for _, row in rows.iterrows():
        image = tiff.read_image(manifest_io.inside(data_dir, row["image"])).astype(np.float32)
        mask = tiff.read_mask(manifest_io.inside(data_dir, row["mask"]))
        if image.shape[0] != size:
            image = np.clip(slicing.resize(image, size, is_mask=False), 0.0, 1.0)
            mask = slicing.resize(mask, size, is_mask=True)
        images.append(image)
        labels.append(mask.astype(np.uint8))
    channels = int(manifest["channels"].iloc[0]) if "channels" in manifest else 4
    images_arr = np.stack(images) if images else np.zeros((0, size, size, channels), np.float32)
    labels_arr = np.stack(labels) if labels else np.zeros((0, size, size), np.uint8)
    brain = images_arr.any(axis=-1)
    if "spacing_mm" in rows:
        native = rows["spacing_mm"].to_numpy(dtype=np.float32)
    else:
        print(f"preprocess: {data_dir}/manifest.csv records no spacing_mm (older import); assuming 1 mm pixels (BraTS)", file=sys.stderr)
        native = np.ones(len(rows), np.float32)
    heights = rows["height"].to_numpy(dtype=np.float32) if "height" in rows else np.full(len(rows), size, np.float32)
    return arrays.SplitArrays(
        images=images_arr, labels=labels_arr, brain=brain,
        conditioning=encoding.conditioning(labels_arr, brain),
        case_ids=rows["case_id"].to_numpy(dtype=str),
        spacing=(native * heights / size).astype(np.float32),
    )


def run(params_path: str = "params.yaml") -> int:
    params = load_params(params_path).preprocess
    data_dir = Path(params.data_dir)
    report = gx.validate_dataset(data_dir, docs_root=paths.GX_DOCS)
    gx.write_static_docs(report, paths.DATA_VALIDATION, paths.DATA_VALIDATION_MD, source=str(data_dir))
    print(report.summary())
    print(f"Offline validation report: {paths.DATA_VALIDATION}")
    if not report.success:
        print(f"preprocess: {data_dir} failed validation; fix the data (or re-run `mrisynth data import`) before training", file=sys.stderr)
        return 1
    manifest = read_manifest(data_dir)
    out_dir = Path(params.out_dir)
    metrics = {"image_size": params.image_size, "gx_evaluated": report.statistics.get("evaluated_expectations"),
               "gx_successful": report.statistics.get("successful_expectations")}
    for split in SPLITS:
        split_arrays = build_split(data_dir, manifest, split, params.image_size)
        arrays.save_split(out_dir / f"{split}.npz", split_arrays)
        metrics[f"{split}_images"] = len(split_arrays)
        metrics[f"{split}_tumor_fraction"] = float((split_arrays.labels > 0).mean()) if len(split_arrays) else 0.0
        metrics[f"{split}_spacing_mm"] = float(np.median(split_arrays.spacing)) if len(split_arrays) else 0.0
    paths.write_json(paths.PREPROCESS, metrics)
    log_card(data_dir, params.experiment)
    counts = ", ".join(f"{split} {metrics[split + '_images']}" for split in SPLITS)
    print(f"preprocess: wrote {counts} at {params.image_size}px to {out_dir}")
    return 0


def log_card(data_dir: Path, experiment: str) -> dict:
    """The dataset card of data_dir (written at import; rebuilt for older imports) to
    reports/data_card.json (flat numbers, DVC metrics) and to an MLflow `preprocess` run."""
    from mrisynth.core import datacard
    from mrisynth.io import card, tracking

    built = card.load_or_build(data_dir)
    flat = datacard.flat_metrics(built)
    paths.write_json(paths.DATA_CARD, flat)
    tracking.configure(experiment)
    with tracking.stage_run("preprocess", tracking.run_tags("preprocess") | {"data_source": built["source"]}, system_metrics=False) as run:
        run.log_metrics(flat)
        run.log_dict(built, "data_card/card.json")
        run.log_text(datacard.markdown(built), "data_card/card.md")
    return built


def main(argv: list[str] | None = None) -> None:
    params_main(run, argv)

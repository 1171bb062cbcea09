"""`train_segmenter` stage: one U-Net per augmentation arm and seed, as MLflow child runs.

Reads  work/preprocessed/{train,val}.npz, work/augmented/, params `train_segmenter`, `preprocess.size`.
Writes work/segmenter/<arm>/seed<k>/best.keras, work/segmenter/runs.json (run ids, versions),
       reports/train_segmenter.json; one parent MLflow run with a child run per arm and seed, each
       trained segmenter registered (tags augmentation=<arm>, seed=<k>).

Arms: none = the real training slices; classic = real + classic samples; gan = real + GAN samples;
classic+gan = the augmented set (in_mix). The validation split (real, patient-disjoint) is shared."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mrisynth.config import as_flat_dict, load_params
from mrisynth.core import encoding
from mrisynth.errors import DataError
from mrisynth.stages import stage_main
from mrisynth.io import arrays, tiff, tracking


def arm_slug(arm: str) -> str:
    return arm.replace("+", "_")


def arm_data(arm: str, train: arrays.SplitArrays, augmented_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, S, S, C) float32, classes (N, S, S) uint8) for one arm."""
    if arm == "none":
        return train.images, encoding.labels_to_classes(train.labels)
    path = augmented_dir / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: arm {arm!r} needs the augmented set, found no manifest; run `dvc repro augment`")
    manifest = pd.read_csv(path)
    select = {"classic+gan": manifest["in_mix"], "classic": manifest["kind"].isin(["real", "classic"]),
              "gan": manifest["kind"].isin(["real", "gan"])}[arm]
    rows = manifest[select]
    expected = len(train)  # every arm holds at least the real training slices
    if len(rows) < expected:
        raise DataError(f"{path}: arm {arm!r} selects {len(rows)} images, expected at least {expected}; rerun `dvc repro augment`")
    images = np.stack([tiff.read_image(augmented_dir / r) for r in rows["image"]]).astype(np.float32)
    labels = np.stack([tiff.read_mask(augmented_dir / r) for r in rows["mask"]])
    if images.shape[1:3] != train.images.shape[1:3]:
        raise DataError(f"{path}: augmented images are {images.shape[1:3]}, expected {train.images.shape[1:3]}; rerun `dvc repro augment`")
    return images, encoding.labels_to_classes(labels)


def _signature(size: int, channels: int):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, channels), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, encoding.NUM_CLASSES), "probabilities")]),
    )


def run(params_path: str = "params.yaml") -> int:
    import mlflow

    from mrisynth import segmenter

    params = load_params(params_path)
    p, pre = params.train_segmenter, params.preprocess
    train, val = (arrays.load_split(Path(pre.out_dir), s) for s in ("train", "val"))
    val_classes = encoding.labels_to_classes(val.labels)
    settings = segmenter.SegSettings.from_params(p)
    out_root = Path(p.out_dir)
    tracking.configure(p.experiment)
    tags = tracking.device_tags(p.precision) | {"stage": "train_segmenter", "data_hash": tracking.data_hash(), "git_commit": tracking.git_commit()}
    registry = {"parent_run_id": None, "arms": {}}
    summary: dict[str, dict] = {}
    with mlflow.start_run(run_name="train_segmenter", log_system_metrics=True) as parent:
        registry["parent_run_id"] = parent.info.run_id
        mlflow.set_tags(tags)
        mlflow.log_params(as_flat_dict(p) | {"size": pre.size, "data_hash": tags["data_hash"], "augment_factor": params.augment.factor,
                                             "augment_synthetic_fraction": params.augment.synthetic_fraction})
        data = {arm: arm_data(arm, train, Path(params.augment.out_dir)) for arm in p.arms}
        largest = max(len(images) for images, _ in data.values())
        steps = math.ceil(largest / p.batch_size) if p.equal_steps else None
        mlflow.log_param("steps_per_epoch", steps or "one pass per arm")
        for arm in p.arms:
            images, classes = data[arm]
            registry["arms"][arm] = {}
            for seed in p.seeds:
                path = out_root / arm_slug(arm) / f"seed{seed}" / "best.keras"
                started = time.perf_counter()
                with mlflow.start_run(run_name=f"{arm} seed {seed}", nested=True) as child:
                    mlflow.set_tags(tags | {"augmentation": arm, "seed": str(seed)})
                    mlflow.log_params({"augmentation": arm, "seed": seed, "train_images": len(images), "val_images": len(val),
                                       "steps_per_epoch": steps or math.ceil(len(images) / p.batch_size)})

                    def on_epoch(epoch, row, improved, arm=arm, seed=seed):
                        mlflow.log_metrics(row, step=epoch)
                        print(f"[{arm} seed {seed}] epoch {epoch}/{p.epochs}: loss {row['loss']:.4f} "
                              f"val_dice_tumour {row['val_dice_tumour']:.4f}{' *best*' if improved else ''}")

                    result = segmenter.train(settings, seed, images, classes, val.images, val_classes, path, on_epoch, steps)
                    mlflow.log_metrics({"best_val_dice_tumour": result["best_val_dice_tumour"], "best_epoch": result["best_epoch"],
                                        "train_seconds": time.perf_counter() - started})
                    import mlflow.keras

                    best_model = segmenter.load(path)
                    info = mlflow.keras.log_model(best_model, name="segmenter", registered_model_name=p.registry_name,
                                                  signature=_signature(images.shape[1], images.shape[-1]))
                    version = str(info.registered_model_version)
                    client = mlflow.MlflowClient()
                    client.set_model_version_tag(p.registry_name, version, "augmentation", arm)
                    client.set_model_version_tag(p.registry_name, version, "seed", str(seed))
                registry["arms"][arm][str(seed)] = {"run_id": child.info.run_id, "model_version": version, "path": str(path),
                                                    "best_epoch": result["best_epoch"], "best_val_dice_tumour": result["best_val_dice_tumour"],
                                                    "train_images": len(images)}
            values = [r["best_val_dice_tumour"] for r in registry["arms"][arm].values()]
            summary[arm] = {"best_val_dice_tumour_mean": float(np.mean(values)), "best_val_dice_tumour_std": float(np.std(values)),
                            "train_images": len(images)}
            mlflow.log_metric(f"best_val_dice_tumour_{arm_slug(arm)}", float(np.mean(values)))
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "runs.json").write_text(json.dumps(registry, indent=2) + "\n")
    Path("reports").mkdir(exist_ok=True)
    Path("reports/train_segmenter.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("train_segmenter: " + "; ".join(f"{a}: val Dice (tumour) {s['best_val_dice_tumour_mean']:.4f} on {s['train_images']} images" for a, s in summary.items()))
    return 0


def main() -> None:
    stage_main(run)

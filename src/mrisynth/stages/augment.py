"""`augment` stage: grow the training split factor-fold with classic transforms and GAN synthesis.

Reads  work/preprocessed/train.npz, models/generator.keras, params `augment`, `train_segmenter.arms`.
Writes work/augmented/ (images/*.tif, masks/*.tif, manifest.csv with provenance), reports/augment.json.

The manifest holds the originals (kind real), classic samples and GAN samples; `in_mix` marks the
classic+gan set (factor x training count images, the paper's 30 -> 300). The `classic` and `gan`
arms, when requested, use the originals plus (factor - 1) x count samples of their own kind.
The output is validated (GX: brats_slices + augmented suites); a failure stops the pipeline."""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mrisynth.config import load_params
from mrisynth.core import encoding, transforms
from mrisynth.errors import DataError
from mrisynth.stages import stage_main
from mrisynth.io import arrays, gx, tiff


@dataclass
class Sample:
    image: np.ndarray
    labels: np.ndarray
    kind: str
    source_cases: str
    transforms: str
    in_mix: bool


def plan(n_train: int, factor: int, synthetic_fraction: float, arms: tuple[str, ...]) -> dict[str, int]:
    """How many classic and GAN samples to make, and how many of each go into the classic+gan set."""
    new = (factor - 1) * n_train
    gan_mix = int(round(synthetic_fraction * new))
    classic_mix = new - gan_mix
    return {
        "classic_mix": classic_mix,
        "gan_mix": gan_mix,
        "classic_total": new if "classic" in arms else classic_mix,
        "gan_total": new if "gan" in arms else gan_mix,
    }


def load_generator(path: Path, size: int, channels: int):
    """The trained generator, checked against the data's shapes (clear errors naming model and shapes)."""
    import keras

    if not Path(path).is_file():
        raise DataError(f"{path}: generator not found; run `dvc repro train_gan` first")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot load the generator ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); retrain with `dvc repro train_gan`") from exc
    expected_in, expected_out = (None, size, size, encoding.CONDITION_CHANNELS), (None, size, size, channels)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise DataError(
            f"{path}: generator maps {tuple(model.input_shape)} -> {tuple(model.output_shape)}, but the data needs "
            f"{expected_in} -> {expected_out}; retrain it at preprocess.size {size} (`dvc repro train_gan`)"
        )
    return model


def render(generator, labels: np.ndarray, brain: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Generator images in [0, 1] for label maps + brain masks; zero outside the brain (skull-stripped)."""
    cond = encoding.conditioning(labels, brain)
    out = [np.asarray(generator(cond[i : i + batch_size], training=False), dtype=np.float32) for i in range(0, len(cond), batch_size)]
    images = encoding.from_tanh(np.concatenate(out)) if out else np.zeros((0, *labels.shape[1:], 1), np.float32)
    return (images * cond[..., -1:]).astype(np.float32)


def synthesise(train: arrays.SplitArrays, generator, params, arms: tuple[str, ...]) -> tuple[list[Sample], dict]:
    rng = np.random.default_rng(params.seed)
    ranges = transforms.ClassicRanges(params.rotation, params.shift, tuple(params.scale), params.flip, params.brightness)
    n = len(train)
    counts = plan(n, params.factor, params.synthetic_fraction, arms)
    ids = [str(c) for c in train.case_ids]
    samples = [Sample(train.images[i], train.labels[i], "real", ids[i], "identity", True) for i in range(n)]
    for k in range(counts["classic_total"]):
        src = k % n
        image, labels, desc = transforms.classic(train.images[src], train.labels[src], rng, ranges)
        samples.append(Sample(image, labels, "classic", ids[src], desc, k < counts["classic_mix"]))

    label_maps, brains, provenance = [], [], []
    fallbacks = 0
    for k in range(counts["gan_total"]):
        placed = None
        if n > 1 and rng.random() < params.recombine_fraction:
            donor, host = rng.choice(n, size=2, replace=False)
            placed = transforms.recombine(train.labels[donor], train.brain[host], rng, ranges)
            if placed is None:
                fallbacks += 1
            else:
                labels, desc = placed
                label_maps.append(labels)
                brains.append(train.brain[host] | (labels > 0))
                provenance.append((f"{ids[donor]}+{ids[host]}", f"recombine:{desc}"))
        if placed is None:
            src = int(rng.integers(n))
            geometry = transforms.sample_geometry(rng, ranges, train.labels.shape[1])
            labels = transforms.warp(train.labels[src], geometry, is_mask=True)
            brain = transforms.warp(train.brain[src].astype(np.uint8), geometry, is_mask=True).astype(bool) | (labels > 0)
            label_maps.append(labels)
            brains.append(brain)
            provenance.append((ids[src], f"mask:{geometry.describe()}"))
    if label_maps:
        images = render(generator, np.stack(label_maps), np.stack(brains))
        for k, (image, labels, (source, desc)) in enumerate(zip(images, label_maps, provenance)):
            samples.append(Sample(image, labels, "gan", source, desc, k < counts["gan_mix"]))
    return samples, counts | {"recombination_fallbacks": fallbacks}


def write(out_dir: Path, samples: list[Sample]) -> pd.DataFrame:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    rows = []
    for k, s in enumerate(samples):
        case_id = f"aug_{k + 1:05d}"
        image_rel, mask_rel = f"images/{case_id}.tif", f"masks/{case_id}.tif"
        tiff.write_image(out_dir / image_rel, s.image.astype(np.float32))
        tiff.write_mask(out_dir / mask_rel, s.labels.astype(np.uint8))
        rows.append({
            "case_id": case_id, "split": "train", "slice_index": -1, "image": image_rel, "mask": mask_rel,
            "tumor_pixels": int(np.count_nonzero(s.labels)), "height": s.image.shape[0], "width": s.image.shape[1],
            "channels": s.image.shape[2], "kind": s.kind, "source_cases": s.source_cases, "transforms": s.transforms,
            "in_mix": bool(s.in_mix),
        })
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / "manifest.csv", index=False, lineterminator="\n")
    return manifest


def validate(out_dir: Path, manifest: pd.DataFrame, expected_mix: int, size: int, channels: int) -> gx.ValidationReport:
    table = gx.image_metadata(out_dir, manifest, {"train": len(manifest)})
    for column in ("kind", "source_cases", "transforms", "in_mix"):
        table[column] = manifest[column].to_numpy()
    table["mix_count"] = int(manifest["in_mix"].sum())
    table["mix_expected"] = expected_mix
    parameters = {"size": size, "channels": channels, "rows": len(manifest)}
    return gx.validate_table(table, parameters, suite=gx.load_suite("brats_slices", "augmented"))


def run(params_path: str = "params.yaml") -> int:
    params = load_params(params_path)
    p, pre = params.augment, params.preprocess
    started = time.perf_counter()
    train = arrays.load_split(Path(pre.out_dir), "train")
    channels = train.images.shape[-1]
    generator = load_generator(Path(params.train_gan.model_path), pre.size, channels)
    samples, counts = synthesise(train, generator, p, params.train_segmenter.arms)
    out_dir = Path(p.out_dir)
    manifest = write(out_dir, samples)
    expected_mix = p.factor * len(train)
    report = validate(out_dir, manifest, expected_mix, pre.size, channels)
    print(report.summary())
    if not report.success:
        print(f"augment: {out_dir} failed validation; segmenter training not started", file=sys.stderr)
        return 1
    summary = {
        "train_images": len(train), "factor": p.factor, "mix_images": int(manifest["in_mix"].sum()),
        **{f"{kind}_images": int((manifest["kind"] == kind).sum()) for kind in ("real", "classic", "gan")},
        "recombined": int(manifest["transforms"].str.startswith("recombine").sum()),
        **counts, "seconds": round(time.perf_counter() - started, 2),
    }
    Path("reports").mkdir(exist_ok=True)
    Path("reports/augment.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"augment: {len(train)} -> {summary['mix_images']} images in the classic+gan set "
          f"({summary['classic_images']} classic, {summary['gan_images']} GAN made) in {out_dir}")
    return 0


def main() -> None:
    stage_main(run)

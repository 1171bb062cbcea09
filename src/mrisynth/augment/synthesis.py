"""Growing the training split: classic transforms and GAN synthesis, with provenance.

`plan` says how many samples of each kind to make, `synthesise` makes them (classic: rotation,
shift, scale, flip + brightness on image and mask together; GAN: label maps from transformed training
masks or a training tumour recombined into another case's brain, rendered by the generator, with
dropout active by default; paste: a donor's real tumour pasted into another training slice, the
copy-paste control, from its own random stream), `write` stores them with a provenance manifest."""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mrisynth.inference import rendering
from mrisynth import paths
from mrisynth.core import arms as arm_table, encoding, inpaint, transforms
from mrisynth.errors import DataError
from mrisynth.io import arrays, tiff


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
    wanted = arm_table.kinds_wanted(arms)  # an arm training on every sample of a kind needs (factor - 1) x n of it
    return {
        "classic_mix": classic_mix,
        "gan_mix": gan_mix,
        "classic_total": new if "classic" in wanted else classic_mix,
        "gan_total": new if "gan" in wanted else gan_mix,
        "paste_total": new if "paste" in wanted else 0,
    }


def load_generator(path: Path, size: int, channels: int, synthesis: str = "full"):
    """The trained generator, checked against the data's shapes and the synthesis it was trained for
    (clear errors naming model and shapes)."""
    import keras

    if not Path(path).is_file():
        raise DataError(f"{path}: generator not found; run `dvc repro train_gan` first")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot load the generator ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); retrain with `dvc repro train_gan`") from exc
    conditioning = inpaint.in_channels(channels) if synthesis == "inpaint" else encoding.CONDITION_CHANNELS
    expected_in, expected_out = (None, size, size, conditioning), (None, size, size, channels)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise DataError(
            f"{path}: generator maps {tuple(model.input_shape)} -> {tuple(model.output_shape)}, but the data and "
            f"train_gan.synthesis={synthesis!r} need {expected_in} -> {expected_out}; retrain it (`dvc repro train_gan`)"
        )
    return model


def synthesise(train: arrays.SplitArrays, generator, params, arms: tuple[str, ...], synthesis: str = "full",
               margin_fraction: float = 0.03, judge=None) -> tuple[list[Sample], dict]:
    """Real, classic and GAN samples (module doc). synthesis 'inpaint': every GAN sample is a real
    training slice with a tumour region re-generated (see `_inpaint_samples`). judge: an
    `augment.sample_filter.Judge` that filters the GAN samples (`gan_samples`); None: no filter."""
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

    gan, fallbacks = gan_samples(train, generator, params, counts, rng, synthesis, margin_fraction, params.seed, judge)
    # the copy-paste control draws from its own stream: the real, classic and GAN samples stay as without it
    pasted, paste_fallbacks = paste_samples(train, params, counts["paste_total"], margin_fraction)
    return samples + gan + pasted, counts | {"recombination_fallbacks": fallbacks, "paste_fallbacks": paste_fallbacks}


def _donor_and_host(train: arrays.SplitArrays, rng: np.random.Generator, ranges: transforms.ClassicRanges):
    """(donor, host, geometry, donor labels moved by geometry): two different training slices and a random
    rotation/scale/flip (`ranges` without shift: placement moves the tumour), drawn in this order from `rng`."""
    donor, host = (int(i) for i in rng.choice(len(train), size=2, replace=False))
    geometry = transforms.sample_geometry(rng, ranges, train.labels.shape[1])
    return donor, host, geometry, transforms.warp(train.labels[donor], geometry, is_mask=True)


def paste_samples(train: arrays.SplitArrays, params, count: int, margin_fraction: float, attempts: int = 20) -> tuple[list[Sample], int]:
    """`count` copy-paste samples (the `paste` arm, no generator): a donor's tumour (rotated/scaled/flipped
    with its pixels) pasted into another training slice with `inpaint.paste` — the same placement prior and
    blend ramp as the inpainting GAN samples, real pixels instead of generated ones. A placement that fails
    is retried with another donor and host, up to `attempts` times, then pasted in place (CarveMix: the
    donor's region replaces the host's at the same position; `transforms` says `paste-in-place:`). Returns
    the samples and how many placements failed."""
    n, size = len(train), train.images.shape[1]
    if count == 0 or n < 2:
        return [], 0
    # its own stream: [seed, 0, 1] is none of the GAN draws' [seed, d] (= [seed, d, 0]) nor the main [seed]
    rng = np.random.default_rng([params.seed, 0, 1])
    ranges = transforms.ClassicRanges(rotation=params.rotation, shift=0.0, scale=tuple(params.scale), flip=params.flip)
    margin = inpaint.margin_pixels(margin_fraction, size)
    prior = inpaint.depths(train.labels, train.brain)
    ids = [str(c) for c in train.case_ids]
    samples, failed = [], 0
    for _ in range(count):
        for attempt in range(attempts + n):  # after `attempts` moved placements, in place (a donor without tumour: the next pair)
            in_place = attempt >= attempts
            donor, host, geometry, moved_labels = _donor_and_host(train, rng, ranges)
            moved_image = transforms.warp(train.images[donor], geometry, is_mask=False)
            pasted = inpaint.paste(train.images[host], train.labels[host], train.brain[host], moved_image, moved_labels, margin, rng,
                                   prior, in_place=in_place)
            if pasted is not None:
                image, labels, _, _ = pasted
                samples.append(Sample(np.clip(image, 0.0, 1.0), labels, "paste", f"{ids[donor]}+{ids[host]}",
                                      f"paste{'-in-place' if in_place else ''}:{geometry.describe()}", False))
                break
            failed += 1
    return samples, failed


def synthesise_draw(train: arrays.SplitArrays, generator, params, arms: tuple[str, ...], draw: int, synthesis: str = "full",
                    margin_fraction: float = 0.03, judge=None) -> tuple[list[Sample], int]:
    """The GAN samples of generator draw `draw` (>= 1; 0-based): its own label maps (random stream
    seeded by (augment.seed, draw)) rendered by its own generator (dropout seed augment.seed + draw).
    The real and classic samples are shared by every draw (those of `synthesise`)."""
    counts = plan(len(train), params.factor, params.synthetic_fraction, arms)
    rng = np.random.default_rng([params.seed, draw])
    return gan_samples(train, generator, params, counts, rng, synthesis, margin_fraction, params.seed + draw, judge)


def gan_samples(train: arrays.SplitArrays, generator, params, counts: dict, rng: np.random.Generator, synthesis: str,
                margin_fraction: float, render_seed: int, judge=None) -> tuple[list[Sample], int]:
    """counts['gan_total'] GAN samples (the first counts['gan_mix'] in the classic+gan set) and the
    number of recombinations that found no placement.

    judge (`augment.sample_filter.Judge`): judge.candidates(gan_total) candidates are made the same way, scored by
    the judge and `filter.select`ed (kept in candidate order; the classic+gan set takes the first gan_mix
    kept); each kept sample's `transforms` ends with `;judge=<its score>`. Without a judge nothing changes."""
    if judge is not None and counts["gan_total"]:
        from mrisynth.augment import sample_filter

        wanted = counts["gan_total"]
        pool = {**counts, "gan_total": judge.candidates(wanted), "gan_mix": 0}
        candidates, fallbacks = gan_samples(train, generator, params, pool, rng, synthesis, margin_fraction, render_seed)
        labels = np.stack([c.labels for c in candidates])
        scores = judge.score(np.stack([c.image for c in candidates]), labels)
        kept, below = sample_filter.select(scores, wanted, judge.tau)
        judge.record(scores, kept, below, labels)
        return [dataclasses.replace(candidates[i], in_mix=k < counts["gan_mix"], transforms=f"{candidates[i].transforms};judge={scores[i]:.3f}")
                for k, i in enumerate(kept)], fallbacks
    ranges = transforms.ClassicRanges(params.rotation, params.shift, tuple(params.scale), params.flip, params.brightness)
    if synthesis == "inpaint":
        return _inpaint_samples(train, generator, params, ranges, counts, rng, margin_fraction, render_seed)
    n = len(train)
    ids = [str(c) for c in train.case_ids]
    samples: list[Sample] = []
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
        images = rendering.render_labels(generator, np.stack(label_maps), np.stack(brains), sample=params.sample_dropout, seed=render_seed)
        for k, (image, labels, (source, desc)) in enumerate(zip(images, label_maps, provenance)):
            samples.append(Sample(image, labels, "gan", source, desc, k < counts["gan_mix"]))
    return samples, fallbacks


def _inpaint_samples(train, generator, params, ranges, counts, rng, margin_fraction, render_seed) -> tuple[list[Sample], int]:
    """Tumour-in-context GAN samples. With probability `recombine_fraction`: a donor's tumour
    (rotated/scaled/flipped) is placed in another training slice's brain, away from the host's own
    tumour (which is kept), at a depth drawn like the real tumours' (`inpaint.depth_weights`), and its
    region is generated; otherwise a classic-transformed training slice
    gets its own tumour region re-generated (new appearance, same shape). Outside the regions every
    pixel is the real (transformed) slice's."""
    n, size = len(train), train.images.shape[1]
    margin = inpaint.margin_pixels(margin_fraction, size)
    ids = [str(c) for c in train.case_ids]
    hosts, labels_out, brains, regions, provenance = [], [], [], [], []
    fallbacks = 0
    no_shift = transforms.ClassicRanges(rotation=ranges.rotation, shift=0.0, scale=ranges.scale, flip=ranges.flip)
    prior = inpaint.depths(train.labels, train.brain)  # placed tumours sit as deep in the brain as the real ones
    for _ in range(counts["gan_total"]):
        placed = None
        if n > 1 and rng.random() < params.recombine_fraction:
            donor, host, geometry, moved = _donor_and_host(train, rng, no_shift)
            placed = inpaint.place_away(moved, train.brain[host], train.labels[host], margin, rng, prior=prior)
            if placed is None:
                fallbacks += 1
            else:
                tumour, (cy, cx) = placed
                labels = np.where(tumour > 0, tumour, train.labels[host]).astype(np.uint8)
                brain = train.brain[host] | (labels > 0)
                hosts.append(train.images[host])
                labels_out.append(labels)
                brains.append(brain)
                regions.append(inpaint.region(tumour, brain, margin))
                provenance.append((f"{ids[donor]}+{ids[host]}", f"recombine:inpaint;{geometry.describe()};at=({cy},{cx})"))
        if placed is None:
            src = int(rng.integers(n))
            image, labels, moved_brain, desc = transforms.classic_with_brain(train.images[src], train.labels[src], train.brain[src], rng, ranges)
            brain = moved_brain | (labels > 0)
            hosts.append(image)
            labels_out.append(labels)
            brains.append(brain)
            regions.append(inpaint.region(labels, brain, margin))
            provenance.append((ids[src], f"inpaint-own:{desc}"))
    if not hosts:
        return [], fallbacks
    images = rendering.render_inpaint(generator, np.stack(hosts), np.stack(labels_out), np.stack(brains), np.stack(regions), margin,
                                       sample=params.sample_dropout, seed=render_seed, harmonise=params.harmonise)
    samples = [Sample(image, labels, "gan", source, desc, k < counts["gan_mix"])
               for k, (image, labels, (source, desc)) in enumerate(zip(images, labels_out, provenance))]
    return samples, fallbacks


def write(out_dir: Path, samples: list[Sample], sample_dropout: bool = False) -> pd.DataFrame:
    """Write the samples as TIFFs and manifest.csv (provenance: kind, source_cases, transforms, in_mix, dropout_sampling)."""
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
            "in_mix": bool(s.in_mix), "dropout_sampling": bool(s.kind == "gan" and sample_dropout),
        })
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / "manifest.csv", index=False, lineterminator="\n")
    return manifest




def write_draw(out_dir: Path, base: pd.DataFrame, gan: list[Sample], draw: int, sample_dropout: bool = False) -> pd.DataFrame:
    """Write draw `draw`'s GAN samples under out_dir/draw-<k>/ and its manifest (`paths.augmented_manifest`): every
    row of `base` that is not a GAN sample (draw 0's manifest, shared files: real, classic, paste) followed by the
    new GAN rows."""
    folder = f"draw-{draw + 1}"
    rows = []
    for k, s in enumerate(gan):
        case_id = f"aug_d{draw + 1}_{k + 1:05d}"
        image_rel, mask_rel = f"{folder}/images/{case_id}.tif", f"{folder}/masks/{case_id}.tif"
        tiff.write_image(out_dir / image_rel, s.image.astype(np.float32))
        tiff.write_mask(out_dir / mask_rel, s.labels.astype(np.uint8))
        rows.append({
            "case_id": case_id, "split": "train", "slice_index": -1, "image": image_rel, "mask": mask_rel,
            "tumor_pixels": int(np.count_nonzero(s.labels)), "height": s.image.shape[0], "width": s.image.shape[1],
            "channels": s.image.shape[2], "kind": s.kind, "source_cases": s.source_cases, "transforms": s.transforms,
            "in_mix": bool(s.in_mix), "dropout_sampling": bool(sample_dropout),
        })
    manifest = pd.concat([base[base["kind"] != "gan"], pd.DataFrame(rows, columns=base.columns)], ignore_index=True)
    manifest.to_csv(paths.augmented_manifest(out_dir, draw), index=False, lineterminator="\n")
    return manifest

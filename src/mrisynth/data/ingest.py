"""Data jobs: write phantom BraTS cases, and import a BraTS folder into the training-slice layout.

Output of `import_brats` (paths in the manifest are relative to DIR):
    DIR/manifest.csv                      case_id, split, slice_index, image, mask, tumor_pixels, ...
    DIR/<split>/images/<case_id>.tif      float32 (H, W, C) in [0, 1], one channel per modality
    DIR/<split>/masks/<case_id>.tif       uint8 (H, W), BraTS labels within {0, 1, 2, 4}
    DIR/rejected.csv                      only with skip_invalid and at least one rejected case
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mrisynth import MODALITIES
from mrisynth.core import phantom, slicing
from mrisynth.errors import DataError
from mrisynth.io import brats, tiff
from mrisynth.io.manifest import SPLITS, is_plain_name


def _pool(workers: int) -> cf.Executor:
    # spawn, not fork: the caller may already have TensorFlow threads running
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _progress(iterable, total: int, desc: str | None):
    """A tqdm progress bar on stderr when it is a terminal (silent in logs, CI and tests)."""
    if desc is None:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="case", disable=None, leave=False)


def _map(function, items: list, workers: int, desc: str | None = None):
    """Ordered, lazy map; in-process for workers <= 1; a progress bar named `desc` on a terminal."""
    if workers <= 1 or len(items) <= 1:
        yield from _progress(map(function, items), len(items), desc)
        return
    with _pool(workers) as pool:
        yield from _progress(pool.map(function, items), len(items), desc)


# ---------------------------------------------------------------- phantom
PHANTOM_VERSIONS = (1, 2)
CASE_INFO = "phantom_cases.csv"  # per-case facts (grade, location, site, ...) for the dataset card


def _phantom_case(args: tuple[Path, int, int, int]) -> dict:
    root, seed, index, version = args
    case_id = f"BraTS20_Training_{index + 1:03d}"
    if version == 1:
        case = phantom.make_case(seed, index)
    else:
        from mrisynth.core import phantom_v2

        case = phantom_v2.make_case(seed, index)
    brats.write_case(root, case_id, case.volumes, case.seg, phantom.BRATS_AFFINE)
    return {"case_id": case_id, **case.info}


def make_phantom(out: Path, cases: int, seed: int, workers: int = 1, version: int = 2, force: bool = False) -> list[str]:
    """Write `cases` phantom cases into OUT in the BraTS 2020 training layout, plus name_mapping.csv
    (with each case's grade, as BraTS ships it) and phantom_cases.csv (grade, location, site, ...).

    OUT must be empty or new: cases of another seed or count left beside the new ones would be imported
    with them. `force` replaces a folder of phantom cases written earlier (it holds phantom_cases.csv),
    nothing else."""
    if cases < 1:
        raise DataError(f"--cases must be at least 1, got {cases}")
    if version not in PHANTOM_VERSIONS:
        raise DataError(f"--version {version}: expected one of {list(PHANTOM_VERSIONS)} (2 = the realistic default, 1 = the easy original)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is a file, not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DataError(f"{out}: folder already holds files; choose an empty folder or pass --force to replace earlier phantom cases")
        ours = {CASE_INFO, "name_mapping.csv"}
        others = sorted(p.name for p in out.iterdir() if p.name not in ours and not (p.is_dir() and not p.is_symlink() and re.fullmatch(
            brats.LAYOUTS["brats2020"].folder, p.name)))
        if not (out / CASE_INFO).is_file() or others:
            what = f"other entries ({', '.join(others[:3])})" if others else f"no {CASE_INFO}"
            raise DataError(f"{out}: --force replaces only phantom cases written by this tool (case folders, {CASE_INFO}, "
                            f"name_mapping.csv); this folder holds {what}, so nothing was deleted: choose another folder or empty it yourself")
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    rows = list(_map(_phantom_case, [(out, seed, i, version) for i in range(cases)], workers, desc="phantom"))
    brats.write_name_mapping(out, [(r["case_id"], r["grade"]) for r in rows])
    pd.DataFrame(rows).to_csv(out / CASE_INFO, index=False, lineterminator="\n")
    return [r["case_id"] for r in rows]


def default_recipe(data) -> tuple[dict[str, int], ImportOptions, str]:
    """How `mrisynth data default` imports its phantom cases, from params.yaml's `data` section
    (config.DataParams): the split counts, the import options and the source label of the manifest."""
    options = ImportOptions(size=data.image_size, modalities=tuple(data.modalities), slice_rule=data.slice, fit=data.fit)
    counts = {"train": data.train, "val": data.val, "test": data.test}
    return counts, options, f"phantom(version={data.phantom_version}, cases={data.phantom_cases}, seed={data.seed})"


def case_facts(src: Path) -> dict[str, dict]:
    """Per-case facts a source folder ships: grade from name_mapping.csv (BraTS 2020 has it), and
    location/site/... from phantom_cases.csv. Missing files or columns give no entry."""
    facts: dict[str, dict] = {}
    root = brats.find_root(Path(src))
    mapping = root / "name_mapping.csv"
    if mapping.is_file():
        table = pd.read_csv(mapping)
        if {"Grade", "BraTS_2020_subject_ID"} <= set(table.columns):
            for grade, case_id in zip(table["Grade"], table["BraTS_2020_subject_ID"]):
                facts.setdefault(str(case_id), {})["grade"] = str(grade)
    info = root / CASE_INFO
    if info.is_file():
        for row in pd.read_csv(info).to_dict("records"):
            facts.setdefault(str(row.pop("case_id")), {}).update(row)
    return facts


# ---------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportOptions:
    size: int = 256
    modalities: tuple[str, ...] = MODALITIES
    slice_rule: str = "max-tumor"
    fit: str = "pad"
    seed: int = 0  # seeds the random-tumor slice rule (per case: this seed and the case id)
    layout: str | None = None  # brats2020 | brats2021 | brats2023; None: detected from the folder names

    def __post_init__(self) -> None:
        if self.size < 16:
            raise DataError(f"--size must be at least 16, got {self.size}")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise DataError(f"--modalities {','.join(self.modalities)}: expected distinct names from {','.join(MODALITIES)}")
        if self.fit not in ("pad", "resize"):
            raise DataError(f"--fit {self.fit}: expected 'pad' or 'resize'")
        if self.layout is not None and self.layout not in brats.LAYOUTS:
            raise DataError(f"--layout {self.layout}: expected one of {', '.join(brats.LAYOUTS)}")
        if self.slice_rule not in slicing.SLICE_RULES and not str(self.slice_rule).isdigit():
            raise DataError(f"--slice {self.slice_rule}: expected one of {', '.join(slicing.SLICE_RULES)} or an integer")


@dataclass
class SliceResult:
    case_id: str
    source: str
    error: str | None = None
    slice_index: int = -1
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    brain_pixels: int = 0
    spacing_mm: float = 1.0


def _process_case(args: tuple[brats.CaseFiles, ImportOptions]) -> SliceResult:
    """Load, check and slice one case; an invalid case comes back with `error` set, never raises DataError."""
    case, options = args
    result = SliceResult(case.case_id, str(case.directory))
    if not is_plain_name(case.case_id):  # it names the written files and is checked by every later reader
        result.error = f"{case.directory}: case id {case.case_id!r} is not a plain name (letters, digits, . _ + -); rename the folder"
        return result
    try:
        volumes, seg = brats.load_case(case, options.modalities)
    except DataError as exc:
        result.error = str(exc)
        return result
    brain = slicing.brain_mask(volumes)
    try:
        index = slicing.choose_slice(seg, brain, options.slice_rule, rng=np.random.default_rng([options.seed, zlib.crc32(case.case_id.encode())]))
    except ValueError as exc:  # --slice N beyond this case's volume
        result.error = f"{case.case_id}: --slice {options.slice_rule}: {exc} ({seg.shape[2]} axial slices); pick an index inside it or a rule (max-tumor, ...)"
        return result
    image = np.stack([slicing.normalise_volume(v, brain)[:, :, index] for v in volumes], axis=-1)
    result.slice_index = index
    result.image = slicing.fit(image, options.size, options.fit, is_mask=False).astype(np.float32)
    result.mask = slicing.fit(seg[:, :, index], options.size, options.fit, is_mask=True).astype(np.uint8)
    result.brain_pixels = int(np.count_nonzero(result.image.any(axis=-1)))
    result.spacing_mm = _pixel_spacing(case, options, image.shape[0])
    return result


def _pixel_spacing(case: brats.CaseFiles, options: ImportOptions, native_pixels: int) -> float:
    """In-plane mm per pixel of the written slice: the NIfTI voxel size (BraTS: 1 mm), times the
    resize factor for `--fit resize` (padding keeps the voxel size)."""
    import nibabel as nib

    try:
        zoom = float(nib.load(str(case.files[options.modalities[0]])).header.get_zooms()[0])
    except Exception:  # the volume was read above; a header without zooms means 1 mm (BraTS)
        zoom = 1.0
    zoom = zoom if np.isfinite(zoom) and zoom > 0 else 1.0
    return zoom * (native_pixels / options.size if options.fit == "resize" else 1.0)


def _remove_stale_tmp(out: Path) -> None:
    """Delete `.OUT.tmp-PID-*` folders left by imports whose process no longer runs (killed mid-write)."""
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        match = re.match(rf"\.{re.escape(out.name)}\.tmp-(\d+)-", leftover.name)
        if not match or not leftover.is_dir():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def _dataset_json(path: Path) -> dict:
    """DIR/dataset.json as written by this importer ({} when absent or not ours): the marker --force needs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_output(out: Path, force: bool) -> None:
    """Refuse an output folder that holds data, unless `force` and it is a dataset this tool imported."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is a file, not a folder; choose a folder path (--force only replaces a dataset folder)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DataError(f"{out}: output folder already holds data; choose an empty folder or pass --force to replace it")
        if not ((out / "manifest.csv").is_file() and "label_mapping" in _dataset_json(out / "dataset.json")):
            raise DataError(f"{out}: --force replaces only a dataset this tool imported (manifest.csv and dataset.json); this folder "
                            "holds other files, so nothing was deleted: choose another --out or empty it yourself")


def import_brats(
    src: Path,
    out: Path,
    counts: dict[str, int],
    seed: int,
    options: ImportOptions = ImportOptions(),
    skip_invalid: bool = False,
    force: bool = False,
    workers: int = 1,
    source_label: str | None = None,
) -> pd.DataFrame:
    """Sample patient-disjoint splits from a BraTS folder, slice, normalise and fit; write DIR atomically.

    Every selected case is checked before anything is written; the output is built in a temporary
    folder beside OUT and moved into place at the end. Returns the manifest."""
    out = Path(out)
    check_output(out, force)
    for split, n in counts.items():
        if n < 0 or split not in SPLITS:
            raise DataError(f"split {split}={n}: expected a count >= 0 for one of {', '.join(SPLITS)}")
    requested = sum(counts.values())
    if requested == 0:
        raise DataError(f"no cases requested ({', '.join(f'{k} {v}' for k, v in counts.items())}): pass at least one of --train/--val/--test above 0")
    cases = brats.discover(Path(src), options.modalities, options.layout)
    layout = brats.LAYOUTS[cases[0].layout if cases else "brats2020"]
    if len(cases) < requested:
        raise DataError(
            f"{src}: {requested} cases requested ({', '.join(f'{k} {v}' for k, v in counts.items())}), found only {len(cases)} case folders"
        )
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    facts = case_facts(Path(src))
    options = dataclasses.replace(options, seed=seed)

    valid, rejected = _select_valid(order, requested, options, skip_invalid, workers, src)
    return _write_dataset(out, valid, rejected, counts, seed, options, facts, layout, source_label or Path(src).name)


def _select_valid(order: list, requested: int, options: ImportOptions, skip_invalid: bool, workers: int,
                  src: Path) -> tuple[list[SliceResult], list[SliceResult]]:
    """The first `requested` cases of the seeded order, processed (sliced, normalised, fitted): all valid,
    or with skip_invalid the first valid ones and the rejected ones met on the way."""
    valid: list[SliceResult] = []
    rejected: list[SliceResult] = []
    if skip_invalid:
        # walk the seeded order until enough valid cases are found, in chunks to keep workers busy
        position, chunk = 0, max(requested, 2 * workers)
        while len(valid) < requested and position < len(order):
            batch = order[position : position + chunk]
            position += len(batch)
            for result in _map(_process_case, [(c, options) for c in batch], workers, desc="import"):
                if result.error:
                    rejected.append(result)
                elif len(valid) < requested:
                    valid.append(result)
        if len(valid) < requested:
            raise DataError(
                f"{src}: {requested} valid cases requested, found only {len(valid)} of {len(order)} ({len(rejected)} rejected: "
                + "; ".join(r.error for r in rejected[:3]) + (" ..." if len(rejected) > 3 else "") + ")"
            )
    else:
        results = list(_map(_process_case, [(c, options) for c in order[:requested]], workers, desc="import"))
        errors = [r.error for r in results if r.error]
        if errors:
            raise DataError("\n".join(errors + [f"{len(errors)} invalid case(s); nothing written (fix them, or pass --skip-invalid)"]))
        valid = results
    return valid, rejected


def _write_dataset(out: Path, valid: list[SliceResult], rejected: list[SliceResult], counts: dict[str, int], seed: int,
                   options: ImportOptions, facts: dict, layout, source: str) -> pd.DataFrame:
    """Write the dataset folder atomically: built under a temporary name beside OUT, then renamed."""
    splits = [s for s in SPLITS for _ in range(counts.get(s, 0))]
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        for split, result in zip(splits, valid):
            image_rel = f"{split}/images/{result.case_id}.tif"
            mask_rel = f"{split}/masks/{result.case_id}.tif"
            tiff.write_image(tmp / image_rel, result.image)
            tiff.write_mask(tmp / mask_rel, result.mask)
            rows.append(
                {
                    "case_id": result.case_id,
                    "split": split,
                    "slice_index": result.slice_index,
                    "image": image_rel,
                    "mask": mask_rel,
                    "tumor_pixels": int(np.count_nonzero(result.mask)),
                    "brain_pixels": result.brain_pixels,
                    "height": options.size,
                    "width": options.size,
                    "channels": len(options.modalities),
                    "modalities": ",".join(options.modalities),
                    "fit": options.fit,
                    "spacing_mm": round(result.spacing_mm, 6),
                    "source_case": Path(result.source).name,
                    "grade": facts.get(result.case_id, {}).get("grade", "unknown"),
                    "location": facts.get(result.case_id, {}).get("location", "unknown"),
                    "site": facts.get(result.case_id, {}).get("site", "unknown"),
                    "release": layout.name,
                }
            )
        manifest = pd.DataFrame(rows)
        manifest.to_csv(tmp / "manifest.csv", index=False, lineterminator="\n")
        info = {
            "counts": {s: counts.get(s, 0) for s in SPLITS},
            "seed": seed,
            "size": options.size,
            "modalities": list(options.modalities),
            "slice": options.slice_rule,
            "fit": options.fit,
            "source": source,
            "release": layout.name,
            "label_convention": layout.convention,
            "label_mapping": {str(k): v for k, v in layout.to_internal.items()},
        }
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        from mrisynth.io import card

        card.write(tmp, card.build(tmp, manifest))
        if rejected:
            pd.DataFrame([{"case_id": r.case_id, "reason": r.error} for r in rejected]).to_csv(
                tmp / "rejected.csv", index=False, lineterminator="\n"
            )
        if out.exists():
            shutil.rmtree(out)  # only reachable with force (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest

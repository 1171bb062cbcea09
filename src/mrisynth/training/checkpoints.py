"""The GAN's checkpoint store: resume states, the best generator, the top-level state.json.

Checkpoint folder (`out_dir`):
    state.json                 epoch done, best validation loss, fingerprint of the parameters, run id
    resume/epoch-NNNN/         one complete resume state: generator/discriminator weights, optimizer
                               variables and RNG (dropout seed-generator) state, state.json, and
                               MANIFEST.json (sha256 of every file) written last; the folder is built
                               under a temporary name and renamed into place, so a kill leaves either
                               the old states or a complete new one. The newest KEEP_STATES are kept.
    best_generator.keras       the kept generator (lowest validation loss so far, or the last epoch), held in
                               memory between checkpoints (`BestGenerator`) and written with each resume
                               state, at the end and on any exception; best.json says which epoch it is

Resuming verifies the newest state's checksums and falls back to an older complete one with a
one-line warning."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from mrisynth.errors import ConfigError, MrisynthError


class TrainingError(MrisynthError):
    """Training cannot go on (e.g. a NaN loss); the best checkpoint so far is kept."""


@dataclass
class TrainState:
    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = -1
    completed: bool = False
    fingerprint: dict = field(default_factory=dict)
    run_id: str | None = None
    history: list[dict] = field(default_factory=list)
    resume_from: str | None = None  # the verified resume folder this state was loaded from
    finalised: bool = False  # the stage's work after training is done (model copied and registered, run ended)
    code: str | None = None  # digest of the code that trained it (a run finished later must be the same code's)


def _state(data: dict) -> TrainState:
    """A TrainState from its JSON. States written before `finalised` existed were finalised by their stage."""
    return TrainState(**({"finalised": True} | data))


RESUME_DIR = "resume"
KEEP_STATES = 2
MANIFEST = "MANIFEST.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_variables(model: keras.Model) -> list:
    """The model's variables that are not weights: Keras seed-generator states (dropout noise)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def verify_resume(folder: Path) -> str | None:
    """None when `folder` is a complete resume state whose files match its manifest, else the problem."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no MANIFEST.json (the write was cut short)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable MANIFEST.json ({exc})"
    for name, checksum in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != checksum:
            return f"{name} does not match its checksum"
    return None


def latest_resume(out_dir: Path) -> tuple[Path, "TrainState"] | None:
    """The newest verified resume state under out_dir/resume, warning (one line each) about broken ones."""
    root = Path(out_dir) / RESUME_DIR
    for folder in sorted(root.glob("epoch-*"), reverse=True) if root.is_dir() else []:
        problem = verify_resume(folder)
        if problem is None:
            state = _state(json.loads((folder / "state.json").read_text()))
            state.resume_from = str(folder)
            return folder, state
        print(f"warning: resume state {folder} is unusable ({problem}); trying an older one", file=sys.stderr)
    return None




def write_resume(out_dir: Path, state: TrainState, generator: keras.Model, discriminator: keras.Model,
                 variables: dict[str, list]) -> Path:
    """Write a complete resume state atomically (module doc): the two models' weights, `variables`
    (optimizer and RNG state by prefix) and `state`; returns its folder."""
    root = Path(out_dir) / RESUME_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-epoch-{state.epoch:04d}-", dir=root))
    try:
        generator.save_weights(tmp / "generator.weights.h5")
        discriminator.save_weights(tmp / "discriminator.weights.h5")
        arrays = {f"{prefix}{i}": np.asarray(v) for prefix, values in variables.items() for i, v in enumerate(values)}
        np.savez(tmp / "variables.npz", **arrays)
        (tmp / "state.json").write_text(json.dumps({**state.__dict__, "resume_from": None}, indent=2, default=float))
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"epoch": state.epoch, "files": files}, indent=2))
    except OSError as exc:  # a full disk, a quota: one line, no half-written state left behind
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_resume(out_dir)
        raise _disk_error(root, f"the resume state of epoch {state.epoch}", exc,
                          f"The state of epoch {kept[1].epoch} is kept; " if kept else "") from None
    final = root / f"epoch-{state.epoch:04d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    try:
        save_state(Path(out_dir), state)
    except OSError as exc:
        raise _disk_error(Path(out_dir), "state.json", exc, f"The resume state of epoch {state.epoch} is complete; ") from None
    for old in sorted(root.glob("epoch-*"))[:-KEEP_STATES]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".tmp-epoch-*"):  # cut-short writes of earlier processes
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _disk_error(where: Path, what: str, exc: OSError, kept: str) -> TrainingError:
    """One line for a failed checkpoint write: where, why, the free space, what is still on disk."""
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return TrainingError(f"{where}: cannot write {what} ({reason}); {_free_mib(where)} MiB free there. {kept}"
                         "free some space and rerun to resume")


def _free_mib(path: Path) -> int:
    try:
        return int(shutil.disk_usage(path).free / 2**20)
    except OSError:
        return -1


def read_resume(out_dir: Path, folder: Path | None, generator: keras.Model, discriminator: keras.Model,
                variables: dict[str, list]) -> Path:
    """Load a resume state into the models and `variables`: `folder`, or the newest verified one under
    out_dir. Returns its folder."""
    if folder is None:
        found = latest_resume(out_dir)
        if found is None:
            raise TrainingError(f"{Path(out_dir) / RESUME_DIR}: no complete resume state; rerun with --restart to start over")
        folder = found[0]
    folder = Path(folder)
    generator.load_weights(folder / "generator.weights.h5")
    discriminator.load_weights(folder / "discriminator.weights.h5")
    with np.load(folder / "variables.npz") as saved:
        for prefix, values in variables.items():
            for i, variable in enumerate(values):
                variable.assign(saved[f"{prefix}{i}"])
    return folder


def best_record(out_dir: Path) -> tuple[int, float] | None:
    """(epoch, val_g_loss) of the best generator on disk (best.json), None when there is none."""
    path = Path(out_dir) / "best.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record["epoch"], record["val_g_loss"]


class BestGenerator:
    """The generator to keep, held in memory between checkpoints and written on `flush`.

    `build` makes a one-device model of plain Keras layers (under tf.distribute too: plain BatchNorm and
    Dropout); the kept weights are copied into it and saved as best_generator.keras with best.json."""

    def __init__(self, build: Callable[[], keras.Model]):
        self._build = build
        self._portable: keras.Model | None = None
        self._pending: tuple[int, float, list] | None = None

    def keep(self, epoch: int, value: float, weights: list) -> None:
        self._pending = (epoch, float(value), [np.array(w) for w in weights])

    def flush(self, out_dir: Path) -> float:
        """Write the kept generator if it is newer than the file; returns the seconds spent."""
        if self._pending is None:
            return 0.0
        started = time.perf_counter()
        epoch, value, weights = self._pending
        if self._portable is None:
            self._portable = self._build()
        self._portable.set_weights(weights)
        target, tmp = Path(out_dir) / "best_generator.keras", Path(out_dir) / ".best_generator.tmp.keras"
        try:  # written aside and renamed: a failed write never truncates the generator already kept
            self._portable.save(tmp)
            os.replace(tmp, target)
            (Path(out_dir) / "best.json").write_text(json.dumps({"epoch": epoch, "val_g_loss": value}))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _disk_error(Path(out_dir), f"the generator of epoch {epoch + 1}", exc,
                              "The generator kept before it is unchanged; " if target.is_file() else "") from None
        self._pending = None
        return time.perf_counter() - started


def save_state(out_dir: Path, state: TrainState) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "state.json.tmp"
    tmp.write_text(json.dumps({**state.__dict__, "resume_from": None}, indent=2, default=float))
    tmp.replace(out_dir / "state.json")


def load_state(out_dir: Path) -> TrainState | None:
    path = Path(out_dir) / "state.json"
    if not path.is_file():
        return None
    try:
        return _state(json.loads(path.read_text()))
    except (ValueError, TypeError):
        print(f"warning: {path} is unreadable; ignoring it", file=sys.stderr)
        return None


def prepare_state(out_dir: Path, fingerprint: dict, restart: bool, finish_epochs: int | None = None,
                  code: str | None = None, canonical: Callable[[dict], dict] | None = None) -> TrainState:
    """Resume an interrupted run with the same parameters; refuse one with other parameters unless restart.
    A missing or unreadable top-level state.json falls back to the newest verified resume state.
    finish_epochs: a run that completed these epochs with the same parameters and `code` but was not
    finalised (a stop between training and registration) is returned as it is, to be finalised without
    retraining. canonical: applied to a saved state's fingerprint before comparing (equal meanings written
    differently by an older version)."""
    previous = load_state(out_dir)
    if previous is None and not restart:
        found = latest_resume(out_dir)
        previous = found[1] if found is not None else None
    if previous is not None and canonical is not None:
        previous.fingerprint = canonical(previous.fingerprint)
    if (finish_epochs is not None and previous is not None and not restart and previous.completed and not previous.finalised
            and previous.epoch == finish_epochs and previous.fingerprint == fingerprint and previous.code == code
            and code is not None and (out_dir / "best_generator.keras").is_file()):
        print(f"{out_dir}: training finished (epoch {previous.epoch}) but the run was never finalised; finishing it without retraining",
              file=sys.stderr)
        return previous
    if previous is not None and not restart and not previous.completed:
        if previous.fingerprint != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(previous.fingerprint) if fingerprint.get(k) != previous.fingerprint.get(k))
            details = ", ".join(f"{k}: {previous.fingerprint.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{out_dir / 'state.json'}: an interrupted run (epoch {previous.epoch}) was trained with other parameters ({details}); "
                "restore them to resume, or pass --restart (or set MRISYNTH_RESTART=1) to start over"
            )
        found = latest_resume(out_dir)
        if found is not None:
            if canonical is not None:
                found[1].fingerprint = canonical(found[1].fingerprint)
            return found[1]
        print(f"warning: {out_dir}: no complete resume state for the interrupted run (epoch {previous.epoch}); starting over", file=sys.stderr)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return TrainState(fingerprint=fingerprint)

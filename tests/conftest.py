"""Shared fixtures: tiny BraTS-layout trees built in temporary folders."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _matplotlib_rc_restored():
    """Each test starts from the same matplotlib rcParams: optuna's matplotlib plots (tune's study
    artifacts) call `plt.style.use("ggplot")`, which would otherwise recolour every later figure in the
    same process and make figure tests depend on the random test order."""
    import matplotlib

    with matplotlib.rc_context():
        yield


TINY_SHAPE = (48, 48, 12)
MODS = ("flair", "t1", "t1ce", "t2")


def tiny_volumes(seed: int, shape=TINY_SHAPE, tumour_slice: int | None = None):
    """A skull-stripped ellipse 'brain' with a nested tumour (1 in 4 in 2) peaking at tumour_slice."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    cx, cy = shape[0] / 2, shape[1] / 2
    brain = ((x - cx) / (shape[0] * 0.4)) ** 2 + ((y - cy) / (shape[1] * 0.35)) ** 2 < 1
    k = tumour_slice if tumour_slice is not None else int(rng.integers(3, shape[2] - 3))
    tx, ty = cx + rng.integers(-4, 5), cy + rng.integers(-4, 5)
    dist = np.sqrt((x - tx) ** 2 + (y - ty) ** 2 + (2.5 * (z - k)) ** 2)
    seg = np.zeros(shape, np.uint8)
    seg[(dist < 9) & brain] = 2
    seg[(dist < 6) & brain] = 4
    seg[(dist < 3) & brain] = 1
    volumes = {}
    for i, m in enumerate(MODS):
        v = (100 + 50 * i + rng.normal(0, 5, shape)) * brain + 80.0 * (seg > 0)
        volumes[m] = v.astype(np.float32)
    return volumes, seg, k


def write_tiny_case(root: Path, case_id: str, seed: int, ending=".nii.gz", image_dtype=np.int16, seg_dtype=np.uint8,
                    seg_name: str | None = None, shape=TINY_SHAPE, tumour_slice=None):
    volumes, seg, k = tiny_volumes(seed, shape, tumour_slice)
    d = root / case_id
    d.mkdir(parents=True, exist_ok=True)
    for m, v in volumes.items():
        nib.save(nib.Nifti1Image(v.astype(image_dtype), np.eye(4)), str(d / f"{case_id}_{m}{ending}"))
    name = seg_name or f"{case_id}_seg{ending}"
    nib.save(nib.Nifti1Image(seg.astype(seg_dtype), np.eye(4)), str(d / name))
    return d, k


@pytest.fixture
def tiny_brats(tmp_path: Path):
    """A MICCAI_BraTS2020_TrainingData tree with 12 cases: mixed .nii/.nii.gz, int16/float32 images,
    uint8/float64 masks, and case 355 with its W39_1998.09.19_Segm.nii quirk."""
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, 13):
        number = 355 if i == 12 else i
        case_id = f"BraTS20_Training_{number:03d}"
        ending = ".nii" if i % 2 else ".nii.gz"
        image_dtype = np.float32 if i % 3 == 0 else np.int16
        seg_dtype = np.float64 if i % 4 == 0 else np.uint8
        seg_name = "W39_1998.09.19_Segm.nii" if number == 355 else None
        write_tiny_case(root, case_id, seed=i, ending=ending, image_dtype=image_dtype, seg_dtype=seg_dtype, seg_name=seg_name)
    (root / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n")
    return root


def truncate_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def gz(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def tf_configs(n: int = 2) -> list[str]:
    """TF_CONFIG values for an n-worker cluster on free localhost ports, one per worker index."""
    import json
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    hosts = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}) for i in range(n)]


# tiny 2-D splits for GAN training tests (training/, and the training/gan_distributed.py helper process)
def _tiny_split(n=4, size=64, seed=0):
    from mrisynth.core import encoding, slicing
    from mrisynth.io import arrays

    images, labels = [], []
    for i in range(n):
        vols, seg, k = tiny_volumes(seed + i, shape=(48, 48, 12))
        brain = np.any(np.stack(list(vols.values())) > 0, axis=0)
        image = np.stack([slicing.normalise_volume(v, brain)[:, :, k] for v in vols.values()], -1)
        images.append(slicing.fit(image, size, "pad", is_mask=False))
        labels.append(slicing.fit(seg[:, :, k], size, "pad", is_mask=True))
    images, labels = np.stack(images).astype(np.float32), np.stack(labels)
    brain = images.any(-1)
    return arrays.SplitArrays(images, labels, brain, encoding.conditioning(labels, brain), np.array([f"c{i}" for i in range(n)]))


def make_tiny_project(root: Path, brats_root: Path, extra_params: dict | None = None) -> Path:
    """A working folder with data/ (imported tiny cases, 64 px), params.yaml for tiny, fast runs,
    preprocessed arrays and its own MLflow SQLite store. Returns the folder; the caller chdirs."""
    import yaml

    from mrisynth.data.ingest import ImportOptions, import_brats

    import_brats(brats_root, root / "data", {"train": 4, "val": 2, "test": 2}, 1, ImportOptions(size=64))
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # every section written out, as the stages require
    tiny = {
        "preprocess": {"data_dir": "data", "out_dir": "work/preprocessed", "image_size": 64},
        # the paper's full synthesis: these fixtures serve 4-channel conditioning (inpainting: tests/training/test_synthesis_levers.py, the e2e run)
        "train_gan": {"epochs": 2, "batch_size": 2, "width": 0.25, "grid_every": 1, "grid_images": 2, "alpha_file": None,
                      "precision": "float32", "experiment": "tiny", "registry_name": "tiny-generator", "synthesis": "full",
                      "select": "val_loss", "diffaugment": "", "draws": 1},
        "augment": {"harmonise": "none", "filter_dice": None},   # harmonise: inpainting only; the filter: tests/augment/test_sample_filter.py
    }
    for section, values in [*tiny.items(), *(extra_params or {}).items()]:
        params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture(scope="session")
def tiny_project_base(tmp_path_factory):
    """A tiny project with preprocess already run; MLflow points at its own SQLite file for the session.
    Tests use `tiny_project` (function scope: the working directory is set and restored per test)."""
    from mrisynth.stages import preprocess

    base = tmp_path_factory.mktemp("project")
    tiny_tree = base / "brats"
    for i in range(1, 9):
        write_tiny_case(tiny_tree, f"BraTS20_Training_{i:03d}", seed=i)
    project = make_tiny_project(base / "repo", tiny_tree)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with _cwd(project):
            assert preprocess.run("params.yaml") == 0
        yield project
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def trained_base(tiny_project_base):
    """The tiny project after `train_gan` (2 epochs at 64 px). Read-only for tests: a test that writes
    project files uses `trained_copy`."""
    from mrisynth.stages import train_gan

    with _cwd(tiny_project_base):
        assert train_gan.run("params.yaml") == 0
    return tiny_project_base


@pytest.fixture
def tiny_project(tiny_project_base, monkeypatch):
    monkeypatch.chdir(tiny_project_base)
    return tiny_project_base


@pytest.fixture
def trained(trained_base, monkeypatch):
    monkeypatch.chdir(trained_base)
    return trained_base


@pytest.fixture
def trained_copy(trained_base, tmp_path, monkeypatch):
    """A private copy of the trained project (files and MLflow store) as the working directory."""
    import shutil

    import mlflow

    copy = tmp_path / "trained"
    shutil.copytree(trained_base, copy, ignore=shutil.ignore_patterns("brats"))
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{copy / 'mlflow.db'}")
    yield copy
    mlflow.set_tracking_uri(f"sqlite:///{trained_base / 'mlflow.db'}")


# ---------------------------------------------------------------- registered generator versions (inference/)
@pytest.fixture(scope="session")
def promo(trained_base):
    """Registered versions of a separate generator model ('promo-generator') for promotion tests,
    logged in their own experiment ('promo') so the `tiny` experiment keeps its single train_gan run.
    One set for the session: the promotion, serving and generate tests share it."""
    from types import SimpleNamespace

    import mlflow

    from mrisynth.stages import train_gan

    settings = SimpleNamespace(registry_name="promo-generator")
    best = trained_base / "work" / "gan" / "best_generator.keras"
    card = {"data": {"source": "tiny test cases"}, "training": {"generator": "pix2pix"}, "validation": {"val_ssim": 0.5}}
    versions = []
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("promo")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "promo", artifact_location=(trained_base / "mlartifacts" / "promo").resolve().as_uri())
    for _ in range(3):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            versions.append(train_gan.register(settings, best, 64, 4, run.info.run_id, {}, card))
    return versions


@pytest.fixture
def champion(promo):
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias("promo-generator", "champion", promo[-1])
    return promo[-1]


# ---------------------------------------------------------------- tiny end-to-end runs (pipeline/, ops/test_team.py)
TINY_PARAMS = {
    "preprocess": {"image_size": 64},
    "tune": {"n_trials": 2, "epochs": 1, "storage": "sqlite:///optuna.db"},
    "train_gan": {"epochs": 1, "batch_size": 2, "width": 0.25, "grid_every": 1, "grid_images": 2, "precision": "float32", "draws": 2},
    "augment": {"factor": 3},
    "train_segmenter": {"seeds": [1, 2], "epochs": 2, "min_epochs": 1, "patience": 1, "batch_size": 4, "depth": 2, "base_filters": 4, "precision": "float32"},
    "gan_usefulness": {"diversity_samples": 2},
    "evaluate": {"examples": 2, "bootstrap": 200},
}


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if f and not f.startswith(("tests/", "reports/", "dvc.lock"))]


def copy_tracked_repo(dest: Path) -> Path:
    """The repository's tracked files (no tests, reports, dvc.lock; data.dvc removed: the copy builds its own data)."""
    for name in _tracked_files():
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / "data.dvc").unlink(missing_ok=True)
    return dest


# the tiny GAN settings of the trainer tests (the paper's method, 64 px)
def tiny_gan():
    from mrisynth.training.gan import paper_settings

    return paper_settings(alpha=100.0, epochs=2, batch_size=2, width=0.25, precision="float32", seed=3, checkpoint_every=1)


@pytest.fixture(autouse=True)
def _restore_working_directory():
    """No test leaves the process in another directory."""
    before = os.getcwd()
    yield
    os.chdir(before)


class _cwd:
    def __init__(self, path):
        self.path, self.before = path, None

    def __enter__(self):
        self.before = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.before)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The long end-to-end tests (marked `slow`) first, in pytest-randomly's order among themselves, the rest
    after them in its order: under `make test`'s two xdist workers a several-minute test that started last
    would leave the other worker idle until it ends (the Makefile's --maxschedchunk 1 shares them out). The
    sort is stable and pytest-randomly's shuffle is seeded alike in every worker, so all collect one order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def toy_train_and_generator():
    """6 training slices at 32 px (2 channels, one 4x4 edema square each, seed 3) and a stand-in Keras generator:
    tanh of the conditioning's first two channels (rendering compiles a Keras model)."""
    import keras

    from mrisynth.io.arrays import SplitArrays

    rng = np.random.default_rng(3)
    n, size = 6, 32
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(8, 20, size=2)
        labels[i, y : y + 4, x : x + 4] = 2
    brain = np.zeros((n, size, size), bool)
    brain[:, 3:29, 3:29] = True
    images = (rng.random((n, size, size, 2)) * brain[..., None]).astype(np.float32)
    train = SplitArrays(images=images, labels=labels, brain=brain, conditioning=np.zeros((n, size, size, 4), np.float32),
                        case_ids=np.array([f"c{i}" for i in range(n)]), spacing=np.ones(n))
    conditioning = keras.Input((size, size, 4))
    generator = keras.Model(conditioning, keras.layers.Conv2D(2, 1, activation="tanh", use_bias=False)(conditioning))
    kernel = np.zeros((1, 1, 4, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    generator.set_weights([kernel])
    return train, generator

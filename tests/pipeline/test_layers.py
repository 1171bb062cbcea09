"""Import rules that keep the layers honest (fmind/mlops-python-package style):

- core: pure; imports only mrisynth.core, mrisynth.errors and the package's constants;
- io: side effects; imports only core, io, errors (and third-party packages);
- job packages (training, augment, data, inference, ops): may use core, io, config, paths, errors and
  one another, never stages;
- stages: orchestration; a stage never imports another stage module (the runner's helpers in
  `mrisynth.stages`, i.e. stages/__init__.py, are shared by all);
- library modules never import stages.

Every folder of the package must be listed in LAYERS, so a new subpackage cannot escape the rules."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "mrisynth"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported mrisynth module or module.name) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mrisynth")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mrisynth"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


JOBS = ("training", "augment", "data", "inference", "ops")
LAYERS = ("", "core", "io", "stages", *JOBS)  # "" = the top-level modules (cli, config, errors, ...)


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py")) if folder else sorted(PACKAGE.glob("*.py"))


def test_every_subpackage_is_under_a_layer_rule():
    folders = sorted(p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
    assert set(folders) <= set(LAYERS), f"add {sorted(set(folders) - set(LAYERS))} to LAYERS in tests/pipeline/test_layers.py with its rule"


def _allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.startswith(prefixes) or name in ("mrisynth.MODALITIES", "mrisynth.BRATS_LABELS")


@pytest.mark.parametrize("folder, prefixes", [
    ("core", ("mrisynth.core", "mrisynth.errors")),
    ("io", ("mrisynth.core", "mrisynth.io", "mrisynth.errors")),
])
def test_lower_layers_import_only_lower_layers(folder, prefixes):
    bad = [f"{path.name}:{line} imports {name}" for path in _modules(folder) for line, name in _imports(path) if not _allowed(name, prefixes)]
    assert not bad, bad


def _stage_modules() -> set[str]:
    return {f"mrisynth.stages.{p.stem}" for p in _modules("stages") if p.stem != "__init__"}


def _is_stage_module(name: str) -> bool:
    """True for `mrisynth.stages.<stage>` or anything inside it; the runner's own names (mrisynth.stages.X) are fine."""
    return any(name == m or name.startswith(m + ".") for m in _stage_modules())


@pytest.mark.parametrize("name, stage", [
    ("mrisynth.stages.stage_main", False), ("mrisynth.stages.note_worker_peak_rss", False),
    ("mrisynth.stages.tune", True), ("mrisynth.stages.tune.run", True), ("mrisynth.stages.train_gan", True),
])
def test_the_rule_tells_a_stage_module_from_the_runner(name, stage):
    assert _is_stage_module(name) is stage


def test_stages_do_not_import_each_other():
    bad = [f"stages/{path.name}:{line} imports {name}" for path in _modules("stages") for line, name in _imports(path)
           if _is_stage_module(name)]
    assert not bad, bad


@pytest.mark.parametrize("folder", JOBS)
def test_job_packages_import_no_stage(folder):
    bad = [f"{folder}/{path.name}:{line} imports {name}" for path in _modules(folder) for line, name in _imports(path)
           if name.startswith("mrisynth.stages") or name.startswith("mrisynth.cli")]
    assert not bad, bad


def test_library_modules_do_not_import_stages():
    bad = [f"{path.name}:{line} imports {name}" for folder in ("", "core", "io", *JOBS) for path in _modules(folder)
           for line, name in _imports(path) if name.startswith("mrisynth.stages") and path.name != "cli.py"]
    assert not bad, bad


def _mlflow_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mlflow"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mlflow":
            found += [(node.lineno, node.module)]
    return found


# served_model.InputError is an MlflowException (MLflow's scoring protocol turns it into HTTP 400): an
# exception type, not a tracking or registry call.
MLFLOW_TYPES_ONLY = {"inference/served_model.py": ("mlflow.exceptions", "mlflow.protos.databricks_pb2")}


MLFLOW_MODULES = ("io/tracking.py", "io/registry.py")  # runs and the model registry


def test_all_mlflow_calls_live_behind_io_tracking_and_registry():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in MLFLOW_MODULES:
            continue
        for line, module in _mlflow_imports(path):
            if module not in MLFLOW_TYPES_ONLY.get(rel, ()):
                bad.append(f"{rel}:{line} imports {module}; use mrisynth.io.tracking (stage_run, ...) or mrisynth.io.registry "
                           "(register_keras_model, ...)")
    assert not bad, bad


def test_the_mlflow_rule_sees_a_violation(tmp_path):
    sample = tmp_path / "stage.py"
    sample.write_text("def run():\n    import mlflow\n    from mlflow.tracking import MlflowClient\n")
    assert _mlflow_imports(sample) == [(2, "mlflow"), (3, "mlflow.tracking")]


def test_every_report_path_is_declared_in_dvc_yaml():
    """mrisynth.paths is the one place report paths are written; dvc.yaml must declare each as an output."""
    from mrisynth import paths

    dvc = (PACKAGE.parents[1] / "dvc.yaml").read_text()
    missing = [str(p) for p in paths.WRITTEN if f"- {p.as_posix()}" not in dvc]
    assert not missing, f"reports written by the stages but not declared in dvc.yaml: {missing}"
    stray = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "paths.py"
             and any(f'"{p.as_posix()}"' in path.read_text() for p in paths.WRITTEN)]
    assert not stray, f"report paths written as literals outside mrisynth/paths.py: {stray}"

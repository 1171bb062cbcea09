"""The DVC graph is derived from the code: every stage declares exactly the modules it imports and the
params.yaml sections it reads (mrisynth.ops.dvcgraph), and `dvc status` follows an edited module to exactly
the stages that use it. Everything that edits runs on copies under tmp_path."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mrisynth.ops import dvcgraph

REPO = Path(__file__).resolve().parents[2]
COPIED = ("src", "pipelines", "expectations", "dvc.yaml", "params.yaml", "data.dvc")


def copy_repo(dest: Path, with_data_dvc: bool = True) -> Path:
    """The small files the graph is made of (no data/, work/, .venv), with dvc.yaml brought up to date
    (--write), so that each test sees only its own change (the repository's own state is the first test's)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO / name
        if name == "data.dvc" and not with_data_dvc:
            continue
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.is_file():
            shutil.copy2(src, dest / name)
    _, errors = dvcgraph.write(dest)
    assert not errors, "\n".join(e.describe() for e in errors)
    assert dvcgraph.check(dest) == []
    return dest


def stages_of(root: Path) -> list[str]:
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrisynth.ops.dvcgraph", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n" + textwrap.dedent(text))


# ---------------------------------------------------------------------------------- the repository itself
def test_repository_dvc_yaml_matches_the_code():
    diffs = dvcgraph.check(REPO)
    assert not diffs, "dvc.yaml is out of date; run `make dvc-graph`:\n" + "\n".join(d.describe() for d in diffs)
    result = run_cli("--check", "--root", str(REPO))
    assert result.returncode == 0, result.stderr


def test_write_would_not_change_the_repository_dvc_yaml():
    text, errors = dvcgraph.render(REPO)
    assert not errors
    assert text == (REPO / "dvc.yaml").read_text()


def test_every_stage_depends_on_its_entry_points_config_and_errors():
    for stage in stages_of(REPO):
        deps = dvcgraph.expected_deps(stage, REPO)
        for needed in (f"pipelines/{stage}.py", f"src/mrisynth/stages/{stage}.py", "src/mrisynth/__init__.py",
                       "src/mrisynth/stages/__init__.py", "src/mrisynth/config.py", "src/mrisynth/errors.py"):
            assert needed in deps, (stage, needed)
        assert len(deps) == len(set(deps))
        assert all((REPO / d).is_file() for d in deps), stage
        assert dvcgraph.expected_params(stage, REPO), stage


def test_package_inits_and_resources_follow_the_modules():
    deps = dvcgraph.expected_deps("preprocess", REPO)
    assert "src/mrisynth/io/gx.py" in deps and "src/mrisynth/io/__init__.py" in deps
    assert {f"expectations/{p.name}" for p in (REPO / "expectations").glob("*.json")} <= set(deps)
    assert "src/mrisynth/core/quality.py" not in deps  # the GAN's metric is not preprocessing's business
    assert "preprocess" in dvcgraph.expected_params("preprocess", REPO)


def test_templated_paths_come_from_params_yaml():
    text = (REPO / "dvc.yaml").read_text()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    refs = re.findall(r"\$\{([\w.]+)\}", text)
    assert {"preprocess.out_dir", "augment.out_dir", "train_segmenter.out_dir", "tune.out",
            "train_gan.model_path", "train_gan.out_dir", "preprocess.data_dir"} <= set(refs)
    for ref in refs:
        section, key = ref.split(".")
        assert key in params[section], ref
    for literal in ("work/preprocessed", "work/augmented", "work/segmenter", "work/gan", "models/generator.keras",
                    "best_alpha.json"):
        assert literal not in text, f"{literal} is written out in dvc.yaml; use its params.yaml key"


# ---------------------------------------------------------------------------------- drift is caught
def test_a_new_import_in_a_stage_module_fails_the_check_naming_the_stage(tmp_path):
    root = copy_repo(tmp_path / "repo")
    assert "src/mrisynth/core/quality.py" not in dvcgraph.expected_deps("preprocess", root)
    append(root / "src/mrisynth/stages/preprocess.py", "import mrisynth.core.quality\n")
    diffs = {d.stage: d for d in dvcgraph.check(root)}
    assert set(diffs) == {"preprocess"}
    assert "src/mrisynth/core/quality.py" in diffs["preprocess"].missing_deps
    result = run_cli("--check", "--root", str(root))
    assert result.returncode == 1
    assert "stage preprocess" in result.stderr and "missing dep    src/mrisynth/core/quality.py" in result.stderr
    # --write repairs it, and only that stage's entry changes
    before = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert run_cli("--write", "--root", str(root)).returncode == 0
    after = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert dvcgraph.check(root) == []
    assert {s for s in before if before[s] != after[s]} == {"preprocess"}
    assert "src/mrisynth/core/quality.py" in after["preprocess"]["deps"]


def test_imports_inside_functions_and_from_package_imports_are_followed(tmp_path):
    root = copy_repo(tmp_path / "repo")
    append(root / "src/mrisynth/stages/preprocess.py", """\
        def _later():
            from mrisynth.inference import served_model
            from mrisynth.core import losses as _losses
            return served_model, _losses
        """)
    missing = {d.stage: d for d in dvcgraph.check(root)}["preprocess"].missing_deps
    assert {"src/mrisynth/inference/served_model.py", "src/mrisynth/core/losses.py"} <= set(missing)


def test_a_dep_removed_from_dvc_yaml_fails_the_check(tmp_path):
    root = copy_repo(tmp_path / "repo")
    dvc = root / "dvc.yaml"
    data = yaml.safe_load(dvc.read_text())
    stage = "train_segmenter"
    assert "src/mrisynth/io/arrays.py" in data["stages"][stage]["deps"]
    data["stages"][stage]["deps"].remove("src/mrisynth/io/arrays.py")
    data["stages"][stage]["deps"].append("src/mrisynth/gan.py")  # and one it does not use
    dvc.write_text(yaml.safe_dump(data, sort_keys=False))
    diffs = {d.stage: d for d in dvcgraph.check(root)}
    assert set(diffs) == {stage}
    assert list(diffs[stage].missing_deps) == ["src/mrisynth/io/arrays.py"]
    assert diffs[stage].extra_deps == ["src/mrisynth/gan.py"]


def test_a_stage_reading_an_undeclared_section_is_caught(tmp_path):
    root = copy_repo(tmp_path / "repo")
    assert "evaluate" not in dvcgraph.expected_params("preprocess", root)
    append(root / "src/mrisynth/stages/preprocess.py", """\
        def _examples(params):
            return params.evaluate.examples
        """)
    diffs = {d.stage: d for d in dvcgraph.check(root)}
    assert set(diffs) == {"preprocess"}
    assert "evaluate" in diffs["preprocess"].missing_params
    result = run_cli("--check", "--root", str(root))
    assert result.returncode == 1 and "stage preprocess" in result.stderr and "missing param  evaluate" in result.stderr


def test_sections_read_through_getattr_and_undeclared_params_in_dvc_yaml(tmp_path):
    root = copy_repo(tmp_path / "repo")
    append(root / "src/mrisynth/io/arrays.py", """\
        def _promote(params):
            return getattr(params, "promote")
        """)
    dvc = root / "dvc.yaml"
    data = yaml.safe_load(dvc.read_text())
    data["stages"]["preprocess"]["params"] = []
    dvc.write_text(yaml.safe_dump(data, sort_keys=False))
    diffs = {d.stage: d for d in dvcgraph.check(root)}
    users = {s for s in stages_of(root) if "src/mrisynth/io/arrays.py" in dvcgraph.expected_deps(s, root)}
    assert users and set(diffs) == users  # every stage that imports io/arrays.py now reads `promote`
    for stage in users:
        assert "promote" in diffs[stage].missing_params
    assert "preprocess" in diffs["preprocess"].missing_params


def test_a_stage_without_its_module_is_reported(tmp_path):
    root = copy_repo(tmp_path / "repo")
    append(root / "dvc.yaml", "")
    text = (root / "dvc.yaml").read_text().replace(
        "stages:\n", "stages:\n  ghost:\n    cmd: python pipelines/ghost.py\n    outs:\n      - work/ghost\n", 1)
    (root / "dvc.yaml").write_text(text)
    diffs = {d.stage: d for d in dvcgraph.check(root)}
    assert set(diffs) == {"ghost"}
    assert "no stage module mrisynth.stages.ghost" in diffs["ghost"].error
    result = run_cli("--check", "--root", str(root))
    assert result.returncode == 1 and "stage ghost: no stage module mrisynth.stages.ghost" in result.stderr
    assert run_cli("--write", "--root", str(root)).returncode == 1  # the others are written, ghost is reported


# ---------------------------------------------------------------------------------- the analysis, on a toy package
def toy_repo(root: Path) -> Path:
    files = {
        "src/mrisynth/__init__.py": "",
        "src/mrisynth/errors.py": "class MrisynthError(Exception):\n    pass\n",
        "src/mrisynth/config.py": """\
            from dataclasses import dataclass, field
            from mrisynth.errors import MrisynthError

            @dataclass
            class Params:
                data: dict = field(default_factory=dict)
                evaluate: dict = field(default_factory=dict)
                fit: dict = field(default_factory=dict)

                def check(self):
                    return self.evaluate  # cross-section validation: not a read of the stage

            def data_of(params):
                return params.data  # config.py outside Params counts like any module
            """,
        "src/mrisynth/util/__init__.py": "from . import helpers\n",
        "src/mrisynth/util/helpers.py": "from ..errors import MrisynthError\n",
        "src/mrisynth/util/unused.py": "",
        "src/mrisynth/plugin.py": "",
        "src/mrisynth/stages/__init__.py": "",
        "src/mrisynth/stages/fit.py": """\
            import importlib
            import tensorflow as tf
            from mrisynth.config import Params
            from mrisynth.util import helpers as h

            def run(params: Params):
                importlib.import_module("mrisynth.plugin")
                ds = tf.data.Dataset  # a module's attribute, not params.data
                return params.fit, h
            """,
        "pipelines/fit.py": "from mrisynth.stages.fit import run\n",
        "dvc.yaml": """\
            # top comment
            stages:
              fit:
                cmd: python pipelines/fit.py   # trailing comment
                deps:
                  - raw            # data: kept
                  - src/mrisynth/util/unused.py
                outs:
                  - out:
                      persist: true
              other:
                foreach: [a, b]
                do:
                  cmd: echo ${item}
            plots:
              - out/plot.csv: {x: epoch}
            """,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def test_toy_package_closure_params_and_write(tmp_path):
    root = toy_repo(tmp_path / "toy")
    assert dvcgraph.expected_deps("fit", root) == [
        "pipelines/fit.py",
        "src/mrisynth/__init__.py",
        "src/mrisynth/config.py",
        "src/mrisynth/errors.py",
        "src/mrisynth/plugin.py",
        "src/mrisynth/stages/__init__.py",
        "src/mrisynth/stages/fit.py",
        "src/mrisynth/util/__init__.py",
        "src/mrisynth/util/helpers.py",
    ]
    assert dvcgraph.expected_params("fit", root) == ["data", "fit"]  # not tf.data, not Params.check's evaluate
    diffs = {d.stage: d for d in dvcgraph.check(root)}
    assert diffs["fit"].extra_deps == ["src/mrisynth/util/unused.py"]
    assert "no stage module mrisynth.stages.other" in diffs["other"].error

    changed, errors = dvcgraph.write(root)
    assert changed and [e.stage for e in errors] == ["other"]
    text = (root / "dvc.yaml").read_text()
    assert text.startswith("# top comment\n")
    assert "cmd: python pipelines/fit.py   # trailing comment" in text
    assert "- raw            # data: kept" in text
    assert "- out/plot.csv: {x: epoch}" in text
    fit = yaml.safe_load(text)["stages"]["fit"]
    assert fit["deps"] == ["raw", *dvcgraph.expected_deps("fit", root)]
    assert fit["params"] == ["data", "fit"]
    assert fit["outs"] == [{"out": {"persist": True}}]
    assert [d.stage for d in dvcgraph.check(root)] == ["other"]
    assert dvcgraph.write(root)[0] is False  # idempotent


# ---------------------------------------------------------------------------------- real `dvc status`
def _dvc() -> str:
    exe = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    if not Path(exe).exists():
        pytest.skip("dvc is not installed")
    return exe


def _resolve(text: str, params: dict) -> str:
    def lookup(match):
        value = params
        for key in match.group(1).split("."):
            value = value[key]
        return str(value)
    return re.sub(r"\$\{([\w.]+)\}", lookup, text)


def _paths(items) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else i for i in items or []]


def test_dvc_status_marks_exactly_the_stages_that_import_an_edited_module(tmp_path):
    dvc = _dvc()
    root = copy_repo(tmp_path / "repo", with_data_dvc=False)  # `data` becomes a plain dependency
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load(_resolve((root / "dvc.yaml").read_text(), params))["stages"]
    # fake data and outputs, so that `dvc commit` can record a lock as if every stage had run
    for stage in stages.values():
        for path in _paths(stage.get("deps")) + [p for k in ("outs", "metrics", "plots") for p in _paths(stage.get(k))]:
            target = root / path
            if target.exists():
                continue
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"fake {path}\n")
            else:
                target.mkdir(parents=True)
                (target / "fake.txt").write_text(f"fake {path}\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site")}

    def dvc_run(*args):
        result = subprocess.run([dvc, *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def changed() -> set[str]:
        return set(json.loads(dvc_run("status", "--json") or "{}"))

    dvc_run("init", "--no-scm", "-q")
    dvc_run("commit", "-f", "-q")
    assert changed() == set()

    # two probes whose users are some stages, not all (chosen from the graph, as the code keeps moving):
    # the most specific module, then one that marks further stages
    deps = {s: dvcgraph.expected_deps(s, root) for s in stages}
    users = {m: {s for s in stages if m in deps[s]} for m in sorted({m for d in deps.values() for m in d})
             if m.startswith("src/")}
    candidates = sorted((m for m, u in users.items() if u != set(stages)), key=lambda m: (len(users[m]), m))
    first = candidates[0]
    second = next(m for m in candidates if not users[m] <= users[first])
    expected: set[str] = set()
    for module in (first, second):
        append(root / module, "# edited\n")
        expected |= users[module]
        assert changed() == expected, module


def test_stage_commands_use_the_projects_interpreter_without_the_venv_on_path():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert all(stage["cmd"].startswith("sh pipelines/python pipelines/") for stage in stages.values())
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}  # as `.venv/bin/dvc repro` without activation
    ran = subprocess.run(["sh", "pipelines/python", "-c", "import mrisynth, sys; print(sys.prefix)"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr


def test_git_commit_tag_is_clean_when_only_pipeline_outputs_changed(tmp_path):
    from mrisynth.io import tracking

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "reports").mkdir()
    for name in ("dvc.lock", "reports/metrics.json", "code.py"):
        (tmp_path / name).write_text("1\n")
    git("add", "-A")
    git("commit", "-qm", "x")
    (tmp_path / "dvc.lock").write_text("2\n")  # what `dvc repro` rewrites mid-run
    (tmp_path / "reports" / "metrics.json").write_text("2\n")
    tag = tracking.git_commit(tmp_path)
    assert len(tag) == 40 and not tag.endswith("-dirty"), tag
    (tmp_path / "code.py").write_text("2\n")
    assert tracking.git_commit(tmp_path).endswith("-dirty")


def test_the_documented_check_command_runs_on_the_repository():
    """`python -m mrisynth.dvcgraph --check`, as the docs give it (the module forwards to mrisynth.ops.dvcgraph)."""
    r = subprocess.run([sys.executable, "-m", "mrisynth.dvcgraph", "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "every stage declares exactly the code it imports" in r.stdout, r.stdout + r.stderr

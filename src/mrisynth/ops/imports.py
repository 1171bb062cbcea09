"""Static analysis of the source for the DVC graph (mrisynth.ops.dvcgraph): which mrisynth modules
and params.yaml sections each stage uses, found without importing any module (see dvcgraph's doc)."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "mrisynth"
SRC_DIR = "src"
PIPELINES_DIR = "pipelines"
STAGES_PACKAGE = f"{PACKAGE}.stages"
CONFIG_MODULE = f"{PACKAGE}.config"
PARAMS_CLASS = "Params"
PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
# A folder that a module names in a string constant -> the files of it that the module reads.
RESOURCES = {"expectations": "*.json"}
# dvc.yaml deps under these paths are managed (computed) here; every other dep is data and kept.
MANAGED_PREFIXES = (SRC_DIR, PIPELINES_DIR, *RESOURCES)


class GraphError(Exception):
    """dvc.yaml or the source tree cannot be analysed (a stage without its module, unparsable source...)."""


def default_root() -> Path:
    """The repository: the working directory when it holds dvc.yaml, else the checkout this file is in."""
    cwd = Path.cwd()
    if (cwd / DVC_FILE).is_file():
        return cwd
    return Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------------------- source analysis
@dataclass
class ModuleFacts:
    """What one source file imports and reads (first line of each, for messages)."""

    imports: dict[str, int] = field(default_factory=dict)       # candidate mrisynth module names -> line
    required: dict[str, int] = field(default_factory=dict)      # names that must be modules (import x.y, from x import ...)
    sections: dict[str, int] = field(default_factory=dict)      # Params fields accessed -> line
    resources: dict[str, int] = field(default_factory=dict)     # resource folders named -> line


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _in_package(name: str | None) -> bool:
    return bool(name) and (name == PACKAGE or name.startswith(PACKAGE + "."))


class Analyzer:
    """Static import/params analysis of the source tree under ROOT (cached per file)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.src = self.root / SRC_DIR
        self._facts: dict[Path, ModuleFacts] = {}
        self._fields: tuple[str, ...] | None = None

    # --- names and files
    def module_file(self, name: str) -> Path | None:
        """src/<a>/<b>.py or src/<a>/<b>/__init__.py for module a.b, or None."""
        base = self.src.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def stage_files(self, stage: str) -> tuple[Path, Path]:
        """(entry script, stage module) of a stage, or GraphError naming what is missing."""
        base = stage.split("@")[0]  # foreach/matrix instances share their definition's module
        script = self.root / PIPELINES_DIR / f"{base}.py"
        module = self.module_file(f"{STAGES_PACKAGE}.{base}")
        missing = []
        if module is None:
            missing.append(f"no stage module {STAGES_PACKAGE}.{base} ({SRC_DIR}/{STAGES_PACKAGE.replace('.', '/')}/{base}.py)")
        if not script.is_file():
            missing.append(f"no entry script {PIPELINES_DIR}/{base}.py")
        if missing:
            raise GraphError(f"stage {stage}: " + "; ".join(missing) + " (stage names must match mrisynth.stages.<name>)")
        return script, module

    def params_fields(self) -> tuple[str, ...]:
        """Field names of config.Params, read from config.py's AST (nothing is imported)."""
        if self._fields is None:
            path = self.module_file(CONFIG_MODULE)
            if path is None:
                raise GraphError(f"{CONFIG_MODULE}: no source file under {self.src}")
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name == PARAMS_CLASS:
                    self._fields = tuple(
                        stmt.target.id for stmt in node.body
                        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    )
                    break
            else:
                raise GraphError(f"{self.rel(path)}: no class {PARAMS_CLASS}")
        return self._fields

    def _module_name(self, path: Path) -> tuple[str | None, bool]:
        """(dotted module name, is package) of a file under src/, or (None, False) for a script."""
        try:
            parts = list(path.relative_to(self.src).with_suffix("").parts)
        except ValueError:
            return None, False
        if parts[-1] == "__init__":
            return ".".join(parts[:-1]), True
        return ".".join(parts), False

    # --- one file
    def facts(self, path: Path) -> ModuleFacts:
        if path not in self._facts:
            self._facts[path] = self._analyse(path)
        return self._facts[path]

    def _analyse(self, path: Path) -> ModuleFacts:
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except SyntaxError as exc:
            raise GraphError(f"{self.rel(path)}: cannot parse ({exc})") from exc
        modname, is_package = self._module_name(path)
        facts = ModuleFacts()
        module_names: set[str] = set()  # names bound to modules here: their attributes are not params

        def add(table: dict[str, int], name: str, line: int) -> None:
            table.setdefault(name, line)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module_names.add(alias.asname or alias.name.split(".")[0])
                    if _in_package(alias.name):
                        for prefix in _prefixes(alias.name):
                            add(facts.imports, prefix, node.lineno)
                        add(facts.required, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = self._from_base(node, modname, is_package)
                if not _in_package(base):
                    module_names.update(a.asname or a.name for a in node.names if a.name != "*")
                    continue
                for prefix in _prefixes(base):
                    add(facts.imports, prefix, node.lineno)
                add(facts.required, base, node.lineno)
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    sub = f"{base}.{alias.name}"
                    if self.module_file(sub) is not None:
                        add(facts.imports, sub, node.lineno)
                        module_names.add(alias.asname or alias.name)
            elif isinstance(node, ast.Call):
                target = self._dynamic_import(node)
                if _in_package(target):
                    for prefix in _prefixes(target):
                        add(facts.imports, prefix, node.lineno)
                    add(facts.required, target, node.lineno)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                if value and not any(c.isspace() for c in value):
                    for part in re.split(r"[/\\]", value):
                        if part in RESOURCES:
                            add(facts.resources, part, getattr(node, "lineno", 0))

        fields = set(self.params_fields())
        skipped: set[int] = set()
        if modname == CONFIG_MODULE:
            # Params' own methods validate across sections (load_params runs them for every stage);
            # they shape no output, so they are not reads of the stage. The rest of config.py counts.
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name == PARAMS_CLASS:
                    skipped = {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Attribute) and node.attr in fields:
                if isinstance(node.value, ast.Name) and node.value.id in module_names:
                    continue  # tf.data, segmetrics.evaluate: a module's attribute
                add(facts.sections, node.attr, node.lineno)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in fields):
                add(facts.sections, node.args[1].value, node.lineno)
        return facts

    @staticmethod
    def _from_base(node: ast.ImportFrom, modname: str | None, is_package: bool) -> str | None:
        if not node.level:
            return node.module
        if modname is None:
            return None  # a relative import in a script: not ours to resolve
        package = modname.split(".") if is_package else modname.split(".")[:-1]
        if node.level - 1 > len(package):
            return None
        package = package[: len(package) - (node.level - 1)]
        return ".".join(package + ([node.module] if node.module else []))

    @staticmethod
    def _dynamic_import(node: ast.Call) -> str | None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            value = node.args[0].value
            return value if isinstance(value, str) else None
        return None

    # --- a stage
    def closure(self, stage: str) -> dict[Path, str]:
        """Every file a stage runs: {path: why} (the script, its mrisynth modules, their package __init__s)."""
        script, module = self.stage_files(stage)
        seen: dict[Path, str] = {script: "entry script", module: "stage module"}
        queue = [script, module]
        while queue:
            path = queue.pop()
            facts = self.facts(path)
            for name, line in facts.imports.items():
                target = self.module_file(name)
                if target is not None and target not in seen:
                    seen[target] = f"imported by {self.rel(path)}:{line}"
                    queue.append(target)
            # every package on the way to a module runs its __init__ first
            modname, _ = self._module_name(path)
            for prefix in _prefixes(modname)[:-1] if modname else []:
                target = self.module_file(prefix)
                if target is not None and target not in seen:
                    seen[target] = f"package of {self.rel(path)}"
                    queue.append(target)
        return seen

    def unresolved(self, stage: str) -> list[str]:
        """mrisynth modules imported in the closure that have no source file (warnings)."""
        out = []
        for path in self.closure(stage):
            for name, line in self.facts(path).required.items():
                if self.module_file(name) is None:
                    out.append(f"{self.rel(path)}:{line}: imports {name}, which has no source file")
        return out

    def deps(self, stage: str) -> dict[str, str]:
        """{dependency path: why} for the code and resource files of a stage, in dvc.yaml order."""
        files = self.closure(stage)
        script, _ = self.stage_files(stage)
        out = {self.rel(script): files[script]}
        for path in sorted(files, key=self.rel):
            if path != script:
                out[self.rel(path)] = files[path]
        resources: dict[str, str] = {}
        for path in files:
            for folder, line in self.facts(path).resources.items():
                resources.setdefault(folder, f"{self.rel(path)}:{line}")
        for folder in sorted(resources):
            for res in sorted((self.root / folder).glob(RESOURCES[folder])):
                if res.is_file():
                    out[self.rel(res)] = f"{folder}/ named in {resources[folder]}"
        return out

    def params(self, stage: str) -> dict[str, str]:
        """{params.yaml section: where it is read} for a stage, in Params field order."""
        found: dict[str, str] = {}
        for path in sorted(self.closure(stage), key=self.rel):
            for section, line in self.facts(path).sections.items():
                found.setdefault(section, f"{self.rel(path)}:{line}")
        return {s: found[s] for s in self.params_fields() if s in found}


def expected_deps(stage: str, root: Path | str | None = None) -> list[str]:
    """The code and resource files stage STAGE depends on (repo-relative POSIX paths)."""
    return list(Analyzer(root).deps(stage))


def expected_params(stage: str, root: Path | str | None = None) -> list[str]:
    """The params.yaml sections stage STAGE reads."""
    return list(Analyzer(root).params(stage))



"""The code side of the DVC graph, derived from the code: which files and params.yaml sections each stage uses.

A stage `NAME` in dvc.yaml runs `pipelines/NAME.py`, which calls the module `mrisynth.stages.NAME`.
Its code dependencies are the transitive closure of the *mrisynth* modules those two files import,
found by static analysis of the source (no module is imported): imports at any depth (inside functions
too), `from mrisynth.x import y` where `y` is a submodule, relative imports and
`importlib.import_module("mrisynth....")` with a literal name; every package `__init__.py` on the way.
Each module is one dependency, so editing one file marks exactly the stages whose closure holds it.

The params.yaml sections a stage reads are the fields of `mrisynth.config.Params` (found in config.py's
source) accessed as attributes (`params.train_gan`, `load_params().tune`) or `getattr(x, "tune")` by any
module of the closure; whole sections are declared (over-declaring is safe, under-declaring is the bug).
Not counted: attributes of imported modules (`tf.data`, `segmetrics.evaluate`) and the methods of
config.Params itself, whose cross-section validation runs for every stage and shapes no output.

Resource folders that a module names in a string (`Path(...) / "expectations"`) add their files
(`expectations/*.json`) as dependencies.

    python -m mrisynth.ops.dvcgraph --check   # exit 1 with a per-stage diff when dvc.yaml disagrees
    python -m mrisynth.ops.dvcgraph --write   # rewrite the code deps and params of each stage in place

`--write` edits only the `deps` entries it manages (paths under src/, pipelines/ and the resource
folders) and the params.yaml entries of `params`; data deps, outs, metrics, plots, comments and the
order of everything else are kept as written.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mrisynth.ops.imports import (  # the source side; dvc.yaml's side and the CLI are below
    DVC_FILE, MANAGED_PREFIXES, PARAMS_FILE, Analyzer, GraphError, default_root, expected_deps, expected_params)

__all__ = ["check", "write", "render", "warnings", "main", "expected_deps", "expected_params", "Analyzer", "GraphError"]


# ----------------------------------------------------------------------------------------- dvc.yaml side
def is_managed_dep(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MANAGED_PREFIXES)


def _dep_path(item) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and len(item) == 1:
        return str(next(iter(item)))
    return None


def _stage_body(definition: dict) -> dict:
    """The mapping that holds deps/params: the stage itself, or its `do` for a foreach stage."""
    return definition.get("do", definition) if isinstance(definition, dict) else {}


def load_stages(root: Path) -> dict[str, dict]:
    path = root / DVC_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GraphError(f"{path}: cannot read ({exc})") from exc
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        raise GraphError(f"{path}: `stages` is not a mapping")
    return stages


def declared_code_deps(definition: dict) -> list[str]:
    return [p for p in map(_dep_path, _stage_body(definition).get("deps") or []) if p is not None and is_managed_dep(p)]


def declared_params(definition: dict) -> list[str]:
    """params.yaml entries of a stage (a whole-file entry reads as `params.yaml`)."""
    out = []
    for item in _stage_body(definition).get("params") or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for file, keys in item.items():
                if file == PARAMS_FILE:
                    out.extend(keys if keys else [PARAMS_FILE])
    return out


@dataclass
class StageDiff:
    stage: str
    missing_deps: dict[str, str] = field(default_factory=dict)
    extra_deps: list[str] = field(default_factory=list)
    missing_params: dict[str, str] = field(default_factory=dict)
    extra_params: list[str] = field(default_factory=list)
    error: str | None = None

    def __bool__(self) -> bool:
        return bool(self.missing_deps or self.extra_deps or self.missing_params or self.extra_params or self.error)

    def describe(self) -> str:
        if self.error:
            return f"  {self.error}"
        lines = [f"  stage {self.stage}:"]
        for dep, why in self.missing_deps.items():
            lines.append(f"    missing dep    {dep}  ({why})")
        for dep in self.extra_deps:
            lines.append(f"    extra dep      {dep}  (not in the stage's import closure)")
        for section, where in self.missing_params.items():
            lines.append(f"    missing param  {section}  (read at {where})")
        for item in self.extra_params:
            lines.append(f"    extra param    {item}  (expected whole sections that the code reads)")
        return "\n".join(lines)


def check(root: Path | str | None = None) -> list[StageDiff]:
    """The stages whose dvc.yaml entry disagrees with the code (empty when the graph is right)."""
    analyzer = Analyzer(root)
    diffs = []
    for stage, definition in load_stages(analyzer.root).items():
        diff = StageDiff(stage)
        try:
            deps, params = analyzer.deps(stage), analyzer.params(stage)
        except GraphError as exc:
            diff.error = str(exc)
            diffs.append(diff)
            continue
        have_deps, have_params = declared_code_deps(definition), declared_params(definition)
        diff.missing_deps = {d: why for d, why in deps.items() if d not in have_deps}
        diff.extra_deps = [d for d in have_deps if d not in deps]
        diff.missing_params = {s: where for s, where in params.items() if s not in have_params}
        diff.extra_params = [p for p in have_params if p not in params]
        if diff:
            diffs.append(diff)
    return diffs


def warnings(root: Path | str | None = None) -> list[str]:
    analyzer = Analyzer(root)
    out: list[str] = []
    for stage in load_stages(analyzer.root):
        try:
            out.extend(w for w in analyzer.unresolved(stage) if w not in out)
        except GraphError:
            pass
    return out


# ----------------------------------------------------------------------------------------- --write
_KEY_RE = re.compile(r"""^(?P<indent> *)(?P<key>"[^"]*"|'[^']*'|[^\s#'"\-][^:#]*?)\s*:(?:\s+(?P<rest>.*))?$""")


def _significant(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _entries(lines: list[str], start: int, end: int) -> dict[str, tuple[int, int, int]]:
    """Keys of the block mapping in lines[start:end]: {key: (key line, end of its block, indent)}.
    A block ends at its last significant line (trailing comments and blank lines stay outside)."""
    found: list[tuple[str, int, int]] = []
    indent = None
    for i in range(start, end):
        if not _significant(lines[i]):
            continue
        ind = _indent(lines[i])
        if indent is None:
            indent = ind
        if ind == indent:
            m = _KEY_RE.match(lines[i])
            if m:
                found.append((m.group("key").strip("'\""), i, ind))
    out = {}
    for k, (key, i, ind) in enumerate(found):
        stop = found[k + 1][1] if k + 1 < len(found) else end
        last = i
        for j in range(i + 1, stop):
            if _significant(lines[j]):
                last = j
        out[key] = (i, last + 1, ind)
    return out


def _render(values: list, indent: int) -> list[str]:
    if not values:
        return []
    text = yaml.safe_dump(values, default_flow_style=False, sort_keys=False, width=1000)
    return [" " * indent + line for line in text.splitlines()]


def _rewrite_list(lines: list[str], container: tuple[int, int], key: str, loaded: list,
                  keep, new_items: list, managed_first: bool, after: tuple[str, ...]) -> list[str]:
    """Replace the managed items of list KEY in the mapping lines[container]; keep the others verbatim."""
    entries = _entries(lines, *container)
    body_indent = next(iter(entries.values()))[2] if entries else _indent(lines[container[0]]) + 2
    if key in entries:
        i, stop, _ = entries[key]
        m = _KEY_RE.match(lines[i])
        rest = (m.group("rest") or "").split("#")[0].strip() if m else ""
        chunks: list[list[str]] = []
        if rest:  # flow style (`deps: [a, b]`): re-render the kept values
            item_indent = body_indent + 2
            chunks = [_render([v], item_indent) for v in loaded]
        else:
            first = next((j for j in range(i + 1, stop) if _significant(lines[j])), None)
            item_indent = _indent(lines[first]) if first is not None else body_indent + 2
            current: list[str] | None = None
            pending: list[str] = []
            for j in range(i + 1, stop):
                line = lines[j]
                if _significant(line) and _indent(line) == item_indent and line.lstrip().startswith("-"):
                    current = pending + [line]
                    pending = []
                    chunks.append(current)
                elif current is None:
                    pending.append(line)
                else:
                    current.append(line)
            if len(chunks) != len(loaded):
                raise GraphError(f"{DVC_FILE}: cannot map the lines of `{key}` at line {i + 1} to its items; rewrite it in block style")
        kept = [chunk for chunk, value in zip(chunks, loaded) if keep(value)]
        rendered = _render(new_items, item_indent)
        body = (rendered + [l for c in kept for l in c]) if managed_first else ([l for c in kept for l in c] + rendered)
        head = [lines[i].split(":", 1)[0] + ":"] if rest else [lines[i]]
        if not body:
            return lines[:i] + lines[stop:]
        return lines[:i] + head + body + lines[stop:]
    if not new_items:
        return lines
    # no such key yet: add it after the first of AFTER that exists (or at the end of the mapping)
    anchor = next((entries[a][1] for a in after if a in entries), None)
    if anchor is None:
        anchor = max((e[1] for e in entries.values()), default=container[0])
    block = [" " * body_indent + f"{key}:"] + _render(new_items, body_indent + 2)
    return lines[:anchor] + block + lines[anchor:]


def _stage_container(lines: list[str], stage: str) -> tuple[int, int]:
    top = _entries(lines, 0, len(lines))
    if "stages" not in top:
        raise GraphError(f"{DVC_FILE}: no `stages` block")
    s0, s1, _ = top["stages"]
    stages = _entries(lines, s0 + 1, s1)
    if stage not in stages:
        raise GraphError(f"{DVC_FILE}: cannot find stage {stage} in the text")
    t0, t1, _ = stages[stage]
    body = _entries(lines, t0 + 1, t1)
    if "do" in body:
        d0, d1, _ = body["do"]
        return d0 + 1, d1
    return t0 + 1, t1


def render(root: Path | str | None = None) -> tuple[str, list[StageDiff]]:
    """dvc.yaml's text with every stage's code deps and params recomputed, and the stages left alone (errors)."""
    analyzer = Analyzer(root)
    path = analyzer.root / DVC_FILE
    text = path.read_text()
    lines = text.splitlines()
    errors = []
    for stage in load_stages(analyzer.root):
        try:
            deps, params = list(analyzer.deps(stage)), list(analyzer.params(stage))
        except GraphError as exc:
            errors.append(StageDiff(stage, error=str(exc)))
            continue
        body = _stage_body(yaml.safe_load("\n".join(lines))["stages"][stage])
        lines = _rewrite_list(lines, _stage_container(lines, stage), "deps", list(body.get("deps") or []),
                              keep=lambda v: not is_managed_dep(_dep_path(v) or ""), new_items=deps,
                              managed_first=False, after=("cmd", "wdir"))
        body = _stage_body(yaml.safe_load("\n".join(lines))["stages"][stage])
        lines = _rewrite_list(lines, _stage_container(lines, stage), "params", list(body.get("params") or []),
                              keep=lambda v: isinstance(v, dict) and PARAMS_FILE not in v, new_items=params,
                              managed_first=True, after=("deps", "cmd", "wdir"))
    new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
    yaml.safe_load(new)  # still YAML
    return new, errors


def write(root: Path | str | None = None) -> tuple[bool, list[StageDiff]]:
    """Rewrite dvc.yaml in place; (changed, stages that could not be analysed)."""
    root = Path(root) if root is not None else default_root()
    path = root / DVC_FILE
    new, errors = render(root)
    changed = new != path.read_text()
    if changed:
        path.write_text(new)
    return changed, errors


# ----------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrisynth.ops.dvcgraph", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml's code deps or params disagree with the code")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps and params of every stage in dvc.yaml")
    mode.add_argument("--show", metavar="STAGE", help="print the computed deps and params of one stage, with reasons")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: . when it holds dvc.yaml)")
    args = parser.parse_args(argv)
    root = args.root or default_root()
    try:
        for warning in warnings(root):
            print(f"warning: {warning}", file=sys.stderr)
        if args.show:
            analyzer = Analyzer(root)
            print(f"{args.show}:\n  deps:")
            for dep, why in analyzer.deps(args.show).items():
                print(f"    {dep}  ({why})")
            print("  params:")
            for section, where in analyzer.params(args.show).items():
                print(f"    {section}  (read at {where})")
            return 0
        if args.write:
            changed, errors = write(root)
            print(f"{DVC_FILE}: {'rewritten' if changed else 'already up to date'}")
            for e in errors:
                print(e.describe(), file=sys.stderr)
            return 1 if errors else 0
        diffs = check(root)
    except GraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not diffs:
        print(f"{DVC_FILE}: every stage declares exactly the code it imports and the params it reads")
        return 0
    print(f"{DVC_FILE} disagrees with the code (fix with `make dvc-graph`, i.e. python -m mrisynth.ops.dvcgraph --write):",
          file=sys.stderr)
    for diff in diffs:
        print(diff.describe(), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""docs/configuration.md, generated from the params.yaml schema (mrisynth.config): every section and key
with its type, default and description (the field's trailing comment in config.py).

    python -m mrisynth.ops.configdoc > docs/configuration.md"""
from __future__ import annotations

import dataclasses
import typing

from mrisynth.config import Params, _expected


def _field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of each field line in the class source: the field's description."""
    import inspect
    import io
    import tokenize

    comments, current = {}, None
    for token in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if token.type == tokenize.NAME and token.start[1] == 4 and current is None:
            current = token.string
        elif token.type == tokenize.COMMENT and current is not None:
            comments[current] = token.string.lstrip("# ").strip()
        elif token.type == tokenize.NEWLINE:
            current = None
    return comments


def reference() -> str:
    """docs/configuration.md: every params.yaml section and key, with type, default and description."""
    lines = ["# Configuration reference (`params.yaml`)", "",
             "Generated from the schema in `src/mrisynth/config.py` by `python -m mrisynth.ops.configdoc > docs/configuration.md` "
             "(a test checks that this page is up to date). Every section must be present; a key left out of one takes the default "
             "below, which is also the shipped `params.yaml`. Unknown keys and wrong types stop every stage with one "
             "line naming the key.", ""]
    for section in dataclasses.fields(Params):
        cls = typing.get_type_hints(Params)[section.name]
        doc = " ".join((cls.__doc__ or "").split())
        lines += [f"## `{section.name}`", ""] + ([doc, ""] if doc and not doc.startswith(cls.__name__ + "(") else [])
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        comments, hints, default = _field_comments(cls), typing.get_type_hints(cls), cls()
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            shown = list(value) if isinstance(value, tuple) else value
            text = "null" if shown is None else str(shown).lower() if isinstance(shown, bool) else str(shown)
            lines.append(f"| `{f.name}` | {_expected(hints[f.name])} | `{text}` | {comments.get(f.name, '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")

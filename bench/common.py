"""Shared by the benchmarks: the machine description and the JSON each script leaves for `make bench`."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write(path: str | None, result: dict) -> None:
    """Write `result` (with the machine) to `path` as JSON, when a path was given."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine()} | result, indent=2) + "\n")

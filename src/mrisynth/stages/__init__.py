"""One module per DVC stage; each exposes `run(...) -> exit code` and `main()` (its entry point)."""
from __future__ import annotations

import sys
from typing import Callable

from mrisynth.errors import MrisynthError


def stage_main(run: Callable[[], int]) -> None:
    """Run a stage and exit with its code; a user-facing error prints one readable block and exits 2."""
    try:
        sys.exit(run())
    except MrisynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

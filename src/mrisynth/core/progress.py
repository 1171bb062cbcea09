"""Progress lines for long loops: `k/N`, elapsed and an ETA (the mean time per finished unit so far).

One line per unit of work, so a pipe or a log file shows progress as a terminal would (no bars)."""
from __future__ import annotations

import time
from typing import Callable


def clock(seconds: float) -> str:
    """Seconds as `m:ss`, or `h:mm:ss` from one hour on (negative counts as 0)."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts units of work: `step(label)` returns `"<what> k/N <label>: elapsed m:ss, ETA m:ss"` for the
    unit that starts now (ETA from the mean duration of the units finished before it; `?` before the first)."""

    def __init__(self, total: int, what: str, now: Callable[[], float] = time.perf_counter):
        self.total, self.what, self.now = total, what, now
        self.started = now()
        self.done = 0

    def step(self, label: str = "") -> str:
        elapsed = self.now() - self.started
        eta = clock(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        self.done += 1
        return f"{self.what} {self.done}/{self.total}{' ' + label if label else ''}: elapsed {clock(elapsed)}, ETA {eta}"

"""Progress lines: k/N, elapsed and ETA from the mean time of the finished units (a fake clock)."""
import pytest

from mrisynth.core.progress import Progress, clock


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.4, "0:59"), (61, "1:01"), (3600, "1:00:00"), (3725, "1:02:05"), (-3, "0:00")])
def test_clock(seconds, text):
    assert clock(seconds) == text


def test_progress_counts_and_estimates_from_finished_units():
    now = [100.0]
    progress = Progress(4, "run", now=lambda: now[0])
    assert progress.step("(none seed 1)") == "run 1/4 (none seed 1): elapsed 0:00, ETA ?"
    now[0] += 30  # first unit took 30 s: 3 left -> 90 s
    assert progress.step() == "run 2/4: elapsed 0:30, ETA 1:30"
    now[0] += 90  # two units in 120 s: 60 s each, 2 left
    assert progress.step("x") == "run 3/4 x: elapsed 2:00, ETA 2:00"

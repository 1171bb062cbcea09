"""Render a local HTML file in headless Chromium with no network, and measure the screenshot.

Shared by tests/pipeline/test_offline_views.py and the end-to-end `dvc repro` test. Tests that use it
skip (or skip their browser part) when no Chromium/Chrome binary is installed
(`apt-get install chromium` on Debian/Ubuntu)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str | None:
    """The first Chromium/Chrome binary on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def screenshot(page: Path, out: Path, size: tuple[int, int] = (1200, 900), timeout: int = 120) -> np.ndarray:
    """Screenshot of file `page` as an RGB uint8 array. The browser has no network: every proxy points
    at a closed local port and every host name resolves to nothing, so a page that needs a CDN renders
    without it."""
    from PIL import Image

    exe = browser()
    assert exe, "no Chromium binary (the caller skips first)"
    out = Path(out)
    profile = out.parent / f"{out.stem}-profile"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--disable-extensions", "--disable-background-networking", "--disable-component-update",
           f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", Path(page).resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.is_file(), f"{exe} wrote no screenshot (exit {result.returncode}):\n{result.stderr[-2000:]}"
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def non_white_share(shot: np.ndarray, level: int = 235) -> float:
    """Share of pixels with any channel below `level` (a blank page: ~0)."""
    return float(np.mean((shot < level).any(axis=-1)))


def colour_pixels(shot: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    """How many pixels lie within `tolerance` of colour `rgb` in every channel."""
    return int(np.sum((np.abs(shot.astype(int) - np.array(rgb)) <= tolerance).all(axis=-1)))


def page_text(url: str, timeout: int = 180, budget_ms: int = 15000) -> str:
    """The visible text of `url` after its JavaScript ran (headless Chromium `--dump-dom`, tags stripped,
    whitespace collapsed). For pages served on 127.0.0.1 (e.g. the MLflow UI): every other host name
    resolves to nothing, so nothing is fetched from a CDN."""
    import re
    import tempfile

    exe = browser()
    assert exe, "no Chromium binary (the caller skips first)"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,900",
               f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", result.stdout))

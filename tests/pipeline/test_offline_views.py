"""The web views open offline: `dvc plots show` embeds the PNGs the stages draw (no Vega from a CDN), and the
validation report of preprocess is one self-contained page. Rendered in headless Chromium with no network;
the browser tests skip only when no Chromium/Chrome binary is installed (`apt-get install chromium`)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO
from offline_render import browser, colour_pixels, non_white_share, screenshot

from mrisynth import paths
from mrisynth.core import datadocs, figures

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".svg")
TAB_BLUE = (31, 119, 180)                          # the curves' first line colour (matplotlib)
PASS_GREEN, FAIL_RED = (212, 237, 218), (179, 45, 46)  # datadocs.CSS: a passed result cell, the FAILED badge
needs_browser = pytest.mark.skipif(browser() is None, reason="no chromium, chromium-browser or google-chrome binary")


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_top_level_plots_are_images_that_stages_write():
    """CSV/Vega plots need Vega from a CDN (blank offline); every plot is a PNG a stage declares as its output."""
    dvc = _dvc_yaml()
    plots = dvc["plots"]
    assert plots and all(isinstance(p, str) and p.endswith(IMAGE_EXTENSIONS) for p in plots), plots
    outs = {next(iter(o)) if isinstance(o, dict) else o for stage in dvc["stages"].values()
            for key in ("outs", "plots") for o in stage.get(key) or []}
    written = {p.as_posix() for p in paths.WRITTEN}
    for plot in plots:
        assert plot in outs and plot in written, plot
    assert paths.TRAIN_GAN_CURVES.as_posix() in plots


def _fake_plot_images(root: Path, plots: list[str]) -> None:
    """The images the stages would write: the GAN curves as train_gan draws them, the other panels as grids."""
    rng = np.random.default_rng(0)
    for plot in plots:
        path = root / plot
        path.parent.mkdir(parents=True, exist_ok=True)
        if plot == paths.TRAIN_GAN_CURVES.as_posix():
            history = [{"epoch": e, "g_loss": 10 / e, "val_g_loss": 11 / e, "d_loss": 1.4, "val_psnr": 20 + e, "val_ssim": 0.8}
                       for e in range(1, 6)]
            image = figures.training_curves(history, "train_gan", kept_epoch=5)
        else:
            image = figures.image_grid([[rng.random((64, 64)) for _ in range(4)] for _ in range(2)])
        Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """`dvc plots show` of the repository's dvc.yaml over stand-in images: dvc_plots/index.html."""
    root = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    _fake_plot_images(root, _dvc_yaml()["plots"])
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(root),
           "DVC_SITE_CACHE_DIR": str(root / ".dvc-site")}
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True, env=env, timeout=120)
    shown = subprocess.run([dvc, "plots", "show", "-o", "dvc_plots"], cwd=root, capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return root / "dvc_plots" / "index.html"


def check_plots_page(index: Path, plots: list[str]) -> None:
    """index.html embeds one local <img> per plot and loads nothing from the network."""
    html = index.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html, html[:2000]
    assert html.count("<img") == len(plots)
    for plot in plots:
        assert plot in html
    for src in (part.split('"')[0] for part in html.split('<img src="')[1:]):
        assert (index.parent / src).is_file(), src


def test_dvc_plots_show_writes_an_offline_page(plots_page):
    check_plots_page(plots_page, _dvc_yaml()["plots"])


@needs_browser
def test_dvc_plots_page_renders_offline(plots_page, tmp_path):
    shot = screenshot(plots_page, tmp_path / "plots.png", size=(1200, 2400))
    assert non_white_share(shot) > 0.02  # with the images missing (titles and frames only): ~0.004
    assert colour_pixels(shot, TAB_BLUE) > 100  # the GAN curves image itself, not only the page's titles


def _suites(failing: set[int]) -> list[dict]:
    expectations = json.loads((REPO / "expectations" / "brats_slices.json").read_text())["expectations"]
    rows = [{"type": e["type"], "target": e["kwargs"].get("column", "table"), "notes": e.get("meta", {}).get("notes", ""),
             "expected": str(e["kwargs"]), "success": k not in failing, "observed": "0 of 8 rows unexpected",
             "details": "case_1: label 3" if k in failing else ""} for k, e in enumerate(expectations)]
    return [{"name": "brats_slices", "success": not failing, "statistics": {}, "expectations": rows}]


@needs_browser
def test_validation_report_renders_styled_offline(tmp_path):
    page = tmp_path / "data_validation.html"
    page.write_text(datadocs.html(_suites(failing={3}), source="data"))
    shot = screenshot(page, tmp_path / "validation.png")
    assert non_white_share(shot) > 0.05
    assert colour_pixels(shot, PASS_GREEN, 8) > 500 and colour_pixels(shot, FAIL_RED, 20) > 200  # the inline CSS applied


@needs_browser
def test_the_browser_has_no_network(tmp_path):
    """The check above means something: a page that needs a CDN script stays blank in this browser."""
    page = tmp_path / "cdn.html"
    page.write_text('<!DOCTYPE html><html><body><script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'
                    '<script>if (window.vega) document.body.innerHTML = '
                    '\'<div style="width:1200px;height:900px;background:#000"></div>\';</script></body></html>')
    assert non_white_share(screenshot(page, tmp_path / "cdn.png")) < 0.01

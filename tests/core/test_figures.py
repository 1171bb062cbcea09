"""Figures as arrays: train_gan's per-epoch curves (the DVC image plot reports/train_gan_curves.png), panel captions."""
import numpy as np

from mrisynth.core import figures

TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def _history(epochs: int) -> list[dict]:
    return [{"epoch": e, "g_loss": 20.0 / e, "val_g_loss": 21.0 / e, "g_l1": 0.3 / e, "val_g_l1": 0.32 / e, "d_loss": 1.4,
             "val_mae": 0.03 / e, "val_psnr": 20.0 + e, "val_ssim": 0.8 + 0.01 * e} for e in range(1, epochs + 1)]


def _pixels(image: np.ndarray, rgb, tolerance: int = 20) -> int:
    return int(np.sum((np.abs(image.astype(int) - np.array(rgb)) <= tolerance).all(axis=-1)))


def test_training_curves_draw_every_panel_as_an_rgb_image():
    image = figures.training_curves(_history(5), "curves", kept_epoch=3)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 400 and image.shape[1] >= 800
    assert 0.02 < np.mean((image < 235).any(axis=-1)) < 0.6  # drawn, but not a solid block
    assert _pixels(image, TAB_BLUE) > 100 and _pixels(image, TAB_ORANGE) > 50  # train and validation lines


def test_training_curves_take_one_epoch_missing_keys_and_no_history():
    one = figures.training_curves(_history(1), kept_epoch=1)
    assert _pixels(one, TAB_BLUE) > 10  # a single epoch is a visible point
    partial = figures.training_curves([{"epoch": 1, "g_loss": 2.0}, {"epoch": 2, "g_loss": float("nan")}])
    empty = figures.training_curves([])
    assert partial.shape == empty.shape == one.shape


def test_training_curves_follow_the_data():
    assert not np.array_equal(figures.training_curves(_history(4)), figures.training_curves(_history(6)))


# per-panel captions (case id, Dice) of reports/test_examples.png
def test_caption_drawn_in_its_panel_only():
    grid = figures.image_grid([[np.ones((32, 32)), np.ones((32, 32))]])  # two white panels, 2 px gap
    captioned = figures.caption_panels(grid, [["", "Dice 0.81"]], 32)
    assert np.array_equal(captioned[:, :32], grid[:, :32])  # the first panel has no caption
    changed = np.argwhere((captioned != grid).any(axis=-1))
    assert changed[:, 1].min() >= 34 and changed[:, 0].min() >= 32 - 12  # bottom-left corner of the second panel
    assert (captioned[changed[:, 0], changed[:, 1]] == 0).all(axis=-1).any()  # the black box behind the text

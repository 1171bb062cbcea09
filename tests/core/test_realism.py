"""The realism panel: hand-computed AUCs, identical images score 1.0, blur and flat contrast are caught."""
import numpy as np
import pytest
from scipy import ndimage

from mrisynth.core import realism


@pytest.mark.parametrize("positive, negative, expected", [
    ([2.0, 3.0], [1.0], 1.0),           # every positive above every negative
    ([1.0], [2.0, 3.0], 0.0),
    ([1.0, 3.0], [2.0], 0.5),           # one above, one below
    ([2.0], [2.0], 0.5),                # a tie counts one half
    ([2.0, 2.0, 4.0], [2.0, 1.0], (1.5 + 1.5 + 2.0) / 6),
])
def test_auc_by_hand(positive, negative, expected):
    assert realism.auc(np.array(positive), np.array(negative)) == pytest.approx(expected)


def _images(seed=0, n=6, size=32):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.uint8)
    labels[:, 12:18, 12:18] = 2
    where = np.zeros((n, size, size), bool)
    where[:, 4:28, 4:28] = True
    base = rng.uniform(0.3, 0.6, size=(n, 1, 1, 2))                    # a site brightness per image
    images = np.clip(base + 0.08 * rng.standard_normal((n, size, size, 2)), 0, 1)
    images[labels == 2] += 0.3                                          # a bright tumour
    return np.clip(images * where[..., None], 0, 1), labels, where


def test_identical_images_have_ratio_one_and_pass():
    images, labels, where = _images()
    panel = realism.panel(images, images.copy(), labels, where, ["flair", "t1"])
    assert panel["within_tolerance"] and panel["worst_deviation"] == pytest.approx(0.0)
    assert set(panel["flair"]) == set(realism.STATISTICS)


def test_blurred_flat_images_are_caught():
    images, labels, where = _images()
    flat = np.full_like(images, 0.45) * where[..., None]                # grey brains: no texture, no sites, no tumour
    blurred = np.stack([ndimage.gaussian_filter(im, (2, 2, 0)) for im in images]) * where[..., None]
    flat_panel = realism.panel(images, flat, labels, where, ["flair", "t1"])
    assert not flat_panel["within_tolerance"]
    assert flat_panel["flair"]["texture_spread"]["ratio"] == pytest.approx(0.0, abs=1e-6)
    assert flat_panel["flair"]["tumour_auc"]["generated"] == pytest.approx(0.5)
    blur_panel = realism.panel(images, blurred, labels, where, ["flair", "t1"])
    assert blur_panel["flair"]["high_frequency"]["ratio"] < 0.5 and blur_panel["flair"]["gradient"]["ratio"] < 0.75

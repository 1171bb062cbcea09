"""The non-learned threshold reference (mrisynth.core.threshold), on a hand example."""
import numpy as np
import pytest

from mrisynth.core import threshold


def test_threshold_recovers_a_known_threshold():
    rng = np.random.default_rng(3)
    n, s = 6, 32
    images = rng.uniform(0.1, 0.4, (n, s, s, 2)).astype(np.float32)
    classes = np.zeros((n, s, s), np.uint8)
    classes[:, 8:16, 8:16] = 2                       # edema -> WT
    images[:, 8:16, 8:16, 1] = rng.uniform(0.7, 0.9, (n, 8, 8))   # channel 1 is bright exactly on the tumour
    brain = np.ones((n, s, s), bool)
    rule = threshold.fit(images, classes, brain, "WT")
    assert rule.channel == 1 and 0.4 <= rule.threshold < 0.7 and rule.train_dice == 1.0
    assert threshold.apply(rule, images, classes, brain).tolist() == [1.0] * n
    # no enhancing tumour anywhere: the best rule predicts nothing (both empty -> 1)
    et = threshold.fit(images, classes, brain, "ET")
    assert threshold.apply(et, images, classes, brain).mean() == pytest.approx(1.0)

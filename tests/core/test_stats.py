"""Paired statistics and the verdict sentence, on hand examples."""
import numpy as np
import pytest

from mrisynth.core import stats


def test_identical_arms_give_zero_difference_ci_containing_zero_and_p_one():
    rng = np.random.default_rng(0)
    a = rng.random((3, 25))
    c = stats.compare(a, a.copy(), n_boot=2000)
    assert c.mean == 0.0 and c.low <= 0.0 <= c.high and c.p_value == 1.0 and not c.shown
    assert (c.n_seeds, c.n_images) == (3, 25)


def test_constant_shift_gives_a_ci_around_the_shift():
    rng = np.random.default_rng(1)
    a = rng.random((3, 30))
    c = stats.compare(a, a + 0.05, n_boot=2000)
    assert c.mean == pytest.approx(0.05) and c.low == pytest.approx(0.05) and c.high == pytest.approx(0.05)
    assert c.p_value < 1e-4 and c.shown


def test_noisy_shift_ci_covers_the_true_shift_and_widens_with_noise():
    rng = np.random.default_rng(2)
    a = rng.random((3, 40))
    b = a + 0.03 + rng.normal(0, 0.05, a.shape)
    c = stats.compare(a, b, n_boot=4000)
    assert c.low < 0.03 < c.high and c.low < c.mean < c.high
    wider = stats.compare(a, a + 0.03 + rng.normal(0, 0.2, a.shape), n_boot=4000)
    assert (wider.high - wider.low) > (c.high - c.low)


def test_bootstrap_resamples_seeds_too():
    # images agree perfectly, seeds disagree: a seed-only difference must widen the CI
    a = np.zeros((3, 10))
    b = np.array([[0.1] * 10, [0.0] * 10, [-0.1] * 10])
    mean, low, high = stats.paired_bootstrap(a, b, n_boot=3000)
    assert mean == pytest.approx(0.0) and low < -0.03 and high > 0.03


def test_hand_computed_bootstrap_of_one_seed_two_images():
    # differences [0, 1]: every resample is {0,0}, {0,1} or {1,1} -> means 0, 0.5, 1 with p 1/4, 1/2, 1/4
    _, low, high = stats.paired_bootstrap([[0.0, 0.0]], [[0.0, 1.0]], n_boot=4000, level=0.9)
    assert low == 0.0 and high == 1.0


def test_wilcoxon_known_value():
    # all 8 differences positive and distinct: exact two-sided p = 2 / 2^8
    a = np.zeros((1, 8))
    b = np.arange(1, 9)[None] / 10
    assert stats.wilcoxon_p(a, b) == pytest.approx(2 / 256)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal shapes"):
        stats.compare(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        stats.compare(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))


def test_verdict_sentence():
    c = stats.Comparison(0.012, -0.004, 0.028, 0.21, 25, 3)
    line = stats.verdict("GAN beyond classic", "tumour Dice", c)
    assert line.startswith("GAN beyond classic: +0.012 tumour Dice (95 % CI -0.004 … +0.028, p = 0.21")
    assert line.endswith("not shown")
    assert stats.verdict("X", "tumour Dice", stats.Comparison(-0.05, -0.08, -0.02, 0.001, 25, 3)).endswith("shown (worse)")


def test_generator_draws_enter_the_interval():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 0.9, size=(3, 20))
    b = a + rng.normal(0.02, 0.05, size=(3, 20))
    two_level = stats.paired_bootstrap(a, b, n_boot=2000)
    assert stats.paired_bootstrap(a[None], b[None], n_boot=2000) == two_level      # one draw: the same numbers
    same_draws = stats.paired_bootstrap(a, np.stack([b, b]), n_boot=2000)           # baseline broadcast over draws
    assert same_draws == pytest.approx(two_level)                                   # identical draws add no spread
    spread = stats.paired_bootstrap(a, np.stack([b + 0.1, b - 0.1]), n_boot=2000)
    assert spread[0] == pytest.approx(two_level[0]) and spread[2] - spread[1] > two_level[2] - two_level[1]
    # by hand: one seed, one image, draw 0 is +1 and draw 1 is -1 -> replicate means -1, 0, +1 with p 1/4, 1/2, 1/4
    mean, low, high = stats.paired_bootstrap([[0.0]], [[[1.0]], [[-1.0]]], n_boot=4000)
    assert (mean, low, high) == (0.0, -1.0, 1.0)
    c = stats.compare(a, np.stack([b, b]), n_boot=500)
    assert (c.n_draws, c.n_seeds, c.n_images) == (2, 3, 20) and "× 2 generators" in stats.verdict("q", "tumour Dice", c)
    with pytest.raises(ValueError, match="one draw pairing with any"):
        stats.paired_bootstrap(np.stack([a, a, a]), np.stack([b, b]))

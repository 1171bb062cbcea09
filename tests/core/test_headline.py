"""The DVC metrics files hold the headline numbers only: verdict, per-arm Dice, generator figures."""
import pytest

from mrisynth.core import headline


def test_verdict_keys_are_augmented_minus_baseline_slugs():
    comparisons = {"GAN beyond classic": {"baseline": "classic", "augmented": "classic+gan",
                                          "dice_tumour": {"mean": 0.05191, "low": -0.01812, "high": 0.11394, "p_value": 1e-6, "n_images": 50},
                                          "dice_WT": {"mean": 0.001, "low": -0.04, "high": 0.05}}}
    assert headline.verdict(comparisons) == {"classic_gan-classic": {"diff": 0.0519, "low": -0.0181, "high": 0.1139}}


def test_scores_per_arm_test_and_val():
    arms = {"none": {"train": {"dice_tumour": 0.99}, "val": {"dice_tumour": 0.82201}, "test": {"dice_tumour": 0.77489, "dice_WT": 0.85}}}
    assert headline.scores(arms) == {"none": {"test": 0.7749, "val": 0.822}}


def test_generator_ratio_and_gate():
    usefulness = {"test_gan_train_dice_tumour": 0.7, "test_real_train_dice_tumour": 0.8, "val_gan_train_dice_tumour": 0.6,
                  "val_real_train_dice_tumour": 0.75, "realism_worst_deviation": 0.41634, "seconds": 66.6, "seed": 1}
    out = headline.generator(usefulness, 0.0123456)
    assert out == {"gan_train_test": 0.7, "ratio_test": pytest.approx(0.875), "gan_train_val": 0.6, "ratio_val": 0.8,
                   "realism_worst": 0.4163, "val_gain_beyond_classic": 0.0123}
    assert "seconds" not in str(out) and headline.generator({}, None) == {}  # no GAN arm: an empty file, never a guess
    assert headline.generator({}, None, -0.01234)["val_gain_beyond_paste"] == -0.0123  # gan - paste, the copy-paste control

"""Metric functions against hand-computed cases, including the empty-class conventions."""
import numpy as np
import pytest

from mrisynth.core import segmetrics as sm


def test_perfect_prediction():
    truth = np.array([[[0, 1], [2, 3]]])
    m = sm.evaluate(truth, truth)
    assert m["accuracy"] == 1.0 and m["mean_iou"] == 1.0 and m["dice"] == 1.0 and m["dice_tumour"] == 1.0
    assert m["dice_WT"] == 1.0 and m["hd95_WT"] == 0.0


def test_hand_computed_counts():
    truth = np.array([[[0, 0, 1, 1]]])
    pred = np.array([[[0, 1, 1, 0]]])
    cm = sm.confusion(truth, pred)
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[1, 0] == 1
    assert sm.accuracy(cm) == 0.5
    iou = sm.per_class_iou(cm)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(1 / 3)
    assert np.isnan(iou[2]) and np.isnan(iou[3])  # absent from truth and prediction
    assert sm.mean_iou(cm) == pytest.approx(1 / 3)  # absent classes left out of the mean
    dice = sm.per_class_dice(cm)
    assert dice[0] == pytest.approx((2 * 1 + 1) / (2 + 2 + 1)) and dice[2] == 1.0  # smoothing S = 1
    assert sm.mean_dice(cm, include_background=False) == pytest.approx((0.6 + 1 + 1) / 3)


def test_disjoint_and_empty_predictions():
    truth = np.zeros((1, 8, 8), np.uint8)
    truth[0, 2:4, 2:4] = 3
    empty = np.zeros_like(truth)
    m = sm.evaluate(truth, empty)
    assert m["dice_ET"] == 0.0 and m["dice_WT"] == 0.0
    assert m["hd95_ET"] == pytest.approx(373.13)  # one empty: the BraTS value (240x240x155 mm diagonal)
    assert m["dice_class3"] == pytest.approx(1 / 5)  # (0 + 1) / (4 + 0 + 1)
    disjoint = np.zeros_like(truth)
    disjoint[0, 5:7, 5:7] = 3
    m = sm.evaluate(truth, disjoint)
    assert m["dice_ET"] == 0.0 and m["hd95_ET"] > 2
    both_empty = sm.evaluate(empty, empty)
    assert both_empty["dice_ET"] == 1.0 and both_empty["hd95_ET"] == 0.0


def test_hd95_of_a_shifted_square():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    assert sm.hd95(a, b) == pytest.approx(3.0)
    assert sm.region_dice(a, b) == pytest.approx(2 * 10 / 50)


def test_hd95_in_millimetres_with_anisotropic_and_coarse_spacing():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)  # 3 columns apart
    assert sm.hd95(a, b, spacing=2.0) == pytest.approx(6.0)          # 3 px x 2 mm
    assert sm.hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.5)   # shift along axis 1, 0.5 mm per pixel there
    c = np.roll(a, 4, axis=0)
    assert sm.hd95(a, c, spacing=(1.5, 1.0)) == pytest.approx(6.0)   # 4 px x 1.5 mm along axis 0


def test_per_image_scores_use_each_images_spacing():
    truth = np.zeros((2, 20, 20), np.uint8)
    truth[:, 5:10, 5:10] = 2
    pred = np.roll(truth, 3, axis=2)
    scores = sm.per_image(truth, pred, np.array([1.0, 2.0]))
    assert scores["hd95_WT"].tolist() == pytest.approx([3.0, 6.0])
    assert scores["dice_WT"].tolist() == pytest.approx([0.4, 0.4])
    # tumour Dice: edema 0.4; NCR and enhancing absent from both -> 1 each
    assert scores["dice_tumour"].tolist() == pytest.approx([(0.4 + 1 + 1) / 3] * 2)
    assert scores["hd95_ET"].tolist() == [0.0, 0.0]

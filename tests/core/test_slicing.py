import numpy as np
import pytest

from mrisynth.core import encoding, slicing


def test_choose_slice_max_tumor_and_fallbacks():
    seg = np.zeros((8, 8, 10), np.uint8)
    seg[2:6, 2:6, 7] = 2
    seg[3:5, 3:5, 3] = 1
    brain = np.zeros_like(seg, bool)
    brain[1:7, 1:7, 2:9] = True
    brain[:, :, 5] = True
    assert slicing.choose_slice(seg, brain, "max-tumor") == 7
    assert slicing.choose_slice(seg, brain, "max-brain") == 5
    assert slicing.choose_slice(seg, brain, "center") == 5
    assert slicing.choose_slice(seg, brain, "4") == 4
    assert slicing.choose_slice(np.zeros_like(seg), brain, "max-tumor") == 5  # no tumour: largest brain
    with pytest.raises(ValueError, match="outside"):
        slicing.choose_slice(seg, brain, 12)
    with pytest.raises(ValueError, match="unknown slice rule"):
        slicing.choose_slice(seg, brain, "biggest")


def test_pad_is_centred_and_lossless_crop_centred():
    image = np.arange(240 * 240 * 2, dtype=np.float32).reshape(240, 240, 2)
    padded = slicing.fit(image, 256, "pad", is_mask=False)
    assert padded.shape == (256, 256, 2)
    np.testing.assert_array_equal(padded[8:248, 8:248], image)
    assert padded[:8].sum() == 0 and padded[248:].sum() == 0
    cropped = slicing.fit(image, 200, "pad", is_mask=False)
    np.testing.assert_array_equal(cropped, image[20:220, 20:220])


def test_resize_bilinear_image_nearest_mask():
    mask = np.zeros((240, 240), np.uint8)
    mask[100:140, 100:140] = 4
    mask[110:130, 110:130] = 1
    out = slicing.fit(mask, 256, "resize", is_mask=True)
    assert out.shape == (256, 256) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1, 4}  # nearest: no new, interpolated labels
    image = np.zeros((240, 240, 1), np.float32)
    image[:, 120:] = 1.0
    resized = slicing.fit(image, 256, "resize", is_mask=False)
    values = np.unique(np.round(resized, 4))
    assert resized.shape == (256, 256, 1) and 0.0 < values[1] < 1.0  # bilinear: an in-between value at the edge


def test_normalise_within_brain():
    rng = np.random.default_rng(0)
    volume = rng.normal(500, 50, (20, 20, 5)).astype(np.float32)
    brain = np.zeros(volume.shape, bool)
    brain[5:15, 5:15] = True
    volume[~brain] = 7.0
    volume[6, 6, 2] = 1e6  # outlier, clipped by the percentiles
    out = slicing.normalise_volume(volume, brain)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert np.all(out[~brain] == 0)
    assert 0.3 < np.median(out[brain]) < 0.7


def test_conditioning_encoding_roundtrip():
    labels = np.array([[0, 1], [2, 4]], np.uint8)
    brain = np.array([[1, 1], [0, 1]], bool)
    cond = encoding.conditioning(labels, brain)
    assert cond.shape == (2, 2, 4) and cond.dtype == np.float32
    np.testing.assert_array_equal(cond[..., 3], [[1, 1], [1, 1]])  # tumour counts as brain
    back, back_brain = encoding.conditioning_to_labels(cond)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(encoding.labels_to_classes(labels), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(encoding.classes_to_labels(np.array([0, 1, 2, 3])), [0, 1, 2, 4])
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        encoding.conditioning(np.array([[3]], np.uint8), brain[:1, :1])


def test_random_tumor_slice_is_seeded_and_eligible():
    seg = np.zeros((4, 4, 10), np.uint8)
    seg[:2, :2, 2] = 1          # area 4
    seg[:, :, 5] = 2            # area 16 (largest)
    seg[:2, :, 7] = 4           # area 8
    seg[0, 0, 8] = 2            # area 1: under 25 % of the largest, never chosen
    brain = np.ones_like(seg, bool)
    picks = {slicing.choose_slice(seg, brain, "random-tumor", np.random.default_rng(s)) for s in range(40)}
    assert picks == {2, 5, 7}
    assert slicing.choose_slice(seg, brain, "random-tumor", np.random.default_rng(1)) == \
        slicing.choose_slice(seg, brain, "random-tumor", np.random.default_rng(1))
    with pytest.raises(ValueError, match="seeded rng"):
        slicing.choose_slice(seg, brain, "random-tumor")

"""Copy-paste control (CarveMix-like): a donor's real tumour pixels pasted into another training slice."""
import numpy as np

from mrisynth.core import inpaint


def _slice(size=32, centre=(10, 10), value=0.9, background=0.2):
    brain = np.zeros((size, size), bool)
    brain[2:30, 2:30] = True
    labels = np.zeros((size, size), np.uint8)
    cy, cx = centre
    labels[cy - 2 : cy + 2, cx - 2 : cx + 2] = 2
    labels[cy, cx] = 4
    image = np.where(brain[..., None], background, 0.0).astype(np.float32).repeat(2, axis=-1)
    image[labels > 0] = value
    return image, labels, brain


def test_translate_moves_and_fills_with_zeros():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.array_equal(inpaint.translate(a, 1, -1), np.array([[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]], np.float32))
    assert np.array_equal(inpaint.translate(a, 0, 0), a)


def test_pasted_tumour_carries_the_donor_pixels_and_leaves_the_rest_real():
    donor_image, donor_labels, _ = _slice(centre=(10, 10), value=0.9)
    host_image, host_labels, host_brain = _slice(centre=(22, 22), value=0.5, background=0.3)
    pasted = inpaint.paste(host_image, host_labels, host_brain, donor_image, donor_labels, 2, np.random.default_rng(0))
    assert pasted is not None
    image, labels, brain, weight = pasted
    new = (labels > 0) & (host_labels == 0)
    assert new.sum() == (donor_labels > 0).sum() and (labels[host_labels > 0] == host_labels[host_labels > 0]).all()  # host tumour kept
    assert np.array_equal(image[weight == 0], host_image[weight == 0])  # outside the region: the host, bit for bit
    full = weight >= 1.0
    assert full.any() and np.allclose(image[full & new], 0.9)  # the donor's tumour pixels, where the blend is complete
    assert brain[labels > 0].all()


def test_paste_refuses_when_nothing_fits():
    donor_image, donor_labels, _ = _slice()
    tiny_brain = np.zeros((32, 32), bool)
    tiny_brain[0:2, 0:2] = True
    host_image = np.zeros((32, 32, 2), np.float32)
    assert inpaint.paste(host_image, np.zeros((32, 32), np.uint8), tiny_brain, donor_image, donor_labels, 2, np.random.default_rng(0)) is None


def test_in_place_paste_always_fits_and_replaces_the_host_region():
    donor_image, donor_labels, _ = _slice(centre=(10, 10), value=0.9)
    host_image, host_labels, host_brain = _slice(centre=(11, 11), value=0.5, background=0.3)  # overlapping tumours
    tiny = np.zeros((32, 32), bool)
    tiny[8:14, 8:14] = True  # no room to move the donor's tumour anywhere
    assert inpaint.paste(host_image, host_labels, tiny, donor_image, donor_labels, 2, np.random.default_rng(0)) is None
    image, labels, brain, weight = inpaint.paste(host_image, host_labels, host_brain, donor_image, donor_labels, 2,
                                                 np.random.default_rng(0), in_place=True)
    area = inpaint.region(donor_labels, host_brain, 2)
    assert np.array_equal(labels[area], donor_labels[area]) and np.array_equal(labels[~area], host_labels[~area])
    assert set(np.unique(weight)) == {0.0, 1.0} and np.array_equal(weight > 0, area)  # a hard edge: labels match pixels
    assert np.array_equal(image[~area], host_image[~area]) and np.array_equal(image[area], donor_image[area])
    empty = np.zeros_like(donor_labels)
    assert inpaint.paste(host_image, host_labels, host_brain, donor_image, empty, 2, np.random.default_rng(0), in_place=True) is None

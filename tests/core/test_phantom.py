"""Phantom source: determinism and realism (label nesting, anatomy, contrasts), BraTS layout."""
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mrisynth.core import phantom
from mrisynth.data.ingest import make_phantom


@pytest.fixture(scope="module")
def cases():
    return [phantom.make_case(2020, i) for i in range(3)]


def test_same_seed_same_case(cases):
    again = phantom.make_case(2020, 0)
    for m in phantom.MODALITY_ORDER:
        np.testing.assert_array_equal(again.volumes[m], cases[0].volumes[m])
    np.testing.assert_array_equal(again.seg, cases[0].seg)
    assert not np.array_equal(cases[0].seg, cases[1].seg)
    assert not np.array_equal(phantom.make_case(2021, 0).seg, cases[0].seg)


def test_shapes_dtypes_and_skull_stripping(cases):
    for case in cases:
        assert case.seg.shape == phantom.SHAPE and case.seg.dtype == np.uint8
        assert set(np.unique(case.seg)) <= {0, 1, 2, 4}
        brain = case.volumes["t1"] > 0
        assert 0.1 < brain.mean() < 0.35
        for m in phantom.MODALITY_ORDER:
            v = case.volumes[m]
            assert v.shape == phantom.SHAPE and v.dtype == np.int16
            assert np.array_equal(v > 0, brain)  # zero outside the brain, in every modality
        assert not brain[0].any() and not brain[:, 0].any()  # background border


def test_tumour_is_nested_and_inside_the_brain(cases):
    for case in cases:
        seg = case.seg
        brain = case.volumes["flair"] > 0
        assert np.all(brain[seg > 0])
        core, enh, edema = seg == 1, seg == 4, seg == 2
        assert enh.any() and edema.any()
        if core.any():  # core is wrapped by enhancing rim: its neighbours are core or rim
            ring = ndimage.binary_dilation(core) & ~core
            assert np.mean(enh[ring]) > 0.95
        ring = ndimage.binary_dilation(enh) & ~enh & ~core
        assert np.mean(edema[ring] | ~brain[ring]) > 0.9  # rim is wrapped by edema
        assert ndimage.label(seg > 0)[1] == 1


def _median(case, modality, where):
    return float(np.median(case.volumes[modality][where]))


def test_tissue_contrasts(cases):
    for case in cases:
        healthy = case.seg == 0
        csf, gm, wm = ((case.tissue == t) & healthy for t in (1, 2, 3))
        t1 = [_median(case, "t1", m) for m in (wm, gm, csf)]
        t2 = [_median(case, "t2", m) for m in (csf, gm, wm)]
        assert t1[0] > t1[1] > t1[2], t1
        assert t2[0] > t2[1] > t2[2], t2
        assert _median(case, "flair", case.seg == 2) > _median(case, "flair", wm)
        if (case.seg == 1).any():
            assert _median(case, "t1ce", case.seg == 4) > _median(case, "t1ce", case.seg == 1)


def test_written_in_brats_layout(tmp_path):
    ids = make_phantom(tmp_path, cases=2, seed=5)
    assert ids == ["BraTS20_Training_001", "BraTS20_Training_002"]
    for case_id in ids:
        for name in ("flair", "t1", "t1ce", "t2", "seg"):
            image = nib.load(str(tmp_path / case_id / f"{case_id}_{name}.nii.gz"))
            assert image.shape == (240, 240, 155)
            assert image.get_data_dtype() == (np.uint8 if name == "seg" else np.int16)
    assert "BraTS_2020_subject_ID" in (tmp_path / "name_mapping.csv").read_text()


def test_sample_tissue_equals_one_full_map_coordinates_call():
    """The skip-the-air sampler must give the bytes of a full trilinear map_coordinates, edges included."""
    from scipy import ndimage

    stack, _, _ = phantom._templates()
    rng = np.random.default_rng(0)
    shape = np.array(stack.shape[1:], dtype=np.float32)[:, None, None, None]
    coords = (rng.random((3, 30, 40, 50)) * (shape + 6) - 3).astype(np.float32)  # in, near and beyond every edge
    coords[:, 0, 0, :3] = np.array([[-1.0, -0.5, 0.0]] * 3)  # exactly on / just outside the low edge
    full = np.stack([ndimage.map_coordinates(stack[c], coords, order=1, mode="constant", cval=0.0, prefilter=False) for c in range(3)])
    fast = phantom.sample_tissue(stack, coords)
    assert fast.dtype == np.float32 and np.array_equal(fast, full)
    assert 0.05 < (full[0] != 0).mean() < 0.95  # the test covers both skipped and sampled points

"""Phantom version 2: each realism feature shown on a small seeded case."""
import numpy as np
from scipy import ndimage

from mrisynth.core import phantom, phantom_v2
from mrisynth.core.phantom_v2 import Realism

BIG_DEEP = dict(radius_mm=(24.0, 24.0), lobe_weights=(0, 0, 0, 0, 1), multifocal=0.0, lgg_fraction=0.0)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_same_seed_same_bytes_and_brats_format():
    a, b = phantom_v2.make_case(7, 3), phantom_v2.make_case(7, 3)
    for m in phantom.MODALITY_ORDER:
        np.testing.assert_array_equal(a.volumes[m], b.volumes[m])
        assert a.volumes[m].shape == phantom.SHAPE and a.volumes[m].dtype == np.int16
        assert np.array_equal(a.volumes[m] > 0, a.volumes["flair"] > 0)  # skull-stripped alike
    np.testing.assert_array_equal(a.seg, b.seg)
    assert a.seg.dtype == np.uint8 and set(np.unique(a.seg)) <= {0, 1, 2, 4}
    assert np.all(a.volumes["flair"][a.seg > 0] > 0)  # labels only inside the brain
    assert a.info["phantom_version"] == 2 and a.info["location"] in phantom_v2.LOBES
    assert not np.array_equal(phantom_v2.make_case(7, 4).seg, a.seg)


def _ventricle_centroid(case):
    brain = case.volumes["t1"] > 0
    deep = ndimage.distance_transform_edt(brain) > 15
    return np.argwhere((case.tissue == 1) & deep).mean(axis=0)


def test_mass_effect_pushes_the_ventricles_away_from_the_tumour():
    still = phantom_v2.make_case(3, 0, Realism(**BIG_DEEP, mass_effect=(0.0, 0.0)))
    pushed = phantom_v2.make_case(3, 0, Realism(**BIG_DEEP, mass_effect=(1.0, 1.0)))
    centre = still.extra["tumour_centre"]
    np.testing.assert_allclose(centre, pushed.extra["tumour_centre"])  # same subject, same tumour site
    before = np.linalg.norm(_ventricle_centroid(still) - centre)
    after = np.linalg.norm(_ventricle_centroid(pushed) - centre)
    assert after > before + 1.0, (before, after)  # tissue displaced, not overwritten
    # the displaced tissue is not lost: the normal brain around the tumour is compressed, not erased
    assert (pushed.tissue > 0).sum() >= 0.97 * (still.tissue > 0).sum()


def test_low_grade_cases_lack_enhancing_tumour_and_the_grade_mix_holds():
    lgg = phantom_v2.make_case(5, 1, Realism(lgg_fraction=1.0, lgg_enhancing=0.0))
    assert lgg.grade == "LGG" and lgg.info["grade"] == "LGG"
    assert not (lgg.seg == 4).any() and (lgg.seg == 1).any()
    grades = [phantom_v2.grade_of(2020, i, 0.2) for i in range(100)]
    assert grades.count("LGG") in range(18, 23)  # golden-ratio spread: close to 20 % in any run of cases


def test_multifocal_case_has_two_separate_lesions():
    case = phantom_v2.make_case(9, 2, Realism(multifocal=1.0, radius_mm=(10.0, 10.0), lgg_fraction=0.0))
    _, n = ndimage.label(case.extra["truth"] > 0)
    assert n >= 2 and case.info["multifocal"] == 1


def test_non_tumour_hyperintensities_and_enhancement_exist_outside_the_labels():
    case = phantom_v2.make_case(4, 0, Realism(wm_lesions=(12, 12), periventricular_caps=1.0, choroid_plexus=1.0, sinus=1.0))
    outside = (case.seg == 0) & (case.extra["truth"] == 0)
    lesion = (case.extra["mimic_bright"] > 0.7) & outside
    assert lesion.sum() > 100
    normal_wm = (case.tissue == 3) & outside & (case.extra["mimic_bright"] == 0)
    assert np.median(case.volumes["flair"][lesion]) > np.percentile(case.volumes["flair"][normal_wm], 90)
    enhancing = (case.extra["mimic_enhance"] > 0.7) & outside
    assert enhancing.sum() > 50
    normal = (case.volumes["t1ce"] > 0) & outside & (case.extra["mimic_enhance"] == 0)
    assert np.median(case.volumes["t1ce"][enhancing]) > np.percentile(case.volumes["t1ce"][normal], 90)


def _wm_gm_ratio(case, modality):
    healthy = (case.seg == 0) & (case.extra["mimic_bright"] == 0)
    wm = np.median(case.volumes[modality][(case.tissue == 3) & healthy])
    gm = np.median(case.volumes[modality][(case.tissue == 2) & healthy])
    return wm / gm


def test_two_sites_scan_the_same_anatomy_with_different_contrast():
    a, b = phantom_v2.site_protocol(2020, 0), phantom_v2.site_protocol(2020, 1)
    assert a != b and a.gamma != b.gamma
    case0 = phantom_v2.make_case(2020, 6, site=0)
    case1 = phantom_v2.make_case(2020, 6, site=1)
    np.testing.assert_array_equal(case0.seg, case1.seg)
    ratios = [abs(_wm_gm_ratio(case0, m) - _wm_gm_ratio(case1, m)) for m in ("t1", "t2", "flair")]
    assert max(ratios) > 0.05, ratios


def test_written_labels_are_a_raters_not_the_truth():
    case = phantom_v2.make_case(2020, 1)
    truth, seg = case.extra["truth"] > 0, case.seg > 0
    assert (truth != seg).sum() > 0
    assert 0.75 < _dice(truth, seg) < 0.995  # a 1-2 mm boundary disagreement, not a different tumour


def test_locations_follow_the_lobar_table():
    tables, wm, ventricles = phantom_v2._location_tables()
    assert all(len(tables[lobe]) > 50 for lobe in phantom_v2.LOBES)
    # occipital candidates are posterior of y = -75 mm (MNI), frontal ones anterior of y = 0
    assert (tables["occipital"][:, 1] + phantom_v2._MNI_OFFSET[1] <= -75).all()
    assert (tables["frontal"][:, 1] + phantom_v2._MNI_OFFSET[1] > 0).all()
    case = phantom_v2.make_case(1, 0, Realism(lobe_weights=(0, 0, 0, 1, 0)))
    assert case.info["location"] == "occipital"

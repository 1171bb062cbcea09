"""Augmentation: aligned transforms, recombination inside the brain, counts and provenance, bad generators."""
import numpy as np
import pandas as pd
import pytest

from mrisynth.core import transforms
from mrisynth.errors import DataError
from mrisynth.augment import synthesis
from mrisynth.stages import augment


def test_known_shape_moves_by_known_transform():
    image = np.zeros((32, 32, 2), np.float32)
    mask = np.zeros((32, 32), np.uint8)
    image[4:8, 10:14] = 1.0
    mask[4:8, 10:14] = 2
    shifted = transforms.Geometry(shift_y=5, shift_x=-3)
    out_mask = transforms.warp(mask, shifted, is_mask=True)
    np.testing.assert_array_equal(np.argwhere(out_mask == 2).min(0), [9, 7])
    out_image = transforms.warp(image, shifted, is_mask=False)
    np.testing.assert_allclose(out_image[..., 0] > 0.5, out_mask == 2)
    flipped = transforms.warp(mask, transforms.Geometry(flip=True), is_mask=True)
    np.testing.assert_array_equal(flipped, mask[:, ::-1])
    rotated = transforms.warp(mask, transforms.Geometry(angle=90), is_mask=True)
    assert set(np.unique(rotated)) == {0, 2} and np.count_nonzero(rotated) == np.count_nonzero(mask)


def test_classic_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 1), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    image[20:40, 25:45] = 0.8
    mask[20:40, 25:45] = 4
    for _ in range(10):
        out_image, out_mask, desc = transforms.classic(image, mask, rng, transforms.ClassicRanges())
        inside = out_mask == 4
        assert inside.any() and "rot=" in desc and "brightness=" in desc
        assert out_image[inside][:, 0].mean() > 0.5  # the bright square moved with its mask
        assert set(np.unique(out_mask)) <= {0, 4}


def test_recombined_tumours_stay_inside_the_brain():
    rng = np.random.default_rng(1)
    donor = np.zeros((64, 64), np.uint8)
    donor[10:20, 10:20] = 2
    donor[13:17, 13:17] = 4
    yy, xx = np.mgrid[:64, :64]
    host_brain = (yy - 36) ** 2 / 20**2 + (xx - 30) ** 2 / 18**2 < 1
    placed = 0
    for _ in range(20):
        result = transforms.recombine(donor, host_brain, rng, transforms.ClassicRanges())
        if result is None:
            continue
        labels, desc = result
        placed += 1
        assert np.all(host_brain[labels > 0]) and "at=" in desc
        assert set(np.unique(labels)) <= {0, 2, 4}
    assert placed >= 15
    tiny_brain = np.zeros((64, 64), bool)
    tiny_brain[30:33, 30:33] = True
    assert transforms.recombine(donor, tiny_brain, rng, transforms.ClassicRanges()) is None


def test_plan_counts():
    assert synthesis.plan(30, 10, 0.5, ("none", "classic+gan")) == {"classic_mix": 135, "gan_mix": 135, "classic_total": 135, "gan_total": 135,
                                                                     "paste_total": 0}
    assert synthesis.plan(30, 10, 0.5, ("none", "paste"))["paste_total"] == 270  # the copy-paste arm trains on 270 pasted slices
    assert synthesis.plan(30, 10, 0.2, ("classic", "gan", "classic+gan"))["classic_total"] == 270


def test_bad_generator_is_named(tmp_path, trained):
    with pytest.raises(DataError, match="generator not found"):
        synthesis.load_generator(tmp_path / "missing.keras", 64, 4)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")
    with pytest.raises(DataError, match="broken.keras: cannot load the generator"):
        synthesis.load_generator(broken, 64, 4)
    with pytest.raises(DataError, match=r"generator maps \(None, 64, 64, 4\) -> \(None, 64, 64, 4\), but the data and train_gan.synthesis='full' need \(None, 128, 128, 4\)"):
        synthesis.load_generator(trained / "models" / "generator.keras", 128, 4)


def test_augment_stage_counts_and_provenance(trained):
    assert augment.run("params.yaml") == 0
    manifest = pd.read_csv(trained / "work" / "augmented" / "manifest.csv")
    n = 4  # tiny project: 4 training slices, factor 10
    assert manifest["in_mix"].sum() == 10 * n
    assert set(manifest["kind"]) == {"real", "classic", "gan", "paste"}  # params.yaml's arms include the copy-paste control
    assert (manifest["kind"] == "real").sum() == n
    assert manifest["source_cases"].notna().all() and manifest["transforms"].notna().all()
    gan = manifest[manifest["kind"] == "gan"]
    assert gan["transforms"].str.startswith(("recombine:", "mask:")).all()
    recombined = gan[gan["transforms"].str.startswith("recombine:")]
    assert recombined["source_cases"].str.contains(r"\+").all()
    pasted = manifest[manifest["kind"] == "paste"]  # donor+host, never in the paper's mix, no dropout
    assert len(pasted) == 9 * n and pasted["transforms"].str.startswith(("paste:", "paste-in-place:")).all()
    assert pasted["source_cases"].str.contains(r"\+").all() and not pasted["in_mix"].any()
    # rendered with dropout active by default (pix2pix's noise), recorded per row
    assert gan["dropout_sampling"].all() and not manifest.loc[manifest["kind"] != "gan", "dropout_sampling"].any()


def test_augment_stage_stops_on_failed_validation(trained, monkeypatch, capsys):
    original = augment.write

    def corrupt(out_dir, samples, sample_dropout=False):
        manifest = original(out_dir, samples, sample_dropout)
        manifest.loc[0, "kind"] = "mystery"
        return manifest

    monkeypatch.setattr(augment, "write", corrupt)
    assert augment.run("params.yaml") == 1
    assert "kind" in capsys.readouterr().out


def test_the_copy_paste_arm_leaves_the_other_samples_as_they_were():
    """Adding `paste` to the arms appends pasted slices and changes no real, classic or GAN sample."""
    from mrisynth.config import AugmentParams

    from conftest import toy_train_and_generator

    train, generator = toy_train_and_generator()
    n = len(train)
    params = AugmentParams(factor=3, sample_dropout=False)
    without, _ = synthesis.synthesise(train, generator, params, ("none", "classic", "gan", "classic+gan"), "full")
    with_paste, counts = synthesis.synthesise(train, generator, params, ("none", "classic", "gan", "classic+gan", "paste"), "full")
    assert len(with_paste) == len(without) + 2 * n and counts["paste_total"] == 2 * n
    for a, b in zip(without, with_paste):
        assert a.kind == b.kind and a.source_cases == b.source_cases and a.transforms == b.transforms and a.in_mix == b.in_mix
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert all(s.kind == "paste" and not s.in_mix for s in with_paste[len(without):])

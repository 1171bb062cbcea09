"""The synthetic-sample filter (augment.sample_filter): selection by hand, the Dice it scores with, its wiring
into GAN synthesis and the augment stage."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from mrisynth.augment import sample_filter, synthesis
from mrisynth.config import AugmentParams, ConfigError

from conftest import toy_train_and_generator


@pytest.mark.parametrize("keep, tau, expected", [
    (3, 0.6, ([0, 2, 4], 0)),        # the first three passing candidates, in candidate order
    (2, 0.6, ([0, 2], 0)),           # passing candidates beyond `keep` are not used
    (4, 0.6, ([0, 2, 4, 5], 1)),     # one short: the best of the rest (0.5) fills up
    (5, 0.6, ([0, 1, 2, 4, 5], 2)),  # two short: 0.5, then 0.2 (not 0.1)
    (3, 0.0, ([0, 1, 2], 0)),        # tau 0: every candidate passes, so the first ones
    (2, 0.99, ([0, 4], 2)),          # none passes: the two highest
])
def test_select_by_hand(keep, tau, expected):
    scores = [0.9, 0.2, 0.7, 0.1, 0.95, 0.5]
    assert sample_filter.select(scores, keep, tau) == expected


def test_select_ties_go_to_the_earlier_candidate_and_too_few_candidates_is_an_error():
    assert sample_filter.select([0.3, 0.3, 0.3], 1, 0.5) == ([0], 1)
    with pytest.raises(ValueError, match="4 samples wanted from 3 candidates; raise augment.filter_pool"):
        sample_filter.select([0.9, 0.9, 0.9], 4, 0.5)


def test_tumour_dice_by_hand():
    truth = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    truth[0, 0, :4] = 1                      # class 1: 4 pixels, 2 of them predicted -> 2*2/(4+2) = 2/3
    pred[0, 0, :2] = 1
    truth[0, 3, 0] = 3                       # class 3 missed entirely -> 0; class 2 absent from both -> 1
    truth[1, 1, 1] = pred[1, 1, 1] = 2       # image 2: class 2 exact, classes 1 and 3 absent from both -> 1
    np.testing.assert_allclose(sample_filter.tumour_dice(truth, pred), [(2 / 3 + 1 + 0) / 3, 1.0])


class _StandInJudge(sample_filter.Judge):
    """Scores by a fixed pattern over the candidates (no segmenter): which ones are kept is known in advance."""

    def score(self, images, labels):
        self.seen = len(images)
        return np.array([(0.37 * k) % 1.0 for k in range(len(images))])


def test_the_filter_keeps_the_selected_candidates_and_marks_them():
    train, generator = toy_train_and_generator()
    params = AugmentParams(factor=3, sample_dropout=False)
    counts = synthesis.plan(len(train), params.factor, params.synthetic_fraction, ("none", "gan", "classic+gan"))
    wanted = counts["gan_total"]  # 12
    judge = _StandInJudge(model=None, tau=0.5, pool=2.0)
    kept, _ = synthesis.gan_samples(train, generator, params, counts, np.random.default_rng(11), "full", 0.03, 7, judge)
    # the same candidates without a judge: the same random stream, pool-sized counts
    pool = {**counts, "gan_total": 2 * wanted, "gan_mix": 0}
    candidates, _ = synthesis.gan_samples(train, generator, params, pool, np.random.default_rng(11), "full", 0.03, 7)
    scores = np.array([(0.37 * k) % 1.0 for k in range(2 * wanted)])
    chosen, below = sample_filter.select(scores, wanted, 0.5)
    assert judge.seen == 2 * wanted and len(kept) == wanted
    for k, (sample, i) in enumerate(zip(kept, chosen)):
        assert np.array_equal(sample.image, candidates[i].image) and np.array_equal(sample.labels, candidates[i].labels)
        assert sample.in_mix == (k < counts["gan_mix"])      # the classic+gan set takes the first gan_mix kept samples
        assert sample.transforms == f"{candidates[i].transforms};judge={scores[i]:.3f}"
    passing = [i for i in range(2 * wanted) if scores[i] >= 0.5]
    assert [i for i in chosen if scores[i] >= 0.5] == passing[:wanted] and sum(scores[i] < 0.5 for i in chosen) == below
    (record,) = judge.records
    assert {k: v for k, v in record.items() if "_with_" not in k} == {
        "candidates": 24, "kept": 12, "below_tau_kept": below, "passing": int((scores >= 0.5).sum()),
        "candidate_dice_mean": round(float(scores.mean()), 4), "kept_dice_mean": round(float(scores[chosen].mean()), 4),
        "kept_dice_min": round(float(scores[chosen].min()), 4)}
    # the toy tumours are all edema (label 2): every candidate and kept sample has it, none has the other classes
    assert record["candidates_with_edema"] == record["kept_with_edema"] == 1.0
    assert record["candidates_with_ncr"] == record["kept_with_enhancing"] == 0.0


def test_the_filter_class_shares_by_hand():
    judge = sample_filter.Judge(None, 0.5, 2.0)
    labels = np.zeros((4, 2, 2), np.uint8)
    labels[0, 0, 0] = 4          # candidate 0: enhancing
    labels[1, 0, 0] = 1          # candidate 1: NCR
    labels[2, 1, 1] = 4          # candidate 2: enhancing and edema
    labels[2, 0, 0] = 2
    row = judge.record(np.array([0.2, 0.9, 0.8, 0.1]), [1, 2], 0, labels)
    assert (row["candidates_with_enhancing"], row["kept_with_enhancing"]) == (0.5, 0.5)
    assert (row["candidates_with_ncr"], row["kept_with_ncr"], row["candidates_with_edema"], row["kept_with_edema"]) == (0.25, 0.5, 0.25, 0.5)


def test_the_filter_with_inpainting_keeps_candidates_bit_for_bit():
    """The default profile's synthesis: kept inpainted samples are exactly the selected candidates."""
    import keras

    train, _ = toy_train_and_generator()
    size, channels = train.images.shape[1], train.images.shape[-1]
    conditioning = keras.Input((size, size, 5 + channels))   # 4 label/brain channels, the region, the context
    generator = keras.Model(conditioning, keras.layers.Conv2D(channels, 1, activation="tanh")(conditioning))
    params = AugmentParams(factor=3, sample_dropout=False, recombine_fraction=0.5)
    counts = synthesis.plan(len(train), params.factor, params.synthetic_fraction, ("none", "gan"))
    judge = _StandInJudge(model=None, tau=0.5, pool=1.5)
    kept, _ = synthesis.gan_samples(train, generator, params, counts, np.random.default_rng(5), "inpaint", 0.03, 7, judge)
    pool = {**counts, "gan_total": judge.candidates(counts["gan_total"]), "gan_mix": 0}
    candidates, _ = synthesis.gan_samples(train, generator, params, pool, np.random.default_rng(5), "inpaint", 0.03, 7)
    scores = np.array([(0.37 * k) % 1.0 for k in range(len(candidates))])
    chosen, _ = sample_filter.select(scores, counts["gan_total"], 0.5)
    assert len(kept) == counts["gan_total"] == 12 and len(candidates) == 18
    assert any(c.transforms.startswith("recombine:inpaint") for c in candidates)
    for sample, i in zip(kept, chosen):
        assert np.array_equal(sample.image, candidates[i].image) and sample.transforms.startswith(candidates[i].transforms)


def test_without_a_judge_synthesis_is_unchanged_and_with_one_only_gan_samples_change():
    train, generator = toy_train_and_generator()
    params = AugmentParams(factor=3, sample_dropout=False)
    arms = ("none", "classic", "gan", "classic+gan", "paste")
    plain, _ = synthesis.synthesise(train, generator, params, arms, "full")
    again, _ = synthesis.synthesise(train, generator, params, arms, "full", judge=None)
    filtered, _ = synthesis.synthesise(train, generator, params, arms, "full", judge=_StandInJudge(None, 0.5, 2.0))
    assert len(plain) == len(again) == len(filtered)
    for a, b, c in zip(plain, again, filtered):
        assert np.array_equal(a.image, b.image) and a.transforms == b.transforms
        if a.kind != "gan":  # real, classic and paste samples come from streams the filter does not touch
            assert np.array_equal(a.image, c.image) and a.transforms == c.transforms and a.kind == c.kind
        else:
            assert c.kind == "gan" and ";judge=" in c.transforms


@pytest.mark.parametrize("key, value, message", [
    ("filter_dice", 1.5, r"augment.filter_dice=1.5: expected a tumour Dice in \[0, 1\], or null"),
    ("filter_dice", -0.1, r"augment.filter_dice=-0.1: expected a tumour Dice"),
    ("filter_pool", 0.5, r"augment.filter_pool=0.5: expected >= 1"),
])
def test_filter_settings_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        AugmentParams(**{key: value}).check()


def test_augment_stage_trains_a_judge_and_filters_every_draw(trained_copy):
    """The real judge (a tiny segmenter trained in the stage) scores every GAN sample; the summary records it."""
    from mrisynth.stages import augment

    params = yaml.safe_load((trained_copy / "params.yaml").read_text())
    params["augment"].update({"factor": 3, "filter_dice": 0.3, "filter_pool": 1.5})
    params["train_segmenter"].update({"epochs": 1, "min_epochs": 1, "patience": 1, "depth": 2, "base_filters": 4, "precision": "float32"})
    (trained_copy / "params.yaml").write_text(yaml.safe_dump(params))
    assert augment.run("params.yaml") == 0
    manifest = pd.read_csv(trained_copy / "work" / "augmented" / "manifest.csv")
    gan = manifest[manifest["kind"] == "gan"]
    assert len(gan) == 2 * 4 and gan["transforms"].str.contains(r";judge=\d\.\d{3}$").all()
    assert not manifest.loc[manifest["kind"] != "gan", "transforms"].str.contains("judge").any()
    summary = json.loads((trained_copy / "reports" / "augment.json").read_text())
    record = summary["filter"]
    assert record["tau"] == 0.3 and record["pool"] == 1.5 and len(record["draws"]) == 1
    assert 0.0 <= record["judge_real_train_dice_mean"] <= 1.0
    assert record["draws"][0]["candidates"] == 12 and record["draws"][0]["kept"] == 8   # ceil(1.5 x 8)
    judged = gan["transforms"].str.extract(r";judge=(\d\.\d{3})$")[0].astype(float)
    assert judged.min() == pytest.approx(record["draws"][0]["kept_dice_min"], abs=6e-4)

"""The levers for synthetic data worth training on: inpainting keeps real pixels, DiffAugment moves both
members of a pair together, the generator registry, checkpoint selection, the segmenter's real share."""
import dataclasses

import keras
import numpy as np
from scipy import ndimage
import pytest

from conftest import _tiny_split, tiny_gan
from mrisynth.core import diffaugment, generators, inpaint
from mrisynth.errors import ConfigError
from mrisynth.training.gan import GanTrainer, fingerprint, paper_settings

TINY = tiny_gan()


def _blob_case(size=32):
    labels = np.zeros((size, size), np.uint8)
    labels[10:14, 12:16] = 2
    labels[11:13, 13:15] = 4
    brain = np.zeros((size, size), bool)
    brain[4:28, 4:28] = True
    return labels, brain


def _small_tumours(n, size=64):
    """Slices with a large brain and a small tumour each (room to place a donor tumour away from it)."""
    from mrisynth.core import encoding
    from mrisynth.io import arrays

    rng = np.random.default_rng(4)
    brain = np.zeros((n, size, size), bool)
    brain[:, 6:58, 6:58] = True
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = 12 + 3 * i, 14 + 2 * i
        labels[i, y : y + 6, x : x + 5] = 2
        labels[i, y + 2 : y + 4, x + 1 : x + 4] = 4
    images = (rng.random((n, size, size, 4)) * brain[..., None]).astype(np.float32)
    return arrays.SplitArrays(images, labels, brain, encoding.conditioning(labels, brain), np.array([f"c{i}" for i in range(n)]))


def test_region_and_blend_weight_by_hand():
    labels, brain = _blob_case()
    region = inpaint.region(labels, brain, margin=2)
    # the 4x4 tumour grown by a radius-2 disk: rows 8..15, columns 10..17 (corners cut)
    assert region[8, 13] and region[15, 14] and region[12, 10] and not region[8, 10] and not region[7, 13]
    weight = inpaint.blend_weight(region, feather=2)
    assert weight[~region].max() == 0.0
    assert weight[12, 13] == 1.0            # deep inside: fully generated
    assert weight[8, 13] == pytest.approx(0.5)  # on the border row: distance 1 of 2
    assert inpaint.margin_pixels(0.03, 128) == 4 and inpaint.margin_pixels(0.001, 64) == 1


def test_composite_keeps_every_pixel_outside_the_region_bit_identical():
    rng = np.random.default_rng(0)
    labels, brain = _blob_case()
    image = rng.random((32, 32, 4)).astype(np.float32)
    generated = rng.random((32, 32, 4)).astype(np.float32)
    region = inpaint.region(labels, brain, 3)
    out = inpaint.composite(image, generated, inpaint.blend_weight(region, 3))
    assert np.array_equal(out[~region], image[~region])
    assert not np.allclose(out[region], image[region])
    cond = inpaint.conditioning(labels, brain, image, region)
    assert cond.shape == (32, 32, inpaint.in_channels(4)) == (32, 32, 9)
    assert np.all(cond[..., 5:][region] == -1.0)                           # the region is blanked
    assert np.allclose(cond[..., 5:][~region], image[~region] * 2 - 1)     # the context is the real image
    assert np.array_equal(cond[..., 4], region.astype(np.float32))


def test_place_away_keeps_clear_of_the_host_tumour():
    rng = np.random.default_rng(1)
    host_labels, brain = _blob_case(64)
    brain[:] = False
    brain[4:60, 4:60] = True
    donor = np.zeros((64, 64), np.uint8)
    donor[30:35, 30:36] = 1
    for _ in range(10):
        placed = inpaint.place_away(donor, brain, host_labels, 2, rng)
        assert placed is not None
        tumour, _ = placed
        assert (tumour > 0).sum() == (donor > 0).sum() and np.all(brain[tumour > 0])
        assert not np.any(inpaint.region(tumour, brain, 2) & (host_labels > 0))
    assert inpaint.place_away(donor, np.zeros((64, 64), bool), host_labels, 2, rng) is None


def test_diffaugment_applies_one_transform_to_both_members_of_a_pair():
    rng = np.random.default_rng(0)
    base = rng.random((3, 32, 32, 1)).astype(np.float32)
    cond = np.concatenate([base, base], -1)                     # two conditioning channels equal to the image
    image = base * 2 - 1                                        # the same picture on the tanh scale
    seed = keras.random.SeedGenerator(5)
    out_cond, out_image = diffaugment.augment(cond, image, ("translation", "cutout"), seed)
    out_cond, out_image = np.asarray(out_cond), np.asarray(out_image)
    assert not np.allclose(out_cond, cond)                      # something moved
    # where the conditioning kept a value, the image holds the same picture (same shift, same hole)
    kept = out_cond[..., 0] != 0
    assert np.allclose(out_image[..., 0][kept], out_cond[..., 0][kept] * 2 - 1, atol=1e-6)
    assert np.all(out_image[..., 0][~kept & (out_cond[..., 1] == 0)] <= -1 + 1e-6)
    colour_cond, colour_image = diffaugment.augment(cond, image, ("color",), seed)
    assert np.array_equal(np.asarray(colour_cond), cond) and not np.allclose(np.asarray(colour_image), image)
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diffaugment.parse("translation,zoom")


@pytest.mark.parametrize("name", sorted(generators.GENERATORS))
def test_every_registered_generator_builds_and_loads_safely(name, tmp_path):
    model = generators.build(name, 32, 9, 4, 0.3, 0.25)
    out = model(np.zeros((2, 32, 32, 9), np.float32))
    assert out.shape == (2, 32, 32, 4) and float(np.abs(out).max()) <= 1.0
    model.save(tmp_path / "g.keras")
    keras.saving.load_model(tmp_path / "g.keras", compile=False, safe_mode=True)


def test_inpainting_trainer_trains_and_renders_real_pixels_outside_the_region(tmp_path):
    train, val = _tiny_split(4), _tiny_split(2, seed=10)
    settings = dataclasses.replace(TINY, synthesis="inpaint", diffaugment="translation,cutout,color", disc_blocks=1, feature_matching=10.0,
                                   texture=5.0, generator="spade-noise", select="last")
    trainer = GanTrainer(settings, 64, settings.in_channels(4), 4)
    state = trainer.fit(train, val, tmp_path / "gan")
    assert state.completed and state.best_epoch == 1   # select last: the final epoch is kept
    assert np.isfinite(state.history[-1]["g_loss"]) and "ar0" in np.load(next((tmp_path / "gan" / "resume").glob("epoch-*")) / "variables.npz")
    rendered = trainer.render(val, 2)
    margin = inpaint.margin_pixels(settings.inpaint_margin, 64)
    regions = inpaint.training_regions(val.labels, val.brain, margin, 0.0, np.random.default_rng(0))
    assert np.array_equal(rendered[~regions], val.images[~regions])
    with pytest.raises(ConfigError, match="needs 9"):
        GanTrainer(settings, 64, 4, 4)


def test_inpaint_augmentation_and_its_generator_check(tmp_path):
    from mrisynth.augment import synthesis
    from mrisynth.config import AugmentParams
    from mrisynth.errors import DataError

    train = _small_tumours(4)
    generator = generators.build("pix2pix", 64, 9, 4, 0.3, 0.25)
    params = AugmentParams(factor=3, seed=2)
    samples, counts = synthesis.synthesise(train, generator, params, ("none", "gan", "classic+gan"), "inpaint", 0.05)
    gan = [s for s in samples if s.kind == "gan"]
    assert len(gan) == counts["gan_total"] == 8
    recombined = [s for s in gan if s.transforms.startswith("recombine:inpaint")]
    assert recombined, [s.transforms for s in gan]
    for s in recombined:   # the host slice's pixels outside the new tumour's region are the real ones
        host = list(train.case_ids).index(s.source_cases.split("+")[1])
        region = inpaint.region(np.where(train.labels[host] > 0, 0, s.labels), train.brain[host] | (s.labels > 0),
                                inpaint.margin_pixels(0.05, 64))
        assert np.array_equal(s.image[~region], train.images[host][~region])
        assert np.array_equal(s.labels[train.labels[host] > 0], train.labels[host][train.labels[host] > 0])  # host tumour kept
    generator.save(tmp_path / "g.keras")
    synthesis.load_generator(tmp_path / "g.keras", 64, 4, "inpaint")
    with pytest.raises(DataError, match="synthesis='full'"):
        synthesis.load_generator(tmp_path / "g.keras", 64, 4, "full")


def test_real_share_sets_the_real_fraction_of_batches():
    from mrisynth.training.segmenter import mixed_stream

    images = np.zeros((40, 8, 8, 1), np.float32)
    images[:10] = 1.0                                   # 10 real slices (value 1) among 40
    classes = np.zeros((40, 8, 8), np.uint8)
    real = np.arange(40) < 10
    draws = [float(x[0, 0, 0]) for x, _ in mixed_stream(images, classes, real, 0.5, seed=3).take(2000)]
    share = np.mean(draws)
    assert abs(share - 0.5) < 3 * np.sqrt(0.25 / 2000), share   # within 3 binomial standard errors
    natural = [float(x[0, 0, 0]) for x, _ in mixed_stream(images, classes, real, None, seed=3).take(2000)]
    assert abs(np.mean(natural) - 0.25) < 0.04                  # null: every image alike (10 of 40 real)


def test_fingerprint_keys_and_unknown_levers(tmp_path):
    from mrisynth.config import TrainGanParams, load_params

    settings = TrainGanParams(synthesis="inpaint", diffaugment="cutout", disc_blocks=2, select="last", generator="spade")
    # a paper-method run's fingerprint has exactly the keys of resume states written before the levers existed
    assert set(fingerprint(paper_settings(), "x")) == {"alpha", "batch_size", "learning_rate", "beta_1", "dropout", "width",
                                                       "precision", "seed", "data"}
    assert {"synthesis", "diffaugment", "disc_blocks", "select", "generator"} <= set(fingerprint(settings, "x"))
    # run bookkeeping does not block a resume; anything that changes the training does
    assert fingerprint(dataclasses.replace(settings, epochs=7, out_dir="elsewhere", draws=3), "x") == fingerprint(settings, "x")
    assert fingerprint(dataclasses.replace(settings, inpaint_blobs=0.1), "x") != fingerprint(settings, "x")
    # the DiffAugment policy as meant, not as written (DVC's -S needs '+' where params.yaml has ',')
    spelled = [fingerprint(dataclasses.replace(settings, diffaugment=p), "x")
               for p in ("translation,cutout", "translation+cutout", " translation, cutout", "cutout,translation")]
    assert all(s == spelled[0] for s in spelled) and spelled[0]["diffaugment"] == "translation,cutout"
    assert fingerprint(dataclasses.replace(settings, diffaugment="cutout,color"), "x") != spelled[0]
    assert "diffaugment" not in fingerprint(dataclasses.replace(paper_settings(), diffaugment="none"), "x")
    for key, value, message in (("synthesis", "paste", "train_gan.synthesis"), ("diffaugment", "zoom", "unknown DiffAugment"),
                                ("generator", "stylegan", "train_gan.generator"), ("select", "best", "train_gan.select"),
                                ("generator", "spade-noise\n  strategy: mirrored", "same noise on every replica")):
        (tmp_path / "params.yaml").write_text(f"train_gan:\n  {key}: {value}\n")
        with pytest.raises(ConfigError, match=message):
            load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train_segmenter:\n  real_share: 1.5\n")
    with pytest.raises(ConfigError, match="real_share"):
        load_params(tmp_path / "params.yaml")


def test_feature_matching_term_by_hand():
    from mrisynth.core import losses

    real = [np.ones((1, 2, 2, 1), np.float32), np.zeros((1, 1, 1, 2), np.float32)]
    fake = [np.zeros((1, 2, 2, 1), np.float32), np.full((1, 1, 1, 2), 3.0, np.float32)]
    assert float(losses.feature_matching(real, fake)) == pytest.approx((1.0 + 3.0) / 2)
    assert float(losses.feature_matching(real, real)) == 0.0


def test_placement_prior_follows_real_tumour_depths():
    size = 64
    brain = np.zeros((size, size), bool)
    brain[4:60, 4:60] = True
    shallow = np.zeros((3, size, size), np.uint8)       # real tumours just inside the cortex
    for i, (y, x) in enumerate([(7, 30), (30, 7), (55, 30)]):
        shallow[i, y - 1 : y + 2, x - 1 : x + 2] = 2
    prior = inpaint.depths(shallow, np.stack([brain] * 3))
    assert np.all(prior < 0.25)                          # by hand: depth 3-4 px of a 28 px deep brain
    cells = np.array([[8, 30], [32, 32]])                # one shallow candidate, one at the centre
    weights = inpaint.depth_weights(brain, cells, prior)
    assert weights[0] > 0.99 and weights.sum() == pytest.approx(1.0)
    donor = np.zeros((size, size), np.uint8)
    donor[20:23, 20:23] = 1
    rng = np.random.default_rng(0)
    inside = ndimage.distance_transform_edt(brain)
    placed = [inpaint.place_away(donor, brain, np.zeros((size, size), np.uint8), 1, rng, prior=prior)[1] for _ in range(20)]
    uniform = [inpaint.place_away(donor, brain, np.zeros((size, size), np.uint8), 1, rng)[1] for _ in range(20)]
    assert np.mean([inside[c] for c in placed]) < 0.6 * np.mean([inside[c] for c in uniform])


def test_served_inpainting_generator_returns_the_real_slice_outside_the_region(tmp_path):
    from mrisynth.inference.served_model import Generator, InputError, check_conditioning, export_model

    split = _small_tumours(2)
    model = export_model(generators.build("pix2pix", 64, 9, 4, 0.0, 0.25))
    model.save(tmp_path / "served.keras")
    served = Generator(keras.saving.load_model(tmp_path / "served.keras", compile=False, safe_mode=True))
    assert served.in_channels == 9
    regions = np.stack([inpaint.region(l, b, 3) for l, b in zip(split.labels, split.brain)])
    cond = inpaint.conditioning(split.labels, split.brain, split.images, regions)
    out = served.predict(cond)
    outside = ~regions & split.brain
    assert np.allclose(out[outside], split.images[outside], atol=1e-6)       # real pixels kept
    assert not np.allclose(out[regions], split.images[regions], atol=1e-3)   # generated inside
    bad = cond.copy()
    bad[..., 6] = 3.0
    with pytest.raises(InputError, match=r"real slice\) must lie in \[-1, 1\]"):
        check_conditioning(bad, 64, 9)
    with pytest.raises(InputError, match=r"expected shape \(N, 64, 64, 9\)"):
        served.predict(cond[..., :4])


def test_texture_term_by_hand():
    """A +-a checkerboard's high-pass part (minus its 3x3 box mean, a/9 of the centre's sign) is +-8a/9 everywhere
    inside, so its local energy is 8a/9 at scale 1 and 0 at scale 2 (2x2 means of a checkerboard are 0): against a
    flat image the term is (8a/9 + 0) / 2 inside a region away from the border; against the negated checkerboard
    (the same texture, every peak moved) it is 0, where L1 is 2a. A checkerboard of 2x2 blocks: every pixel is a
    corner of its block, so its 3x3 box mean is again a/9 of its sign (1 - 2 - 2 + 4 = 1 of 9) and the energy 8a/9
    at scale 1; at scale 2 it is a one-pixel checkerboard: 8a/9 again, so the term is 8a/9."""
    from mrisynth.core import losses

    a = 0.9
    yy, xx = np.mgrid[:64, :64]
    weight = np.zeros((1, 64, 64, 1), np.float32)
    weight[:, 16:48, 16:48] = 1.0       # 8-px windows and 3x3 boxes of the region's pixels stay inside, at both scales

    def board(block):
        return (a * np.where((yy // block + xx // block) % 2 == 0, 1.0, -1.0)).astype(np.float32)[None, ..., None]

    flat = np.zeros_like(board(1))
    assert float(losses.texture(board(1), flat, weight)) == pytest.approx(8 * a / 9 / 2, abs=1e-3)
    assert float(losses.texture(board(2), flat, weight)) == pytest.approx(8 * a / 9, abs=1e-3)
    assert float(losses.texture(board(1), -board(1), weight)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.l1(board(1), -board(1))) == pytest.approx(2 * a, abs=1e-5)
    # the weight is a weighted mean: a half-weight region gives the same mean
    assert float(losses.texture(board(2), flat, weight * 0.5)) == pytest.approx(8 * a / 9, abs=1e-3)


@pytest.mark.parametrize("inpainting", [False, True])
def test_texture_weight_adds_the_term_to_the_generator_loss(inpainting):
    """train_gan.texture > 0 adds weight x losses.texture (inside the blend region when inpainting) to G's total,
    and reports the unweighted term as g_texture; 0 adds nothing and no g_texture."""
    from mrisynth.core import losses

    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (2, 64, 64, 4)).astype(np.float32)
    fake = np.zeros_like(real)
    blend = None
    if inpainting:
        blend = np.zeros((2, 64, 64, 1), np.float32)
        blend[:, 20:40, 24:44] = 1.0
    probabilities = np.full((2, 4, 4, 1), 0.5, np.float32)
    metrics = {}
    for weight in (0.0, 3.0):
        trainer = GanTrainer(dataclasses.replace(TINY, texture=weight), 64, 4, 4)
        metrics[weight] = {k: float(v) for k, v in trainer._losses(probabilities, probabilities, real, fake, blend).items()}
    term = float(losses.texture(real, fake, blend))
    assert term > 0.05                               # uniform noise against a flat image: a real difference
    assert "g_texture" not in metrics[0.0] and metrics[3.0]["g_texture"] == pytest.approx(term, rel=1e-6)
    assert metrics[3.0]["g_loss"] - metrics[0.0]["g_loss"] == pytest.approx(3.0 * term, rel=1e-5)
    with pytest.raises(ConfigError, match="train_gan.texture"):
        dataclasses.replace(TINY, texture=-1.0).check()


def test_harmonise_shifts_the_region_to_the_host_ring_by_hand():
    labels, brain = _blob_case()           # tumour rows 10-13, columns 12-15; brain rows/columns 4-27; region rows 8-15, columns 10-17
    region = inpaint.region(labels, brain, 2)
    image = np.zeros((32, 32, 2), np.float32)
    image[brain] = (0.6, 0.3)
    brain = brain.copy()
    brain[5:8, 12:16] = False              # a notch of non-brain in the ring's reach: not part of the ring
    image[5:8, 12:16] = 0.9
    host = labels.copy()
    host[10:14, 18:20] = 2                 # the host's own tumour, inside the ring's reach: not part of the ring
    image[10:14, 18:20] = 0.95
    generated = np.zeros((32, 32, 2), np.float32)
    generated[brain] = (0.2, 0.5)          # normal tissue drawn too dark in channel 0, too bright in channel 1
    generated[labels > 0] = (0.8, 0.1)     # tumour
    out = inpaint.harmonise(image, generated, region, host, brain, width=2)
    assert region[8, 13] and not region[7, 13]                         # the ring reaches the notch ...
    assert not region[12, 18] and region[12, 17]                       # ... and the host tumour
    normal = region & (host == 0)
    # offsets: ring mean - generated normal mean = (0.6 - 0.2, 0.3 - 0.5) = (+0.4, -0.2), on the whole region
    assert np.allclose(out[normal & brain], (0.6, 0.3))
    assert np.allclose(out[labels > 0], (1.0, 0.0))        # 0.8 + 0.4 clipped to 1; 0.1 - 0.2 clipped to 0
    assert np.array_equal(out[~region], generated[~region])
    outside = brain.copy()
    outside[11, 13] = False                                # a tumour pixel outside the brain mask keeps its value
    assert np.allclose(inpaint.harmonise(image, generated, region, host, outside, width=2)[11, 13], (1.0, 0.0))
    full = np.ones((32, 32), bool)         # a region with no ring left in the brain: unchanged
    assert np.array_equal(inpaint.harmonise(image, generated, full, labels, brain, 2), generated)


@pytest.mark.parametrize("harmonise", ["none", "mean"])
def test_harmonised_inpainting_keeps_real_pixels_outside_the_region(harmonise):
    from mrisynth.inference import rendering

    train = _small_tumours(3)
    generator = generators.build("pix2pix", 64, 9, 4, 0.3, 0.25)
    margin = inpaint.margin_pixels(0.05, 64)
    regions = np.stack([inpaint.region(lab, br, margin) for lab, br in zip(train.labels, train.brain)])
    out = rendering.render_inpaint(generator, train.images, train.labels, train.brain, regions, margin, harmonise=harmonise)
    plain = rendering.render_inpaint(generator, train.images, train.labels, train.brain, regions, margin)
    assert np.array_equal(out[~regions], train.images[~regions])
    assert np.array_equal(out, plain) == (harmonise == "none")
    # render_split (the scores' path) harmonises the same way, on the regions `drawn` names
    drawn = rendering.drawn(train, "inpaint", 0.05)
    split = rendering.render_split(generator, train, "inpaint", 0.05, harmonise=harmonise)
    assert np.array_equal(split, rendering.render_inpaint(generator, train.images, train.labels, train.brain, drawn, margin,
                                                          harmonise=harmonise))
    assert np.array_equal(split[~drawn], train.images[~drawn])
    if harmonise == "none":   # the path render_split took before it went through render_inpaint, bit for bit
        cond, weights = inpaint.split_inputs(train.labels, train.brain, train.images, margin, 0.0, np.random.default_rng(0))
        assert np.array_equal(split, inpaint.composite(train.images, rendering.render(generator, cond), weights[..., 0]))
    with pytest.raises(ValueError, match="harmonise='median'"):
        rendering.render_inpaint(generator, train.images, train.labels, train.brain, regions, margin, harmonise="median")


def test_harmonise_needs_inpainting():
    from mrisynth.config import AugmentParams, Params, TrainGanParams

    with pytest.raises(ConfigError, match="augment.harmonise='median'"):
        AugmentParams(harmonise="median").check()
    params = Params(train_gan=TrainGanParams(synthesis="full"), augment=AugmentParams(harmonise="mean"))
    with pytest.raises(ConfigError, match="train_gan.synthesis is 'full'"):
        params.check()

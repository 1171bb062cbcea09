"""Batched generator inference, shared by training (image grids), augmentation, GAN scores and serving.

`render(generator, conditioning)` -> [0, 1] images. With `sample=True` the generator's Dropout (and
GaussianNoise) layers stay active while BatchNorm uses its learned statistics: dropout is pix2pix's only noise source
(its z in the paper), so each call gives another plausible image for the same mask. Sampling is
seeded (`seed`), so a rerun gives the same images.

Every model call goes through one `tf.function` per model, traced once for (any batch, *input shape)
float32 (`compiled_call`): the same ops as an eager `model(x, training=False)` and the same dropout
draws, without eager dispatch per layer and batch (~2x an eager loop and at least `model.predict` on
the same batches: `make bench`). Small models give bit-identical outputs (tests/inference/test_rendering.py);
on the trained default generator graph-mode kernel fusion rounds differently (max 0.009, mean 0.0008 on
the [-1, 1] scale; docs/benchmarks.md), the samples' statistics unchanged."""
from __future__ import annotations

import weakref

import numpy as np

from mrisynth.core import encoding, inpaint
from mrisynth.core.inpaint import BRAIN_CHANNEL


def _sampler(generator):
    """A copy of `generator` (same weights) whose Dropout and GaussianNoise layers (the `spade-noise`
    generator's noise injection) are always on."""
    import keras

    class AlwaysDropout(keras.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    class AlwaysNoise(keras.layers.GaussianNoise):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    def clone(layer):
        if isinstance(layer, keras.layers.Dropout):
            return AlwaysDropout.from_config(layer.get_config())
        if isinstance(layer, keras.layers.GaussianNoise):
            return AlwaysNoise.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(generator, clone_function=clone, recursive=True)
    copy.set_weights(generator.get_weights())
    return copy


def render(generator, conditioning: np.ndarray, batch_size: int = 8, sample: bool = False, seed: int = 0) -> np.ndarray:
    """(N, S, S, C) float32 images in [0, 1] for conditioning (N, S, S, K); zero outside the brain
    (channel 3 in both the 4-channel and the inpainting layout), as the skull-stripped training images.
    sample: dropout active (see module doc)."""
    import keras

    if len(conditioning) == 0:
        return np.zeros((0, *conditioning.shape[1:3], int(generator.output_shape[-1])), np.float32)
    model = generator
    if sample:
        keras.utils.set_random_seed(seed)
        model = _sampler(generator)
    return clip_to_brain(encoding.from_tanh(predict_batches(model, conditioning, batch_size)), conditioning)


class _InferenceCall:
    """`model(x, training=False)`, holding the model weakly (the cache below must not keep it alive). A
    callable object rather than a closure: TensorFlow counts traces per Python code object, so closures of
    many models would add up to a spurious "frequent retracing" warning; each object is its own key."""

    def __init__(self, model):
        self._model = weakref.ref(model)

    def __call__(self, x):
        return self._model()(x, training=False)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_call(model):
    """`model(x, training=False)` as a tf.function over float32 batches (None, *model.input_shape[1:]),
    built once per model (cached while the model lives; a last, smaller batch does not retrace)."""
    call = _COMPILED.get(model)
    if call is None:
        import tensorflow as tf

        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        call = _COMPILED[model] = tf.function(_InferenceCall(model), input_signature=[spec])
    return call


def predict_batches(model, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The model's float32 outputs for (N, ...) inputs, called on `batch_size` rows at a time in inference
    mode (N > 0), through `compiled_call`. The one batching loop of rendering and serving."""
    call = compiled_call(model)
    return np.concatenate([np.asarray(call(np.asarray(inputs[i : i + batch_size], np.float32)), dtype=np.float32)
                           for i in range(0, len(inputs), batch_size)])


def clip_to_brain(images: np.ndarray, conditioning: np.ndarray) -> np.ndarray:
    """[0, 1] images (N, S, S, C), zero outside the brain channel of their conditioning (N, S, S, K)."""
    return np.clip(images * conditioning[..., BRAIN_CHANNEL : BRAIN_CHANNEL + 1], 0.0, 1.0).astype(np.float32)


def render_labels(generator, labels: np.ndarray, brain: np.ndarray, batch_size: int = 8, sample: bool = False, seed: int = 0) -> np.ndarray:
    """`render` for BraTS label maps (N, S, S) and brain masks (N, S, S)."""
    return render(generator, encoding.conditioning(labels, brain), batch_size, sample, seed)


def render_split(generator, split, synthesis: str = "full", margin_fraction: float = 0.03, sample: bool = False,
                 seed: int = 0, harmonise: str = "none") -> np.ndarray:
    """[0, 1] images (N, S, S, C) of a split's label maps: full synthesis from its conditioning, or
    (synthesis 'inpaint') its own tumour regions re-generated inside its real slices (`harmonise` as in
    `render_inpaint`)."""
    if synthesis != "inpaint":
        return render(generator, split.conditioning, sample=sample, seed=seed)
    margin = inpaint.margin_pixels(margin_fraction, split.images.shape[1])
    regions = drawn(split, synthesis, margin_fraction)
    return render_inpaint(generator, split.images, split.labels, split.brain, regions, margin, sample=sample, seed=seed,
                          harmonise=harmonise)


def diversity(generator, split, samples: int = 4, seed: int = 0, synthesis: str = "full", margin_fraction: float = 0.03,
              harmonise: str = "none") -> float:
    """Mean per-pixel standard deviation (intensity units of [0, 1] images, over all channels) across
    `samples` dropout-active renders of the same label maps of a split: inside the brain (full
    synthesis) or inside the re-generated regions (inpainting, where everything else is real)."""
    renders = np.stack([render_split(generator, split, synthesis, margin_fraction, sample=True, seed=seed + k, harmonise=harmonise)
                        for k in range(samples)])
    spread = renders.std(axis=0)                                  # (N, S, S, C)
    where = drawn(split, synthesis, margin_fraction)
    return float(spread[where].mean()) if where.any() else 0.0


def drawn(split, synthesis: str = "full", margin_fraction: float = 0.03) -> np.ndarray:
    """(N, S, S) bool: the pixels `render_split` generates (the brain, or the inpainted regions)."""
    if synthesis == "inpaint":
        margin = inpaint.margin_pixels(margin_fraction, split.images.shape[1])
        return inpaint.training_regions(split.labels, split.brain, margin, 0.0, np.random.default_rng(0))
    return split.conditioning[..., BRAIN_CHANNEL] > 0


def render_inpaint(generator, images: np.ndarray, labels: np.ndarray, brain: np.ndarray, regions: np.ndarray, margin: int,
                   batch_size: int = 8, sample: bool = False, seed: int = 0, harmonise: str = "none") -> np.ndarray:
    """Inpainting (mrisynth.core.inpaint): (N, S, S, C) [0, 1] images equal to `images` outside `regions`
    (N, S, S) and generated for `labels` inside, blended over `margin` pixels at the region's border.
    harmonise 'mean': each region first shifted to its host's local normal-tissue level (`inpaint.harmonise`,
    a ring `margin` pixels wide)."""
    from mrisynth.config import HARMONISE

    if harmonise not in HARMONISE:
        raise ValueError(f"harmonise={harmonise!r}: expected one of {list(HARMONISE)}")
    cond = inpaint.conditioning(labels, brain, images, regions)
    generated = render(generator, cond, batch_size, sample, seed)
    if harmonise == "mean":
        generated = np.stack([inpaint.harmonise(images[i], generated[i], regions[i], labels[i], brain[i], margin)
                              for i in range(len(generated))]) if len(generated) else generated
    weights = np.stack([inpaint.blend_weight(r, margin) for r in regions]) if len(regions) else np.zeros(regions.shape, np.float32)
    return inpaint.composite(images.astype(np.float32), generated, weights)

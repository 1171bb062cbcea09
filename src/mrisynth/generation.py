"""Batched generator inference, shared by training (image grids), augmentation, GAN scores and serving.

`render(generator, conditioning)` -> [0, 1] images. With `sample=True` the generator's Dropout layers
stay active while BatchNorm uses its learned statistics: dropout is pix2pix's only noise source
(its z, SPEC section 3), so each call gives another plausible image for the same mask. Sampling is
seeded (`seed`), so a rerun gives the same images."""
from __future__ import annotations

import numpy as np

from mrisynth.core import encoding


def _sampler(generator):
    """A copy of `generator` (same weights) whose Dropout layers are always on."""
    import keras

    class AlwaysDropout(keras.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    def clone(layer):
        if isinstance(layer, keras.layers.Dropout):
            return AlwaysDropout.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(generator, clone_function=clone, recursive=True)
    copy.set_weights(generator.get_weights())
    return copy


def render(generator, conditioning: np.ndarray, batch_size: int = 8, sample: bool = False, seed: int = 0) -> np.ndarray:
    """(N, S, S, C) float32 images in [0, 1] for conditioning (N, S, S, 4); zero outside the brain
    (channel 3), as the skull-stripped training images. sample: dropout active (see module doc)."""
    import keras

    if len(conditioning) == 0:
        return np.zeros((0, *conditioning.shape[1:3], int(generator.output_shape[-1])), np.float32)
    model = generator
    if sample:
        keras.utils.set_random_seed(seed)
        model = _sampler(generator)
    out = [np.asarray(model(conditioning[i : i + batch_size].astype(np.float32), training=False), dtype=np.float32)
           for i in range(0, len(conditioning), batch_size)]
    images = encoding.from_tanh(np.concatenate(out))
    return np.clip(images * conditioning[..., -1:], 0.0, 1.0).astype(np.float32)


def render_labels(generator, labels: np.ndarray, brain: np.ndarray, batch_size: int = 8, sample: bool = False, seed: int = 0) -> np.ndarray:
    """`render` for BraTS label maps (N, S, S) and brain masks (N, S, S)."""
    return render(generator, encoding.conditioning(labels, brain), batch_size, sample, seed)


def diversity(generator, conditioning: np.ndarray, samples: int = 4, seed: int = 0) -> float:
    """Mean per-pixel standard deviation (intensity units of [0, 1] images, inside the brain, over all
    channels) across `samples` dropout-active renders of the same conditioning."""
    renders = np.stack([render(generator, conditioning, sample=True, seed=seed + k) for k in range(samples)])
    spread = renders.std(axis=0)                                  # (N, S, S, C)
    brain = conditioning[..., -1] > 0
    return float(spread[brain].mean()) if brain.any() else 0.0

"""Rendering through one compiled call per model, against the eager call it replaced.

On these small models the compiled and the eager call agree bit for bit, dropout draws included (the
same masks: a different draw would move outputs by far more than rounding). On the default 128-px SPADE
inpainting generator graph-mode kernel fusion rounds differently: max |difference| 0.009, mean 0.0008 on
the tanh scale (docs/benchmarks.md), so these tests pin the dropout draws and the batching, not the bits
of every model."""
import gc
import logging
import weakref

import keras
import numpy as np
import pytest

from mrisynth.core import encoding, generators
from mrisynth.inference import rendering


def _conditioning(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, size, size, channels)).astype(np.float32)
    x[..., 3] = (rng.random((n, size, size)) > 0.2).astype(np.float32)  # the brain channel
    return x


def _eager(model, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """What predict_batches did before it was compiled: one eager call per batch."""
    return np.concatenate([np.asarray(model(inputs[i : i + batch_size], training=False), np.float32)
                           for i in range(0, len(inputs), batch_size)])


@pytest.fixture
def policy(request):
    """The global Keras dtype policy for one test (the stages build and load generators under
    mixed_bfloat16 on this CPU), restored afterwards."""
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("name, channels", [("pix2pix", 4), ("spade", 9)])
def test_compiled_batches_equal_eager_calls_bit_for_bit_in_both_modes(name, channels, policy):
    keras.utils.set_random_seed(3)
    model = generators.build(name, 32, channels, 4, 0.3, 0.25)
    x = _conditioning(11, 32, channels)                      # 11 = two full batches of 4 and a last one of 3
    assert np.array_equal(rendering.predict_batches(model, x, 4), _eager(model, x, 4))
    assert rendering.compiled_call(model).experimental_get_tracing_count() == 1  # the short last batch did not retrace

    # dropout sampling: the same seed gives the same draws compiled as eager
    keras.utils.set_random_seed(5)
    compiled = rendering.predict_batches(rendering._sampler(model), x, 4)
    keras.utils.set_random_seed(5)
    eager = _eager(rendering._sampler(model), x, 4)
    assert np.array_equal(compiled, eager)
    assert not np.array_equal(compiled, rendering.predict_batches(model, x, 4))  # dropout was on


def test_render_is_seeded_and_zero_outside_the_brain():
    keras.utils.set_random_seed(3)
    model = generators.build("pix2pix", 32, 4, 4, 0.3, 0.25)
    labels = np.zeros((5, 32, 32), np.uint8)
    labels[:, 10:16, 10:16] = 1
    brain = np.zeros((5, 32, 32), bool)
    brain[:, 4:28, 4:28] = True
    cond = encoding.conditioning(labels, brain)
    first = rendering.render(model, cond, batch_size=2, sample=True, seed=7)
    assert np.array_equal(first, rendering.render(model, cond, batch_size=2, sample=True, seed=7))
    assert not np.array_equal(first, rendering.render(model, cond, batch_size=2, sample=True, seed=8))
    assert first.dtype == np.float32 and first.shape == (5, 32, 32, 4)
    assert (first[~brain] == 0).all() and first.min() >= 0.0 and first.max() <= 1.0


def test_noise_injection_is_off_in_inference_on_when_sampling_and_seeded():
    """spade-noise with dropout 0: noise is its only randomness. Its scales start at 0 (the output is the noise-free
    one); once they are not 0, render(sample=True) differs by seed and repeats for a seed, a plain render
    (serving, validation) has the noise off and a training call has it on. spade itself gets no noise layer, and
    the noise layers take no draw from the seeds of the layers built after them (same names: same initial weights)."""
    keras.utils.set_random_seed(3)
    model = generators.build("spade-noise", 32, 9, 4, 0.0, 0.25)
    x = _conditioning(3, 32, 9)
    plain = rendering.predict_batches(model, x, 4)
    assert np.array_equal(rendering.render(model, x, sample=True, seed=1), rendering.render(model, x))  # scales at 0
    for layer in model.layers:
        if layer.name.endswith("_noise_scale"):
            layer.set_weights([np.full(w.shape, 0.5, np.float32) for w in layer.get_weights()])
    first = rendering.render(model, x, sample=True, seed=1)
    assert np.array_equal(first, rendering.render(model, x, sample=True, seed=1))
    assert not np.array_equal(first, rendering.render(model, x, sample=True, seed=2))
    assert np.array_equal(rendering.predict_batches(model, x, 4), plain)   # inference: no noise, the scales unused
    training = [np.asarray(model(x, training=True)) for _ in range(2)]     # training: noise on, a new draw per call
    assert not np.array_equal(*training)
    noise_layers = [layer.name for layer in model.layers if isinstance(layer, keras.layers.GaussianNoise)]
    decoder = [layer.name for layer in model.layers if layer.name.startswith("up") and layer.name.endswith("_conv")]
    assert len(noise_layers) == len(decoder) >= 3                          # one per decoder scale
    spade = generators.build("spade", 32, 9, 4, 0.0, 0.25)
    assert not any(isinstance(layer, keras.layers.GaussianNoise) for layer in spade.layers)
    assert {layer.name for layer in spade.layers} == {layer.name for layer in model.layers if "_noise" not in layer.name}
    keras.utils.set_random_seed(4)
    spade = generators.build("spade", 32, 9, 4, 0.3, 0.25)
    keras.utils.set_random_seed(4)
    noisy = {layer.name: layer.get_weights() for layer in generators.build("spade-noise", 32, 9, 4, 0.3, 0.25).layers}
    for layer in spade.layers:
        assert all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), noisy[layer.name])), layer.name


def test_the_compiled_call_cache_does_not_keep_a_model_alive():
    model = generators.build("pix2pix", 32, 4, 4, 0.0, 0.25)
    rendering.predict_batches(model, _conditioning(2, 32, 4), 2)
    assert model in rendering._COMPILED
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_many_models_rendered_once_each_raise_no_retracing_warning(caplog):
    """augment and gan_usefulness render several generators and dropout samplers: one trace each is by
    design, and must not surface as TensorFlow's 'triggered tf.function retracing' warning."""
    x = _conditioning(1, 32, 4)
    models = [generators.build("pix2pix", 32, 4, 4, 0.0, 0.25) for _ in range(7)]
    with caplog.at_level(logging.WARNING):
        for model in models:
            rendering.predict_batches(model, x, 1)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]

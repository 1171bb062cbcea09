"""The paper's networks: block counts, filters, strides, dropout, activations, skips, parameter counts."""
import keras
import numpy as np
import pytest
from keras import layers

from mrisynth.core import losses, models


def _blocks(model, prefix):
    return [l for l in model.layers if l.name.startswith(prefix) and isinstance(l, keras.Sequential)]


def _hand_count_generator(cin=4, cout=4):
    """Paper generator at 256, counted by hand: conv 4x4 (no bias before BN) + BN (4 per channel);
    transposed convs with bias; skip concatenations double the up-block inputs."""
    down = [64, 128, 256, 512, 512, 512, 512]
    total, c = 0, cin
    for f in down:
        total += 16 * c * f + 4 * f
        c = f
    total += 16 * 512 * 512 + 512  # bottleneck
    c = 512
    for f, skip in zip([512, 512, 512, 512, 256, 128, 64], reversed(down)):
        total += 16 * c * f + f
        c = f + skip
    total += 16 * c * cout + cout  # output layer
    return total


def _hand_count_discriminator(cin=4, cout=4):
    total, c = 0, cin + cout
    for f in [64, 128, 256, 512, 512]:
        total += 16 * c * f + 4 * f
        c = f
    return total + 16 * 512 * 1 + 1


def test_generator_at_256_is_the_papers():
    g = models.build_generator(256, 4, 4)
    down, up = _blocks(g, "down"), _blocks(g, "up")
    assert len(down) == 7 and len(up) == 7
    assert [b.layers[0].filters for b in down] == [64, 128, 256, 512, 512, 512, 512]
    assert [b.layers[0].filters for b in up] == [512, 512, 512, 512, 256, 128, 64]
    for b in down:
        conv, bn, act = b.layers
        assert isinstance(conv, layers.Conv2D) and conv.kernel_size == (4, 4) and conv.strides == (2, 2)
        assert isinstance(conv.kernel_initializer, keras.initializers.RandomNormal)
        assert isinstance(bn, layers.BatchNormalization) and isinstance(act, layers.LeakyReLU)
    for b in up:
        conv, drop, act = b.layers
        assert isinstance(conv, layers.Conv2DTranspose) and conv.kernel_size == (4, 4) and conv.strides == (2, 2)
        assert isinstance(drop, layers.Dropout) and drop.rate == pytest.approx(0.3)
        assert isinstance(act, layers.ReLU)
    bottleneck = g.get_layer("bottleneck")
    assert bottleneck.filters == 512 and bottleneck.strides == (2, 2)
    assert isinstance(g.get_layer("bottleneck_relu"), layers.ReLU)
    skips = [l for l in g.layers if isinstance(l, layers.Concatenate)]
    assert len(skips) == 7
    # each skip joins an up block with the down block of the same resolution
    for i, skip in enumerate(skips):
        sources = {t._keras_history.operation.name for t in skip.input}
        assert sources == {f"up{i + 1}", f"down{7 - i}"}
    out = g.get_layer("output")
    assert isinstance(out, layers.Conv2DTranspose) and out.strides == (2, 2) and out.filters == 4
    assert g.get_layer("tanh").activation.__name__ == "tanh"
    assert g.output_shape == (None, 256, 256, 4)
    assert g.count_params() == _hand_count_generator() == 54_420_164


def test_discriminator_at_256_is_the_papers():
    d = models.build_discriminator(256, 4, 4)
    blocks = _blocks(d, "disc")
    assert [b.layers[0].filters for b in blocks] == [64, 128, 256, 512, 512]
    assert all(b.layers[0].strides == (2, 2) and isinstance(b.layers[1], layers.BatchNormalization) for b in blocks)
    logits = d.get_layer("logits")
    assert logits.filters == 1 and logits.kernel_size == (4, 4) and logits.strides == (1, 1)
    assert d.get_layer("probability").activation.__name__ == "sigmoid"
    assert d.output_shape == (None, 8, 8, 1)
    assert d.count_params() == _hand_count_discriminator()


@pytest.mark.parametrize("size,blocks,disc_blocks", [(64, 5, 3), (128, 6, 4)])
def test_smaller_sizes_drop_blocks(size, blocks, disc_blocks):
    g = models.build_generator(size, 4, 2, width=0.25)
    assert len(_blocks(g, "down")) == blocks and g.output_shape == (None, size, size, 2)
    d = models.build_discriminator(size, 4, 2, width=0.25)
    assert len(_blocks(d, "disc")) == disc_blocks and d.output_shape == (None, 8, 8, 1)
    with pytest.raises(ValueError, match="power of two"):
        models.build_generator(100, 4, 4)


def test_losses_match_hand_values():
    p = np.full((1, 2, 2, 1), 0.25, np.float32)
    assert float(losses.bce(1.0, p)) == pytest.approx(-np.log(0.25), rel=1e-5)
    assert float(losses.bce(0.0, p)) == pytest.approx(-np.log(0.75), rel=1e-5)
    real, fake = np.zeros((1, 2, 2, 1), np.float32), np.full((1, 2, 2, 1), 0.5, np.float32)
    total, gan, rec = losses.generator_loss(p, real, fake, alpha=10.0)
    assert float(rec) == pytest.approx(0.5) and float(total) == pytest.approx(float(gan) + 5.0, rel=1e-5)
    assert float(losses.discriminator_loss(p, p)) == pytest.approx(-np.log(0.25) - np.log(0.75), rel=1e-5)


def test_segmenter_shapes():
    s = models.build_segmenter(64, 4, 4, depth=3, base_filters=8)
    assert s.output_shape == (None, 64, 64, 4)
    out = s(np.zeros((1, 64, 64, 4), np.float32))
    np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, rtol=1e-5)

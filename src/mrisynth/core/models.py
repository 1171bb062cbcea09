"""The paper's networks (Novoselov & Smirnov 2024, section 2.2) in Keras 3: U-Net generator, CNN patch discriminator, and
the base U-Net segmenter.

At 256x256 the generator has 7 down blocks (64-128-256-512-512-512-512), a 512 bottleneck and 7 up
blocks (512-512-512-512-256-128-64); the discriminator has 5 blocks (64-128-256-512-512). Smaller
inputs drop the deepest blocks, so 64x64 and 128x128 run through the same builders.
"""
from __future__ import annotations

import math
import random

import keras
from keras import layers

GEN_DOWN_FILTERS = (64, 128, 256, 512, 512, 512, 512)
BOTTLENECK_FILTERS = 512
DISC_FILTERS = (64, 128, 256, 512, 512)
KERNEL = 4


def _init(seed: int | None = None) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02, seed=seed)


def _scaled(filters: int, width: float) -> int:
    return max(4, int(round(filters * width)))


def _depth(size: int) -> int:
    if size < 16 or size & (size - 1):
        raise ValueError(f"image size {size}: expected a power of two >= 16 (e.g. 64, 128, 256)")
    return int(math.log2(size))


def downsample(filters: int, name: str, batchnorm: bool = True, synchronized: bool = False) -> keras.Sequential:
    """Conv2D 4x4 stride 2 (+ BatchNorm) + LeakyReLU(0.2): (H, W, c) -> (H/2, W/2, filters).
    synchronized: BatchNorm statistics over the global batch of all replicas (tf.distribute)."""
    block = keras.Sequential(name=name)
    block.add(layers.Conv2D(filters, KERNEL, strides=2, padding="same", kernel_initializer=_init(), use_bias=not batchnorm))
    if batchnorm:
        block.add(layers.BatchNormalization(momentum=0.9, synchronized=synchronized))
    block.add(layers.LeakyReLU(0.2))
    return block


class _ReplicaSeedGenerator(keras.random.SeedGenerator):
    """Seeds that differ per tf.distribute replica (the replica id is added to the second seed word);
    replica 0, and calls outside any strategy, get the plain seed."""

    def next(self, ordered=True):
        import tensorflow as tf

        seed = super().next(ordered)
        ctx = tf.distribute.get_replica_context()
        if ctx is None:
            return seed
        replica = tf.cast(ctx.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([tf.zeros_like(replica), replica])


class ReplicaDropout(layers.Dropout):
    """Dropout for training under tf.distribute: each replica draws its own masks, as the rows of one
    batch do on one device (a plain Dropout's seed state is mirrored, so every replica would repeat
    replica 0's masks). Only for training; saved models use plain Dropout (GanTrainer.portable_generator)."""

    def __init__(self, rate, **kwargs):
        super().__init__(rate, **kwargs)
        if rate > 0:  # the same tracked state variable, per-replica seeds (Dropout is built in __init__: no new state)
            self.seed_generator.__class__ = _ReplicaSeedGenerator


def upsample(filters: int, name: str, dropout: float, replica_dropout: bool = False) -> keras.Sequential:
    """Conv2DTranspose 4x4 stride 2 + Dropout + ReLU: (H, W, c) -> (2H, 2W, filters).
    replica_dropout: per-replica dropout masks (ReplicaDropout), for tf.distribute training."""
    block = keras.Sequential(name=name)
    block.add(layers.Conv2DTranspose(filters, KERNEL, strides=2, padding="same", kernel_initializer=_init()))
    if dropout > 0:
        block.add(ReplicaDropout(dropout) if replica_dropout else layers.Dropout(dropout))
    block.add(layers.ReLU())
    return block


def generator_filters(size: int, width: float = 1.0) -> tuple[list[int], list[int]]:
    """(down filters, up filters) for a generator on size x size: log2(size) - 1 blocks each way."""
    n_blocks = _depth(size) - 1
    if n_blocks > len(GEN_DOWN_FILTERS):
        down = list(GEN_DOWN_FILTERS) + [512] * (n_blocks - len(GEN_DOWN_FILTERS))
    else:
        down = list(GEN_DOWN_FILTERS[:n_blocks])
    down = [_scaled(f, width) for f in down]
    return down, list(reversed(down))


def build_generator(size: int = 256, in_channels: int = 4, out_channels: int = 4, dropout: float = 0.3, width: float = 1.0,
                    distributed: bool = False) -> keras.Model:
    """U-Net generator: conditioning (N, size, size, in_channels) -> image (N, size, size, out_channels) in [-1, 1].

    Down blocks with BatchNorm + LeakyReLU, a stride-2 bottleneck with ReLU down to 1x1, up blocks
    (transposed conv, dropout, ReLU) each concatenated with the matching down block's output, and a
    stride-2 transposed-conv output layer with tanh. `width` scales every filter count (1.0 = paper).
    `distributed`: for training under tf.distribute - BatchNorm over the global batch of all replicas and
    per-replica dropout masks (the weights are the same as without it)."""
    down_filters, up_filters = generator_filters(size, width)
    inputs = keras.Input((size, size, in_channels), name="conditioning")
    x = inputs
    skips = []
    for i, filters in enumerate(down_filters):
        x = downsample(filters, f"down{i + 1}", synchronized=distributed)(x)
        skips.append(x)
    x = layers.Conv2D(_scaled(BOTTLENECK_FILTERS, width), KERNEL, strides=2, padding="same", kernel_initializer=_init(), name="bottleneck")(x)
    x = layers.ReLU(name="bottleneck_relu")(x)
    for i, (filters, skip) in enumerate(zip(up_filters, reversed(skips))):
        x = upsample(filters, f"up{i + 1}", dropout, replica_dropout=distributed)(x)
        x = layers.Concatenate(name=f"skip{i + 1}")([x, skip])
    x = layers.Conv2DTranspose(out_channels, KERNEL, strides=2, padding="same", kernel_initializer=_init(), name="output")(x)
    outputs = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs, outputs, name="generator")


def spade(x, cond, filters: int, hidden: int, name: str, synchronized: bool = False):
    """SPADE-style normalisation (Park et al. 2019) of x (N, h, w, filters) by the conditioning resized to
    (N, h, w, K): parameter-free BatchNorm, then x * (1 + gamma) + beta with gamma, beta from a small
    conv net on the conditioning, so the label map steers every scale (standard layers only)."""
    normalized = layers.BatchNormalization(momentum=0.9, center=False, scale=False, synchronized=synchronized, name=f"{name}_norm")(x)
    shared = layers.Conv2D(hidden, 3, padding="same", activation="relu", kernel_initializer=_init(), name=f"{name}_shared")(cond)
    gamma = layers.Conv2D(filters, 3, padding="same", kernel_initializer="zeros", name=f"{name}_gamma")(shared)
    beta = layers.Conv2D(filters, 3, padding="same", kernel_initializer="zeros", name=f"{name}_beta")(shared)
    return layers.Add(name=f"{name}_out")([normalized, layers.Multiply(name=f"{name}_scale")([normalized, gamma]), beta])


def noise_injection(x, name: str, index: int):
    """StyleGAN-style noise injection (Karras et al. 2019): x + s * n, with n ~ N(0, 1) one plane per pixel
    (N, h, w, 1) shared by the channels and s a learned per-channel scale that starts at 0 (x unchanged at
    initialisation). Placed before SPADE's normalisation, so the label map's gamma modulates the noise per region.
    Standard layers only, so the saved model loads with safe_mode: a frozen all-zero 1x1 conv gives a zero
    plane, GaussianNoise(1) draws n (on while training; `inference.rendering` keeps it on when sampling, as it
    does dropout), a bias-free 1x1 conv is the per-channel scale.

    GaussianNoise(seed=None) takes its seed from Python's `random`, which every later initialiser and Dropout
    also draws from: the state is given back after it, so the layers built after it get the seeds (and weights)
    they get in `spade`, and this layer's seed is moved by a large per-scale offset (`index`) so that no two
    noise layers, and no Dropout that draws the same number next, share a random stream."""
    state = random.getstate()
    draw = layers.GaussianNoise(1.0, name=f"{name}_draw")
    random.setstate(state)
    seeds = draw.seed_generator.state
    seeds.assign(seeds + keras.ops.convert_to_tensor([1_000_003 * (index + 1), 0], dtype=seeds.dtype))
    zero = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="zeros", trainable=False, name=f"{name}_zero")(x)
    scaled = layers.Conv2D(int(x.shape[-1]), 1, use_bias=False, kernel_initializer="zeros", name=f"{name}_scale")(draw(zero))
    return layers.Add(name=f"{name}_add")([x, scaled])


def build_spade_noise_generator(size: int = 256, in_channels: int = 4, out_channels: int = 4, dropout: float = 0.3,
                                width: float = 1.0, distributed: bool = False) -> keras.Model:
    """`build_spade_generator` with `noise_injection` before every decoder block's SPADE normalisation: a
    per-pixel noise source at every scale, where dropout alone gives the generator little to make texture from.
    One device only (TrainGanParams.check): under tf.distribute every replica would draw the same noise."""
    return build_spade_generator(size, in_channels, out_channels, dropout, width, distributed=distributed, noise=True)


def build_spade_generator(size: int = 256, in_channels: int = 4, out_channels: int = 4, dropout: float = 0.3, width: float = 1.0,
                          distributed: bool = False, noise: bool = False) -> keras.Model:
    """The pix2pix U-Net (`build_generator`: same encoder, skips, filters and output) whose decoder blocks
    are SPADE-normalised by the conditioning average-pooled to their scale: conditioning
    (N, size, size, in_channels) -> image (N, size, size, out_channels) in [-1, 1]. noise: `noise_injection`
    before each decoder block's SPADE normalisation (False builds exactly the same layers, in the same order,
    as before it existed; True adds layers but leaves every other layer's seed and initial weights as in False)."""
    down_filters, up_filters = generator_filters(size, width)
    inputs = keras.Input((size, size, in_channels), name="conditioning")
    x = inputs
    skips = []
    for i, filters in enumerate(down_filters):
        x = downsample(filters, f"down{i + 1}", synchronized=distributed)(x)
        skips.append(x)
    x = layers.Conv2D(_scaled(BOTTLENECK_FILTERS, width), KERNEL, strides=2, padding="same", kernel_initializer=_init(), name="bottleneck")(x)
    x = layers.ReLU(name="bottleneck_relu")(x)
    hidden = _scaled(64, width)
    for i, (filters, skip) in enumerate(zip(up_filters, reversed(skips))):
        x = layers.Conv2DTranspose(filters, KERNEL, strides=2, padding="same", kernel_initializer=_init(), name=f"up{i + 1}_conv")(x)
        factor = size // int(x.shape[1])
        cond = layers.AveragePooling2D(factor, name=f"up{i + 1}_cond")(inputs) if factor > 1 else inputs
        if noise:
            x = noise_injection(x, f"up{i + 1}_noise", i)
        x = spade(x, cond, filters, hidden, f"up{i + 1}_spade", synchronized=distributed)
        if dropout > 0:
            x = (ReplicaDropout(dropout, name=f"up{i + 1}_dropout") if distributed else layers.Dropout(dropout, name=f"up{i + 1}_dropout"))(x)
        x = layers.ReLU(name=f"up{i + 1}_relu")(x)
        x = layers.Concatenate(name=f"skip{i + 1}")([x, skip])
    x = layers.Conv2DTranspose(out_channels, KERNEL, strides=2, padding="same", kernel_initializer=_init(), name="output")(x)
    outputs = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs, outputs, name="generator")


def build_discriminator(size: int = 256, in_channels: int = 4, out_channels: int = 4, width: float = 1.0,
                        distributed: bool = False, blocks: int = 0) -> keras.Model:
    """Patch discriminator: (conditioning, image) -> (N, size/2^k, size/2^k, 1) real probabilities.

    k = 5 blocks at 256 (64-128-256-512-512), fewer at smaller sizes so the patch map stays >= 8x8;
    then a 1-filter 4x4 stride-1 conv. The sigmoid is a separate float32 layer, so `logits` can be
    read without applying it twice. `blocks` > 0: at most that many blocks (a shallower PatchGAN with a
    smaller receptive field: 3 blocks see 46 px patches, the paper's 4 at 128 px see 94 px)."""
    n_blocks = max(1, min(len(DISC_FILTERS), _depth(size) - 3))
    if blocks > 0:
        n_blocks = min(n_blocks, blocks)
    cond = keras.Input((size, size, in_channels), name="conditioning")
    image = keras.Input((size, size, out_channels), name="image")
    x = layers.Concatenate(name="pair")([cond, image])
    for i, filters in enumerate(DISC_FILTERS[:n_blocks]):
        x = downsample(_scaled(filters, width), f"disc{i + 1}", synchronized=distributed)(x)
    logits = layers.Conv2D(1, KERNEL, strides=1, padding="same", kernel_initializer=_init(), name="logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probability")(logits)
    return keras.Model([cond, image], outputs, name="discriminator")


def build_segmenter(size: int, in_channels: int, num_classes: int = 4, depth: int = 4, base_filters: int = 16, dropout: float = 0.1,
                    bn_momentum: float = 0.9) -> keras.Model:
    """Base U-Net segmenter: (N, size, size, in_channels) -> (N, size, size, num_classes) softmax.

    `depth` 2x2 max-pool levels, two 3x3 conv + BatchNorm + ReLU per level, filters doubling per level.
    BatchNorm momentum 0.9 (Keras' default 0.99 leaves the inference statistics hundreds of steps
    behind on a 30-image task, so validation Dice, checkpoint choice and early stopping would see an
    all-background model for the first epochs)."""
    if size % (2**depth):
        raise ValueError(f"segmenter: size {size} is not divisible by 2**depth = {2**depth}")

    def conv_block(x, filters, name):
        for j in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{j + 1}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn{j + 1}")(x)
            x = layers.ReLU(name=f"{name}_relu{j + 1}")(x)
        return x

    inputs = keras.Input((size, size, in_channels), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, f"enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"pool{level + 1}")(x)
    x = conv_block(x, base_filters * 2**depth, "bridge")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bridge_dropout")(x)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, name=f"up{level + 1}")(x)
        x = layers.Concatenate(name=f"skip{level + 1}")([x, skips[level]])
        x = conv_block(x, base_filters * 2**level, f"dec{level + 1}")
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="softmax")(logits)
    return keras.Model(inputs, outputs, name="segmenter")

"""Differentiable augmentation of discriminator inputs (DiffAugment, Zhao et al. 2020), in TensorFlow.

A discriminator trained on 30 slices memorises them; DiffAugment shows it randomly transformed pairs
instead, real and generated alike, and the transforms are differentiable, so the generator's gradient
flows through them. Each pair (conditioning, image) gets ONE transform: the same translation and cutout
for both members, so the pair stays aligned; intensity changes touch the image only.

Policy: a comma- (or +-) separated subset of
    translation  shift by up to 1/8 of the side per axis, per sample (conditioning padded with 0,
                 image with -1, the background of the tanh scale)
    cutout       a square of 1/4 of the side, per sample, set to 0 (conditioning) and -1 (image)
    color        brightness + U(-0.2, 0.2) and contrast x U(0.7, 1.3) about the image mean, per sample
Shapes: cond (B, H, W, K), image (B, H, W, C), image in [-1, 1].
"""
from __future__ import annotations

try:  # TensorFlow is imported where the augmentation runs; `parse` (used by config checks) needs neither
    import keras
    import tensorflow as tf
except ImportError:  # pragma: no cover
    keras = tf = None

POLICIES = ("translation", "cutout", "color")
TRANSLATION = 0.125
CUTOUT = 0.25


def parse(policy: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '', 'off' or 'none' -> (); ValueError naming an unknown part."""
    if (policy or "").strip() in ("off", "none"):
        return ()
    parts = tuple(p.strip() for p in (policy or "").replace("+", ",").split(",") if p.strip())
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment part(s) {unknown}; expected a comma-separated subset of {list(POLICIES)}")
    return parts


def _uniform(shape, low, high, seed, dtype="float32"):
    return keras.random.uniform(shape, low, high, dtype=dtype, seed=seed)


def _translate(x, fill, seed):
    """Per-sample integer shift of (B, H, W, K) by up to TRANSLATION of the side; `fill` (K,) outside."""
    b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    ry = tf.cast(tf.round(tf.cast(h, tf.float32) * TRANSLATION), tf.int32)
    rx = tf.cast(tf.round(tf.cast(w, tf.float32) * TRANSLATION), tf.int32)
    shifts = _uniform((2, b), 0.0, 1.0, seed)
    dy = tf.cast(tf.floor(shifts[0] * tf.cast(2 * ry + 1, tf.float32)), tf.int32) - ry
    dx = tf.cast(tf.floor(shifts[1] * tf.cast(2 * rx + 1, tf.float32)), tf.int32) - rx
    iy = tf.range(h)[None, :] + dy[:, None]  # (B, H) source rows
    ix = tf.range(w)[None, :] + dx[:, None]
    valid_y = (iy >= 0) & (iy < h)
    valid_x = (ix >= 0) & (ix < w)
    out = tf.gather(x, tf.clip_by_value(iy, 0, h - 1), axis=1, batch_dims=1)
    out = tf.gather(out, tf.clip_by_value(ix, 0, w - 1), axis=2, batch_dims=1)
    valid = tf.logical_and(valid_y[:, :, None], valid_x[:, None, :])[..., None]
    return tf.where(valid, out, tf.cast(fill, x.dtype))


def _cutout(x, fill, seed):
    """Per-sample square of CUTOUT of the side set to `fill` (K,)."""
    b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    sy = tf.cast(tf.round(tf.cast(h, tf.float32) * CUTOUT), tf.int32)
    sx = tf.cast(tf.round(tf.cast(w, tf.float32) * CUTOUT), tf.int32)
    centre = _uniform((2, b), 0.0, 1.0, seed)
    cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
    yy = tf.range(h)[None, :]
    xx = tf.range(w)[None, :]
    in_y = tf.abs(yy - cy[:, None]) <= sy // 2
    in_x = tf.abs(xx - cx[:, None]) <= sx // 2
    hole = tf.logical_and(in_y[:, :, None], in_x[:, None, :])[..., None]
    return tf.where(hole, tf.cast(fill, x.dtype), x)


def _color(image, seed):
    b = tf.shape(image)[0]
    draws = _uniform((2, b, 1, 1, 1), 0.0, 1.0, seed)
    image = image + tf.cast(draws[0] * 0.4 - 0.2, image.dtype)
    mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
    return (image - mean) * tf.cast(0.7 + draws[1] * 0.6, image.dtype) + mean


def augment(cond, image, parts: tuple[str, ...], seed):
    """One random transform per pair (module doc). `seed`: a keras.random.SeedGenerator (resumable)."""
    if not parts:
        return cond, image
    k = cond.shape[-1]
    image = tf.cast(image, cond.dtype)
    if "color" in parts:
        image = _color(image, seed)
    pair = tf.concat([cond, image], axis=-1)
    fill = tf.concat([tf.zeros((k,), pair.dtype), -tf.ones((image.shape[-1],), pair.dtype)], axis=0)
    if "translation" in parts:
        pair = _translate(pair, fill, seed)
    if "cutout" in parts:
        pair = _cutout(pair, fill, seed)
    return pair[..., :k], pair[..., k:]

"""GAN objective (the paper, section 2.3): L = L_GAN + alpha * L1, with a probability-output discriminator.

The discriminator ends in a float32 sigmoid, so plain binary cross-entropy on its probabilities is
the paper's log-loss; the sigmoid is never applied twice."""
from __future__ import annotations

from keras import ops

_EPS = 1e-7


def bce(target: float, probabilities):
    """Mean binary cross-entropy of a patch map of probabilities against a constant target (0 or 1)."""
    p = ops.clip(ops.cast(probabilities, "float32"), _EPS, 1.0 - _EPS)
    return -ops.mean(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))


def l1(real, fake):
    """Mean absolute error over all pixels and channels."""
    return ops.mean(ops.abs(ops.cast(real, "float32") - ops.cast(fake, "float32")))


def region_l1(real, fake, weight):
    """Mean absolute error inside a region: sum(weight * |real - fake|) / (sum(weight) * C), weight
    (B, H, W, 1) in [0, 1] (inpainting's blend weight); 0 for an empty region."""
    diff = ops.abs(ops.cast(real, "float32") - ops.cast(fake, "float32"))
    weight = ops.cast(weight, "float32")
    channels = ops.cast(ops.shape(diff)[-1], "float32")
    return ops.sum(diff * weight) / (ops.sum(weight) * channels + _EPS)


def feature_matching(real_features, fake_features):
    """pix2pixHD's feature-matching term: mean over discriminator blocks of the mean absolute difference
    between its features on real and on generated pairs (real features held fixed)."""
    terms = [ops.mean(ops.abs(ops.stop_gradient(ops.cast(r, "float32")) - ops.cast(f, "float32")))
             for r, f in zip(real_features, fake_features)]
    return sum(terms) / max(len(terms), 1)


def _local_energy(image, window: int):
    """Root mean square of the high-pass part (image minus its 3x3 box blur) over window x window neighbourhoods,
    per channel: (B, H, W, C) -> (B, H, W, C); "same" padding (the box means count only pixels inside the image)."""
    high = image - ops.average_pool(image, 3, strides=1, padding="same")
    return ops.sqrt(ops.average_pool(high * high, window, strides=1, padding="same") + _EPS)


def texture(real, fake, weight=None, window: int = 8, scales: int = 2):
    """Texture-energy term: mean absolute difference between the local high-frequency energy (`_local_energy`,
    window x window px) of the real and the generated image, averaged over `scales` dyadic scales (2x2 mean
    pooling between them). Within a window it ignores where the texture's peaks are: a blurred image (energy
    near 0) is penalised, a different texture of the same energy is not, which L1 cannot tell apart (L1 is
    smallest for the blurred mean). real, fake (B, H, W, C); weight (B, H, W, 1) in [0, 1]: a weighted mean
    inside the region (inpainting's blend weight), None: over all pixels."""
    real, fake = ops.cast(real, "float32"), ops.cast(fake, "float32")
    weight = None if weight is None else ops.cast(weight, "float32")
    terms = []
    for scale in range(scales):
        if scale:
            real, fake = ops.average_pool(real, 2, strides=2), ops.average_pool(fake, 2, strides=2)
            weight = None if weight is None else ops.average_pool(weight, 2, strides=2)
        diff = ops.abs(_local_energy(real, window) - _local_energy(fake, window))
        terms.append(ops.mean(diff) if weight is None else
                     ops.sum(diff * weight) / (ops.sum(weight) * ops.cast(ops.shape(diff)[-1], "float32") + _EPS))
    return sum(terms) / len(terms)


def generator_loss(disc_fake, real, fake, alpha: float):
    """(total, gan, l1): the generator wants D(x, G(x)) -> 1, plus alpha times the L1 to the real image."""
    gan = bce(1.0, disc_fake)
    reconstruction = l1(real, fake)
    return gan + alpha * reconstruction, gan, reconstruction


def discriminator_loss(disc_real, disc_fake):
    """D maximises log D(x, y) + log(1 - D(x, G(x))): BCE to 1 on real pairs plus BCE to 0 on fakes."""
    return bce(1.0, disc_real) + bce(0.0, disc_fake)


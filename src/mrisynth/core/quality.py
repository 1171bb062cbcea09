"""Image quality of generated vs real images within the brain, no downloaded weights (MAE, PSNR, SSIM).

All inputs are [0, 1] images (N, H, W, C) and a brain mask (N, H, W)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _masked(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return values[np.broadcast_to(brain[..., None], values.shape)]


def mae(real: np.ndarray, fake: np.ndarray, brain: np.ndarray) -> float:
    """Mean absolute error over brain pixels (all channels)."""
    diff = _masked(np.abs(real - fake), brain)
    return float(diff.mean()) if diff.size else float("nan")


def psnr(real: np.ndarray, fake: np.ndarray, brain: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio (dB) of the brain-pixel MSE; inf for identical images."""
    err = _masked((real - fake) ** 2, brain)
    if not err.size:
        return float("nan")
    mse = float(err.mean())
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim_map(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window sigma 1.5) of two (H, W) images."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda x: ndimage.gaussian_filter(x, sigma, truncate=3.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(real: np.ndarray, fake: np.ndarray, brain: np.ndarray) -> float:
    """Mean SSIM over brain pixels, averaged over images and channels."""
    values = []
    for n in range(real.shape[0]):
        if not brain[n].any():
            continue
        for c in range(real.shape[-1]):
            values.append(ssim_map(real[n, ..., c].astype(np.float64), fake[n, ..., c].astype(np.float64))[brain[n]].mean())
    return float(np.mean(values)) if values else float("nan")


def image_quality(real: np.ndarray, fake: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    return {"mae": mae(real, fake, brain), "psnr": psnr(real, fake, brain), "ssim": ssim(real, fake, brain)}

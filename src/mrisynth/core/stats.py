"""Paired comparison statistics for two segmenter arms (pure numpy/scipy).

Inputs are per-image scores of two arms on the same images, one row per training seed:
`a`, `b` of shape (S seeds, N images), where row s of `a` and row s of `b` come from models trained
with the same seed (paired by seed as well as by image). Arms trained on the data of several
generator draws (independently trained generators and their augmentation draws) give
(D draws, S seeds, N images); an arm without a generator is (S, N) or (1, S, N) and is paired with
every draw of the other arm (broadcast).

- `paired_bootstrap`: the mean paired difference mean(b - a) and a percentile confidence interval
  from a bootstrap that resamples images, seeds and generator draws (each with replacement,
  independently), so the test-set sampling, the training-seed and the generator-draw variation all
  enter the interval: it speaks about the method, not one trained generator.
- `wilcoxon_p`: the two-sided Wilcoxon signed-rank p-value over images of the seed-averaged
  differences (`zero_method="zsplit"`; identical arms give p = 1).
- `verdict`: one plain sentence per comparison.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """mean paired difference (b - a) with a `level` CI, a Wilcoxon p-value, and the sizes it rests on."""

    mean: float
    low: float
    high: float
    p_value: float
    n_images: int
    n_seeds: int
    level: float = 0.95
    n_draws: int = 1  # generator draws behind the augmented arm (1: one generator, or no generator)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def shown(self) -> bool:
        """The CI excludes 0 (a difference in either direction is shown at this level)."""
        return self.low > 0 or self.high < 0


def _as_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both as (D, S, N), an arm with one draw broadcast to the other's draws."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    a, b = (x[None] if x.ndim == 2 else x for x in (a, b))
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:] or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(f"paired scores need equal shapes ([draws,] seeds, images), one draw pairing with any, found {a.shape} and {b.shape}")
    a, b = np.broadcast_arrays(a, b)
    if a.size == 0:
        raise ValueError("paired scores are empty: expected at least one seed and one image")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired scores hold NaN/inf; score every image before comparing")
    return a, b


def paired_bootstrap(a, b, n_boot: int = 5000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of mean(b - a) over draws, seeds and images, with a percentile bootstrap CI.

    Each replicate draws S seed rows and N image columns with replacement (independently), and with
    several generator draws also D draws, and averages the difference over the drawn cells. With one
    seed (and one draw) only the images are resampled. For D = 1 the random stream and the result are
    those of the two-level (seeds, images) bootstrap."""
    a, b = _as_pairs(a, b)
    diff = b - a
    n_draws, n_seeds, n_images = diff.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cols = rng.integers(0, n_images, size=(n_boot, n_images))
    draws = rng.integers(0, n_draws, size=(n_boot, n_draws)) if n_draws > 1 else np.zeros((n_boot, 1), int)
    # mean over the D x S x N grid of diff[draws[k, h], rows[k, i], cols[k, j]], computed without building it:
    # sum_h sum_i sum_j diff[d_h, r_i, c_j] = sum_j (sum_h sum_i diff[d_h, r_i, :])[c_j]
    row_sums = np.stack([diff[d][:, r].sum(axis=(0, 1)) for d, r in zip(draws, rows)])   # (n_boot, N)
    means = np.take_along_axis(row_sums, cols, axis=1).sum(axis=1) / (n_draws * n_seeds * n_images)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


def wilcoxon_p(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value over images of the (draw- and) seed-averaged differences (b - a).

    All differences zero (identical arms) -> 1.0. Zero differences are split between the ranks
    (`zsplit`), so ties do not inflate significance."""
    from scipy import stats

    a, b = _as_pairs(a, b)
    d = (b - a).mean(axis=(0, 1))
    if np.allclose(d, 0.0):
        return 1.0
    if len(d) < 2:
        return float("nan")
    return float(stats.wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue)


def compare(a, b, n_boot: int = 5000, level: float = 0.95, seed: int = 0) -> Comparison:
    mean, low, high = paired_bootstrap(a, b, n_boot, level, seed)
    a3, _ = _as_pairs(a, b)
    return Comparison(mean, low, high, wilcoxon_p(a, b), n_images=a3.shape[2], n_seeds=a3.shape[1], level=level, n_draws=a3.shape[0])


def verdict(question: str, metric: str, c: Comparison) -> str:
    """E.g. 'GAN beyond classic: +0.012 tumour Dice (95 % CI -0.004 ... +0.028, p = 0.21) - not shown'."""
    if c.shown:
        outcome = "better" if c.mean > 0 else "worse"
        conclusion = f"shown ({outcome})"
    else:
        conclusion = "not shown"
    p = "p = n/a" if not np.isfinite(c.p_value) else (f"p = {c.p_value:.2g}" if c.p_value >= 0.001 else "p < 0.001")
    level = f"{c.level:.0%}".replace("%", " %")
    return (f"{question}: {c.mean:+.3f} {metric} ({level} CI {c.low:+.3f} … {c.high:+.3f}, {p}; "
            f"{c.n_images} images × {c.n_seeds} seeds" + (f" × {c.n_draws} generators" if c.n_draws > 1 else "") + f") — {conclusion}")

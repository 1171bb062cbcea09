"""Paired comparison statistics for two segmenter arms (pure numpy/scipy).

Inputs are per-image scores of two arms on the same images, one row per training seed:
`a`, `b` of shape (S seeds, N images), where row s of `a` and row s of `b` come from models trained
with the same seed (paired by seed as well as by image).

- `paired_bootstrap`: the mean paired difference mean(b - a) and a percentile confidence interval
  from a two-level bootstrap that resamples images (with replacement) and seeds (with replacement)
  independently, so both the test-set sampling and the training-seed variation enter the interval.
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

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def shown(self) -> bool:
        """The CI excludes 0 (a difference in either direction is shown at this level)."""
        return self.low > 0 or self.high < 0


def _as_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal shapes (seeds, images), found {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired scores are empty: expected at least one seed and one image")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired scores hold NaN/inf; score every image before comparing")
    return a, b


def paired_bootstrap(a, b, n_boot: int = 5000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of mean(b - a) over seeds and images, with a percentile bootstrap CI.

    Each replicate draws S seed rows and N image columns with replacement (independently) and
    averages the difference over the drawn cells. With one seed only the images are resampled."""
    a, b = _as_pairs(a, b)
    diff = b - a
    n_seeds, n_images = diff.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cols = rng.integers(0, n_images, size=(n_boot, n_images))
    # mean over the S x N grid of diff[rows[k, i], cols[k, j]], computed without building it:
    # sum_i sum_j diff[r_i, c_j] = sum_j (sum_i diff[r_i, :])[c_j]
    row_sums = np.stack([diff[r].sum(axis=0) for r in rows])            # (n_boot, N)
    means = np.take_along_axis(row_sums, cols, axis=1).sum(axis=1) / (n_seeds * n_images)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


def wilcoxon_p(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value over images of the seed-averaged differences (b - a).

    All differences zero (identical arms) -> 1.0. Zero differences are split between the ranks
    (`zsplit`), so ties do not inflate significance."""
    from scipy import stats

    a, b = _as_pairs(a, b)
    d = (b - a).mean(axis=0)
    if np.allclose(d, 0.0):
        return 1.0
    if len(d) < 2:
        return float("nan")
    return float(stats.wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue)


def compare(a, b, n_boot: int = 5000, level: float = 0.95, seed: int = 0) -> Comparison:
    mean, low, high = paired_bootstrap(a, b, n_boot, level, seed)
    a2, _ = _as_pairs(a, b)
    return Comparison(mean, low, high, wilcoxon_p(a, b), n_images=a2.shape[1], n_seeds=a2.shape[0], level=level)


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
            f"{c.n_images} images × {c.n_seeds} seeds) — {conclusion}")

"""Bandwidth estimation on a bounded random sample (cost independent of n).

``estimate_bandwidth`` follows scikit-learn's definition — the mean, over the
sampled points, of the distance to their ``k``-th nearest neighbour within the
sample, ``k = max(1, int(quantile * m))`` (the point itself counts as its first
neighbour) — but always on a sample of at most ``n_samples`` rows, drawn
uniformly without replacement. Its cost is O(m²·d) for ``m = min(n, n_samples)``
plus one read of the sampled rows, so it does not grow with ``n``.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np


def sample_rows(points: Any, n_samples: int, random_state: int = 0) -> np.ndarray:
    """Draw up to ``n_samples`` distinct rows uniformly at random, in input order.

    Parameters
    ----------
    points : numpy.ndarray or dask.array.Array, shape (n, d)
    n_samples : int
    random_state : int
    """
    n = points.shape[0]
    if n <= n_samples:
        chosen = slice(None)
    else:
        rng = np.random.default_rng(random_state)
        chosen = np.sort(rng.choice(n, size=n_samples, replace=False))
    sample = points[chosen]
    if isinstance(sample, da.Array):
        sample = sample.compute()
    return np.asarray(sample, dtype=np.float64)


def knn_quantile_bandwidth(sample: np.ndarray, quantile: float = 0.3) -> float:
    """Mean distance to the ``int(quantile * m)``-th nearest neighbour within ``sample``.

    Computed on the sample centred and scaled to unit extent, then scaled back, so
    coordinates near the float64 limits neither overflow nor underflow.
    """
    from sklearn.neighbors import NearestNeighbors  # imported here: workers never need it

    m = sample.shape[0]
    k = max(1, int(m * quantile))
    centre = sample.min(axis=0) / 2 + sample.max(axis=0) / 2
    scale = float(np.abs(sample - centre).max())
    if not scale > 0:
        return 0.0
    unit = (sample - centre) / scale
    neighbours = NearestNeighbors(n_neighbors=k).fit(unit)
    total = 0.0
    for start in range(0, m, 500):
        distances, _ = neighbours.kneighbors(unit[start : start + 500])
        total += float(distances[:, -1].sum())
    return total / m * scale


def rule_of_thumb_bandwidth(sample: np.ndarray, n_points: int, rule: str) -> float:
    """Scott's or Silverman's rule, multiplied by the data's scale.

    ``scale * n^(-1/(d+4))`` (Scott) or ``scale * (n (d+2) / 4)^(-1/(d+4))``
    (Silverman), with ``n`` the number of points (not the sample's) and ``scale``
    the root mean per-dimension variance of the sample.
    """
    d = sample.shape[1]
    centre = sample.min(axis=0) / 2 + sample.max(axis=0) / 2
    extent = float(np.abs(sample - centre).max())
    if not extent > 0:
        return 0.0
    unit = (sample - centre) / extent  # no overflow or underflow in the squares
    scale = float(np.sqrt(unit.var(axis=0, ddof=1 if len(unit) > 1 else 0).mean())) * extent
    factor = n_points if rule == "scott" else n_points * (d + 2) / 4.0
    return scale * factor ** (-1.0 / (d + 4))


def estimate_bandwidth(
    points: Any,
    quantile: float = 0.3,
    n_samples: int = 5000,
    random_state: int = 0,
    rule: str = "knn",
) -> float:
    """Estimate a mean shift bandwidth from a random sample of the points.

    Parameters
    ----------
    points : numpy.ndarray or dask.array.Array, shape (n, d)
    quantile : float in (0, 1]
        Fraction of the sample counted as neighbours (0.3: scikit-learn's default).
    n_samples : int
        Largest sample used.
    random_state : int
        Seed of the sample.
    rule : {"knn", "scott", "silverman"}
        ``knn``: scikit-learn's nearest-neighbour quantile; ``scott``/``silverman``:
        the rules of thumb for kernel density estimation, scaled by the data.

    Returns
    -------
    float
        The estimate; 0.0 when the sampled points are all duplicates.
    """
    sample = sample_rows(points, n_samples, random_state)
    if rule == "knn":
        return knn_quantile_bandwidth(sample, quantile)
    return rule_of_thumb_bandwidth(sample, points.shape[0], rule)

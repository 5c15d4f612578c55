"""The seed notebook's algorithms, restated in plain NumPy as timing and accuracy references."""

from __future__ import annotations

import math

import numpy as np


def gaussian(d: np.ndarray, bw: float) -> np.ndarray:
    return np.exp(-0.5 * (d / bw) ** 2) / (bw * math.sqrt(2 * math.pi))


def seed_loop(data: np.ndarray, bandwidth: float = 2.5, n_iter: int = 5) -> np.ndarray:
    """The notebook's per-point loop (in place, Gauss-Seidel)."""
    x = np.copy(data)
    for _ in range(n_iter):
        for i, point in enumerate(x):
            dist = np.sqrt(((point - x) ** 2).sum(1))
            weight = gaussian(dist, bandwidth)
            x[i] = (np.expand_dims(weight, 1) * x).sum(0) / weight.sum()
    return x


def seed_batched(
    data: np.ndarray, bandwidth: float = 2.5, n_iter: int = 5, bs: int = 500
) -> np.ndarray:
    """The notebook's batched update (3-D broadcast per batch), in Jacobi form."""
    x = np.asarray(data, dtype=np.float64).copy()
    for _ in range(n_iter):
        new = np.empty_like(x)
        for i in range(0, len(x), bs):
            s = slice(i, min(len(x), i + bs))
            dist = np.sqrt(((x[None, :, :] - x[s, None, :]) ** 2).sum(2))
            weight = gaussian(dist, bandwidth)[:, :, None]
            new[s] = (weight * x[None]).sum(1) / weight.sum(1)
        x = new
    return x


def gemm_gaussian_step(queries: np.ndarray, points: np.ndarray) -> np.ndarray:
    """One exact Gaussian step by the matrix-product trick (bandwidth 1): the NumPy baseline."""
    d2 = (queries**2).sum(1)[:, None] + (points**2).sum(1)[None, :] - 2 * queries @ points.T
    w = np.exp(-0.5 * np.maximum(d2, 0))
    return w @ points / w.sum(1)[:, None]

"""Plain NumPy references the pipeline is checked against."""

from __future__ import annotations

import math

import numpy as np


def seed_blurring_reference(points: np.ndarray, bandwidth: float, n_iter: int) -> np.ndarray:
    """The seed's batched update in Jacobi form, plain float64 NumPy (n x n in memory).

    ``X <- W(X, X) @ X / W.sum(1)`` with the seed's Gaussian
    ``exp(-0.5 (d/bw)^2) / (bw sqrt(2 pi))``.
    """
    x = np.asarray(points, dtype=np.float64).copy()
    for _ in range(n_iter):
        dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        weight = np.exp(-0.5 * (dist / bandwidth) ** 2) / (bandwidth * math.sqrt(2 * math.pi))
        x = weight @ x / weight.sum(1)[:, None]
    return x

"""Seeds for standard mean shift: grid-bin seeds counted chunk by chunk."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from ..naming import task_name


def bin_counts(
    block: np.ndarray, bin_size: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Occupied grid bins of one chunk and their (weighted) point counts.

    Bins are scikit-learn's: ``round(x / bin_size)`` per coordinate.
    """
    keys = np.round(np.asarray(block, dtype=np.float64) / bin_size)
    if keys.shape[0] == 0:
        return keys, np.zeros(0, dtype=np.float64)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=weights, minlength=len(unique))
    return unique, counts.astype(np.float64)


def combine_bin_counts(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Add up per-chunk bin counts (the result does not depend on the chunking)."""
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    return unique, np.bincount(inverse.ravel(), weights=counts, minlength=len(unique))


def bin_seeds(
    points: Any, bin_size: float, min_bin_freq: int, weights: Any = None
) -> np.ndarray | None:
    """Seeds at the centres of grid bins holding at least ``min_bin_freq`` points.

    Parameters
    ----------
    points : dask.array.Array or numpy.ndarray, shape (n, d)
        Points in data units.
    bin_size : float
        Side of the grid cells (scikit-learn uses the bandwidth).
    min_bin_freq : int
        Fewest points (sum of weights) a bin needs.
    weights : dask.array.Array or numpy.ndarray, shape (n,), optional
        Multiplicity of each point, chunked like ``points``.

    Returns
    -------
    numpy.ndarray or None
        Seeds in data units (possibly none), or None when there would be as many
        seeds as points (binning did not help: use the points themselves, as
        scikit-learn does).
    """
    if not isinstance(points, da.Array):
        keys, counts = bin_counts(points, bin_size, weights)
        kept = keys[counts >= min_bin_freq]
        return None if len(kept) == points.shape[0] else kept * bin_size
    blocks = points.to_delayed().ravel()
    weight_blocks = [None] * len(blocks) if weights is None else weights.to_delayed().ravel()
    parts = dask.compute(
        *[
            dask.delayed(bin_counts)(
                block, bin_size, w, dask_key_name=task_name("seedbins", block, bin_size, w)
            )
            for block, w in zip(blocks, weight_blocks, strict=True)
        ]
    )
    keys, counts = combine_bin_counts(list(parts))
    kept = keys[counts >= min_bin_freq]
    if len(kept) == points.shape[0]:
        return None
    return kept * bin_size

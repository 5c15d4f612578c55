"""What one task does to one chunk of rows: plain functions of NumPy (or CuPy) blocks.

Both executors call these same functions, the Dask one per chunk of a dask array and
the in-process one per slice of a NumPy array, so a result never depends on which
ran it or how the rows were split. They know nothing of Dask.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..backend import get_namespace, to_host
from ..kernels import DensePointSet, GridPointSet, PointSet, converge_seeds
from . import merge
from .records import SeedColumns

ENTROPY_BINS = np.concatenate([[0.0], np.logspace(-8, 2, 81)])
"""Fixed edges (bandwidth units) of the histogram of update lengths (blurring stop rule)."""
POLISH_TOL = 1e-5
"""Convergence threshold (bandwidths) of the final polish of standard mean shift centres."""


def build_point_set(
    method: str, kernel: str, block_bytes: int, weights: np.ndarray | None, *blocks: np.ndarray
) -> PointSet:
    """The point set every query is shifted against, from its row chunks."""
    points = np.concatenate(blocks, axis=0)
    if method == "grid":
        try:
            return GridPointSet(points, weights, kernel, np, block_bytes)
        except ValueError:  # more grid cells than one index can number: meet every point
            pass
    return DensePointSet(points, weights, kernel, np, block_bytes)


def as_float64(block: np.ndarray) -> np.ndarray:
    return np.asarray(block, dtype=np.float64)


def summary_block(block: np.ndarray) -> np.ndarray:
    """Rows holding NaN/Inf, then per-column minimum and maximum of the finite rows."""
    finite = np.isfinite(block).all(axis=1)
    good = block[finite]
    d = block.shape[1]
    low = good.min(axis=0) if len(good) else np.full(d, np.inf)
    high = good.max(axis=0) if len(good) else np.full(d, -np.inf)
    return np.concatenate([[float((~finite).sum())], low, high])[None, :]


def normalise_block(block: np.ndarray, origin: np.ndarray, bandwidth: float) -> np.ndarray:
    """Points in bandwidth units around ``origin``."""
    return (np.asarray(block, dtype=np.float64) - origin) / bandwidth


def blurring_block(block: np.ndarray, point_set: PointSet, backend: str) -> np.ndarray:
    """Jacobi blurring step of one chunk: a blurring state (:class:`SeedColumns`)."""
    xp = get_namespace(backend)
    queries = xp.asarray(block)
    shifted, density = point_set.on(xp).shift(queries)
    moved = xp.sqrt(((shifted - queries) ** 2).sum(axis=1))
    return to_host(xp.concatenate([shifted, density[:, None], moved[:, None]], axis=1))


def iteration_stats(block: np.ndarray, d: int, tol: float) -> np.ndarray:
    """Largest shift, number still moving, and histogram of shift lengths of one chunk."""
    moved = block[:, SeedColumns(d).moved]
    counts, _ = np.histogram(moved, bins=ENTROPY_BINS)
    head = [moved.max() if len(moved) else 0.0, float((moved > tol).sum())]
    return np.concatenate([head, counts])[None, :]


def standard_state(
    modes: Any, density: Any, n_iter: Any, converged: Any, xp: ModuleType
) -> np.ndarray:
    """Columns of a standard state (:class:`SeedColumns`), on the host."""
    extra = xp.stack([density, n_iter.astype(modes.dtype), converged.astype(modes.dtype)], axis=1)
    return to_host(xp.concatenate([modes, extra], axis=1))


def converge_block(
    seeds: np.ndarray, point_set: PointSet, tol: float, max_iter: int, backend: str
) -> np.ndarray:
    """Standard mean shift of one chunk of seeds, run to convergence: a standard state."""
    xp = get_namespace(backend)
    return standard_state(
        *converge_seeds(xp.asarray(seeds), point_set.on(xp), tol, max_iter, xp), xp
    )


def shift_rows(rows: np.ndarray, point_set: PointSet, backend: str) -> np.ndarray:
    """One mean shift step of some rows: new positions, then density, as columns."""
    xp = get_namespace(backend)
    shifted, density = point_set.on(xp).shift(xp.asarray(rows))
    return to_host(xp.concatenate([shifted, density[:, None]], axis=1))


def polish_centers(
    centers: np.ndarray, point_set: PointSet, max_iter: int, backend: str
) -> np.ndarray:
    """Run the merged centres on to their modes, then drop any that met (canonical order).

    The seed that wins a basin is only within ``tol`` of its mode; polishing makes
    each centre the mode itself, whichever seed won.
    """
    xp = get_namespace(backend)
    modes, density, _, _ = converge_seeds(
        xp.asarray(centers), point_set.on(xp), POLISH_TOL, max_iter, xp
    )
    modes, density = to_host(modes), to_host(density)
    order = merge.canonical_order(modes, density)
    modes = modes[order]
    return modes[merge.suppress(modes, 1.0)]


def candidates_block(block: np.ndarray, d: int, cell: float) -> merge.Candidates:
    """The merge's candidate modes of one chunk of seed states."""
    columns = SeedColumns(d)
    return merge.mode_candidates(block[:, columns.position], block[:, columns.density], cell)


def label_block(
    queries: np.ndarray,
    points: np.ndarray,
    centers: np.ndarray,
    cluster_all: bool,
    backend: str,
    block_bytes: int,
) -> np.ndarray:
    """Cluster of each row: the centre nearest to its query (see :func:`merge.assign_labels`)."""
    xp = get_namespace(backend)
    labels = merge.assign_labels(
        xp.asarray(queries), xp.asarray(points), xp.asarray(centers), cluster_all, xp, block_bytes
    )
    return to_host(labels)


def weighted_bincount(labels: np.ndarray, weights: np.ndarray | None, k: int) -> np.ndarray:
    """(Weighted) size of each of ``k`` clusters in one chunk of labels, as one row."""
    kept = labels >= 0
    w = None if weights is None else np.asarray(weights)[kept]
    return np.bincount(labels[kept], weights=w, minlength=k)[None, :]


def renumber_block(labels: np.ndarray, renumber: np.ndarray) -> np.ndarray:
    """Labels with each cluster given its new number (outliers stay -1)."""
    out = labels.copy()
    kept = labels >= 0
    out[kept] = renumber[labels[kept]]
    return out

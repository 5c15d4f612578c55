"""Modes → clusters: candidate reduction, density-ordered suppression, labels.

The merge is scikit-learn's, made partition-independent:

1. Each converged mode carries its *density*, the weighted kernel sum at its
   position (for the flat kernel: the number of points within the bandwidth,
   scikit-learn's "intensity"). Modes with density 0 saw no point and are dropped.
2. Modes are put in cells of side ``cell`` (the convergence tolerance): one
   candidate per cell, the one first in the canonical order (density descending,
   then coordinates descending). This runs per chunk and again on the combined
   chunk results; it is associative, so the candidates do not depend on chunking.
3. Candidates in canonical order each suppress the later ones within ``radius``
   (the bandwidth); the survivors are the cluster centres.
4. Clusters keep that canonical order (scikit-learn's numbering), or are renumbered by
   descending size (``cluster_order``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from ..kernels import nearest


class Candidates(NamedTuple):
    """Candidate centres in canonical order, one per occupied cell, with their densities."""

    positions: np.ndarray  # (c, d)
    density: np.ndarray  # (c,)


DENSITY_BITS = 30
"""Densities are compared to this many significant bits (about 9 digits); closer ones tie
and their coordinates decide, so that the rounding of the kernel sums, which depends on
the order the points are summed in, cannot reorder the clusters. Counts (the flat
kernel's densities) below 2^30 compare exactly, as in scikit-learn."""


def comparable_density(density: np.ndarray) -> np.ndarray:
    """Density rounded to ``DENSITY_BITS`` significant bits (the order is kept)."""
    mantissa, exponent = np.frexp(density)
    return np.ldexp(np.round(mantissa * 2.0**DENSITY_BITS), exponent - DENSITY_BITS)


def canonical_order(positions: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Indices sorting by density descending (to ``DENSITY_BITS``), then coordinates
    descending: scikit-learn's order of its candidate centres."""
    coordinates = tuple(-positions[:, j] for j in reversed(range(positions.shape[1])))
    return np.lexsort((*coordinates, -comparable_density(density)))


def mode_candidates(modes: np.ndarray, density: np.ndarray, cell: float) -> Candidates:
    """Reduce modes to one candidate per occupied cell.

    Parameters
    ----------
    modes : array, shape (m, d)
    density : array, shape (m,)
    cell : float
        Cell side (same units as ``modes``).

    Returns
    -------
    Candidates
        The first mode of each cell in canonical order (density descending, then
        coordinates descending), and its density.
    """
    keep = density > 0
    modes, density = modes[keep], density[keep]
    order = canonical_order(modes, density)
    modes, density = modes[order], density[order]
    if len(modes) == 0:
        return Candidates(modes, density)
    first = first_of_each_row(np.floor(modes / cell))
    return Candidates(modes[first], density[first])


def first_of_each_row(rows: np.ndarray) -> np.ndarray:
    """Ascending indices of the first occurrence of each distinct row."""
    order = np.lexsort(rows.T[::-1])  # stable: equal rows keep their order
    ordered = rows[order]
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    return np.sort(order[starts])


def combine_candidates(parts: list[Candidates], cell: float) -> Candidates:
    """Combine per-chunk candidates into one candidate per cell, in canonical order."""
    positions = np.concatenate([part.positions for part in parts])
    density = np.concatenate([part.density for part in parts])
    positions, density = mode_candidates(positions, density, cell)
    order = canonical_order(positions, density)
    return Candidates(positions[order], density[order])


def suppress(positions: np.ndarray, radius: float) -> np.ndarray:
    """Greedy suppression of candidates already in canonical order.

    Each surviving candidate removes every later candidate within ``radius``
    (inclusive). Returns the indices of the survivors, in order.
    """
    if len(positions) == 0:
        return np.zeros(0, dtype=np.int64)
    alive = np.ones(len(positions), dtype=bool)
    tree = cKDTree(positions)
    i = 0
    while True:
        within = np.asarray(tree.query_ball_point(positions[i], radius), dtype=np.int64)
        alive[within[within > i]] = False
        later = alive[i + 1 :]
        if not later.any():
            return np.flatnonzero(alive)
        i += 1 + int(later.argmax())  # the next survivor


def assign_labels(
    queries: Any,
    points: Any,
    centers: Any,
    cluster_all: bool,
    xp: ModuleType,
    block_bytes: int,
) -> Any:
    """Label each row by the centre nearest to its query (its mode, or the point itself).

    With ``cluster_all=False`` a point farther than 1 (one bandwidth) from its
    centre gets -1. All inputs in bandwidth units.
    """
    index, _ = nearest(queries, centers, xp, block_bytes)
    labels = index.astype(xp.int32)
    if not cluster_all:
        offset = points - centers[index]
        far = (offset * offset).sum(axis=1) > 1.0
        labels[far] = -1
    return labels


def size_order(sizes: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """New number of each cluster: by size descending, ties by centre coordinates ascending.

    Ties are broken by coordinates rather than by density, because distinct
    centres differ in coordinates by about a bandwidth, while densities of
    equal-size clusters can differ by rounding alone.
    """
    keys = tuple(centers[:, j] for j in reversed(range(centers.shape[1]))) + (-sizes,)
    order = np.lexsort(keys)
    renumber = np.empty(len(sizes), dtype=np.int32)
    renumber[order] = np.arange(len(sizes), dtype=np.int32)
    return renumber

"""The array path: mean shift kernels as NumPy or CuPy array operations (float64-exact).

Every function takes the array module ``xp`` (NumPy or CuPy) and works in
*bandwidth units*: coordinates are divided by the bandwidth before they get here,
so a kernel's radius is 1. No function holds more than about ``block_bytes`` of
pairwise intermediates at once, whatever the sizes of its inputs: queries and
points are visited in blocks, and the point set is always cut at the same fixed
offsets, so a query's result does not depend on which other queries share its
block.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

POINT_BLOCK = 8192
"""Points per block of the shared set (fixed, so results do not depend on partitioning)."""

DIRECT_MAX_DIMS = 16
"""Up to this many dimensions distances are taken from coordinate differences (exact, and a
query's result is bitwise independent of its block); above it, from one matrix product."""

_TEMPORARIES = 5
"""Pairwise (queries × points) arrays alive at once inside one block step."""


def rows_per_block(n_columns: int, itemsize: int, block_bytes: int) -> int:
    """Query rows per block so that the pairwise temporaries fit in ``block_bytes``."""
    return max(1, block_bytes // (_TEMPORARIES * itemsize * max(1, n_columns)))


def squared_distances(queries: Any, points: Any, xp: ModuleType) -> Any:
    """Squared Euclidean distances between rows, ``(len(queries), len(points))``.

    Low dimensions: a sum of squared coordinate differences, exact to rounding and
    independent of far-away offsets. High dimensions: ``|q-c|² + |x-c|² - 2 (q-c)·(x-c)``
    with ``c`` the queries' mean (one matrix product; negatives from rounding are clipped).
    """
    n_dims = queries.shape[1]
    if n_dims <= DIRECT_MAX_DIMS:
        d2 = xp.zeros((queries.shape[0], points.shape[0]), dtype=queries.dtype)
        for k in range(n_dims):
            diff = points[None, :, k] - queries[:, k, None]
            diff *= diff
            d2 += diff
        return d2
    centre = queries.mean(axis=0)
    q = queries - centre
    p = points - centre
    d2 = q @ p.T
    d2 *= -2.0
    d2 += (q * q).sum(axis=1)[:, None]
    d2 += (p * p).sum(axis=1)[None, :]
    return xp.maximum(d2, 0.0, out=d2)


def kernel_weights(d2: Any, kernel: str, xp: ModuleType) -> Any:
    """Kernel weights for squared distances in bandwidth units (overwrites ``d2``).

    ``gaussian``: ``exp(-d²/2)``; ``flat``: 1 where ``d <= 1`` else 0 (scikit-learn's
    kernel); ``epanechnikov``: ``max(0, 1 - d²)``.
    """
    if kernel == "gaussian":
        d2 *= -0.5
        return xp.exp(d2, out=d2)
    if kernel == "flat":
        return (d2 <= 1.0).astype(d2.dtype)
    if kernel == "epanechnikov":
        xp.subtract(1.0, d2, out=d2)
        return xp.maximum(d2, 0.0, out=d2)
    raise ValueError(f"unknown kernel {kernel!r}")


def _weighted_offsets(w: Any, block: Any, part: Any, xp: ModuleType) -> Any:
    """``sum_j w_ij (x_j - q_i)`` per query row, shape (rows, d)."""
    n_dims = block.shape[1]
    if n_dims <= DIRECT_MAX_DIMS:
        out = xp.empty_like(block)
        for k in range(n_dims):
            diff = part[None, :, k] - block[:, k, None]
            diff *= w
            out[:, k] = diff.sum(axis=1)
        return out
    return w @ part - w.sum(axis=1)[:, None] * block


def blocked_shift(
    queries: Any,
    points: Any,
    weights: Any | None,
    kernel: str,
    xp: ModuleType,
    block_bytes: int,
) -> tuple[Any, Any]:
    """:func:`shift_points` with array operations only (NumPy or CuPy, float64-exact)."""
    n_queries = queries.shape[0]
    n_points = points.shape[0]
    shifted = xp.empty_like(queries)
    density = xp.zeros(n_queries, dtype=queries.dtype)
    step = rows_per_block(min(n_points, POINT_BLOCK), queries.dtype.itemsize, block_bytes)
    for q_start in range(0, n_queries, step):
        block = queries[q_start : q_start + step]
        offsets = xp.zeros_like(block)
        denominator = xp.zeros(block.shape[0], dtype=queries.dtype)
        for p_start in range(0, n_points, POINT_BLOCK):
            part = points[p_start : p_start + POINT_BLOCK]
            w = kernel_weights(squared_distances(block, part, xp), kernel, xp)
            if weights is not None:
                w *= weights[None, p_start : p_start + POINT_BLOCK]
            offsets += _weighted_offsets(w, block, part, xp)
            denominator += w.sum(axis=1)
        empty = denominator <= 0
        safe = xp.where(empty, 1.0, denominator)
        shifted[q_start : q_start + step] = block + xp.where(
            empty[:, None], 0.0, offsets / safe[:, None]
        )
        density[q_start : q_start + step] = denominator
    return shifted, density


TREE_MIN_CENTERS = 128
"""From this many centres (and up to ``DIRECT_MAX_DIMS`` dimensions), NumPy queries find
their nearest centre through a k-d tree rather than against every centre: O(log k) each."""

TREE_CANDIDATES = 4
"""Nearest centres the tree proposes per query; the nearest of them is decided by the same
squared distances as the search against every centre."""


def nearest(queries: Any, centers: Any, xp: ModuleType, block_bytes: int) -> tuple[Any, Any]:
    """Index of the nearest centre for each query and the squared distance to it.

    Ties go to the lower index.
    """
    if xp is np and len(centers) >= TREE_MIN_CENTERS and queries.shape[1] <= DIRECT_MAX_DIMS:
        return _nearest_by_tree(queries, centers)
    n_queries = queries.shape[0]
    index = xp.empty(n_queries, dtype=xp.int64)
    dist2 = xp.empty(n_queries, dtype=queries.dtype)
    step = rows_per_block(len(centers), queries.dtype.itemsize, block_bytes)
    for start in range(0, n_queries, step):
        d2 = squared_distances(queries[start : start + step], centers, xp)
        best = d2.argmin(axis=1)
        index[start : start + step] = best
        dist2[start : start + step] = xp.take_along_axis(d2, best[:, None], axis=1)[:, 0]
    return index, dist2


def _nearest_by_tree(queries: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest` through scipy's k-d tree: its ``TREE_CANDIDATES`` nearest centres,
    compared by :func:`squared_distances`' sums (ties to the lower index)."""
    from scipy.spatial import cKDTree

    k = min(TREE_CANDIDATES, len(centers))
    _, candidates = cKDTree(centers).query(queries, k=k)
    candidates = candidates.reshape(len(queries), k)
    d2 = np.zeros(candidates.shape, dtype=queries.dtype)
    for j in range(queries.shape[1]):
        diff = centers[candidates, j] - queries[:, j, None]
        diff *= diff
        d2 += diff
    best = np.lexsort((candidates, d2), axis=-1)[:, :1]
    index = np.take_along_axis(candidates, best, axis=1)[:, 0].astype(np.int64)
    distance2 = np.take_along_axis(d2, best, axis=1)[:, 0]
    crowded = np.flatnonzero(d2.max(axis=1) <= distance2)  # more ties than candidates
    if len(crowded) and k < len(centers):
        step = rows_per_block(len(centers), queries.dtype.itemsize, 2**26)
        for start in range(0, len(crowded), step):
            rows = crowded[start : start + step]
            all_d2 = squared_distances(queries[rows], centers, np)
            index[rows] = all_d2.argmin(axis=1)
            distance2[rows] = all_d2[np.arange(len(rows)), index[rows]]
    return index, distance2


GAUSSIAN_CUTOFF = 5.0
"""Radius (bandwidths) past which the grid method ignores Gaussian weights (< 3.7e-6)."""


def kernel_radius(kernel: str) -> float:
    """Distance (bandwidths) beyond which a kernel's weight is zero, or ignored by the grid."""
    return GAUSSIAN_CUTOFF if kernel == "gaussian" else 1.0


def largest_coordinate(points: Any) -> float:
    """Largest coordinate magnitude of a point set (0 for an empty one)."""
    return float(abs(points).max()) if points.size else 0.0


def row_major_strides(extent: np.ndarray) -> np.ndarray:
    """Strides numbering the integer points of a box of this extent in C order (int64)."""
    extent = np.asarray(extent, dtype=np.int64)
    strides = np.ones(len(extent), dtype=np.int64)
    for k in range(len(extent) - 2, -1, -1):
        strides[k] = strides[k + 1] * extent[k + 1]
    return strides


MAX_LINEAR_KEY = 2.0**62
"""A box of at least this many cells is not numbered by one int64 key."""


def decode_linear(linear: np.ndarray, low: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """Integer key rows from their row-major numbers in the box from ``low`` with ``strides``."""
    rows = np.empty((len(linear), len(strides)), dtype=np.int64)
    for k, stride in enumerate(strides):
        rows[:, k], linear = np.divmod(linear, stride)
    return rows + low


@dataclass(frozen=True)
class CellBox:
    """A box of integer cells, ``low`` to ``low + extent - 1`` per column, numbered
    row-major by one int64 key (:meth:`linear`) and back (:meth:`decode`)."""

    low: np.ndarray
    extent: np.ndarray
    strides: np.ndarray

    @classmethod
    def spanning(cls, low: np.ndarray, high: np.ndarray) -> CellBox | None:
        """The box from key row ``low`` to ``high`` (inclusive), or None when it holds
        ``MAX_LINEAR_KEY`` cells or more."""
        low = np.asarray(low, dtype=np.int64)
        extent = np.asarray(high, dtype=np.int64) - low + 1
        if float(np.prod(extent.astype(float))) >= MAX_LINEAR_KEY:
            return None
        return cls(low, extent, row_major_strides(extent))

    @classmethod
    def around(cls, keys: np.ndarray) -> CellBox | None:
        """The smallest box holding every key row (None: too many cells)."""
        return cls.spanning(keys.min(axis=0), keys.max(axis=0))

    @property
    def size(self) -> int:
        """Number of cells in the box."""
        return int(np.prod(self.extent))

    def linear(self, keys: np.ndarray) -> np.ndarray:
        """The row-major number of each key row."""
        return (keys - self.low) @ self.strides

    def decode(self, linear: np.ndarray) -> np.ndarray:
        """Key rows from their numbers."""
        return decode_linear(linear, self.low, self.strides)

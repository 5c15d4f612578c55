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
query's result is bitwise independent of its block); above it, from matrix products of
coordinates centred on compact parts of each block of queries (:func:`compact_parts`)."""

UNIT_ROUNDOFF = 2.0**-53
"""float64's unit roundoff."""

PRODUCT_ERROR = 2.0**-26
"""Bound (bandwidths²) on the rounding error of a squared distance from the matrix product
between a query and a point no farther from it than ``product_radius`` (see there)."""

MAX_PARTS = 32
"""Most anchors a block of queries is searched from for compact parts (:func:`compact_parts`)."""

MIN_PART = 8
"""Fewest queries of a compact part (each part costs a pass over the points); fewer near an
anchor join the rest of the block, which the screened product takes (``_screened_sums``)."""

GAUSSIAN_REACH2 = 1500.0
"""Squared distance (bandwidths²) beyond which a Gaussian weight ``exp(-d²/2)`` is 0 in float64."""

_TEMPORARIES = 5
"""Pairwise (queries × points) arrays alive at once inside one block step."""


def rows_per_block(n_columns: int, itemsize: int, block_bytes: int) -> int:
    """Query rows per block so that the pairwise temporaries fit in ``block_bytes``."""
    return max(1, block_bytes // (_TEMPORARIES * itemsize * max(1, n_columns)))


def product_error(n_dims: int, size: float) -> float:
    """Bound on the rounding error of ``|q-c|² + |x-c|² - 2 (q-c)·(x-c)`` (centred in float64,
    one matrix product) as ``|q-x|²``, for ``|q-c| + |x-c| <= size``: ``(d + 6) u size²``
    (``u``: ``UNIT_ROUNDOFF``; dot products and norms ``(d + 2) u``, centring ``4 u``)."""
    return (n_dims + 6) * UNIT_ROUNDOFF * size * size


def product_radius(n_dims: int) -> float:
    """Largest distance (bandwidths) of a query from the centre ``c`` of the matrix product.

    With ``|q-c| <= r``, ``product_error(d, 3 r) = PRODUCT_ERROR``: squared distances within
    ``PRODUCT_ERROR`` for every point within ``r`` of ``q``, and within a relative error of
    ``9 (d + 6) u`` beyond, however far the points lie from ``c`` or from the origin.
    """
    return float(np.sqrt(PRODUCT_ERROR / product_error(n_dims, 3.0)))


def compact_parts(
    queries: Any,
    radius: float,
    xp: ModuleType,
    smallest: int = MIN_PART,
    spread: Any = None,
) -> list[tuple[Any, bool]] | None:
    """Parts of ``queries`` each within ``radius`` of its own mean, for the matrix product.

    ``spread``: each query's squared distance from the queries' mean, when already known.

    Returns
    -------
    list of (rows, compact), or None
        None when every query lies within ``radius`` of the queries' mean (one part: all).
        Otherwise, from up to ``MAX_PARTS`` anchors (the first query not yet taken), the
        queries within ``radius / 2`` of each (whose mean is then within ``radius`` of
        them): a compact part (``compact`` True) if there are at least ``smallest`` of them;
        all other queries (``compact`` False) last, if any.
    """
    if queries.shape[0] == 0:
        return None
    if spread is None:
        spread = _centred(queries)[2]
    if float(spread.max()) <= radius * radius:
        return None
    parts, rest = [], []
    left = xp.arange(queries.shape[0])
    for _ in range(MAX_PARTS):
        diff = queries[left] - queries[left[:1]]
        near = (diff * diff).sum(axis=1) <= radius * radius / 4
        taken = left[near]
        if taken.shape[0] >= smallest:
            parts.append((taken, True))
        else:
            rest.append(taken)
        left = left[~near]
        if not left.shape[0]:
            break
    rest = xp.concatenate([*rest, left])
    return parts + [(rest, False)] if rest.shape[0] else parts


def _centred(queries: Any) -> tuple[Any, Any, Any]:
    """``(c, q - c, |q - c|²)`` per query row, with ``c`` the queries' mean."""
    centre = queries.mean(axis=0)
    q = queries - centre
    return centre, q, (q * q).sum(axis=1)


def _difference_distances(queries: Any, points: Any, xp: ModuleType) -> Any:
    """Squared distances as sums of squared coordinate differences (exact to rounding)."""
    d2 = xp.zeros((queries.shape[0], points.shape[0]), dtype=queries.dtype)
    for k in range(queries.shape[1]):
        diff = points[None, :, k] - queries[:, k, None]
        diff *= diff
        d2 += diff
    return d2


def _product_distances(q: Any, qn: Any, p: Any, xp: ModuleType) -> Any:
    """Squared distances of centred rows ``q`` (squared norms ``qn``) and ``p`` from one
    matrix product (negatives from rounding clipped)."""
    d2 = q @ p.T
    d2 *= -2.0
    d2 += qn[:, None]
    d2 += (p * p).sum(axis=1)[None, :]
    return xp.maximum(d2, 0.0, out=d2)


def squared_distances(queries: Any, points: Any, xp: ModuleType) -> Any:
    """Squared Euclidean distances between rows, ``(len(queries), len(points))``.

    Low dimensions: a sum of squared coordinate differences, exact to rounding and
    independent of far-away offsets. High dimensions: ``|q-c|² + |x-c|² - 2 (q-c)·(x-c)``
    (one matrix product) with ``c`` the mean of a compact part of the queries
    (:func:`compact_parts`, :func:`product_radius`): as exact wherever the data lie;
    queries too scattered for that take the sums of differences.
    """
    return _distances(queries, points, xp, _difference_distances)


def _distances(queries: Any, points: Any, xp: ModuleType, scattered: Any) -> Any:
    """:func:`squared_distances`, with ``scattered(queries, points, xp)`` for the queries
    left out of compact parts."""
    n_dims = queries.shape[1]
    if n_dims <= DIRECT_MAX_DIMS:
        return _difference_distances(queries, points, xp)
    centre, q, qn = _centred(queries)
    parts = compact_parts(queries, product_radius(n_dims), xp, spread=qn)
    if parts is None:
        return _product_distances(q, qn, points - centre, xp)
    if len(parts) == 1 and not parts[0][1]:  # every query scattered
        return scattered(queries, points, xp)
    d2 = xp.empty((queries.shape[0], points.shape[0]), dtype=queries.dtype)
    for rows, compact in parts:
        part = queries[rows]
        if compact:
            centre, q, qn = _centred(part)
            d2[rows] = _product_distances(q, qn, points - centre, xp)
        else:
            d2[rows] = scattered(part, points, xp)
    return d2


def _nearest_distances(queries: Any, centers: Any, xp: ModuleType) -> Any:
    """Squared distances from coordinate differences for each query's candidate nearest
    centres, inf for the others (every centre from differences where candidates are many).

    One matrix product; its squared distances lie within ``e = product_error(d, |q-c| +
    max |x-c|)`` of the exact ones, so a centre more than ``2 e`` beyond the query's
    nearest by the product is not its nearest.
    """
    centre, q, qn = _centred(queries)
    c = centers - centre
    d2 = _product_distances(q, qn, c, xp)
    farthest = float(xp.sqrt((c * c).sum(axis=1).max()))
    bound = 2.0 * product_error(queries.shape[1], 1.0) * (xp.sqrt(qn) + farthest) ** 2
    rows, columns = xp.nonzero(d2 <= (d2.min(axis=1) + 2.0 * bound)[:, None])
    if rows.shape[0] * queries.shape[1] > d2.size:
        return _difference_distances(queries, centers, xp)
    diff = centers[columns] - queries[rows]
    d2[...] = xp.inf
    d2[rows, columns] = (diff * diff).sum(axis=1)
    return d2


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


def _weighted(w: Any, weights: Any | None, p_start: int) -> Any:
    """Kernel weights ``w`` of a tile from ``p_start`` times the points' weights (if any)."""
    if weights is not None:
        w *= weights[None, p_start : p_start + w.shape[1]]
    return w


def _difference_tile(
    block: Any, part: Any, weights: Any | None, p_start: int, kernel: str, xp: ModuleType
) -> tuple[Any, Any]:
    """``sum_j w_ij (x_j - q_i)`` and ``sum_j w_ij`` per query row over one tile of points
    (``part``, from ``p_start`` of the point set), from coordinate differences."""
    w = _weighted(
        kernel_weights(_difference_distances(block, part, xp), kernel, xp), weights, p_start
    )
    offsets = xp.empty_like(block)
    for k in range(block.shape[1]):
        diff = part[None, :, k] - block[:, k, None]
        diff *= w
        offsets[:, k] = diff.sum(axis=1)
    return offsets, w.sum(axis=1)


def _difference_sums(
    block: Any, points: Any, weights: Any | None, kernel: str, xp: ModuleType
) -> tuple[Any, Any]:
    """``sum_j w_ij (x_j - q_i)`` and ``sum_j w_ij`` per query row, from differences."""
    offsets = xp.zeros_like(block)
    denominator = xp.zeros(block.shape[0], dtype=block.dtype)
    for p_start in range(0, points.shape[0], POINT_BLOCK):
        part = points[p_start : p_start + POINT_BLOCK]
        tile_offsets, tile_denominator = _difference_tile(block, part, weights, p_start, kernel, xp)
        offsets += tile_offsets
        denominator += tile_denominator
    return offsets, denominator


def _product_sums(
    centred: tuple[Any, Any, Any], points: Any, weights: Any | None, kernel: str, xp: ModuleType
) -> tuple[Any, Any]:
    """:func:`_difference_sums` from matrix products, for a block of queries given centred
    on its mean (``_centred``; a block within ``product_radius`` of it)."""
    centre, q, qn = centred
    offsets = xp.zeros_like(q)
    denominator = xp.zeros(q.shape[0], dtype=q.dtype)
    for p_start in range(0, points.shape[0], POINT_BLOCK):
        p = points[p_start : p_start + POINT_BLOCK] - centre
        w = _weighted(
            kernel_weights(_product_distances(q, qn, p, xp), kernel, xp), weights, p_start
        )
        total = w.sum(axis=1)
        offsets += w @ p - total[:, None] * q
        denominator += total
    return offsets, denominator


def _pair_sums(
    block: Any,
    part: Any,
    weights: Any | None,
    pairs: tuple[Any, Any],
    kernel: str,
    xp: ModuleType,
) -> tuple[Any, Any]:
    """:func:`_difference_tile` over the given pairs ``(rows, columns)`` only (the others'
    weights are 0), from coordinate differences."""
    rows, columns = pairs
    diff = part[columns] - block[rows]
    w = kernel_weights((diff * diff).sum(axis=1), kernel, xp)
    if weights is not None:
        w *= weights[columns]
    m = block.shape[0]
    offsets = [xp.bincount(rows, weights=w * diff[:, k], minlength=m) for k in range(diff.shape[1])]
    return xp.stack(offsets, axis=1), xp.bincount(rows, weights=w, minlength=m)


def _screened_sums(
    block: Any, points: Any, weights: Any | None, kernel: str, xp: ModuleType
) -> tuple[Any, Any]:
    """:func:`_difference_sums` for queries scattered beyond ``product_radius``.

    One matrix product per tile finds the pairs that may lie within the kernel's reach
    (its squared distance within ``product_error`` of the reach); only those are summed,
    from coordinate differences (every pair of the tile where they are many). The pairs
    left out lie beyond the reach, where every weight is 0 in float64.
    """
    n_dims = block.shape[1]
    centre, q, qn = _centred(block)
    reach2 = GAUSSIAN_REACH2 if kernel == "gaussian" else 1.0
    size = 2.0 * float(xp.sqrt(qn.max())) + float(np.sqrt(reach2))
    screen = reach2 + 2.0 * product_error(n_dims, size)
    offsets = xp.zeros_like(block)
    denominator = xp.zeros(block.shape[0], dtype=block.dtype)
    for p_start in range(0, points.shape[0], POINT_BLOCK):
        part = points[p_start : p_start + POINT_BLOCK]
        near = _product_distances(q, qn, part - centre, xp) <= screen
        pairs = xp.nonzero(near)
        if pairs[0].shape[0] * n_dims > near.size:  # many: every pair from differences
            sums = _difference_tile(block, part, weights, p_start, kernel, xp)
        elif pairs[0].shape[0]:
            tile_weights = None if weights is None else weights[p_start : p_start + part.shape[0]]
            sums = _pair_sums(block, part, tile_weights, pairs, kernel, xp)
        else:
            continue
        offsets += sums[0]
        denominator += sums[1]
    return offsets, denominator


def _block_sums(
    block: Any, points: Any, weights: Any | None, kernel: str, xp: ModuleType
) -> tuple[Any, Any]:
    """``sum_j w_ij (x_j - q_i)`` and ``sum_j w_ij`` of one block of queries over every
    point: differences up to ``DIRECT_MAX_DIMS``; above, matrix products per compact part
    of the block (:func:`compact_parts`), screened products for the rest."""
    n_dims = block.shape[1]
    if n_dims <= DIRECT_MAX_DIMS:
        return _difference_sums(block, points, weights, kernel, xp)
    centred = _centred(block)
    parts = compact_parts(block, product_radius(n_dims), xp, spread=centred[2])
    if parts is None:
        return _product_sums(centred, points, weights, kernel, xp)
    offsets = xp.empty_like(block)
    denominator = xp.empty(block.shape[0], dtype=block.dtype)
    for rows, compact in parts:
        part = block[rows]
        if compact:
            sums = _product_sums(_centred(part), points, weights, kernel, xp)
        else:
            sums = _screened_sums(part, points, weights, kernel, xp)
        offsets[rows], denominator[rows] = sums
    return offsets, denominator


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
    shifted = xp.empty_like(queries)
    density = xp.zeros(n_queries, dtype=queries.dtype)
    step = rows_per_block(min(points.shape[0], POINT_BLOCK), queries.dtype.itemsize, block_bytes)
    for q_start in range(0, n_queries, step):
        block = queries[q_start : q_start + step]
        offsets, denominator = _block_sums(block, points, weights, kernel, xp)
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
        d2 = _distances(queries[start : start + step], centers, xp, _nearest_distances)
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

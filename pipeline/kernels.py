"""Mean shift kernels for a block of query points against a weighted point set.

Every function takes the array module ``xp`` (NumPy or CuPy) and works in
*bandwidth units*: coordinates are divided by the bandwidth before they get here,
so a kernel's radius is 1. No function holds more than about ``block_bytes`` of
pairwise intermediates at once, whatever the sizes of its inputs: queries and
points are visited in blocks, and the point set is always cut at the same fixed
offsets, so a query's result does not depend on which other queries share its
block.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

POINT_BLOCK = 8192
"""Points per block of the shared set (fixed, so results do not depend on partitioning)."""

_TEMPORARIES = 3
"""Pairwise (queries × points) arrays alive at once inside one block step."""


def _query_block(n_points: int, itemsize: int, block_bytes: int) -> int:
    point_block = max(1, min(n_points, POINT_BLOCK))
    return max(1, block_bytes // (_TEMPORARIES * itemsize * point_block))


def squared_distances(
    queries: Any, points: Any, xp: ModuleType, points_sq: Any | None = None
) -> Any:
    """Squared Euclidean distances between rows, ``(len(queries), len(points))``.

    Uses ``|q|² + |x|² - 2 q·x`` (one matrix product) and clips the rounding
    negatives to zero. Accurate to ~1e-15 relative in float64 for centred data.
    """
    if points_sq is None:
        points_sq = (points * points).sum(axis=1)
    d2 = queries @ points.T
    d2 *= -2.0
    d2 += (queries * queries).sum(axis=1)[:, None]
    d2 += points_sq[None, :]
    xp.maximum(d2, 0.0, out=d2)
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


def shift_points(
    queries: Any,
    points: Any,
    weights: Any | None,
    kernel: str,
    xp: ModuleType,
    block_bytes: int,
) -> tuple[Any, Any]:
    """One mean shift step: move each query to the kernel-weighted mean of the points.

    Parameters
    ----------
    queries : array, shape (m, d)
        Positions to update, in bandwidth units.
    points : array, shape (n, d)
        The shared point set, in bandwidth units.
    weights : array, shape (n,), or None
        Multiplicity of each point (None: all 1).
    kernel : {"gaussian", "flat", "epanechnikov"}
    xp : module
        ``numpy`` or ``cupy``.
    block_bytes : int
        Bound on the pairwise intermediates held at once.

    Returns
    -------
    shifted : array, shape (m, d)
        New positions; a query with no point inside the kernel stays where it is.
    density : array, shape (m,)
        Weighted kernel sum at the query's position (for ``flat``: the weighted
        number of points within the bandwidth).
    """
    n_queries, n_dims = queries.shape
    n_points = points.shape[0]
    dtype = queries.dtype
    shifted = xp.empty_like(queries)
    density = xp.zeros(n_queries, dtype=dtype)
    points_sq = (points * points).sum(axis=1)
    q_step = _query_block(n_points, dtype.itemsize, block_bytes)
    for q_start in range(0, n_queries, q_step):
        block = queries[q_start : q_start + q_step]
        numerator = xp.zeros((block.shape[0], n_dims), dtype=dtype)
        denominator = xp.zeros(block.shape[0], dtype=dtype)
        for p_start in range(0, n_points, POINT_BLOCK):
            p_stop = p_start + POINT_BLOCK
            part = points[p_start:p_stop]
            w = kernel_weights(
                squared_distances(block, part, xp, points_sq[p_start:p_stop]), kernel, xp
            )
            if weights is not None:
                w *= weights[p_start:p_stop][None, :]
            numerator += w @ part
            denominator += w.sum(axis=1)
        empty = denominator <= 0
        safe = xp.where(empty, 1.0, denominator)
        shifted[q_start : q_start + q_step] = xp.where(
            empty[:, None], block, numerator / safe[:, None]
        )
        density[q_start : q_start + q_step] = denominator
    return shifted, density


def converge_seeds(
    seeds: Any,
    points: Any,
    weights: Any | None,
    kernel: str,
    tol: float,
    max_iter: int,
    xp: ModuleType,
    block_bytes: int,
) -> tuple[Any, Any, Any]:
    """Standard mean shift: move seeds against the fixed points until they stop.

    A seed stops once a step moves it by at most ``tol`` (bandwidth units) or
    after ``max_iter`` steps; only seeds still moving are computed.

    Returns
    -------
    modes : array, shape (m, d)
    density : array, shape (m,)
        Weighted kernel sum at the position before the last step (0: no point
        was ever within reach, as scikit-learn reports it).
    n_iter : array of int, shape (m,)
        Steps taken by each seed.
    """
    modes = xp.array(seeds, dtype=points.dtype, copy=True)
    density = xp.zeros(modes.shape[0], dtype=points.dtype)
    n_iter = xp.zeros(modes.shape[0], dtype=xp.int32)
    active = xp.arange(modes.shape[0])
    for _ in range(max_iter):
        if active.shape[0] == 0:
            break
        current = modes[active]
        shifted, dens = shift_points(current, points, weights, kernel, xp, block_bytes)
        moved = xp.sqrt(((shifted - current) ** 2).sum(axis=1))
        modes[active] = shifted
        density[active] = dens
        n_iter[active] += 1
        active = active[moved > tol]
    return modes, density, n_iter


def nearest(queries: Any, centers: Any, xp: ModuleType, block_bytes: int) -> tuple[Any, Any]:
    """Index of the nearest centre for each query and the squared distance to it.

    Ties go to the lower index.
    """
    n_queries = queries.shape[0]
    index = xp.empty(n_queries, dtype=xp.int64)
    dist2 = xp.empty(n_queries, dtype=queries.dtype)
    centers_sq = (centers * centers).sum(axis=1)
    step = max(1, block_bytes // (_TEMPORARIES * queries.dtype.itemsize * max(1, len(centers))))
    for start in range(0, n_queries, step):
        d2 = squared_distances(queries[start : start + step], centers, xp, centers_sq)
        best = d2.argmin(axis=1)
        index[start : start + step] = best
        dist2[start : start + step] = xp.take_along_axis(d2, best[:, None], axis=1)[:, 0]
    return index, dist2

"""Which implementation shifts a block of queries: the GPU kernels, the compiled CPU
kernels, or the array path; and the constants those choices rest on.

Only :func:`shift_points` and the point sets (:mod:`.pointsets`) decide; the
implementations (:mod:`.array`, :mod:`.compiled`, :mod:`.gpu`) do as they are told.
numba and CuPy are imported on first use only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .array import blocked_shift, largest_coordinate

KERNELS = ("gaussian", "epanechnikov", "flat")
"""The kernels every implementation offers."""

GAUSSIAN_SCALE = math.sqrt(math.log2(math.e) / 2)
"""Coordinates are scaled by this for the compiled and GPU Gaussian kernels, whose
weight is then ``2^-d2`` (an exponent of two is cheaper than ``exp``)."""

COMPILED_KERNELS = KERNELS
"""Kernels with a compiled CPU path (float32 for gaussian/epanechnikov; float64 for flat,
so that whether a point lies within the bandwidth is decided in float64, as on the
array path)."""

COMPILED_MAX_COORDINATE = 150.0
"""Largest coordinate magnitude (bandwidths) the float32 compiled path takes (error <= 1e-5)."""

COMPILED_MIN_COORDINATE = 1e-30
"""A point set whose every coordinate is smaller than this (bandwidths: a bandwidth 1e30
times the data's extent) takes the float64 path: in float32 its coordinates and their
differences would underflow to 0."""


def float32_resolves(largest: float) -> bool:
    """Whether float32 coordinates (the compiled and GPU Gaussian and Epanechnikov kernels)
    resolve a point set whose largest coordinate magnitude is ``largest`` bandwidths."""
    return largest <= COMPILED_MAX_COORDINATE and float32_differences_resolve(largest)


def float32_differences_resolve(largest: float) -> bool:
    """Whether float32 differences of coordinates (taken in float64, then rounded: the grid's
    span kernel) resolve a point set whose largest coordinate magnitude is ``largest``."""
    return largest == 0.0 or largest >= COMPILED_MIN_COORDINATE


GPU_DENSE_MAX_POINTS = 2**15
"""Grid sets up to this size meet every point on a GPU (the fused kernel, at most 2^15
pair evaluations per query: little for the grid kernel to save); larger ones take the
grid kernel (:func:`.gpu.grid_shift`) unless their neighbourhoods are large."""

GPU_GRID_GAIN = 8.0
"""A grid set on a GPU takes the grid kernel only where a query's neighbourhood holds on
average fewer than ``1 / GPU_GRID_GAIN`` of the points: a guess (not measured on a GPU) at
how much more a pair costs there (global loads, float64 differences) than in the fused
kernel's shared-memory tiles."""

CPU_GRID_GAIN = 3.0
"""A grid set on the CPU meets every point (the compiled dense kernel) where a query's
neighbourhood holds on average at least ``1 / CPU_GRID_GAIN`` of the points: a pair costs
the span kernel 1.5-3x what it costs the dense one (``python -m benchmarks.run --only B2``)."""


def compiled_available(kernel: str, xp: ModuleType) -> bool:
    """Whether the compiled CPU kernels can run ``kernel`` for ``xp`` (NumPy, numba present)."""
    if xp is not np or kernel not in COMPILED_KERNELS:
        return False
    from . import compiled  # numba loads on first use only

    return compiled.AVAILABLE


def use_compiled(
    queries: Any, points: Any, kernel: str, xp: ModuleType, points_largest: float | None
) -> bool:
    """Whether a step of ``queries`` takes the compiled kernels: float32 weights are
    exact enough only within ``COMPILED_MAX_COORDINATE`` (the flat kernel: anywhere)."""
    if not compiled_available(kernel, xp):
        return False
    if queries.shape[0] == 0 or points.shape[0] == 0:
        return False
    if kernel == "flat":  # float64: no range limit
        return True
    if points_largest is None:
        points_largest = largest_coordinate(points)
    return float32_resolves(max(largest_coordinate(queries), points_largest))


def on_gpu(xp: ModuleType) -> bool:
    """Whether ``xp`` is CuPy (its shift kernels, :mod:`.gpu`, apply)."""
    return xp is not np and getattr(xp, "__name__", "") == "cupy"


def _array_path(
    points: Any, weights: Any | None, kernel: str, xp: ModuleType, block_bytes: int
) -> Any:
    """``queries -> blocked_shift(queries, points, ...)``: the float64 array path."""
    return lambda queries: blocked_shift(queries, points, weights, kernel, xp, block_bytes)


def shift_points(
    queries: Any,
    points: Any,
    weights: Any | None,
    kernel: str,
    xp: ModuleType,
    block_bytes: int,
    points_largest: float | None = None,
    packed: Any = None,
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
    points_largest : float, optional
        :func:`largest_coordinate` of ``points``, when the caller already knows it.
    packed : callable, optional
        Returns ``points`` and ``weights`` already packed for the compiled kernels, or
        for the GPU kernels when ``xp`` is CuPy (called only when they are used).

    Returns
    -------
    shifted : array, shape (m, d)
        New positions; a query with no point inside the kernel stays where it is.
    density : array, shape (m,)
        Weighted kernel sum at the query's position (for ``flat``: the weighted
        number of points within the bandwidth).
    """
    if on_gpu(xp):
        from . import gpu

        layout = (
            packed() if packed is not None else gpu.pack(points, weights, kernel, points_largest)
        )
        return gpu.shift(
            queries, layout, block_bytes, _array_path(points, weights, kernel, xp, block_bytes)
        )
    if use_compiled(queries, points, kernel, xp, points_largest):
        from . import compiled

        layout = packed() if packed is not None else compiled.pack_points(points, weights, kernel)
        return _compiled_shift(
            queries, layout, _array_path(points, weights, kernel, xp, block_bytes)
        )
    return blocked_shift(queries, points, weights, kernel, xp, block_bytes)


def _compiled_shift(
    queries: np.ndarray, layout: Any, exact_shift: Callable[[np.ndarray], tuple[Any, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """A step on the compiled kernels; Gaussian queries whose every weight sat at the
    float32 floor (no point within 9.4 bandwidths) are redone by ``exact_shift``."""
    from . import compiled

    offsets, density = compiled.shift_offsets(queries, layout)
    shifted = queries + offsets
    if layout.floor_density > 0:
        isolated = np.flatnonzero(density <= 2 * layout.floor_density)
        if len(isolated):
            shifted[isolated], density[isolated] = exact_shift(queries[isolated])
    return shifted, density


def grid_route_on_gpu(
    shape: tuple[int, int],
    kernel: str,
    largest: Callable[[], float],
    mean_neighbourhood: Callable[[], float],
) -> str:
    """How a grid point set of ``shape`` meets queries on a GPU.

    ``dense``: the fused kernel over every point, for sets of up to
    ``GPU_DENSE_MAX_POINTS`` points, or whose average neighbourhood (estimated from a
    fixed sample of the points as queries) holds at least ``1 / GPU_GRID_GAIN`` of the
    points, where the fused kernel applies (flat kernel, or coordinates within
    ``COMPILED_MAX_COORDINATE``). ``grid``: the grid kernel. ``cells``: one array-path
    call per occupied cell (kernels or dimensions the grid kernel does not take).
    ``largest`` and ``mean_neighbourhood`` are asked only when needed.
    """
    from . import gpu

    n, d = shape
    if not gpu.grid_route(d, kernel):
        return "dense" if n <= GPU_DENSE_MAX_POINTS else "cells"
    whole = kernel == "flat" or float32_resolves(largest())
    if whole and (n <= GPU_DENSE_MAX_POINTS or mean_neighbourhood() * GPU_GRID_GAIN >= n):
        return "dense"
    return "grid"


def grid_route_on_cpu(
    shape: tuple[int, int],
    kernel: str,
    largest: Callable[[], float],
    mean_neighbourhood: Callable[[], float],
) -> str:
    """How a grid point set of ``shape`` meets queries on the CPU (compiled kernels).

    ``dense``: the compiled dense kernel over every point, where it applies (flat
    kernel, or coordinates within ``COMPILED_MAX_COORDINATE``) and the average
    neighbourhood (estimated from a fixed sample of the points as queries) holds at
    least ``1 / CPU_GRID_GAIN`` of the points. ``grid``: the span kernel over the
    neighbour cells. ``largest`` and ``mean_neighbourhood`` are asked only when needed.
    """
    n = shape[0]
    whole = kernel == "flat" or float32_resolves(largest())
    return "dense" if whole and mean_neighbourhood() * CPU_GRID_GAIN >= n else "grid"

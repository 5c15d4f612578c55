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

import copy
import itertools
import threading
from types import ModuleType
from typing import Any

import numpy as np

from .backend import to_host

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


COMPILED_KERNELS = ("gaussian", "epanechnikov", "flat")
"""Kernels with a compiled CPU path (float32 for gaussian/epanechnikov; float64 for flat,
so that whether a point lies within the bandwidth is decided in float64, as on the
array path)."""

COMPILED_MAX_COORDINATE = 150.0
"""Largest coordinate magnitude (bandwidths) the float32 compiled path takes (error <= 1e-5)."""


def largest_coordinate(points: Any) -> float:
    """Largest coordinate magnitude of a point set (0 for an empty one)."""
    return float(abs(points).max()) if points.size else 0.0


def _compiled_available(kernel: str, xp: ModuleType) -> bool:
    if xp is not np or kernel not in COMPILED_KERNELS:
        return False
    from . import compiled  # numba loads on first use only

    return compiled.AVAILABLE


def _use_compiled(
    queries: Any, points: Any, kernel: str, xp: ModuleType, points_largest: float | None
) -> bool:
    if not _compiled_available(kernel, xp):
        return False
    if queries.shape[0] == 0 or points.shape[0] == 0:
        return False
    if kernel == "flat":  # float64: no range limit
        return True
    if points_largest is None:
        points_largest = largest_coordinate(points)
    return max(largest_coordinate(queries), points_largest) <= COMPILED_MAX_COORDINATE


def _on_gpu(xp: ModuleType) -> bool:
    """Whether ``xp`` is CuPy (its shift kernels, :mod:`pipeline.gpu`, apply)."""
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
    if _on_gpu(xp):
        from . import gpu

        layout = (
            packed() if packed is not None else gpu.pack(points, weights, kernel, points_largest)
        )
        return gpu.shift(
            queries, layout, block_bytes, _array_path(points, weights, kernel, xp, block_bytes)
        )
    if _use_compiled(queries, points, kernel, xp, points_largest):
        from . import compiled

        layout = packed() if packed is not None else compiled.pack_points(points, weights, kernel)
        offsets, density = compiled.shift_offsets(queries, layout)
        shifted = queries + offsets
        if layout.floor_density > 0:  # Gaussian: redo queries with every weight at the floor
            isolated = np.flatnonzero(density <= 2 * layout.floor_density)
            if len(isolated):  # (no point within 9.4 bandwidths)
                exact = blocked_shift(queries[isolated], points, weights, kernel, xp, block_bytes)
                shifted[isolated], density[isolated] = exact
        return shifted, density
    return blocked_shift(queries, points, weights, kernel, xp, block_bytes)


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


GAUSSIAN_CUTOFF = 5.0
"""Radius (bandwidths) past which the grid method ignores Gaussian weights (< 3.7e-6)."""


def kernel_radius(kernel: str) -> float:
    """Distance (bandwidths) beyond which a kernel's weight is zero, or ignored by the grid."""
    return GAUSSIAN_CUTOFF if kernel == "gaussian" else 1.0


def row_major_strides(extent: np.ndarray) -> np.ndarray:
    """Strides numbering the integer points of a box of this extent in C order (int64)."""
    extent = np.asarray(extent, dtype=np.int64)
    strides = np.ones(len(extent), dtype=np.int64)
    for k in range(len(extent) - 2, -1, -1):
        strides[k] = strides[k + 1] * extent[k + 1]
    return strides


_CLONE_LOCK = threading.Lock()


class _OnDevice:
    """Moving a point set's arrays to another array module.

    The copy in another module is kept (one per module), so a set shared by many
    tasks or threads of a worker moves to the GPU once; it is never pickled.
    """

    _arrays: tuple[str, ...] = ()
    _host_only: tuple[str, ...] = ()
    xp: ModuleType

    def on(self, xp: ModuleType) -> Any:
        """This point set with its arrays in ``xp`` (itself if already there)."""
        if xp is self.xp:
            return self
        with _CLONE_LOCK:
            clones = self.__dict__.setdefault("_clones", {})
            clone = clones.get(xp.__name__)
            if clone is None:
                clone = copy.copy(self)
                clone.__dict__.pop("_clones", None)
                for name in self._arrays:
                    value = getattr(self, name)
                    setattr(clone, name, None if value is None else xp.asarray(value))
                for name in self._host_only:  # kernel layouts of the other module stay behind
                    setattr(clone, name, None)
                clone.xp = xp
                clones[xp.__name__] = clone
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_clones", None)  # device copies stay on their worker
        return state


class DensePointSet(_OnDevice):
    """The shared point set, every query meeting every point (exact, O(n) per query)."""

    _arrays = ("points", "weights")
    _host_only = ("_packed",)

    def __init__(
        self, points: Any, weights: Any | None, kernel: str, xp: ModuleType, block_bytes: int
    ) -> None:
        self.points, self.weights, self.kernel = points, weights, kernel
        self.xp, self.block_bytes = xp, block_bytes
        self.largest = largest_coordinate(points)  # once, not on every step
        self._packed: Any = None
        if _use_compiled(points[:1], points, kernel, xp, self.largest):
            self._packed_points()  # now, not in each of the threads that will share the set

    def _packed_points(self) -> Any:
        """The points laid out for the compiled (CPU) or GPU kernels, built on first use only."""
        if self._packed is None:
            if _on_gpu(self.xp):
                from . import gpu

                self._packed = gpu.pack(self.points, self.weights, self.kernel, self.largest)
            else:
                from . import compiled

                self._packed = compiled.pack_points(self.points, self.weights, self.kernel)
        return self._packed

    def shift(self, queries: Any) -> tuple[Any, Any]:
        """One mean shift step of ``queries`` (see :func:`shift_points`)."""
        return shift_points(
            queries,
            self.points,
            self.weights,
            self.kernel,
            self.xp,
            self.block_bytes,
            self.largest,
            self._packed_points,
        )


class GridPointSet(_OnDevice):
    """The shared point set sorted into cubic cells of side ``kernel_radius``.

    A query meets only the points of its own and the 3^d neighbouring cells:
    exact for the flat and Epanechnikov kernels, and for the Gaussian kernel
    exact up to weights below ``exp(-GAUSSIAN_CUTOFF² / 2)``. The neighbourhood of
    a query depends only on its own cell, so results do not depend on partitioning.
    """

    _arrays = ("points", "weights", "keys", "low", "high", "strides", "offsets")
    _host_only = ("_columns", "_weights", "_dense_set", "_device_grid", "_device_route")

    def __init__(
        self, points: Any, weights: Any | None, kernel: str, xp: ModuleType, block_bytes: int
    ) -> None:
        self.kernel, self.xp, self.block_bytes = kernel, xp, block_bytes
        self.radius = kernel_radius(kernel)
        n_dims = points.shape[1]
        cells = xp.floor(points / self.radius).astype(xp.int64)
        # two empty cells of padding: a query in the outer one is farther than the
        # radius from every point; the inner one keeps every neighbour key in range
        self.low = cells.min(axis=0) - 2
        extent = cells.max(axis=0) + 3 - self.low
        strides = row_major_strides(to_host(extent))
        if float(np.prod(np.asarray(to_host(extent), dtype=float))) >= 2.0**62:
            raise ValueError("too many grid cells for one index")
        self.strides = xp.asarray(strides)
        self.high = self.low + extent - 1
        keys = ((cells - self.low) * self.strides).sum(axis=1)
        order = xp.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.points = points[order]
        self.weights = None if weights is None else weights[order]
        offsets = np.array(list(itertools.product((-1, 0, 1), repeat=n_dims)), dtype=np.int64)
        self.offsets = xp.asarray(offsets @ strides)
        self._columns: Any = None  # the compiled kernel's layout (NumPy)
        if _compiled_available(kernel, xp) and len(self.points):
            from . import compiled

            scale = compiled.GAUSSIAN_SCALE if kernel == "gaussian" else 1.0
            self._columns = np.ascontiguousarray(self.points.T * scale)
            self._weights = (
                np.ones(len(self.points)) if self.weights is None else self.weights.astype(float)
            )

    def shift(self, queries: Any) -> tuple[Any, Any]:
        """One mean shift step of ``queries`` against their neighbouring cells.

        On a GPU the grid kernel walks the neighbour cells (:func:`pipeline.gpu.grid_shift`),
        unless the set is small or its neighbourhoods hold much of it (see
        :meth:`_gpu_route`): then the fused kernel meets every point instead (a superset of
        the neighbourhood: the same result for the flat and Epanechnikov kernels, and the
        exact one for the Gaussian).
        """
        if _on_gpu(self.xp):
            route = self._gpu_route()
            if route == "dense":
                return self._dense().shift(queries)
            if route == "grid":
                return self._shift_on_device(queries)
        if self._columns is None:
            return self._shift_by_neighbourhood(queries)
        return self._shift_compiled(queries)

    def _dense(self) -> DensePointSet:
        """The same points as a dense set in this set's module (built once)."""
        with _CLONE_LOCK:
            dense = self.__dict__.get("_dense_set")
            if dense is None:
                dense = DensePointSet(
                    self.points, self.weights, self.kernel, self.xp, self.block_bytes
                )
                self.__dict__["_dense_set"] = dense
        return dense

    def _gpu_route(self) -> str:
        """How this set meets queries on a GPU (chosen once per set, from the set alone).

        ``dense``: the fused kernel over every point, for sets of up to
        ``GPU_DENSE_MAX_POINTS`` points, or whose average neighbourhood (estimated from a
        fixed sample of the points as queries) holds at least ``1 / GPU_GRID_GAIN`` of the
        points, where the fused kernel applies (flat kernel, or coordinates within
        ``COMPILED_MAX_COORDINATE``). ``grid``: the grid kernel. ``cells``: one array-path
        call per occupied cell (kernels or dimensions the grid kernel does not take).
        """
        route = self.__dict__.get("_device_route")
        if route is None:
            from . import gpu

            n, d = self.points.shape
            if not gpu.grid_route(d, self.kernel):
                route = "dense" if n <= GPU_DENSE_MAX_POINTS else "cells"
            else:
                whole = (
                    self.kernel == "flat"
                    or largest_coordinate(self.points) <= gpu.COMPILED_MAX_COORDINATE
                )
                if whole and (
                    n <= GPU_DENSE_MAX_POINTS or self.mean_neighbourhood() * GPU_GRID_GAIN >= n
                ):
                    route = "dense"
                else:
                    route = "grid"
            self.__dict__["_device_route"] = route
        return route

    def mean_neighbourhood(self, sample: int = 2048) -> float:
        """Points in a query's 3^d neighbour cells, on average over up to ``sample`` of the
        points (evenly spaced in key order) taken as queries."""
        xp = self.xp
        n = len(self.points)
        if n == 0:
            return 0.0
        at = np.linspace(0, n - 1, min(n, sample)).astype(np.int64)
        keys = self.keys[xp.asarray(at)]
        runs = self.offsets[0::3]  # the first of each 3 cells along the last axis
        total = 0
        step = max(1, 2**16 // len(runs))
        for start in range(0, len(at), step):
            first = keys[start : start + step, None] + runs[None, :]
            lo = xp.searchsorted(self.keys, first, side="left")
            hi = xp.searchsorted(self.keys, first + 2, side="right")
            total += int((hi - lo).sum())
        return total / len(at)

    def _on_device_layout(self) -> Any:
        """The points laid out for the GPU grid kernel (built once, on first use)."""
        with _CLONE_LOCK:
            layout = self.__dict__.get("_device_grid")
            if layout is None:
                from . import gpu

                runs = self.offsets[0::3]  # the first of each 3 cells along the last axis
                layout = gpu.pack_grid(self.points, self.weights, self.keys, runs, self.kernel)
                self.__dict__["_device_grid"] = layout
        return layout

    def _shift_on_device(self, queries: Any) -> tuple[Any, Any]:
        """The GPU grid kernel: each query walks the runs of its neighbour cells."""
        from . import gpu

        xp = self.xp
        queries = xp.ascontiguousarray(queries, dtype=xp.float64)
        query_keys = xp.full(queries.shape[0], -1, dtype=xp.int64)
        rows, keys = self._query_cells(queries)
        query_keys[rows] = keys
        return gpu.grid_shift(
            queries, query_keys, self._on_device_layout(), self._shift_by_neighbourhood
        )

    def _query_cells(self, queries: Any) -> tuple[Any, Any]:
        """Rows of the queries inside the padded grid, and their cell keys."""
        xp = self.xp
        cells = xp.floor(queries / self.radius).astype(xp.int64)
        inside = ((cells > self.low) & (cells < self.high)).all(axis=1)
        rows = xp.flatnonzero(inside)
        return rows, ((cells[rows] - self.low) * self.strides).sum(axis=1)

    def _shift_compiled(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The compiled path: each query cell's neighbours as runs of the sorted points.

        The 3 cells adjacent along the last dimension have consecutive keys, so
        their points form one run: 3^(d-1) runs per query cell.
        """
        from . import compiled

        shifted = queries.copy()
        density = np.zeros(queries.shape[0], dtype=queries.dtype)
        rows, keys = self._query_cells(queries)
        if len(rows) == 0:
            return shifted, density
        unique, cell = np.unique(keys, return_inverse=True)
        wanted = unique[:, None] + self.offsets[None, :]
        lo = np.searchsorted(self.keys, wanted[:, 0::3], side="left")
        hi = np.searchsorted(self.keys, wanted[:, 2::3], side="right")
        scale = compiled.GAUSSIAN_SCALE if self.kernel == "gaussian" else 1.0
        local = queries[rows]
        offsets, dens, floored = compiled.shift_spans(
            local * scale, self._columns, self._weights, lo, hi, cell.ravel(), self.kernel
        )
        shifted[rows] = local + offsets / scale
        density[rows] = dens
        if floored.any():  # nothing within 9.4 bandwidths: the exact array path decides
            again = rows[floored]
            shifted[again], density[again] = self._shift_by_neighbourhood(queries[again])
        return shifted, density

    def _shift_by_neighbourhood(self, queries: Any) -> tuple[Any, Any]:
        """The array path (NumPy or CuPy): one shift call per occupied query cell."""
        xp = self.xp
        shifted = queries.copy()
        density = xp.zeros(queries.shape[0], dtype=queries.dtype)
        rows, keys = self._query_cells(queries)
        order = xp.argsort(keys, kind="stable")
        rows, keys = rows[order], keys[order]
        unique, starts = xp.unique(keys, return_index=True)
        stops = list(to_host(starts[1:])) + [len(rows)]
        wanted = unique[:, None] + self.offsets[None, :]
        lo = to_host(xp.searchsorted(self.keys, wanted, side="left"))
        hi = to_host(xp.searchsorted(self.keys, wanted, side="right"))
        for i, (start, stop) in enumerate(zip(to_host(starts), stops, strict=True)):
            spans = [(a, b) for a, b in zip(lo[i], hi[i], strict=True) if b > a]
            if not spans:
                continue
            index = xp.concatenate([xp.arange(a, b) for a, b in spans])
            block_rows = rows[start:stop]
            local = queries[block_rows]
            centre = xp.floor(local[0] / self.radius) * self.radius
            moved, dens = shift_points(
                local - centre,  # neighbourhood coordinates stay small: float32-safe
                self.points[index] - centre,
                None if self.weights is None else self.weights[index],
                self.kernel,
                xp,
                self.block_bytes,
            )
            shifted[block_rows] = moved + centre
            density[block_rows] = dens
        return shifted, density


PointSet = DensePointSet | GridPointSet

GPU_DENSE_MAX_POINTS = 2**15
"""Grid sets up to this size meet every point on a GPU (the fused kernel, at most 2^15
pair evaluations per query: little for the grid kernel to save); larger ones take the
grid kernel (:func:`pipeline.gpu.grid_shift`) unless their neighbourhoods are large."""

GPU_GRID_GAIN = 8.0
"""A grid set on a GPU takes the grid kernel only where a query's neighbourhood holds on
average fewer than ``1 / GPU_GRID_GAIN`` of the points: a guess (not measured on a GPU) at
how much more a pair costs there (global loads, float64 differences) than in the fused
kernel's shared-memory tiles."""


def converge_seeds(
    seeds: Any,
    point_set: PointSet,
    tol: float,
    max_iter: int,
    xp: ModuleType,
    shift: Any = None,
    progress: Any = None,
) -> tuple[Any, Any, Any, Any]:
    """Standard mean shift: move seeds against the fixed points until they stop.

    scikit-learn's loop: a seed stops after the step that moves it by at most
    ``tol`` (bandwidth units), or once it has completed ``max_iter`` iterations
    (at most ``max_iter + 1`` steps). Only seeds still moving are computed.

    ``shift`` replaces ``point_set.shift`` (e.g. to spread each step over threads);
    ``progress(step, largest move, seeds still moving)`` is called after each step.

    Returns
    -------
    modes : array, shape (m, d)
    density : array, shape (m,)
        Weighted kernel sum at the position before the last step (0: no point
        was ever within reach, as scikit-learn reports it).
    n_iter : array of int, shape (m,)
        Completed iterations (steps before the last), scikit-learn's count.
    converged : array of bool, shape (m,)
        Whether the seed stopped by ``tol`` rather than by ``max_iter``.
    """
    modes = xp.array(seeds, dtype=xp.float64, copy=True)
    count = modes.shape[0]
    density = xp.zeros(count, dtype=modes.dtype)
    steps = xp.zeros(count, dtype=xp.int32)
    converged = xp.zeros(count, dtype=bool)
    active = xp.arange(count)
    for _ in range(max_iter + 1):
        if active.shape[0] == 0:
            break
        current = modes[active]
        shifted, dens = (shift or point_set.shift)(current)
        moved = xp.sqrt(((shifted - current) ** 2).sum(axis=1))
        modes[active] = shifted
        density[active] = dens
        steps[active] += 1
        stopped = moved <= tol
        converged[active[stopped]] = True
        active = active[~stopped]
        if progress is not None:
            progress(int(steps.max()), float(moved.max()), int(active.shape[0]))
    return modes, density, steps - 1, converged


def nearest(queries: Any, centers: Any, xp: ModuleType, block_bytes: int) -> tuple[Any, Any]:
    """Index of the nearest centre for each query and the squared distance to it.

    Ties go to the lower index.
    """
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

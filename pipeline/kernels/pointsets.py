"""The shared point set every query is shifted against: dense (every query meets every
point) or on a grid of cells (a query meets its neighbour cells only).

A point set is built once per computation and fetched by every task; it moves to
the GPU once per worker (:meth:`on`), and chooses once how it meets queries there.
"""

from __future__ import annotations

import copy
import itertools
import threading
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import to_host
from .array import kernel_radius, largest_coordinate, row_major_strides
from .dispatch import (
    GAUSSIAN_SCALE,
    compiled_available,
    float32_differences_resolve,
    grid_route_on_cpu,
    grid_route_on_gpu,
    on_gpu,
    shift_points,
    use_compiled,
)

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
        if use_compiled(points[:1], points, kernel, xp, self.largest):
            self._packed_points()  # now, not in each of the threads that will share the set

    def _packed_points(self) -> Any:
        """The points laid out for the compiled (CPU) or GPU kernels, built on first use only."""
        if self._packed is None:
            if on_gpu(self.xp):
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
    _host_only = (
        "_columns",
        "_weights",
        "_cumulative",
        "_dense_set",
        "_device_grid",
        "_device_route",
    )

    def __init__(
        self,
        points: Any,
        weights: Any | None,
        kernel: str,
        xp: ModuleType,
        block_bytes: int,
        cpu_route: str | None = None,
    ) -> None:
        self.kernel, self.xp, self.block_bytes = kernel, xp, block_bytes
        self.radius = kernel_radius(kernel)
        self.largest = largest_coordinate(points)  # once: the routes and layouts ask for it
        self._cpu_route = cpu_route
        n_dims = points.shape[1]
        cells = xp.floor(points / self.radius).astype(xp.int64)
        # two empty cells of padding: a query in the outer one is farther than the
        # radius from every point; the inner one keeps every neighbour key in range
        self.low = cells.min(axis=0) - 2
        extent = cells.max(axis=0) + 3 - self.low
        if float(np.prod(np.asarray(to_host(extent), dtype=float))) >= 2.0**62:
            raise ValueError("too many grid cells for one index")  # before int64 overflows
        strides = row_major_strides(to_host(extent))
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
        if (
            compiled_available(kernel, xp)
            and len(self.points)
            and (kernel == "flat" or float32_differences_resolve(self.largest))
        ):
            from . import compiled

            scale = GAUSSIAN_SCALE if kernel == "gaussian" else 1.0
            self._columns = np.ascontiguousarray(self.points.T * scale)
            self._weights, self._cumulative = compiled.span_weights(
                self.weights, len(self.points), kernel
            )

    def shift(self, queries: Any) -> tuple[Any, Any]:
        """One mean shift step of ``queries`` against their neighbouring cells.

        On a GPU the grid kernel walks the neighbour cells (:func:`.gpu.grid_shift`),
        unless the set is small or its neighbourhoods hold much of it (see
        :meth:`gpu_route`): then the fused kernel meets every point instead (a superset of
        the neighbourhood: the same result for the flat and Epanechnikov kernels, and the
        exact one for the Gaussian). On the CPU the compiled span kernel walks them, or,
        where the neighbourhoods hold half the points or more (:meth:`cpu_route`), the
        compiled dense kernel meets every point.
        """
        if on_gpu(self.xp):
            route = self.gpu_route()
            if route == "dense":
                return self._dense().shift(queries)
            if route == "grid":
                return self._shift_on_device(queries)
        if self._columns is None:
            return self.shift_by_neighbourhood(queries)
        if self.cpu_route() == "dense":
            return self._dense().shift(queries)
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

    @property
    def built_on_device(self) -> frozenset[str]:
        """Which device layouts this set has built so far: ``grid`` (the grid kernel's)
        and ``dense`` (every point, the fused kernel's)."""
        built = {"grid": "_device_grid", "dense": "_dense_set"}
        return frozenset(name for name, key in built.items() if self.__dict__.get(key) is not None)

    def gpu_route(self) -> str:
        """How this set meets queries on a GPU (:func:`.dispatch.grid_route_on_gpu`, chosen
        once per set, from the set alone)."""
        route = self.__dict__.get("_device_route")
        if route is None:
            route = grid_route_on_gpu(
                self.points.shape,
                self.kernel,
                lambda: self.largest,
                self.mean_neighbourhood,
            )
            self.__dict__["_device_route"] = route
        return route

    def cpu_route(self) -> str:
        """How this set meets queries on the compiled CPU kernels: ``grid`` or ``dense``
        (:func:`.dispatch.grid_route_on_cpu`, chosen once per set, from the set alone,
        unless given when the set was built)."""
        with _CLONE_LOCK:
            if self._cpu_route is None:
                self._cpu_route = grid_route_on_cpu(
                    self.points.shape,
                    self.kernel,
                    lambda: self.largest,
                    self.mean_neighbourhood,
                )
        return self._cpu_route

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
        rows, keys = self.query_cells(queries)
        query_keys[rows] = keys
        return gpu.grid_shift(
            queries, query_keys, self._on_device_layout(), self.shift_by_neighbourhood
        )

    def query_cells(self, queries: Any) -> tuple[Any, Any]:
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
        rows, keys = self.query_cells(queries)
        if len(rows) == 0:
            return shifted, density
        unique, cell = np.unique(keys, return_inverse=True)
        wanted = unique[:, None] + self.offsets[None, :]
        lo = np.searchsorted(self.keys, wanted[:, 0::3], side="left")
        hi = np.searchsorted(self.keys, wanted[:, 2::3], side="right")
        scale = GAUSSIAN_SCALE if self.kernel == "gaussian" else 1.0
        local = queries[rows]
        offsets, dens, floored = compiled.shift_spans(
            local * scale,
            self._columns,
            self._weights,
            self._cumulative,
            lo,
            hi,
            cell.ravel(),
            self.kernel,
        )
        shifted[rows] = local + offsets / scale
        density[rows] = dens
        if floored.any():  # nothing within 9.4 bandwidths: the exact array path decides
            again = rows[floored]
            shifted[again], density[again] = self.shift_by_neighbourhood(queries[again])
        return shifted, density

    def shift_by_neighbourhood(self, queries: Any) -> tuple[Any, Any]:
        """The array path (NumPy or CuPy): one shift call per occupied query cell."""
        xp = self.xp
        shifted = queries.copy()
        density = xp.zeros(queries.shape[0], dtype=queries.dtype)
        rows, keys = self.query_cells(queries)
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
            # neighbourhood coordinates stay small (float32-safe) around the cell's corner,
            # except next to the origin, where the corner would round tiny coordinates away
            corner = xp.floor(local[0] / self.radius) * self.radius
            centre = xp.where(xp.abs(corner) <= self.radius, 0.0, corner)
            moved, dens = shift_points(
                local - centre,
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

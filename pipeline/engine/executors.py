"""The two ways the stages run: as Dask graphs, or on threads in this process.

A stage (:mod:`.run`, :mod:`.iterate`, :mod:`.finish`) says *what* to compute; an
executor says *where*. Both call the same per-chunk functions of :mod:`.tasks`:

- :class:`DaskExecutor` maps them over the chunks of dask arrays on the active Dask
  scheduler (a ``distributed.Client`` if one is the default), one small graph per
  step, with the point set shared as one graph node.
- :class:`ThreadExecutor` calls them on row slices of NumPy arrays on a thread pool,
  with no task graph: small inputs do not pay for scheduling.

Every row is computed independently, so both give the same bits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np

from ..backend import resolve_backend, task_resources
from ..kernels import PointSet, converge_seeds
from ..naming import task_name
from ..params import MeanShiftParams
from . import graph, merge, tasks
from .prepare import bounds, check_weights, seed_chunks
from .records import Checkpoint, Prepared, ProgressCallback, SeedColumns

MIN_ROWS_PER_THREAD = 256
"""Fewest query rows worth handing to another thread (in-process executor)."""


class Executor(Protocol):
    """Where the stages run. Arrays are dask arrays or NumPy arrays, as the executor keeps them.

    Attributes
    ----------
    backend : {"numpy", "cupy"}
        The array module of the tasks, decided once when the executor is made.
    """

    backend: str
    in_process: bool  # the arrays are NumPy arrays in this process

    def prepare(self, points: Any, weights: Any) -> Prepared:
        """Points as float64 (kept in memory), checked for NaN/Inf, with their bounds."""

    def normalise(self, data: Prepared, bandwidth: float) -> Any:
        """The points in bandwidth units around the data's midpoint."""

    def shared_weights(self, weights: Any) -> Any:
        """The weights as every task sees them whole (None: unweighted)."""

    def point_set(self, positions: Any, weights: Any, method: str, params: MeanShiftParams) -> Any:
        """The point set every query is shifted against."""

    def seed_array(self, seeds: np.ndarray, like: Any) -> Any:
        """Seeds (bandwidth units) split like the points ``like``."""

    def resume_positions(self, saved: da.Array, like: Any) -> Any:
        """Positions loaded from a checkpoint, split like ``like``."""

    def blur_step(
        self, positions: Any, point_set: Any, iteration: int, params: MeanShiftParams
    ) -> tuple[Any, np.ndarray]:
        """One blurring iteration: the blurring state and ``tasks.iteration_stats`` rows."""

    def converge(
        self,
        seeds: Any,
        point_set: Any,
        params: MeanShiftParams,
        progress: ProgressCallback | None,
        checkpoint: Checkpoint | None,
    ) -> tuple[Any, str | None]:
        """Standard mean shift of every seed: the standard state, and what was resumed."""

    def compute(self, *values: Any) -> tuple[Any, ...]:
        """Small values, computed."""

    def candidates(self, state: Any, d: int, cell: float) -> list[merge.Candidates]:
        """The merge's candidate modes, per part of the state."""

    def call(self, function: Callable[..., Any], *args: Any, stage: str) -> Any:
        """``function(*args)``, where the arguments live; its value here."""

    def label(self, queries: Any, z: Any, centers: np.ndarray, params: MeanShiftParams) -> Any:
        """Each point's nearest centre (``tasks.label_block``)."""

    def sizes(self, labels: Any, weights: Any, k: int) -> np.ndarray:
        """Summed (weighted) size of each of ``k`` clusters."""

    def renumber(self, labels: Any, renumber: np.ndarray) -> Any:
        """Labels with each cluster given its new number."""


class DaskExecutor:
    """Stages as Dask graphs on the active scheduler: one small graph per step.

    Use as a context manager: GPU runs then go to workers that advertise the GPU
    resource (where any do).
    """

    in_process = False

    def __init__(self, backend: str) -> None:
        self.backend = resolve_backend(backend)  # decided once, here, for the whole run
        self._resources = task_resources(self.backend)

    def __enter__(self) -> DaskExecutor:
        self._resources.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._resources.__exit__(*exc)

    def prepare(self, points: da.Array, weights: da.Array | None) -> Prepared:
        n, d = points.shape
        points = points.map_blocks(
            tasks.as_float64, dtype=np.float64, name=task_name("read", points)
        ).persist()
        summary = points.map_blocks(
            tasks.summary_block,
            chunks=((1,) * points.numblocks[0], (2 * d + 1,)),
            dtype=np.float64,
            name=task_name("check", points),
        ).compute()
        origin, half_span = bounds(summary, n)
        if weights is not None:
            weights = weights.astype(np.float64).rechunk((points.chunks[0],)).persist()
            check_weights(weights)
        return Prepared(points, weights, origin, half_span)

    def normalise(self, data: Prepared, bandwidth: float) -> da.Array:
        return data.points.map_blocks(
            tasks.normalise_block,
            data.origin,
            bandwidth,
            dtype=np.float64,
            name=task_name("normalise", data.points, data.origin, bandwidth),
        ).persist()

    def shared_weights(self, weights: da.Array | None) -> Any:
        return None if weights is None else graph.share(weights).persist()

    def point_set(self, positions: da.Array, weights: Any, method: str, params: MeanShiftParams):
        return graph.share_point_set(positions, weights, method, params)

    def seed_array(self, seeds: np.ndarray, like: da.Array) -> da.Array:
        chunks = (seed_chunks(len(seeds), like.numblocks[0]), like.shape[1])
        return da.from_array(seeds, chunks=chunks, name=task_name("seeds", seeds))

    def resume_positions(self, saved: da.Array, like: da.Array) -> da.Array:
        return saved.rechunk((like.chunks[0], (like.shape[1],)))

    def blur_step(
        self, positions: da.Array, point_set: Any, iteration: int, params: MeanShiftParams
    ) -> tuple[da.Array, np.ndarray]:
        d = positions.shape[1]
        state = positions.map_blocks(
            tasks.blurring_block,
            point_set,
            self.backend,
            chunks=(positions.chunks[0], (SeedColumns(d).width(blurring=True),)),
            dtype=np.float64,
            name=task_name("blur", iteration, positions, params),
        )
        stats = state.map_blocks(
            tasks.iteration_stats,
            d,
            params.tol,
            chunks=((1,) * state.numblocks[0], (len(tasks.ENTROPY_BINS) + 1,)),
            dtype=np.float64,
            name=task_name("stats", state),
        )
        state, stats = dask.persist(state, stats)  # one graph per iteration
        return state, stats.compute()

    def converge(
        self,
        seeds: da.Array,
        point_set: Any,
        params: MeanShiftParams,
        progress: ProgressCallback | None,
        checkpoint: Checkpoint | None,
    ) -> tuple[da.Array, str | None]:
        """Each task runs its chunk of seeds to convergence (no per-step ``progress``).

        With a ``checkpoint``, each chunk of seeds is saved as it finishes, and chunks
        saved by an earlier, interrupted run of the same job are taken from it.
        """
        state = seeds.map_blocks(
            tasks.converge_block,
            point_set,
            params.tol,
            params.max_iter,
            self.backend,
            chunks=(seeds.chunks[0], (SeedColumns(seeds.shape[1]).width(blurring=False),)),
            dtype=np.float64,
            name=task_name("standard", seeds, point_set, params),
        )
        if checkpoint is None:
            return state.persist(), None
        state, reused = graph.saving_chunks(state, checkpoint)
        return state, (f"{reused} of {state.numblocks[0]} seed chunks" if reused else None)

    def compute(self, *values: Any) -> tuple[Any, ...]:
        return dask.compute(*values)

    def candidates(self, state: da.Array, d: int, cell: float) -> list[merge.Candidates]:
        blocks = state.to_delayed().ravel()
        return list(
            dask.compute(
                *[
                    dask.delayed(tasks.candidates_block)(
                        block, d, cell, dask_key_name=task_name("candidates", i, block)
                    )
                    for i, block in enumerate(blocks)
                ]
            )
        )

    def call(self, function: Callable[..., Any], *args: Any, stage: str) -> Any:
        return dask.delayed(function)(*args, dask_key_name=task_name(stage, *args)).compute()

    def label(
        self, queries: da.Array, z: da.Array, centers: np.ndarray, params: MeanShiftParams
    ) -> da.Array:
        return da.map_blocks(
            tasks.label_block,
            queries,
            z,
            centers,
            params.cluster_all,
            self.backend,
            params.block_bytes,
            drop_axis=1,
            dtype=np.int32,
            name=task_name("label", queries, z, centers, params),
        ).persist()

    def sizes(self, labels: da.Array, weights: da.Array | None, k: int) -> np.ndarray:
        counted = da.map_blocks(
            tasks.weighted_bincount,
            labels,
            weights,
            k,
            chunks=((1,) * labels.numblocks[0], (k,)),
            new_axis=1,
            dtype=np.float64,
            name=task_name("sizes", labels, weights),
        )
        return np.asarray(counted.compute()).sum(axis=0)

    def renumber(self, labels: da.Array, renumber: np.ndarray) -> da.Array:
        return labels.map_blocks(
            tasks.renumber_block,
            renumber,
            dtype=np.int32,
            name=task_name("number", labels, renumber),
        )


class ThreadExecutor:
    """Stages on NumPy arrays in this process: the task functions on row slices, on
    ``n_threads`` threads (default: one per CPU; one for CuPy, whose kernels one
    thread keeps in order). Use as a context manager (it owns the thread pool)."""

    in_process = True

    def __init__(self, backend: str, n_threads: int | None = None) -> None:
        self.backend = resolve_backend(backend, here=True)
        self.threads = 1 if self.backend == "cupy" else (n_threads or os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ThreadExecutor:
        if self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads - 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def map_rows(self, function: Callable[..., Any], rows: tuple[np.ndarray, ...], *args: Any):
        """``function(*rows, *args)`` over matching row slices of ``rows`` on the threads,
        concatenated (every row is computed independently: the split does not matter)."""
        parts = min(self.threads, len(rows[0]) // MIN_ROWS_PER_THREAD)
        if parts <= 1 or self._pool is None:
            return function(*rows, *args)
        edges = np.linspace(0, len(rows[0]), parts + 1).astype(int)
        pieces = [[r[a:b] for r in rows] for a, b in zip(edges[:-1], edges[1:], strict=True)]
        others = [self._pool.submit(function, *piece, *args) for piece in pieces[1:]]
        first = function(*pieces[0], *args)  # this thread takes a share too
        return np.concatenate([first] + [future.result() for future in others])

    def prepare(self, points: np.ndarray, weights: np.ndarray | None) -> Prepared:
        points = np.asarray(points, dtype=np.float64)
        origin, half_span = bounds(tasks.summary_block(points), len(points))
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            check_weights(weights)
        return Prepared(points, weights, origin, half_span)

    def normalise(self, data: Prepared, bandwidth: float) -> np.ndarray:
        return tasks.normalise_block(data.points, data.origin, bandwidth)

    def shared_weights(self, weights: np.ndarray | None) -> np.ndarray | None:
        return weights

    def point_set(
        self, positions: np.ndarray, weights: Any, method: str, params: MeanShiftParams
    ) -> PointSet:
        return tasks.build_point_set(method, params.kernel, params.block_bytes, weights, positions)

    def seed_array(self, seeds: np.ndarray, like: np.ndarray) -> np.ndarray:
        return seeds

    def resume_positions(self, saved: Any, like: np.ndarray) -> np.ndarray:
        return np.asarray(saved)

    def blur_step(
        self, positions: np.ndarray, point_set: PointSet, iteration: int, params: MeanShiftParams
    ) -> tuple[np.ndarray, np.ndarray]:
        state = self.map_rows(tasks.blurring_block, (positions,), point_set, self.backend)
        return state, tasks.iteration_stats(state, positions.shape[1], params.tol)

    def converge(
        self,
        seeds: np.ndarray,
        point_set: PointSet,
        params: MeanShiftParams,
        progress: ProgressCallback | None,
        checkpoint: Checkpoint | None,
    ) -> tuple[np.ndarray, None]:
        """All seeds step together, each step spread over the threads (``progress`` per step)."""
        d = seeds.shape[1]

        def shift(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = self.map_rows(tasks.shift_rows, (rows,), point_set, self.backend)
            return out[:, :d], out[:, d]

        found = converge_seeds(
            seeds, point_set, params.tol, params.max_iter, np, shift=shift, progress=progress
        )
        return tasks.standard_state(*found, np), None

    def compute(self, *values: Any) -> tuple[Any, ...]:
        return values

    def candidates(self, state: np.ndarray, d: int, cell: float) -> list[merge.Candidates]:
        return [tasks.candidates_block(state, d, cell)]

    def call(self, function: Callable[..., Any], *args: Any, stage: str) -> Any:
        return function(*args)

    def label(
        self, queries: np.ndarray, z: np.ndarray, centers: np.ndarray, params: MeanShiftParams
    ) -> np.ndarray:
        return self.map_rows(
            tasks.label_block,
            (queries, z),
            centers,
            params.cluster_all,
            self.backend,
            params.block_bytes,
        )

    def sizes(self, labels: np.ndarray, weights: np.ndarray | None, k: int) -> np.ndarray:
        return tasks.weighted_bincount(labels, weights, k)[0]

    def renumber(self, labels: np.ndarray, renumber: np.ndarray) -> np.ndarray:
        return tasks.renumber_block(labels, renumber)

"""The engine's entry point: choose the executor and the method, then run the stages.

A dask array runs on the active Dask scheduler (:class:`.executors.DaskExecutor`); a
NumPy array in this process on threads (:class:`.executors.ThreadExecutor`), except
for the binned method, whose binning pass is a Dask reduction.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ..naming import task_name
from ..params import GRID_MAX_DIMS, MeanShiftParams, resolve_method
from . import tasks
from .binned import binned
from .executors import DaskExecutor, ThreadExecutor
from .prepare import check_shape, rows_per_chunk
from .records import Checkpoint, MeanShiftResult, ProgressCallback, SeedColumns
from .run import run_stages


def mean_shift(
    points: Any,
    params: MeanShiftParams,
    seeds: np.ndarray | None = None,
    weights: Any = None,
    progress: ProgressCallback | None = None,
    n_threads: int | None = None,
    checkpoint: Checkpoint | None = None,
) -> MeanShiftResult:
    """Cluster points with mean shift.

    A dask array runs on the active Dask scheduler (a ``distributed.Client`` if one
    is the default, the threaded scheduler otherwise). A NumPy array is clustered in
    this process with ``n_threads`` threads and no task graph (methods ``exact`` and
    ``grid``; ``binned`` goes through Dask). Both give the same result.

    Parameters
    ----------
    points : dask.array.Array or numpy.ndarray, shape (n, d)
        Any float or integer dtype; a dask array chunked by rows (column chunks are merged).
    params : MeanShiftParams
    seeds : numpy.ndarray, shape (m, d), optional
        Starting points for standard mean shift (overrides ``bin_seeding``).
    weights : dask.array.Array or numpy.ndarray, shape (n,), optional
        Multiplicity of each point (None: 1 each).
    progress : callable, optional
        Called after each blurring iteration.
    n_threads : int, optional
        Threads for NumPy input (default: one per CPU).
    checkpoint : Checkpoint, optional
        Saves the run's state as it goes and continues from a saved one (dask input):
        blurring iterations, finished chunks of seeds, the binned method's cell table.

    Returns
    -------
    MeanShiftResult
        Labels (and modes) are dask arrays for dask input, NumPy arrays otherwise.
    """
    if not isinstance(points, da.Array):
        points = np.asarray(points)
        weights = None if weights is None else np.asarray(weights)
        check_shape(points, weights)
        method = resolve_method(*points.shape, params)
        if method != "binned":
            with ThreadExecutor(params.backend, n_threads) as executor:
                return run_stages(executor, points, weights, params, method, seeds, progress)
    points, weights = as_dask(points, weights)
    method = resolve_method(*points.shape, params)
    with DaskExecutor(params.backend) as executor:
        if method == "binned":
            return binned(executor, points, weights, params, seeds, progress, checkpoint)
        return run_stages(executor, points, weights, params, method, seeds, progress, checkpoint)


def as_dask(points: Any, weights: Any) -> tuple[da.Array, da.Array | None]:
    """Points (and weights) as dask arrays chunked by rows only."""
    if not isinstance(points, da.Array):
        points = da.from_array(
            points,
            chunks=(rows_per_chunk(len(points)), points.shape[1]),
            name=task_name("input", points),
        )
    check_shape(points, weights)
    if points.numblocks[1] != 1:
        points = points.rechunk({1: -1})
    if weights is not None and not isinstance(weights, da.Array):
        weights = np.asarray(weights)
        weights = da.from_array(
            weights, chunks=(points.chunks[0],), name=task_name("weights", weights)
        )
    return points, weights


def shift_to_modes(
    points: np.ndarray,
    queries: np.ndarray,
    params: MeanShiftParams,
    bandwidth: float,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each query converges by standard mean shift against ``points`` (NumPy, in this
    process), and the density there (0: no point ever within reach).

    The queries are normalised as :func:`mean_shift` normalises the points it is given,
    so a query equal to one of ``points`` reaches the mode that point reached there.
    """
    points = np.asarray(points)
    check_shape(points, None)
    method = resolve_method(*points.shape, params)
    if method == "binned":  # the raw points here: the exact shift, on the grid where it applies
        method = "grid" if points.shape[1] <= GRID_MAX_DIMS else "exact"
    with ThreadExecutor(params.backend, n_threads) as executor:
        data = executor.prepare(points, None)
        z = executor.normalise(data, bandwidth)
        point_set = executor.point_set(z, None, method, params)
        seeds = tasks.normalise_block(queries, data.origin, bandwidth)
        state, _ = executor.converge(seeds, point_set, params, None, None)
    columns = SeedColumns(points.shape[1])
    modes = state[:, columns.position] * bandwidth + data.origin
    return modes, state[:, columns.density]

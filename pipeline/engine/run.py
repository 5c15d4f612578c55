"""The stage sequence: prepare → bandwidth → normalise → iterate → merge → label → number.

:func:`run_stages` is the whole of methods ``exact`` and ``grid`` on either executor;
the binned method (:mod:`.binned`) runs it on its weighted cells.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..params import MeanShiftParams
from . import finish, iterate
from .executors import Executor
from .prepare import (
    check_integer_resolution,
    check_seeds,
    check_span,
    resolve_bandwidth,
    seeds_in_data_units,
)
from .records import Checkpoint, MeanShiftResult, Prepared, ProgressCallback, Shifted


class Stopwatch(dict):
    """Seconds spent per stage (a dict of stage name to seconds)."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


def scaled(progress: ProgressCallback | None, bandwidth: float) -> ProgressCallback | None:
    """A progress callback fed bandwidth units, reporting data units."""
    if progress is None:
        return None
    return lambda step, moved, moving: progress(step, moved * bandwidth, moving)


def run_stages(
    executor: Executor,
    points: Any,
    weights: Any,
    params: MeanShiftParams,
    method: str,
    seeds: np.ndarray | None,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> MeanShiftResult:
    """Mean shift with the points themselves as the shared set (methods exact and grid)."""
    timings = Stopwatch()
    with timings.stage("bandwidth_s"):
        data = executor.prepare(points, weights)
        seeds = check_seeds(seeds, data.points.shape[1], params)
        bandwidth, estimated = resolve_bandwidth(data.points, params, executor.in_process)
        largest = float(np.max(np.abs(data.origin))) + data.half_span
        check_integer_resolution(largest, points.dtype, bandwidth)
        if bandwidth == 0:
            return finish.distinct_points(data, seeds, params, executor.backend, dict(timings))
        check_span(data.half_span, bandwidth)
    with timings.stage("iterate_s"):
        shifted = shift(executor, data, seeds, params, method, bandwidth, progress, checkpoint)
    with timings.stage("merge_s"):
        centers = finish.find_centers(executor, shifted, params, bandwidth)
    with timings.stage("label_s"):
        queries = shifted.modes if params.labels_from_modes(method) else None
        labels, centers, sizes = finish.label_points(
            executor,
            shifted.z if queries is None else queries,
            shifted.z,
            data.weights,
            centers,
            params,
        )
    finish.warn_if_too_many_clusters(len(centers), labels.shape[0], bandwidth)
    iterated = shifted.iterated
    return MeanShiftResult(
        labels=labels,
        centers=centers * bandwidth + data.origin,
        sizes=sizes,
        modes=None if shifted.modes is None else shifted.modes * bandwidth + data.origin,
        bandwidth=bandwidth,
        bandwidth_estimated=estimated,
        n_iter=iterated.n_iter,
        max_shift=iterated.shifts,
        n_seeds=shifted.n_seeds,
        converged=iterated.converged,
        stop_reason=iterated.reason,
        timings=dict(timings),
        method=method,
        resumed_from_iteration=iterated.resumed_from,
        resumed=iterated.resumed,
        backend=executor.backend,
    )


def shift(
    executor: Executor,
    data: Prepared,
    seeds: np.ndarray | None,
    params: MeanShiftParams,
    method: str,
    bandwidth: float,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None,
) -> Shifted:
    """Normalise the points and run the shift loop: blurring, or standard mean shift from
    the given seeds, the bin seeds, or the points themselves."""
    z = executor.normalise(data, bandwidth)
    weights = executor.shared_weights(data.weights)
    d = z.shape[1]
    if params.blurring:
        iterated = iterate.blurring(
            executor, z, weights, params, method, bandwidth, progress, checkpoint
        )
        return Shifted(z, None, iterated, iterated.modes(d), z.shape[0])
    seed_rows = seeds_in_data_units(data.points, data.weights, seeds, params, bandwidth)
    seed_array = z
    if seed_rows is not None:
        seed_array = executor.seed_array((seed_rows - data.origin) / bandwidth, z)
    point_set = executor.point_set(z, weights, method, params)
    iterated = iterate.standard(
        executor, seed_array, point_set, params, scaled(progress, bandwidth), checkpoint
    )
    modes = iterated.modes(d) if seed_rows is None else None
    return Shifted(z, point_set, iterated, modes, seed_array.shape[0])

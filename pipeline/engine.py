"""The Dask loop: partition the points, share the point set, iterate, stop, merge.

Points are a dask array chunked by rows. Every chunk is updated by one task
against the *whole* point set, which reaches the workers as one shared graph
node per computation (a single concatenation task that each worker fetches
once), never as a broadcast scatter. Only small values (largest shift, number
of points still moving, a histogram) come back to the client per iteration,
and the graph of each iteration refers only to the previous iteration's
persisted chunks, so it does not grow.

Works with whatever Dask scheduler is active: a ``distributed.Client`` if one
is the default, the threaded scheduler otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np

from . import merge
from .backend import get_namespace, resolve_backend, runs_here, task_resources, to_host
from .bandwidth import estimate_bandwidth
from .errors import InputDataError, InvalidRowsError, ParameterError
from .kernels import DensePointSet, GridPointSet, PointSet, converge_seeds, row_major_strides
from .naming import task_name
from .params import EXACT_MAX_POINTS, GRID_MAX_DIMS, MeanShiftParams, resolve_method
from .seeding import bin_seeds

ProgressCallback = Callable[[int, float, int], None]
"""Called after each iteration with (iteration, largest shift in data units, points or seeds
still moving): every blurring iteration, and every step of standard mean shift run in
process (the binned method's cells, NumPy input)."""

ENTROPY_BINS = np.concatenate([[0.0], np.logspace(-8, 2, 81)])
"""Fixed edges (bandwidth units) of the histogram of update lengths (blurring stop rule)."""
ENTROPY_TOL = 1e-8
MAX_SPAN_IN_BANDWIDTHS = 1e12
"""Largest data extent, in bandwidths, that float64 coordinates resolve well."""


@dataclass
class MeanShiftResult:
    """What a mean shift run produces.

    Attributes
    ----------
    labels : dask.array.Array of int32, shape (n,)
        Cluster of each point, numbered by descending size; -1 for outliers.
    centers : numpy.ndarray, shape (k, d)
    sizes : numpy.ndarray of int64, shape (k,)
    modes : dask.array.Array or None, shape (n, d)
        Where each point converged (when the points themselves were the seeds).
    bandwidth : float
    bandwidth_estimated : bool
    n_iter : int
        Iterations of the blurring loop, or the most steps any seed took.
    max_shift : list of float
        Largest shift of each blurring iteration (data units); empty otherwise.
    n_seeds : int
    converged : bool
        Whether the stopping rule was met before ``max_iter``.
    stop_reason : str
    timings : dict of str to float
        Seconds spent per stage.
    method : str
        The method used (``auto`` resolved).
    n_cells : int or None
        Weighted cells the binned method reduced the points to.
    resumed_from_iteration : int
        The saved iteration a blurring run continued from (0: it started afresh).
    resumed : str or None
        What a resumed run took from its checkpoint (None: it started afresh).
    backend : {"numpy", "cupy"}
        The array module the run used.
    """

    labels: da.Array
    centers: np.ndarray
    sizes: np.ndarray
    modes: da.Array | None
    bandwidth: float
    bandwidth_estimated: bool
    n_iter: int
    max_shift: list[float] = field(default_factory=list)
    n_seeds: int = 0
    converged: bool = True
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    method: str = "exact"
    n_cells: int | None = None
    resumed_from_iteration: int = 0
    resumed: str | None = None
    backend: str = "numpy"


# --------------------------------------------------------------------------- tasks


def _stack(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate row chunks (one task per computation)."""
    return np.concatenate(blocks, axis=0)


def _share(array: da.Array) -> Any:
    """One graph node holding the whole array, fetched once by each worker that needs it."""
    return dask.delayed(_stack, pure=True)(
        *array.to_delayed().ravel(), dask_key_name=task_name("shared", array)
    )


def _build_point_set(
    method: str, kernel: str, block_bytes: int, weights: np.ndarray | None, *blocks: np.ndarray
) -> PointSet:
    points = np.concatenate(blocks, axis=0)
    if method == "grid":
        try:
            return GridPointSet(points, weights, kernel, np, block_bytes)
        except ValueError:  # more grid cells than one index can number: meet every point
            pass
    return DensePointSet(points, weights, kernel, np, block_bytes)


def _share_point_set(array: da.Array, weights: Any, method: str, params: MeanShiftParams) -> Any:
    """The shared point set as one graph node: built once per computation, fetched by workers."""
    name = task_name("pointset", array, weights, method, params)
    return dask.delayed(_build_point_set, pure=True)(
        method, params.kernel, params.block_bytes, weights, *array.to_delayed().ravel(),
        dask_key_name=name,
    )  # fmt: skip


def _as_float64(block: np.ndarray) -> np.ndarray:
    return np.asarray(block, dtype=np.float64)


def _summary_block(block: np.ndarray) -> np.ndarray:
    """Rows holding NaN/Inf, then per-column minimum and maximum of the finite rows."""
    finite = np.isfinite(block).all(axis=1)
    good = block[finite]
    d = block.shape[1]
    low = good.min(axis=0) if len(good) else np.full(d, np.inf)
    high = good.max(axis=0) if len(good) else np.full(d, -np.inf)
    return np.concatenate([[float((~finite).sum())], low, high])[None, :]


def _normalise_block(block: np.ndarray, origin: np.ndarray, bandwidth: float) -> np.ndarray:
    return (np.asarray(block, dtype=np.float64) - origin) / bandwidth


def _blurring_block(block: np.ndarray, point_set: PointSet, backend: str) -> np.ndarray:
    """Jacobi blurring step of one chunk: columns = new position, density, shift length."""
    xp = get_namespace(backend)
    queries = xp.asarray(block)
    shifted, density = point_set.on(xp).shift(queries)
    moved = xp.sqrt(((shifted - queries) ** 2).sum(axis=1))
    return to_host(xp.concatenate([shifted, density[:, None], moved[:, None]], axis=1))


def _iteration_stats(block: np.ndarray, d: int, tol: float) -> np.ndarray:
    """Largest shift, number still moving, and histogram of shift lengths of one chunk."""
    moved = block[:, d + 1]
    counts, _ = np.histogram(moved, bins=ENTROPY_BINS)
    head = [moved.max() if len(moved) else 0.0, float((moved > tol).sum())]
    return np.concatenate([head, counts])[None, :]


def _converge_block(
    seeds: np.ndarray, point_set: PointSet, tol: float, max_iter: int, backend: str
) -> np.ndarray:
    """Standard mean shift of one chunk of seeds: columns = mode, density, n_iter, converged."""
    xp = get_namespace(backend)
    modes, density, n_iter, converged = converge_seeds(
        xp.asarray(seeds), point_set.on(xp), tol, max_iter, xp
    )
    extra = xp.stack([density, n_iter.astype(modes.dtype), converged.astype(modes.dtype)], axis=1)
    return to_host(xp.concatenate([modes, extra], axis=1))


POLISH_TOL = 1e-5
"""Convergence threshold (bandwidths) of the final polish of standard mean shift centres."""


def _polish_centers(
    centers: np.ndarray, point_set: PointSet, max_iter: int, backend: str
) -> np.ndarray:
    """Run the merged centres on to their modes, then drop any that met (canonical order).

    The seed that wins a basin is only within ``tol`` of its mode; polishing makes
    each centre the mode itself, whichever seed won.
    """
    xp = get_namespace(backend)
    modes, density, _, _ = converge_seeds(
        xp.asarray(centers), point_set.on(xp), POLISH_TOL, max_iter, xp
    )
    modes, density = to_host(modes), to_host(density)
    order = merge.canonical_order(modes, density)
    modes = modes[order]
    return modes[merge.suppress(modes, 1.0)]


def _candidates_block(
    block: np.ndarray, d: int, cell: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return merge.mode_candidates(block[:, :d], block[:, d], cell)


def _label_block(
    queries: np.ndarray,
    points: np.ndarray,
    centers: np.ndarray,
    cluster_all: bool,
    backend: str,
    block_bytes: int,
) -> np.ndarray:
    xp = get_namespace(backend)
    labels = merge.assign_labels(
        xp.asarray(queries), xp.asarray(points), xp.asarray(centers), cluster_all, xp, block_bytes
    )
    return to_host(labels)


def _weighted_bincount(labels: np.ndarray, weights: np.ndarray | None, k: int) -> np.ndarray:
    kept = labels >= 0
    w = None if weights is None else np.asarray(weights)[kept]
    return np.bincount(labels[kept], weights=w, minlength=k)[None, :]


def _renumber_block(labels: np.ndarray, renumber: np.ndarray) -> np.ndarray:
    out = labels.copy()
    kept = labels >= 0
    out[kept] = renumber[labels[kept]]
    return out


# --------------------------------------------------------------------------- stages


@dataclass
class _Prepared:
    """Validated points and what the later stages need to know about them."""

    points: da.Array  # float64, data units
    weights: da.Array | None
    origin: np.ndarray  # midpoint of the bounding box
    span: float  # largest extent of the bounding box


def _check_shape(points: Any, weights: Any) -> None:
    """Check shape and dtype of points (and weights) without reading them."""
    if points.ndim != 2:
        raise InputDataError(f"points must be a 2-D array (n, d); got {points.ndim} dimension(s)")
    n, d = points.shape
    if n == 0 or d == 0:
        raise InputDataError(f"points array is empty (shape {n} x {d})")
    if not np.issubdtype(points.dtype, np.integer) and not np.issubdtype(points.dtype, np.floating):
        raise InputDataError(f"points must be real numbers; got dtype {points.dtype}")
    if weights is not None and weights.shape != (n,):
        raise ParameterError(f"weights must have shape ({n},); got {weights.shape}")


def _check_weights(weights: Any) -> float:
    """Refuse negative or non-finite weights (NumPy or dask); return the smallest weight."""
    low, finite = dask.compute(weights.min(), np.isfinite(weights).all())
    if not finite or low < 0:
        raise InputDataError("weights must be finite and non-negative")
    return float(low)


def _bounds(summaries: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Midpoint and largest extent of the bounding box, from ``_summary_block`` rows."""
    d = (summaries.shape[1] - 1) // 2
    bad_rows = int(summaries[:, 0].sum())
    if bad_rows:
        raise InvalidRowsError(f"{bad_rows} of {n} rows hold NaN or Inf values")
    low, high = summaries[:, 1 : d + 1].min(axis=0), summaries[:, d + 1 :].max(axis=0)
    return low / 2 + high / 2, float(np.max(high / 2 - low / 2)) * 2


def _prepare(points: da.Array, weights: da.Array | None) -> _Prepared:
    """Read the points once (kept in worker memory as float64) and check their values."""
    n, d = points.shape
    points = points.map_blocks(
        _as_float64, dtype=np.float64, name=task_name("read", points)
    ).persist()
    summary = points.map_blocks(
        _summary_block,
        chunks=((1,) * points.numblocks[0], (2 * d + 1,)),
        dtype=np.float64,
        name=task_name("check", points),
    ).compute()
    origin, span = _bounds(summary, n)
    if weights is not None:
        weights = weights.astype(np.float64).rechunk((points.chunks[0],)).persist()
        _check_weights(weights)
    return _Prepared(points, weights, origin, span)


def _resolve_bandwidth(points: da.Array, params: MeanShiftParams) -> tuple[float, bool]:
    """The bandwidth to use and whether it was estimated (from a sample of ``points``)."""
    if params.bandwidth is not None:
        return float(params.bandwidth), False
    value = estimate_bandwidth(
        points,
        params.bandwidth_quantile,
        params.bandwidth_n_samples,
        params.random_state,
        params.bandwidth_rule,
    )
    if not math.isfinite(value):
        raise InvalidRowsError("the input holds rows with NaN or Inf values")
    if value > 0:
        return value, True
    lo, hi = dask.compute(points.min(axis=0), points.max(axis=0))
    if np.any(np.asarray(hi) > np.asarray(lo)):
        raise InputDataError(
            f"the estimated bandwidth is 0: over {params.bandwidth_quantile:.0%} of the "
            "sampled points are duplicates; give a bandwidth"
        )
    warnings.warn("all points are identical; using bandwidth 1.0", stacklevel=3)
    return 1.0, True


def _check_span(span: float, bandwidth: float) -> None:
    """Refuse a bandwidth too small for float64 coordinates over the data's extent."""
    ratio = span / bandwidth
    if not math.isfinite(ratio) or ratio > MAX_SPAN_IN_BANDWIDTHS:
        raise ParameterError(
            f"bandwidth {bandwidth:g} is too small for data spanning {span:g} "
            f"(more than {MAX_SPAN_IN_BANDWIDTHS:.0e} bandwidths)"
        )


def _seed_chunks(n_seeds: int, points: da.Array) -> tuple[int, ...]:
    """Split seeds into about as many chunks as the points have (at least one)."""
    parts = max(1, min(n_seeds, points.numblocks[0]))
    base, extra = divmod(n_seeds, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


def _histogram_entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@dataclass
class _Iterated:
    """Per-seed state after the shift loop: columns = mode (d), density, then extras."""

    state: Any  # dask or NumPy array
    n_iter: int
    shifts: list[float]
    converged: bool
    reason: str
    resumed_from: int = 0
    resumed: str | None = None


class Checkpoint(Protocol):
    """Where a run saves its state as it goes, and finds it again after a crash.

    Blurring saves positions between iterations, standard mean shift each finished
    chunk of seeds, the binned method its cell table after the binning pass.
    """

    def load(self) -> tuple[int, da.Array, list[float], float | None] | None:
        """(iteration, positions in bandwidth units, shifts so far, last entropy), or None."""

    def save(
        self, iteration: int, positions: da.Array, shifts: list[float], entropy: float | None
    ) -> None:
        """Keep the state after ``iteration`` (the previous one stays valid until this ends)."""

    def finished_chunks(self, chunks: tuple[int, ...]) -> dict[int, Any]:
        """Saved states of finished seed chunks (array-likes) by chunk index."""

    def save_chunk(self, index: int, chunks: tuple[int, ...], block: np.ndarray) -> None:
        """Keep the converged state of seed chunk ``index``."""

    def load_cells(self) -> dict[str, np.ndarray] | None:
        """The binned method's cell table (keys, counts, centroids, low, high), or None."""

    def save_cells(self, cells: dict[str, np.ndarray]) -> None:
        """Keep the binned method's cell table."""


class _BlurringStop:
    """The blurring stop rule, fed one iteration's ``_iteration_stats`` rows at a time.

    Stops when every point moved at most ``tol`` (bandwidths) or when the entropy of
    the histogram of shift lengths stops changing; the rows' split does not matter.
    """

    def __init__(
        self, params: MeanShiftParams, bandwidth: float, progress: ProgressCallback | None
    ):
        self.tol = params.tol
        self.bandwidth = bandwidth
        self.progress = progress
        self.shifts: list[float] = []
        self.previous_entropy: float | None = None
        self.converged = False
        self.reason = f"reached max_iter={params.max_iter}"

    def done(self, stats: np.ndarray) -> bool:
        """Record one iteration; whether the loop should stop."""
        max_moved, n_moving = stats[:, 0].max(), int(stats[:, 1].sum())
        entropy = _histogram_entropy(stats[:, 2:].sum(axis=0))
        self.shifts.append(float(max_moved) * self.bandwidth)
        if self.progress is not None:
            self.progress(len(self.shifts), self.shifts[-1], n_moving)
        if max_moved <= self.tol:
            self.converged = True
            self.reason = f"every point moved at most tol={self.tol} bandwidths"
        elif (
            self.previous_entropy is not None and abs(entropy - self.previous_entropy) < ENTROPY_TOL
        ):
            self.converged = True
            self.reason = "the distribution of shift lengths stopped changing"
        self.previous_entropy = entropy
        return self.converged

    def result(self, state: Any, resumed_from: int = 0) -> _Iterated:
        resumed = f"iteration {resumed_from}" if resumed_from else None
        return _Iterated(
            state, len(self.shifts), self.shifts, self.converged, self.reason, resumed_from,
            resumed,
        )  # fmt: skip


def _blurring(
    z: da.Array,
    shared_weights: Any,
    params: MeanShiftParams,
    method: str,
    backend: str,
    bandwidth: float,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> _Iterated:
    """Iterate blurring mean shift, one Dask round trip per iteration.

    With a ``checkpoint``, the positions are saved after every iteration that does not
    end the loop, and a saved state is continued from (the result is the same).
    """
    d = z.shape[1]
    positions = z
    state: da.Array | None = None
    stop = _BlurringStop(params, bandwidth, progress)
    resumed_from = 0
    saved = None if checkpoint is None else checkpoint.load()
    if saved is not None:
        resumed_from, loaded, stop.shifts, stop.previous_entropy = saved
        positions = loaded.rechunk((z.chunks[0], (d,)))
    for iteration in range(resumed_from + 1, params.max_iter + 1):
        new = positions.map_blocks(
            _blurring_block,
            _share_point_set(positions, shared_weights, method, params),
            backend,
            chunks=(positions.chunks[0], (d + 2,)),
            dtype=np.float64,
            name=task_name("blur", iteration, positions, params),
        )
        stats = new.map_blocks(
            _iteration_stats,
            d,
            params.tol,
            chunks=((1,) * new.numblocks[0], (len(ENTROPY_BINS) + 1,)),
            dtype=np.float64,
            name=task_name("stats", new),
        )
        new, stats = dask.persist(new, stats)  # one graph per iteration
        state, positions = new, new[:, :d]
        if stop.done(stats.compute()):
            break
        if checkpoint is not None and iteration < params.max_iter:
            checkpoint.save(iteration, positions, list(stop.shifts), stop.previous_entropy)
    return stop.result(state, resumed_from)


def _standard(
    seeds: da.Array,
    z: da.Array,
    shared_weights: Any,
    params: MeanShiftParams,
    method: str,
    backend: str,
    checkpoint: Checkpoint | None = None,
) -> _Iterated:
    """Standard mean shift: each task runs its seeds to convergence against the shared set.

    With a ``checkpoint``, each chunk of seeds is saved as it finishes, and chunks saved
    by an earlier, interrupted run of the same job are taken from it instead of rerun.
    """
    d = z.shape[1]
    state = seeds.map_blocks(
        _converge_block,
        _share_point_set(z, shared_weights, method, params),
        params.tol,
        params.max_iter,
        backend,
        chunks=(seeds.chunks[0], (d + 3,)),
        dtype=np.float64,
        name=task_name("standard", seeds, z, params),
    )
    resumed = None
    if checkpoint is None:
        state = state.persist()
    else:
        state, reused = _saving_chunks(state, checkpoint)
        if reused:
            resumed = f"{reused} of {state.numblocks[0]} seed chunks"
    n_iter, all_converged = dask.compute(state[:, d + 1].max(), state[:, d + 2].min())
    iterated = _standard_result(state, n_iter, all_converged, params)
    iterated.resumed = resumed
    return iterated


def _saving_chunks(state: da.Array, checkpoint: Checkpoint) -> tuple[da.Array, int]:
    """Compute ``state``'s row chunks, saving each as it finishes; reuse saved ones.

    Returns the state (finished chunks stay on the workers) and how many chunks were
    taken from the checkpoint.
    """
    chunks = state.chunks[0]
    saved = checkpoint.finished_chunks(chunks)
    blocks = state.to_delayed().ravel()
    parts: list[Any] = [None] * len(blocks)
    for index, array in saved.items():
        parts[index] = da.from_array(
            array, chunks=array.shape, name=task_name("resume", str(array.store_path), index)
        )
    todo = [i for i in range(len(blocks)) if i not in saved]
    for index, block, handle in _as_finished([blocks[i] for i in todo], todo):
        checkpoint.save_chunk(index, chunks, block)
        parts[index] = da.from_delayed(handle, shape=block.shape, dtype=block.dtype)
    return da.concatenate(parts), len(saved)


def _as_finished(blocks: list[Any], indices: list[int]) -> Any:
    """Yield (index, NumPy block, handle for reuse) for each delayed block as it finishes.

    On a ``distributed`` client the blocks run at once and arrive in the order they
    finish (the handle is the future, so the data stays on its worker); on other
    schedulers they are computed together.
    """
    try:
        from distributed import as_completed, get_client

        client = get_client()
    except (ImportError, ValueError):
        for index, block in zip(indices, dask.compute(*blocks), strict=True):
            yield index, block, dask.delayed(block)
        return
    futures = client.compute(blocks)
    index_of = {future.key: index for future, index in zip(futures, indices, strict=True)}
    for future, block in as_completed(futures, with_results=True):
        yield index_of[future.key], block, future


def _standard_result(
    state: Any, n_iter: Any, all_converged: Any, params: MeanShiftParams
) -> _Iterated:
    converged = bool(all_converged)
    reason = (
        f"every seed moved at most tol={params.tol} bandwidths"
        if converged
        else f"some seeds completed max_iter={params.max_iter} iterations"
    )
    return _Iterated(state, int(n_iter), [], converged, reason)


def _seed_array(
    data: _Prepared,
    z: da.Array,
    seeds: np.ndarray | None,
    params: MeanShiftParams,
    bandwidth: float,
) -> da.Array | None:
    """Seeds in bandwidth units, or None when the points themselves are the seeds."""
    seeds = _seeds_in_data_units(data.points, data.weights, seeds, params, bandwidth)
    if seeds is None:
        return None
    d = z.shape[1]
    seeds = (seeds - data.origin) / bandwidth
    return da.from_array(
        seeds, chunks=(_seed_chunks(len(seeds), z), d), name=task_name("seeds", seeds)
    )


def _seeds_in_data_units(
    points: Any, weights: Any, seeds: np.ndarray | None, params: MeanShiftParams, bandwidth: float
) -> np.ndarray | None:
    """The given seeds, bin seeds (``bin_seeding``), or None: the points are the seeds."""
    if seeds is None and params.bin_seeding:
        seeds = bin_seeds(points, bandwidth, params.min_bin_freq, weights)
        if seeds is None:
            warnings.warn(
                f"binning with bin size {bandwidth:g} gave a bin per point; "
                "using the points as seeds",
                stacklevel=4,
            )
            return None
        if len(seeds) == 0:
            raise InputDataError(
                f"no bin holds min_bin_freq={params.min_bin_freq} points; lower it or the bandwidth"
            )
    return seeds


def _check_seeds(seeds: Any, d: int, params: MeanShiftParams) -> np.ndarray | None:
    if seeds is None:
        return None
    if params.blurring:
        raise ParameterError("seeds apply to standard mean shift only (not blurring)")
    if params.label_by == "mode":
        raise ParameterError("label_by='mode' needs the points as seeds (no seeds given)")
    seeds = np.asarray(seeds, dtype=np.float64)
    if seeds.ndim != 2 or seeds.shape[1] != d or len(seeds) == 0:
        raise ParameterError(f"seeds must have shape (m, {d}) with m >= 1; got {seeds.shape}")
    if not np.isfinite(seeds).all():
        raise ParameterError("seeds hold NaN or Inf values")
    return seeds


def _find_centers(state: da.Array, d: int, params: MeanShiftParams, bandwidth: float) -> np.ndarray:
    """Merge converged modes into centres (bandwidth units, canonical order)."""
    cell = max(params.tol, 1e-9)
    parts = dask.compute(
        *[
            dask.delayed(_candidates_block)(
                block, d, cell, dask_key_name=task_name("candidates", i, block)
            )
            for i, block in enumerate(state.to_delayed().ravel())
        ]
    )
    return _merge_candidates(list(parts), params, bandwidth)


def _merge_candidates(parts: list[Any], params: MeanShiftParams, bandwidth: float) -> np.ndarray:
    candidates, _ = merge.combine_candidates(parts, max(params.tol, 1e-9))
    if len(candidates) == 0:
        raise InputDataError(
            f"no point was within bandwidth={bandwidth:g} of any seed; "
            "try other seeds or a larger bandwidth"
        )
    return candidates[merge.suppress(candidates, 1.0)]


def _label(
    queries: da.Array,
    z: da.Array,
    weights: da.Array | None,
    centers: np.ndarray,
    params: MeanShiftParams,
    backend: str,
) -> tuple[da.Array, np.ndarray, np.ndarray]:
    """Labels numbered by descending size, with the centres and sizes in that order."""
    raw = da.map_blocks(
        _label_block,
        queries,
        z,
        centers,
        params.cluster_all,
        backend,
        params.block_bytes,
        drop_axis=1,
        dtype=np.int32,
        name=task_name("label", queries, z, centers, params),
    ).persist()
    return _number_by_size(raw, weights, centers)


def _number_by_size(
    raw: da.Array, weights: da.Array | None, centers: np.ndarray
) -> tuple[da.Array, np.ndarray, np.ndarray]:
    """Count (weighted) cluster sizes in one pass; renumber labels by descending size."""
    k = len(centers)
    counted = da.map_blocks(
        _weighted_bincount,
        raw,
        weights,
        k,
        chunks=((1,) * raw.numblocks[0], (k,)),
        new_axis=1,
        dtype=np.float64,
        name=task_name("sizes", raw, weights),
    )
    summed = np.asarray(counted.compute()).sum(axis=0)
    renumber, centers, sizes = _size_numbering(summed, centers)
    labels = raw.map_blocks(
        _renumber_block, renumber, dtype=np.int32, name=task_name("number", raw, renumber)
    )
    return labels, centers, sizes


def _size_numbering(
    summed: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new number of each cluster, centres and sizes in the new order) from summed sizes."""
    sizes = np.rint(summed).astype(np.int64)
    renumber = merge.size_order(sizes, centers)
    order = np.argsort(renumber)
    return renumber, centers[order], sizes[order]


def rows_per_chunk(n: int) -> int:
    """Rows per chunk when in-memory input goes through Dask: about 4 chunks, >= 1024 rows."""
    return max(1, min(n, max(1024, -(-n // 4))))


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
        _check_shape(points, weights)
        method = resolve_method(*points.shape, params)
        if method != "binned":
            return _mean_shift_in_memory(
                points, params, method, seeds, weights, progress, n_threads
            )
        points = da.from_array(
            points,
            chunks=(rows_per_chunk(len(points)), points.shape[1]),
            name=task_name("input", points),
        )
    _check_shape(points, weights)
    if points.numblocks[1] != 1:
        points = points.rechunk({1: -1})
    if weights is not None and not isinstance(weights, da.Array):
        weights = np.asarray(weights)
        weights = da.from_array(
            weights, chunks=(points.chunks[0],), name=task_name("weights", weights)
        )
    method = resolve_method(*points.shape, params)
    backend = resolve_backend(params.backend)  # decided once, here, for the whole run
    # GPU runs: GPU workers only (where any advertise the GPU resource)
    with task_resources(backend):
        if method == "binned":
            return _binned(points, params, backend, seeds, weights, progress, checkpoint)
        return _mean_shift_points(
            points, params, method, backend, seeds, weights, progress, checkpoint
        )


def _mean_shift_points(
    points: da.Array,
    params: MeanShiftParams,
    method: str,
    backend: str,
    seeds: np.ndarray | None,
    weights: da.Array | None,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> MeanShiftResult:
    """Mean shift with the points themselves as the shared set (methods exact and grid)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data = _prepare(points, weights)
    n, d = data.points.shape
    seeds = _check_seeds(seeds, d, params)
    bandwidth, estimated = _resolve_bandwidth(data.points, params)
    _check_span(data.span, bandwidth)
    timings["bandwidth_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    z = data.points.map_blocks(
        _normalise_block,
        data.origin,
        bandwidth,
        dtype=np.float64,
        name=task_name("normalise", data.points, data.origin, bandwidth),
    )
    z = z.persist()
    shared_weights = None if data.weights is None else _share(data.weights).persist()
    if params.blurring:
        iterated = _blurring(
            z, shared_weights, params, method, backend, bandwidth, progress, checkpoint
        )
        n_seeds, seeds_are_points = n, True
    else:
        seed_array = _seed_array(data, z, seeds, params, bandwidth)
        seeds_are_points = seed_array is None
        if seed_array is None:
            seed_array = z
        iterated = _standard(seed_array, z, shared_weights, params, method, backend, checkpoint)
        n_seeds = seed_array.shape[0]
    timings["iterate_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    centers = _find_centers(iterated.state, d, params, bandwidth)
    if not params.blurring:
        point_set = _share_point_set(z, shared_weights, method, params)
        centers = dask.delayed(_polish_centers)(
            centers,
            point_set,
            params.max_iter,
            backend,
            dask_key_name=task_name("polish", centers, point_set),
        ).compute()
    timings["merge_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    modes = iterated.state[:, :d] if seeds_are_points else None
    queries = modes if (modes is not None and params.labels_from_modes(method)) else z
    labels, centers, sizes = _label(queries, z, data.weights, centers, params, backend)
    timings["label_s"] = time.perf_counter() - clock

    return _points_result(
        labels, centers, sizes, modes, data.origin, bandwidth, estimated, iterated, n_seeds,
        timings, method, backend,
    )  # fmt: skip


def _points_result(
    labels: Any,
    centers: np.ndarray,
    sizes: np.ndarray,
    modes: Any,
    origin: np.ndarray,
    bandwidth: float,
    estimated: bool,
    iterated: _Iterated,
    n_seeds: int,
    timings: dict[str, float],
    method: str,
    backend: str,
) -> MeanShiftResult:
    """The result in data units (warns when the clusters are nearly as many as the points)."""
    n = labels.shape[0]
    if n > 10 and len(centers) > n // 2:
        warnings.warn(
            f"{len(centers)} clusters for {n} points: "
            f"the bandwidth {bandwidth:g} is probably too small",
            stacklevel=4,
        )
    return MeanShiftResult(
        labels=labels,
        centers=centers * bandwidth + origin,
        sizes=sizes,
        modes=None if modes is None else modes * bandwidth + origin,
        bandwidth=bandwidth,
        bandwidth_estimated=estimated,
        n_iter=iterated.n_iter,
        max_shift=iterated.shifts,
        n_seeds=n_seeds,
        converged=iterated.converged,
        stop_reason=iterated.reason,
        timings=timings,
        method=method,
        resumed_from_iteration=iterated.resumed_from,
        resumed=iterated.resumed,
        backend=backend,
    )


# --------------------------------------------------------------------------- in memory

MIN_ROWS_PER_THREAD = 256
"""Fewest query rows worth handing to another thread (NumPy input)."""


def _map_rows(
    pool: ThreadPoolExecutor | None,
    threads: int,
    function: Callable[..., Any],
    rows: tuple[np.ndarray, ...],
    *args: Any,
) -> Any:
    """``function(*rows, *args)`` over matching row slices of ``rows`` on the pool's
    threads, concatenated.

    Every row is computed independently by the block functions, so the split does
    not change the result.
    """
    parts = min(threads, len(rows[0]) // MIN_ROWS_PER_THREAD)
    if parts <= 1:
        return function(*rows, *args)
    bounds = np.linspace(0, len(rows[0]), parts + 1).astype(int)
    pieces = [[r[a:b] for r in rows] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    others = [pool.submit(function, *piece, *args) for piece in pieces[1:]]
    first = function(*pieces[0], *args)  # this thread takes a share too
    return np.concatenate([first] + [future.result() for future in others])


def _shift_rows(rows: np.ndarray, point_set: PointSet, backend: str) -> np.ndarray:
    xp = get_namespace(backend)
    shifted, density = point_set.on(xp).shift(xp.asarray(rows))
    return to_host(xp.concatenate([shifted, density[:, None]], axis=1))


def _scaled(progress: ProgressCallback, bandwidth: float) -> ProgressCallback:
    """A progress callback fed bandwidth units, reporting data units."""
    return lambda step, moved, moving: progress(step, moved * bandwidth, moving)


def _converge_in_memory(
    seeds: np.ndarray,
    point_set: PointSet,
    params: MeanShiftParams,
    backend: str,
    run: Callable[..., Any],
    progress: ProgressCallback | None,
) -> np.ndarray:
    """Standard mean shift of all seeds, each step spread over the threads (as
    ``_converge_block`` returns it: mode, density, n_iter, converged)."""
    d = seeds.shape[1]

    def shift(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = run(_shift_rows, (rows,), point_set, backend)
        return out[:, :d], out[:, d]

    modes, density, n_iter, converged = converge_seeds(
        seeds, point_set, params.tol, params.max_iter, np, shift=shift, progress=progress
    )
    extra = np.stack([density, n_iter.astype(np.float64), converged.astype(np.float64)], axis=1)
    return np.concatenate([modes, extra], axis=1)


def _mean_shift_in_memory(
    points: np.ndarray,
    params: MeanShiftParams,
    method: str,
    seeds: np.ndarray | None,
    weights: np.ndarray | None,
    progress: ProgressCallback | None,
    n_threads: int | None,
) -> MeanShiftResult:
    """Methods exact and grid on a NumPy array: the block functions of the Dask path,
    called directly on row slices by a thread pool (no task graph)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    backend = resolve_backend(params.backend, here=True)
    points = np.asarray(points, dtype=np.float64)
    n, d = points.shape
    origin, span = _bounds(_summary_block(points), n)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        _check_weights(weights)
    seeds = _check_seeds(seeds, d, params)
    bandwidth, estimated = _resolve_bandwidth(points, params)
    _check_span(span, bandwidth)
    timings["bandwidth_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    z = _normalise_block(points, origin, bandwidth)
    kernel, block_bytes = params.kernel, params.block_bytes
    # one GPU: a single thread keeps its kernels in order; threads only split CPU work
    threads = 1 if backend == "cupy" else (n_threads or os.cpu_count() or 1)
    with ThreadPoolExecutor(threads - 1) if threads > 1 else contextlib.nullcontext() as pool:
        run = functools.partial(_map_rows, pool, threads)
        if params.blurring:
            stop = _BlurringStop(params, bandwidth, progress)
            state = positions = z
            for _ in range(params.max_iter):
                point_set = _build_point_set(method, kernel, block_bytes, weights, positions)
                state = run(_blurring_block, (positions,), point_set, backend)
                positions = state[:, :d]
                if stop.done(_iteration_stats(state, d, params.tol)):
                    break
            iterated = stop.result(state)
            seed_rows: np.ndarray | None = None
        else:
            point_set = _build_point_set(method, kernel, block_bytes, weights, z)
            seed_rows = _seeds_in_data_units(points, weights, seeds, params, bandwidth)
            if seed_rows is not None:
                seed_rows = (seed_rows - origin) / bandwidth
            state = _converge_in_memory(
                z if seed_rows is None else seed_rows, point_set, params, backend, run,
                None if progress is None else _scaled(progress, bandwidth),
            )  # fmt: skip
            iterated = _standard_result(state, state[:, d + 1].max(), state[:, d + 2].min(), params)
        timings["iterate_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        centers = _merge_candidates([(None, state[:, :d], state[:, d])], params, bandwidth)
        if not params.blurring:
            centers = _polish_centers(centers, point_set, params.max_iter, backend)
        timings["merge_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        modes = state[:, :d] if seed_rows is None else None
        queries = modes if (modes is not None and params.labels_from_modes(method)) else z
        raw = run(_label_block, (queries, z), centers, params.cluster_all, backend, block_bytes)
    renumber, centers, sizes = _size_numbering(
        _weighted_bincount(raw, weights, len(centers))[0], centers
    )
    labels = _renumber_block(raw, renumber)
    timings["label_s"] = time.perf_counter() - clock
    return _points_result(
        labels, centers, sizes, modes, origin, bandwidth, estimated, iterated,
        n if seed_rows is None else len(seed_rows), timings, method, backend,
    )  # fmt: skip


# --------------------------------------------------------------------------- binned method


def _linear_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Number int64 rows by one linear key: (linear, low, strides, count), or None."""
    low = keys.min(axis=0)
    extent = keys.max(axis=0) - low + 1
    total = float(np.prod(extent.astype(float)))
    if total >= 2.0**62:
        return None
    strides = row_major_strides(extent)
    return (keys - low) @ strides, low, strides, int(total)


def _decode(linear: np.ndarray, low: np.ndarray, strides: np.ndarray) -> np.ndarray:
    rows = np.empty((len(linear), len(strides)), dtype=np.int64)
    for k, stride in enumerate(strides):
        rows[:, k], linear = np.divmod(linear, stride)
    return rows + low


def _sum_by_key(
    keys: np.ndarray, counts: np.ndarray | None, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group rows by int64 key rows: (unique keys, summed counts, summed value rows).

    ``counts`` None counts each row once. Dense keys are summed with one bincount
    per column and no sort; sparse keys are sorted.
    """
    n_cols = values.shape[1]
    if len(keys) == 0:
        return keys, np.zeros(0), np.zeros((0, n_cols))
    numbered = _linear_keys(keys)
    if numbered is not None and numbered[3] <= 4 * len(keys) + 4096:
        linear, low, strides, total = numbered
        summed = np.bincount(linear, weights=counts, minlength=total)
        occupied = np.flatnonzero(summed)  # weights are positive (binned method)
        columns = [
            np.bincount(linear, weights=values[:, k], minlength=total)[occupied]
            for k in range(n_cols)
        ]
        return _decode(occupied, low, strides), summed[occupied], np.stack(columns, axis=1)
    if numbered is not None:
        linear, low, strides, _ = numbered
        unique, inverse = np.unique(linear, return_inverse=True)
        unique = _decode(unique, low, strides)
    else:
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    summed = np.bincount(inverse, weights=counts, minlength=len(unique))
    columns = [
        np.bincount(inverse, weights=values[:, k], minlength=len(unique)) for k in range(n_cols)
    ]
    return unique, summed, np.stack(columns, axis=1)


CELLS_IN_PROCESS_MAX = EXACT_MAX_POINTS
"""Up to this many weighted cells, the binned method's mean shift runs in this process
(the cells are already here); more go to the workers as a shared set."""

FIXED_POINT = 2.0**20
"""Resolution of a point's position inside its cell in the binned method (cell / 2^20)."""


def _bin_block(
    block: np.ndarray, weights: np.ndarray | None, cell: float, backend: str = "numpy"
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk as weighted cells: (bad rows, low, high, cell keys, weights, offset sums).

    Works column by column on a transposed copy (contiguous reductions are fast). With
    ``backend="cupy"`` an unweighted chunk is binned on the GPU, to the same bits
    (:func:`pipeline.gpu.bin_block`).
    """
    if backend == "cupy" and weights is None:
        from . import gpu

        found = gpu.bin_block(block, cell, FIXED_POINT)
        if found is not None:  # (None: the cases the CPU pass decides)
            bad, low, high, key_low, strides, occupied, counts, sums = found
            return bad, low, high, _decode(occupied, key_low, strides), counts, sums
    columns = np.array(np.asarray(block).T, dtype=np.float64)  # (d, m), contiguous
    d = columns.shape[0]
    finite = np.isfinite(columns).all(axis=0)
    bad = int(columns.shape[1] - finite.sum())
    if bad:
        columns = columns[:, finite]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[finite]
    if columns.shape[1] == 0:
        empty = np.zeros((0, d))
        return (
            bad,
            np.full(d, np.inf),
            np.full(d, -np.inf),
            empty.astype(np.int64),
            empty[:, 0],
            empty,
        )
    low = np.array([c.min() for c in columns])
    high = np.array([c.max() for c in columns])
    if not max(np.abs(low).max(), np.abs(high).max()) / cell < 2.0**62:
        raise ParameterError(
            f"bin size {cell:g} is too small for coordinates up to {np.abs([low, high]).max():g}"
        )
    key_low = np.floor(low / cell).astype(np.int64)
    extent = np.floor(high / cell).astype(np.int64) - key_low + 1
    if float(np.prod(extent.astype(float))) >= 2.0**62:
        keys = np.floor(columns.T / cell).astype(np.int64)
        weighted = columns.T if w is None else columns.T * w[:, None]
        unique, counts, sums = _sum_by_key(keys, w, weighted)
        return bad, low, high, unique, counts, sums
    strides = row_major_strides(extent)
    linear = np.zeros(columns.shape[1], dtype=np.int64)
    for k in range(d):
        linear += (np.floor(columns[k] / cell).astype(np.int64) - key_low[k]) * strides[k]
    total = int(np.prod(extent))
    dense = total <= 4 * len(linear) + 4096
    if dense:  # few possible cells: count straight into them, no sort
        index, size = linear, total
    else:
        occupied, index = np.unique(linear, return_inverse=True)
        index, size = index.ravel(), len(occupied)
    counts = np.bincount(index, weights=w, minlength=size)
    # each point's offset inside its cell, in fixed point: unweighted sums of these integers are
    # exact in float64 (below 2^33 points per cell), so cells do not depend on chunking, and
    # they keep full precision far from the origin
    offsets = [np.floor((c / cell - np.floor(c / cell)) * FIXED_POINT) for c in columns]
    sums = np.stack(
        [np.bincount(index, weights=o if w is None else o * w, minlength=size) for o in offsets],
        axis=1,
    )
    if dense:
        occupied = np.flatnonzero(counts)  # weights are positive: occupied cells count > 0
        counts, sums = counts[occupied], sums[occupied]
    return bad, low, high, _decode(occupied, key_low, strides), counts, sums


def _combine_bins(*parts: tuple) -> tuple:
    """Merge per-chunk cells by key (associative, so any tree of merges gives the same cells)."""
    bad = sum(p[0] for p in parts)
    low = np.min([p[1] for p in parts], axis=0)
    high = np.max([p[2] for p in parts], axis=0)
    keys, counts, sums = _sum_by_key(
        np.concatenate([p[3] for p in parts]),
        np.concatenate([p[4] for p in parts]),
        np.concatenate([p[5] for p in parts]),
    )
    return bad, low, high, keys, counts, sums


def _tree_reduce(parts: list[Any], combine: Callable[..., Any], split_every: int = 8) -> Any:
    """Combine delayed values in a tree of at most ``split_every`` inputs per task."""
    level = 0
    while len(parts) > 1:
        level += 1
        parts = [
            dask.delayed(combine)(
                *parts[i : i + split_every],
                dask_key_name=task_name("combine", level, i, *parts[i : i + split_every]),
            )
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


DENSE_TABLE_MIN_CELLS = 2**20
DENSE_TABLE_CELLS_PER_KEY = 8
"""A cell table indexes its whole bounding box directly when the box has at most
``DENSE_TABLE_MIN_CELLS`` cells, or this many per occupied cell; binary search otherwise."""


@dataclass(frozen=True)
class _CellTable:
    """Occupied cells numbered by a linear key over their bounding box, to find a
    point's cell: a direct index of the box when it is small, binary search otherwise."""

    cell: float
    low: np.ndarray
    extent: np.ndarray
    strides: np.ndarray
    linear: np.ndarray  # sorted linear keys of the cells
    order: np.ndarray  # cell index of each sorted key
    dense: np.ndarray | None  # cell index at each linear key of the box (-1: empty)

    @classmethod
    def build(cls, keys: np.ndarray, cell: float) -> _CellTable:
        low = keys.min(axis=0)
        extent = keys.max(axis=0) - low + 1
        total = float(np.prod(extent.astype(float)))
        if total >= 2.0**62:
            raise ParameterError(
                "too many cells for the binned method; use method 'grid' or 'exact'"
            )
        strides = row_major_strides(extent)
        linear = ((keys - low) * strides).sum(axis=1)
        order = np.argsort(linear)
        dense = None
        if total <= max(DENSE_TABLE_MIN_CELLS, DENSE_TABLE_CELLS_PER_KEY * len(keys)):
            dense = np.full(int(total), -1, dtype=np.int64)
            dense[linear] = np.arange(len(keys))
        return cls(cell, low, extent, strides, linear[order], order, dense)

    def lookup(self, block: np.ndarray) -> np.ndarray:
        """Cell index of each point of a chunk (every point lies in an occupied cell)."""
        block = np.asarray(block)
        linear = np.zeros(len(block), dtype=np.int64)
        inside = np.ones(len(block), dtype=bool)
        for k in range(block.shape[1]):  # column by column: no (m, d) temporaries
            coordinate = block[:, k].astype(np.float64)  # as the binning pass rounds it
            column = np.floor(coordinate / self.cell).astype(np.int64) - self.low[k]
            inside &= (column >= 0) & (column < self.extent[k])
            linear += column * self.strides[k]
        if self.dense is not None:
            index = self.dense[np.where(inside, linear, 0)]
            found = inside & (index >= 0)
        else:
            at = np.minimum(np.searchsorted(self.linear, linear), len(self.linear) - 1)
            found = inside & (self.linear[at] == linear)
            index = self.order[at]
        if not found.all():
            raise InputDataError("the input changed between the binning and labelling passes")
        return index


def _shared_value(value: Any, stage: str) -> Any:
    """``value`` as one named graph key (sent once to each worker that needs it)."""
    return dask.delayed(value, pure=True, traverse=False, name=task_name(stage, value))


def _cell_values_block(block: np.ndarray, table: _CellTable, values: np.ndarray) -> np.ndarray:
    """Per point, the value of its cell (a label, or a mode row)."""
    return values[table.lookup(block)]


def _point_labels_block(
    block: np.ndarray,
    table: _CellTable | None,
    cell_modes: np.ndarray | None,
    origin: np.ndarray,
    bandwidth: float,
    centers: np.ndarray,
    cluster_all: bool,
    backend: str,
    block_bytes: int,
) -> np.ndarray:
    """Labels of raw points: nearest centre to the point, or to its cell's mode."""
    z = _normalise_block(block, origin, bandwidth)
    queries = z if table is None else (cell_modes[table.lookup(block)] - origin) / bandwidth
    return _label_block(queries, z, centers, cluster_all, backend, block_bytes)


def _binned(
    points: da.Array,
    params: MeanShiftParams,
    backend: str,
    seeds: np.ndarray | None,
    weights: da.Array | None,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> MeanShiftResult:
    """Reduce points to weighted cells chunk by chunk, run mean shift on the cells, label points.

    Raw points are read twice (binning, labelling; three times with nearest-centre
    labels, whose sizes need a counting pass) and never held whole by any process.
    With a ``checkpoint``, the cell table is saved after the binning pass, and a saved
    one (same job) replaces that pass.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    n, d = points.shape
    if weights is not None:
        weights = weights.astype(np.float64).rechunk((points.chunks[0],))
        if _check_weights(weights) <= 0:
            raise ParameterError("the binned method needs positive weights; use method 'grid'")
    bandwidth, estimated = _resolve_bandwidth(points, params)
    timings["bandwidth_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cell = params.bin_fraction * bandwidth
    cells = None if checkpoint is None else checkpoint.load_cells()
    resumed = None
    if cells is None:
        cells = _bin_points(points, weights, cell, backend)
        if checkpoint is not None:
            checkpoint.save_cells(cells)
    else:
        resumed = f"the binning pass ({len(cells['counts']):,} cells)"
    keys, counts, centroids = cells["keys"], cells["counts"], cells["centroids"]
    low, high = cells["low"], cells["high"]
    span = float(np.max(high / 2 - low / 2)) * 2
    _check_span(span, bandwidth)
    table = _CellTable.build(keys, cell)
    timings["binning_s"] = time.perf_counter() - clock

    seeds = _check_seeds(seeds, d, params)
    seeds_are_cells = seeds is None and not params.bin_seeding
    inner_method = "grid" if d <= GRID_MAX_DIMS else "exact"
    inner_params = params.model_copy(
        update={
            "bandwidth": bandwidth,
            "method": inner_method,
            "label_by": "mode" if seeds_are_cells else "nearest",
            "cluster_all": True,
            "backend": backend,
        }
    )
    # small: in this process, no round trips to the workers (if it can run the backend)
    if len(centroids) <= CELLS_IN_PROCESS_MAX and runs_here(backend):
        inner = _mean_shift_in_memory(
            centroids, inner_params, inner_method, seeds, counts, progress, None
        )
    else:
        rows = max(1, -(-len(centroids) // max(1, points.numblocks[0])))
        inner = _mean_shift_points(
            da.from_array(centroids, chunks=(rows, d), name=task_name("cells", centroids)),
            inner_params,
            inner_method,
            backend,
            seeds,
            da.from_array(counts, chunks=(rows,), name=task_name("counts", counts)),
            progress,
        )
    cell_labels = np.asarray(inner.labels)
    cell_modes = None if inner.modes is None else np.asarray(inner.modes)
    for stage in ("iterate_s", "merge_s", "label_s"):
        timings[stage] = inner.timings[stage]

    clock = time.perf_counter()
    by_cell = params.labels_from_modes("binned") and seeds_are_cells
    table = _shared_value(table, "celltable")  # one graph key, fetched once per worker
    if by_cell and params.cluster_all:
        labels = points.map_blocks(
            _cell_values_block,
            table,
            _shared_value(cell_labels, "celllabels"),
            drop_axis=1,
            meta=np.empty(0, dtype=np.int32),
            name=task_name("label", points, table),
        )
        centers, sizes = inner.centers, inner.sizes
    else:
        origin = low / 2 + high / 2
        centers_z = (inner.centers - origin) / bandwidth
        raw = points.map_blocks(
            _point_labels_block,
            table if by_cell else None,
            _shared_value(cell_modes, "cellmodes") if by_cell else None,
            origin,
            bandwidth,
            centers_z,
            params.cluster_all,
            backend,
            params.block_bytes,
            drop_axis=1,
            meta=np.empty(0, dtype=np.int32),
            name=task_name("label", points, table, centers_z, params),
        )
        labels, centers, sizes = _number_by_size(raw, weights, inner.centers)

    modes = None
    if cell_modes is not None and seeds_are_cells:
        modes = points.map_blocks(
            _cell_values_block,
            table,
            _shared_value(cell_modes, "cellmodes"),
            meta=np.empty((0, 0), dtype=np.float64),
            name=task_name("modes", points, table),
        )
    timings["label_s"] += time.perf_counter() - clock
    return MeanShiftResult(
        labels=labels,
        centers=centers,
        sizes=sizes,
        modes=modes,
        bandwidth=bandwidth,
        bandwidth_estimated=estimated,
        n_iter=inner.n_iter,
        max_shift=inner.max_shift,
        n_seeds=inner.n_seeds,
        converged=inner.converged,
        stop_reason=inner.stop_reason,
        timings=timings,
        method="binned",
        n_cells=len(centroids),
        resumed=resumed,
        backend=backend,
    )


def _bin_points(
    points: da.Array, weights: da.Array | None, cell: float, backend: str = "numpy"
) -> dict[str, np.ndarray]:
    """The binning pass: occupied cells (integer keys), their weights and centroids, and the
    data's bounds, reduced chunk by chunk in a tree.

    Raises
    ------
    InputDataError
        Some rows hold NaN or Inf.
    """
    blocks = points.to_delayed().ravel()
    weight_blocks = [None] * len(blocks) if weights is None else list(weights.to_delayed().ravel())
    parts = [
        dask.delayed(_bin_block)(
            block, w, cell, backend, dask_key_name=task_name("bin", block, w, cell, backend)
        )
        for block, w in zip(blocks, weight_blocks, strict=True)
    ]
    bad, low, high, keys, counts, sums = _tree_reduce(parts, _combine_bins).compute()
    if bad:
        raise InvalidRowsError(f"{bad} of {points.shape[0]} rows hold NaN or Inf values")
    kept = counts > 0
    keys, counts = keys[kept], counts[kept]
    centroids = (keys + (sums[kept] / counts[:, None] + 0.5) / FIXED_POINT) * cell
    return {"keys": keys, "counts": counts, "centroids": centroids, "low": low, "high": high}

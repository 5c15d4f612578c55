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

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from . import merge
from .backend import get_namespace, resolve_backend, to_host
from .bandwidth import estimate_bandwidth
from .errors import InputDataError, ParameterError
from .kernels import converge_seeds, shift_points
from .params import MeanShiftParams
from .seeding import bin_seeds

ProgressCallback = Callable[[int, float, int], None]
"""Called after each blurring iteration with (iteration, max shift in data units, points moving)."""

ENTROPY_BINS = np.concatenate([[0.0], np.logspace(-8, 2, 81)])
"""Fixed edges (bandwidth units) of the histogram of update lengths (blurring stop rule)."""
ENTROPY_TOL = 1e-8


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


# --------------------------------------------------------------------------- tasks


def _stack(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate row chunks into the shared point set (one task per computation)."""
    return np.concatenate(blocks, axis=0)


def _share(array: da.Array) -> Any:
    """One graph node holding the whole (small-in-rows-per-chunk) array."""
    name = "meanshift-shared-" + dask.base.tokenize(array)
    return dask.delayed(_stack, name=name, pure=True)(*array.to_delayed().ravel())


def _normalise_block(block: np.ndarray, origin: np.ndarray, bandwidth: float) -> np.ndarray:
    return (np.asarray(block, dtype=np.float64) - origin) / bandwidth


def _blurring_block(
    block: np.ndarray,
    shared: np.ndarray,
    weights: np.ndarray | None,
    kernel: str,
    backend: str,
    block_bytes: int,
) -> np.ndarray:
    """Jacobi blurring step of one chunk: columns = new position, density, shift length."""
    xp = get_namespace(backend)
    queries = xp.asarray(block)
    shifted, density = shift_points(
        queries,
        xp.asarray(shared),
        None if weights is None else xp.asarray(weights),
        kernel,
        xp,
        block_bytes,
    )
    moved = xp.sqrt(((shifted - queries) ** 2).sum(axis=1))
    return to_host(xp.concatenate([shifted, density[:, None], moved[:, None]], axis=1))


def _converge_block(
    seeds: np.ndarray,
    shared: np.ndarray,
    weights: np.ndarray | None,
    kernel: str,
    tol: float,
    max_iter: int,
    backend: str,
    block_bytes: int,
) -> np.ndarray:
    """Standard mean shift of one chunk of seeds: columns = mode, density, steps."""
    xp = get_namespace(backend)
    modes, density, n_iter = converge_seeds(
        xp.asarray(seeds),
        xp.asarray(shared),
        None if weights is None else xp.asarray(weights),
        kernel,
        tol,
        max_iter,
        xp,
        block_bytes,
    )
    return to_host(
        xp.concatenate([modes, density[:, None], n_iter[:, None].astype(modes.dtype)], axis=1)
    )


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


def _iteration_stats(block: np.ndarray, d: int, tol: float) -> np.ndarray:
    """Largest shift, number still moving, and histogram of shift lengths of one chunk."""
    moved = block[:, d + 1]
    counts, _ = np.histogram(moved, bins=ENTROPY_BINS)
    head = [moved.max() if len(moved) else 0.0, float((moved > tol).sum())]
    return np.concatenate([head, counts])[None, :]


def _candidates_block(
    block: np.ndarray, d: int, cell: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return merge.mode_candidates(block[:, :d], block[:, d], cell)


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


def _check_points(points: da.Array) -> tuple[np.ndarray, int]:
    """Mean of the points, raising for unusable data. Returns (origin, number of rows)."""
    if points.ndim != 2:
        raise InputDataError(f"points must be a 2-D array (n, d); got {points.ndim} dimension(s)")
    n, d = points.shape
    if n == 0 or d == 0:
        raise InputDataError(f"points array is empty (shape {n} x {d})")
    bad_rows, total = dask.compute((~da.isfinite(points).all(axis=1)).sum(), points.sum(axis=0))
    if bad_rows:
        raise InputDataError(f"{int(bad_rows)} of {n} rows hold NaN or Inf values")
    origin = np.asarray(total, dtype=np.float64) / n
    if not np.all(np.isfinite(origin)):
        raise InputDataError("coordinates are too large to average in float64")
    return origin, n


def _resolve_bandwidth(points: da.Array, params: MeanShiftParams) -> tuple[float, bool]:
    if params.bandwidth is not None:
        return float(params.bandwidth), False
    value = estimate_bandwidth(
        points, params.bandwidth_quantile, params.bandwidth_n_samples, params.random_state
    )
    if not (math.isfinite(value) and value > 0):
        lo, hi = dask.compute(points.min(axis=0), points.max(axis=0))
        spread = float(np.max(np.asarray(hi) - np.asarray(lo)))
        if spread > 0:
            raise InputDataError(
                f"the estimated bandwidth is 0: over {params.bandwidth_quantile:.0%} of the "
                "sampled points are duplicates; give a bandwidth"
            )
        warnings.warn("all points are identical; using bandwidth 1.0", stacklevel=3)
        value = 1.0
    return value, True


def _seed_chunks(n_seeds: int, points: da.Array) -> tuple[int, ...]:
    """Split seeds into about as many chunks as the points have (at least one)."""
    parts = max(1, min(n_seeds, points.numblocks[0]))
    base, extra = divmod(n_seeds, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


def _histogram_entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _blurring(
    z: da.Array,
    shared_weights: Any,
    params: MeanShiftParams,
    backend: str,
    bandwidth: float,
    progress: ProgressCallback | None,
) -> tuple[da.Array, int, list[float], bool, str]:
    """Iterate blurring mean shift. Returns (augmented state, n_iter, shifts, converged, reason)."""
    d = z.shape[1]
    state = z
    augmented: da.Array | None = None
    shifts: list[float] = []
    previous_entropy: float | None = None
    reason = f"reached max_iter={params.max_iter}"
    converged = False
    for iteration in range(1, params.max_iter + 1):
        shared = _share(state)
        new = state.map_blocks(
            _blurring_block,
            shared,
            shared_weights,
            params.kernel,
            backend,
            params.block_bytes,
            chunks=(state.chunks[0], (d + 2,)),
            dtype=np.float64,
            name=f"meanshift-blur-{iteration}-" + dask.base.tokenize(state, params),
        )
        new = new.persist()
        stats = new.map_blocks(
            _iteration_stats,
            d,
            params.tol,
            chunks=((1,) * new.numblocks[0], (len(ENTROPY_BINS) + 1,)),
            dtype=np.float64,
        ).compute()
        max_moved, n_moving, counts = stats[:, 0].max(), stats[:, 1].sum(), stats[:, 2:].sum(axis=0)
        augmented, state = new, new[:, :d]
        shifts.append(float(max_moved) * bandwidth)
        if progress is not None:
            progress(iteration, shifts[-1], int(n_moving))
        entropy = _histogram_entropy(np.asarray(counts))
        if max_moved <= params.tol:
            converged, reason = True, f"every point moved at most tol={params.tol} bandwidths"
            break
        if previous_entropy is not None and abs(entropy - previous_entropy) < ENTROPY_TOL:
            converged, reason = True, "the distribution of shift lengths stopped changing"
            break
        previous_entropy = entropy
    assert augmented is not None
    return augmented, len(shifts), shifts, converged, reason


def mean_shift(
    points: da.Array,
    params: MeanShiftParams,
    seeds: np.ndarray | None = None,
    weights: da.Array | None = None,
    progress: ProgressCallback | None = None,
) -> MeanShiftResult:
    """Cluster points with mean shift on the active Dask scheduler.

    Parameters
    ----------
    points : dask.array.Array, shape (n, d)
        Any float or integer dtype; chunked by rows (column chunks are merged).
    params : MeanShiftParams
    seeds : numpy.ndarray, shape (m, d), optional
        Starting points for standard mean shift (overrides ``bin_seeding``).
    weights : dask.array.Array, shape (n,), optional
        Multiplicity of each point (None: 1 each).
    progress : callable, optional
        Called after each blurring iteration.

    Returns
    -------
    MeanShiftResult
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    backend = resolve_backend(params.backend)
    if points.ndim == 2 and points.numblocks[1] != 1:
        points = points.rechunk({1: -1})
    if not (
        np.issubdtype(points.dtype, np.number)
        and not np.issubdtype(points.dtype, np.complexfloating)
    ):
        raise InputDataError(f"points must be real numbers; got dtype {points.dtype}")
    points = points.astype(np.float64).persist()
    origin, n = _check_points(points)
    d = points.shape[1]
    if weights is not None:
        weights = weights.astype(np.float64).rechunk((points.chunks[0],)).persist()
        if bool((weights < 0).any().compute()) or not bool(da.isfinite(weights).all().compute()):
            raise InputDataError("weights must be finite and non-negative")
    bandwidth, estimated = _resolve_bandwidth(points, params)
    timings["bandwidth_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    z = points.map_blocks(_normalise_block, origin, bandwidth, dtype=np.float64).persist()
    shared_weights = None if weights is None else _share(weights).persist()
    seeds_are_points = seeds is None
    if seeds is not None:
        if params.blurring:
            raise ParameterError("seeds apply to standard mean shift only (not blurring)")
        seeds = np.asarray(seeds, dtype=np.float64)
        if seeds.ndim != 2 or seeds.shape[1] != d:
            raise ParameterError(f"seeds must have shape (m, {d}); got {seeds.shape}")
    elif params.bin_seeding and not params.blurring:
        seeds = bin_seeds(points, bandwidth, params.min_bin_freq)
        if seeds is None:
            warnings.warn(
                f"binning with bin size {bandwidth:g} gave a bin per point; "
                "using the points as seeds",
                stacklevel=2,
            )
        seeds_are_points = seeds is None
    del points

    if params.blurring:
        augmented, n_iter, shifts, converged, reason = _blurring(
            z, shared_weights, params, backend, bandwidth, progress
        )
        n_seeds = n
        seeds_are_points = True
    else:
        if seeds_are_points:
            seed_array = z
        else:
            assert seeds is not None
            if len(seeds) == 0:
                raise InputDataError(
                    f"no bin holds min_bin_freq={params.min_bin_freq} points; "
                    "lower it or the bandwidth"
                )
            seed_array = da.from_array(
                (seeds - origin) / bandwidth, chunks=(_seed_chunks(len(seeds), z), d)
            )
        augmented = seed_array.map_blocks(
            _converge_block,
            _share(z),
            shared_weights,
            params.kernel,
            params.tol,
            params.max_iter,
            backend,
            params.block_bytes,
            chunks=(seed_array.chunks[0], (d + 2,)),
            dtype=np.float64,
            name="meanshift-converge-" + dask.base.tokenize(seed_array, params),
        ).persist()
        n_iter = int(augmented[:, d + 1].max().compute())
        n_seeds = seed_array.shape[0]
        shifts = []
        converged = n_iter < params.max_iter
        reason = (
            f"every seed moved at most tol={params.tol} bandwidths"
            if converged
            else f"some seeds reached max_iter={params.max_iter}"
        )
    timings["iterate_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cell = max(params.tol, 1e-9)
    parts = dask.compute(
        *[
            dask.delayed(_candidates_block)(block, d, cell)
            for block in augmented.to_delayed().ravel()
        ]
    )
    candidates, _ = merge.combine_candidates(list(parts), cell)
    if len(candidates) == 0:
        raise InputDataError(
            f"no point was within bandwidth={bandwidth:g} of any seed; "
            "try other seeds or a larger bandwidth"
        )
    centers = candidates[merge.suppress(candidates, 1.0)]
    k = len(centers)
    timings["merge_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    queries = augmented[:, :d] if seeds_are_points else z
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
    ).persist()
    sizes = (
        da.map_blocks(
            _weighted_bincount,
            raw,
            weights,
            k,
            chunks=((1,) * raw.numblocks[0], (k,)),
            new_axis=1,
            dtype=np.float64,
        )
        .sum(axis=0)
        .compute()
    )
    sizes = np.rint(np.asarray(sizes)).astype(np.int64)
    renumber = merge.size_order(sizes, centers)
    order = np.argsort(renumber)
    labels = raw.map_blocks(_renumber_block, renumber, dtype=np.int32)
    centers = centers[order] * bandwidth + origin
    sizes = sizes[order]
    modes = augmented[:, :d] * bandwidth + origin if seeds_are_points else None
    timings["label_s"] = time.perf_counter() - clock

    if n > 10 and k > n // 2:
        warnings.warn(
            f"{k} clusters for {n} points: the bandwidth {bandwidth:g} is probably too small",
            stacklevel=2,
        )
    return MeanShiftResult(
        labels=labels,
        centers=centers,
        sizes=sizes,
        modes=modes,
        bandwidth=bandwidth,
        bandwidth_estimated=estimated,
        n_iter=n_iter,
        max_shift=shifts,
        n_seeds=n_seeds,
        converged=converged,
        stop_reason=reason,
        timings=timings,
    )

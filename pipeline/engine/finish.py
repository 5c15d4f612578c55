"""After the shift loop: merge the modes into centres, label the points, number the
clusters, and give the result in data units; written once for both executors."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import NoPointNearSeedsError, TooManyClustersWarning, warn_user
from ..kernels import nearest
from ..params import MeanShiftParams
from . import merge, tasks
from .executors import Executor
from .records import MeanShiftResult, Prepared, Shifted


def merge_cell(params: MeanShiftParams) -> float:
    """Side of the cells the merge reduces modes in (bandwidth units)."""
    return max(params.tol, 1e-9)


def merge_candidates(
    parts: list[merge.Candidates], params: MeanShiftParams, bandwidth: float
) -> np.ndarray:
    """Centres (bandwidth units, canonical order) from the candidates of every part."""
    candidates, _ = merge.combine_candidates(parts, merge_cell(params))
    if len(candidates) == 0:
        raise NoPointNearSeedsError(bandwidth)
    return candidates[merge.suppress(candidates, 1.0)]


def find_centers(
    executor: Executor, shifted: Shifted, params: MeanShiftParams, bandwidth: float
) -> np.ndarray:
    """Merge the converged modes into centres (bandwidth units), in the merge's order:
    density descending, then coordinates descending (scikit-learn's).

    Standard mean shift's centres are where the winning seeds stopped for the flat kernel
    (scikit-learn's); for the other kernels they are then polished to their modes, so
    that they do not depend on which of the seeds near a mode won (their densities, float
    kernel sums, round differently when the points are summed in another order).
    """
    d = shifted.z.shape[1]
    parts = executor.candidates(shifted.iterated.state, d, merge_cell(params))
    centers = merge_candidates(parts, params, bandwidth)
    if params.blurring or params.kernel == "flat":
        return centers
    return executor.call(
        tasks.polish_centers,
        centers,
        shifted.point_set,
        params.max_iter,
        executor.backend,
        stage="polish",
    )


def size_numbering(
    summed: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new number of each cluster, centres and sizes in the new order) from summed sizes."""
    sizes = np.rint(summed).astype(np.int64)
    renumber = merge.size_order(sizes, centers)
    order = np.argsort(renumber)
    return renumber, centers[order], sizes[order]


def number_clusters(
    executor: Executor, labels: Any, weights: Any, centers: np.ndarray, order: str
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Count (weighted) cluster sizes in one pass; with ``order="size"`` renumber the
    clusters by descending size (``density``: they keep the merge's numbering)."""
    summed = executor.sizes(labels, weights, len(centers))
    if order == "density":
        return labels, centers, np.rint(summed).astype(np.int64)
    renumber, centers, sizes = size_numbering(summed, centers)
    return executor.renumber(labels, renumber), centers, sizes


def label_points(
    executor: Executor,
    queries: Any,
    z: Any,
    weights: Any,
    centers: np.ndarray,
    params: MeanShiftParams,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Labels, with the centres and sizes in their order (``params.numbering()``)."""
    raw = executor.label(queries, z, centers, params)
    return number_clusters(executor, raw, weights, centers, params.numbering())


def warn_if_too_many_clusters(k: int, n: int, bandwidth: float) -> None:
    """Warn when the clusters are nearly as many as the points."""
    if n > 10 and k > n // 2:
        warn_user(
            f"{k} clusters for {n} points: the bandwidth {bandwidth:g} is probably too small",
            TooManyClustersWarning,
        )


def distinct_points(
    data: Prepared,
    seeds: np.ndarray | None,
    params: MeanShiftParams,
    backend: str,
    timings: dict[str, float],
) -> MeanShiftResult:
    """Mean shift with bandwidth 0 (estimated so from heavily duplicated points, as
    scikit-learn allows): each distinct seed equal to some point is a cluster, whose
    density is the (weighted) number of points equal to it (NumPy input).

    Seeds are the points unless given (bin seeding too: bins of size 0 are the points);
    every point joins its nearest centre, and with ``cluster_all=False`` only a point
    equal to a centre does.
    """
    points = np.asarray(data.points)
    weights = None if data.weights is None else np.asarray(data.weights)
    distinct, inverse = np.unique(points, axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=weights, minlength=len(distinct))
    count_of = {tuple(row): count for row, count in zip(distinct, counts, strict=True)}
    candidates = distinct if seeds is None else np.unique(seeds, axis=0)
    density = np.array([count_of.get(tuple(row), 0.0) for row in candidates])
    if not (density > 0).any():
        raise NoPointNearSeedsError(0.0)
    candidates, density = candidates[density > 0], density[density > 0]
    centers = candidates[merge.canonical_order(candidates, density)]
    index, distance2 = nearest(points, centers, np, params.block_bytes)
    labels = index.astype(np.int32)
    if not params.cluster_all:
        labels[distance2 > 0] = -1
    summed = tasks.weighted_bincount(labels, weights, len(centers))[0]
    sizes = np.rint(summed).astype(np.int64)
    if params.numbering() == "size":
        renumber, centers, sizes = size_numbering(summed, centers)
        labels = tasks.renumber_block(labels, renumber)
    return MeanShiftResult(
        labels=labels,
        centers=centers,
        sizes=sizes,
        modes=points if seeds is None else None,
        bandwidth=0.0,
        bandwidth_estimated=True,
        n_iter=0,
        n_seeds=len(points) if seeds is None else len(seeds),
        converged=True,
        stop_reason="bandwidth 0: every distinct point is its own mode",
        timings=timings,
        method="exact",
        backend=backend,
    )

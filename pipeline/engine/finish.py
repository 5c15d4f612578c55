"""After the shift loop: merge the modes into centres, label the points, number the
clusters, and give the result in data units; written once for both executors."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputDataError, warn_user
from ..params import MeanShiftParams
from . import merge, tasks
from .executors import Executor
from .records import Shifted


def merge_cell(params: MeanShiftParams) -> float:
    """Side of the cells the merge reduces modes in (bandwidth units)."""
    return max(params.tol, 1e-9)


def merge_candidates(
    parts: list[merge.Candidates], params: MeanShiftParams, bandwidth: float
) -> np.ndarray:
    """Centres (bandwidth units, canonical order) from the candidates of every part."""
    candidates, _ = merge.combine_candidates(parts, merge_cell(params))
    if len(candidates) == 0:
        raise InputDataError(
            f"no point was within bandwidth={bandwidth:g} of any seed; "
            "try other seeds or a larger bandwidth"
        )
    return candidates[merge.suppress(candidates, 1.0)]


def find_centers(
    executor: Executor, shifted: Shifted, params: MeanShiftParams, bandwidth: float
) -> np.ndarray:
    """Merge the converged modes into centres (bandwidth units); standard mean shift's
    are then polished to their modes on the fixed set they climbed."""
    d = shifted.z.shape[1]
    parts = executor.candidates(shifted.iterated.state, d, merge_cell(params))
    centers = merge_candidates(parts, params, bandwidth)
    if params.blurring:
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


def number_by_size(
    executor: Executor, labels: Any, weights: Any, centers: np.ndarray
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Count (weighted) cluster sizes in one pass; renumber labels by descending size."""
    summed = executor.sizes(labels, weights, len(centers))
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
    """Labels numbered by descending size, with the centres and sizes in that order."""
    raw = executor.label(queries, z, centers, params)
    return number_by_size(executor, raw, weights, centers)


def warn_if_too_many_clusters(k: int, n: int, bandwidth: float) -> None:
    """Warn when the clusters are nearly as many as the points."""
    if n > 10 and k > n // 2:
        warn_user(f"{k} clusters for {n} points: the bandwidth {bandwidth:g} is probably too small")

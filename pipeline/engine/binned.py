"""The binned method: reduce the points to weighted cells, run mean shift on the cells,
label the points by their cell.

Raw points are read twice (binning, labelling; three times with nearest-centre
labels, whose sizes need a counting pass) and never held whole by any process. The
cells go through the same stages as any point set (:func:`.run.run_stages`): in this
process when they are few, on the workers otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from ..backend import runs_here
from ..errors import InputDataError, InvalidRowsError, ParameterError
from ..kernels.array import CellBox, decode_linear
from ..naming import task_name
from ..params import EXACT_MAX_POINTS, GRID_MAX_DIMS, MeanShiftParams
from . import graph, tasks
from .executors import DaskExecutor, ThreadExecutor
from .finish import number_clusters
from .prepare import (
    check_integer_resolution,
    check_seeds,
    check_span,
    check_weights,
    resolve_bandwidth,
)
from .records import Checkpoint, MeanShiftResult, ProgressCallback
from .run import Stopwatch, run_stages


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
    box = CellBox.around(keys)
    if box is not None and box.size <= 4 * len(keys) + 4096:
        linear, total = box.linear(keys), box.size
        summed = np.bincount(linear, weights=counts, minlength=total)
        occupied = np.flatnonzero(summed)  # weights are positive (binned method)
        columns = [
            np.bincount(linear, weights=values[:, k], minlength=total)[occupied]
            for k in range(n_cols)
        ]
        return box.decode(occupied), summed[occupied], np.stack(columns, axis=1)
    if box is not None:
        unique, inverse = np.unique(box.linear(keys), return_inverse=True)
        unique = box.decode(unique)
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


class CellChunk(NamedTuple):
    """Some rows reduced to weighted cells (one chunk, or several combined)."""

    bad: int  # rows holding NaN or Inf (left out)
    low: np.ndarray  # per column minimum of the finite rows
    high: np.ndarray  # per column maximum
    keys: np.ndarray  # int64 (c, d): the occupied cells, floor(x / cell)
    counts: np.ndarray  # (c,): weight of each cell
    sums: np.ndarray  # (c, d): summed fixed-point offsets of the points inside each cell


def bin_chunk(
    block: np.ndarray, weights: np.ndarray | None, cell: float, backend: str = "numpy"
) -> CellChunk:
    """One chunk as weighted cells.

    Works column by column on a transposed copy (contiguous reductions are fast). With
    ``backend="cupy"`` an unweighted chunk is binned on the GPU, to the same bits
    (:func:`pipeline.kernels.gpu.bin_block`).
    """
    if backend == "cupy" and weights is None:
        from ..kernels import gpu

        found = gpu.bin_block(block, cell, FIXED_POINT)
        if found is not None:  # (None: the cases the CPU pass decides)
            keys = decode_linear(found.occupied, found.key_low, found.strides)
            return CellChunk(found.bad, found.low, found.high, keys, found.counts, found.sums)
    columns = np.array(np.asarray(block).T, dtype=np.float64)  # (d, m), contiguous
    d = columns.shape[0]
    finite = np.isfinite(columns).all(axis=0)
    bad = int(columns.shape[1] - finite.sum())
    if bad:
        columns = columns[:, finite]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[finite]
    if columns.shape[1] == 0:
        empty = np.zeros((0, d))
        inf = np.full(d, np.inf)
        return CellChunk(bad, inf, -inf, empty.astype(np.int64), empty[:, 0], empty)
    low = np.array([c.min() for c in columns])
    high = np.array([c.max() for c in columns])
    if not max(np.abs(low).max(), np.abs(high).max()) / cell < 2.0**62:
        raise ParameterError(
            f"bin size {cell:g} is too small for coordinates up to {np.abs([low, high]).max():g}"
        )
    box = CellBox.spanning(
        np.floor(low / cell).astype(np.int64), np.floor(high / cell).astype(np.int64)
    )
    if box is None:  # cells kept by key rows (the cell table refuses so wide a box later)
        keys = np.floor(columns.T / cell).astype(np.int64)
        weighted = columns.T if w is None else columns.T * w[:, None]
        return CellChunk(bad, low, high, *_sum_by_key(keys, w, weighted))
    return CellChunk(bad, low, high, *_count_in_box(columns, w, cell, box))


def _count_in_box(
    columns: np.ndarray, w: np.ndarray | None, cell: float, box: CellBox
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(occupied cells' keys, their weights, their summed fixed-point offsets) of finite
    points given as columns (d, m), all inside ``box``."""
    linear = np.zeros(columns.shape[1], dtype=np.int64)
    for k in range(columns.shape[0]):
        linear += (np.floor(columns[k] / cell).astype(np.int64) - box.low[k]) * box.strides[k]
    total = box.size
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
    return box.decode(occupied), counts, sums


def combine_chunks(*parts: CellChunk) -> CellChunk:
    """Merge per-chunk cells by key (associative, so any tree of merges gives the same cells)."""
    keys, counts, sums = _sum_by_key(
        np.concatenate([p.keys for p in parts]),
        np.concatenate([p.counts for p in parts]),
        np.concatenate([p.sums for p in parts]),
    )
    return CellChunk(
        sum(p.bad for p in parts),
        np.min([p.low for p in parts], axis=0),
        np.max([p.high for p in parts], axis=0),
        keys,
        counts,
        sums,
    )


DENSE_TABLE_MIN_CELLS = 2**20
DENSE_TABLE_CELLS_PER_KEY = 8
"""A cell table indexes its whole bounding box directly when the box has at most
``DENSE_TABLE_MIN_CELLS`` cells, or this many per occupied cell; binary search otherwise."""


@dataclass(frozen=True)
class CellTable:
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
    def build(cls, keys: np.ndarray, cell: float) -> CellTable:
        box = CellBox.around(keys)
        if box is None:
            raise ParameterError(
                "too many cells for the binned method; use method 'grid' or 'exact'"
            )
        linear = box.linear(keys)
        order = np.argsort(linear)
        dense = None
        if box.size <= max(DENSE_TABLE_MIN_CELLS, DENSE_TABLE_CELLS_PER_KEY * len(keys)):
            dense = np.full(box.size, -1, dtype=np.int64)
            dense[linear] = np.arange(len(keys))
        return cls(cell, box.low, box.extent, box.strides, linear[order], order, dense)

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


def cell_values_block(block: np.ndarray, table: CellTable, values: np.ndarray) -> np.ndarray:
    """Per point, the value of its cell (a label, or a mode row)."""
    return values[table.lookup(block)]


def point_labels_block(
    block: np.ndarray,
    table: CellTable | None,
    cell_modes: np.ndarray | None,
    origin: np.ndarray,
    bandwidth: float,
    centers: np.ndarray,
    cluster_all: bool,
    backend: str,
    block_bytes: int,
) -> np.ndarray:
    """Labels of raw points: nearest centre to the point, or to its cell's mode."""
    z = tasks.normalise_block(block, origin, bandwidth)
    queries = z if table is None else (cell_modes[table.lookup(block)] - origin) / bandwidth
    return tasks.label_block(queries, z, centers, cluster_all, backend, block_bytes)


def binned(
    executor: DaskExecutor,
    points: da.Array,
    weights: da.Array | None,
    params: MeanShiftParams,
    seeds: np.ndarray | None,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None = None,
) -> MeanShiftResult:
    """Mean shift of ``points`` by the binned method.

    With a ``checkpoint``, the cell table is saved after the binning pass, and a saved
    one (same job) replaces that pass.
    """
    timings = Stopwatch()
    with timings.stage("bandwidth_s"):
        weights = _positive_weights(points, weights)
        bandwidth, estimated = resolve_bandwidth(points, params)
    with timings.stage("binning_s"):
        cell = params.bin_fraction * bandwidth
        cells, resumed = _cells(points, weights, cell, executor.backend, checkpoint)
        low, high = cells["low"], cells["high"]
        largest = float(max(np.max(np.abs(low)), np.max(np.abs(high))))
        check_integer_resolution(largest, points.dtype, bandwidth)
        check_span(float(np.max(high / 2 - low / 2)), bandwidth)
        table = CellTable.build(cells["keys"], cell)
    seeds = check_seeds(seeds, points.shape[1], params)
    seeds_are_cells = seeds is None and not params.bin_seeding
    inner = _cell_mean_shift(
        executor, cells, params, bandwidth, seeds, seeds_are_cells, progress, points.numblocks[0]
    )
    for stage in ("iterate_s", "merge_s", "label_s"):
        timings[stage] = inner.timings[stage]
    with timings.stage("label_s"):
        table = graph.shared_value(table, "celltable")  # one graph key, fetched once per worker
        labels, centers, sizes = _point_labels(
            executor, points, weights, table, inner, params, seeds_are_cells, low / 2 + high / 2
        )
        modes = _point_modes(points, table, inner) if seeds_are_cells else None
    return dataclasses.replace(  # the cells' run, as a run of the points
        inner,
        labels=labels,
        centers=centers,
        sizes=sizes,
        modes=modes,
        bandwidth_estimated=estimated,
        timings=dict(timings),
        method="binned",
        n_cells=len(cells["centroids"]),
        resumed=resumed,
    )


def _positive_weights(points: da.Array, weights: da.Array | None) -> da.Array | None:
    """The weights as float64 chunked like the points; refused unless all are positive."""
    if weights is None:
        return None
    weights = weights.astype(np.float64).rechunk((points.chunks[0],))
    if check_weights(weights) <= 0:
        raise ParameterError("the binned method needs positive weights; use method 'grid'")
    return weights


def _cells(
    points: da.Array,
    weights: da.Array | None,
    cell: float,
    backend: str,
    checkpoint: Checkpoint | None,
) -> tuple[dict[str, np.ndarray], str | None]:
    """The cell table, from the checkpoint or the binning pass; and what was resumed."""
    cells = None if checkpoint is None else checkpoint.load_cells()
    if cells is not None:
        return cells, f"the binning pass ({len(cells['counts']):,} cells)"
    cells = bin_points(points, weights, cell, backend)
    if checkpoint is not None:
        checkpoint.save_cells(cells)
    return cells, None


def _cell_mean_shift(
    executor: DaskExecutor,
    cells: dict[str, np.ndarray],
    params: MeanShiftParams,
    bandwidth: float,
    seeds: np.ndarray | None,
    seeds_are_cells: bool,
    progress: ProgressCallback | None,
    n_chunks: int,
) -> MeanShiftResult:
    """The stages on the weighted cells: in this process when they are few (and this
    process can run the backend), else on the workers as a shared set."""
    centroids, counts = cells["centroids"], cells["counts"]
    d = centroids.shape[1]
    method = "grid" if d <= GRID_MAX_DIMS else "exact"
    cell_params = params.model_copy(
        update={
            "bandwidth": bandwidth,
            "method": method,
            "label_by": "mode" if seeds_are_cells else "nearest",
            "cluster_all": True,
            "backend": executor.backend,
        }
    )
    if len(centroids) <= CELLS_IN_PROCESS_MAX and runs_here(executor.backend):
        with ThreadExecutor(executor.backend) as threads:
            return run_stages(threads, centroids, counts, cell_params, method, seeds, progress)
    rows = max(1, -(-len(centroids) // max(1, n_chunks)))
    return run_stages(
        executor,
        da.from_array(centroids, chunks=(rows, d), name=task_name("cells", centroids)),
        da.from_array(counts, chunks=(rows,), name=task_name("counts", counts)),
        cell_params,
        method,
        seeds,
        progress,
    )


def _point_labels(
    executor: DaskExecutor,
    points: da.Array,
    weights: da.Array | None,
    table: Any,
    inner: MeanShiftResult,
    params: MeanShiftParams,
    seeds_are_cells: bool,
    origin: np.ndarray,
) -> tuple[da.Array, np.ndarray, np.ndarray]:
    """Labels of the raw points: their cell's label when that is the answer, else the
    centre nearest to the point or to its cell's mode (then numbered by size)."""
    by_cell = params.labels_from_modes("binned") and seeds_are_cells
    if by_cell and params.cluster_all:
        labels = points.map_blocks(
            cell_values_block,
            table,
            graph.shared_value(np.asarray(inner.labels), "celllabels"),
            drop_axis=1,
            meta=np.empty(0, dtype=np.int32),
            name=task_name("label", points, table),
        )
        return labels, inner.centers, inner.sizes
    bandwidth = inner.bandwidth
    centers_z = (inner.centers - origin) / bandwidth
    raw = points.map_blocks(
        point_labels_block,
        table if by_cell else None,
        graph.shared_value(np.asarray(inner.modes), "cellmodes") if by_cell else None,
        origin,
        bandwidth,
        centers_z,
        params.cluster_all,
        executor.backend,
        params.block_bytes,
        drop_axis=1,
        meta=np.empty(0, dtype=np.int32),
        name=task_name("label", points, table, centers_z, params),
    )
    return number_clusters(executor, raw, weights, inner.centers, params.numbering())


def _point_modes(points: da.Array, table: Any, inner: MeanShiftResult) -> da.Array | None:
    """Each point's mode: its cell's (None when the cells' modes are not known)."""
    if inner.modes is None:
        return None
    return points.map_blocks(
        cell_values_block,
        table,
        graph.shared_value(np.asarray(inner.modes), "cellmodes"),
        meta=np.empty((0, 0), dtype=np.float64),
        name=task_name("modes", points, table),
    )


def bin_points(
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
        dask.delayed(bin_chunk)(
            block, w, cell, backend, dask_key_name=task_name("bin", block, w, cell, backend)
        )
        for block, w in zip(blocks, weight_blocks, strict=True)
    ]
    cells = graph.tree_reduce(parts, combine_chunks).compute()
    if cells.bad:
        raise InvalidRowsError(f"{cells.bad} of {points.shape[0]} rows hold NaN or Inf values")
    kept = cells.counts > 0
    keys, counts = cells.keys[kept], cells.counts[kept]
    centroids = (keys + (cells.sums[kept] / counts[:, None] + 0.5) / FIXED_POINT) * cell
    return {
        "keys": keys,
        "counts": counts,
        "centroids": centroids,
        "low": cells.low,
        "high": cells.high,
    }

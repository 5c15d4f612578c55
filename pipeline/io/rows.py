"""Rows holding NaN or Inf: left out of a job on request, labelled -1 in its output.

The points are read once to find and count such rows; the clustering then runs on the
remaining rows (same row chunks, fewer rows in some), and per-point results are spread
back to the input's rows with the left-out rows filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InvalidRowsError
from ..naming import task_name


@dataclass(frozen=True)
class KeptRows:
    """Which rows of the input a job clusters.

    Attributes
    ----------
    points : dask.array.Array
        The rows kept (finite), chunked without empty chunks.
    valid : dask.array.Array of bool
        Per input row: kept or not (the input's row chunks).
    counts : tuple of int
        Rows kept per input row chunk.
    dropped : int
        Rows left out.
    """

    points: da.Array
    valid: da.Array
    counts: tuple[int, ...]
    dropped: int

    def spread(self, values: da.Array, fill: Any) -> da.Array:
        """Per-kept-row ``values`` laid out on the input's rows, ``fill`` where left out."""
        aligned = values.rechunk({0: self.counts})
        return da.map_blocks(
            _spread_block,
            self.valid if values.ndim == 1 else self.valid[:, None],
            aligned,
            fill,
            chunks=(self.valid.chunks[0], *aligned.chunks[1:]),
            dtype=values.dtype,
            name=task_name("spread", values, self.valid),
        )


def _finite_rows(block: np.ndarray) -> np.ndarray:
    return np.isfinite(block).all(axis=1)


def _count(block: np.ndarray) -> np.ndarray:
    return np.array([int(block.sum())])


def _keep(block: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return block[valid.reshape(-1)]


def _spread_block(valid: np.ndarray, values: np.ndarray, fill: Any) -> np.ndarray:
    mask = valid if valid.ndim == 1 else valid[:, 0]
    out = np.full((len(mask), *values.shape[1:]), fill, dtype=values.dtype)
    out[mask] = values
    return out


def keep_finite_rows(points: da.Array) -> KeptRows:
    """Leave out the rows of ``points`` that hold NaN or Inf (one pass to count them).

    Raises
    ------
    InvalidRowsError
        Every row holds NaN or Inf.
    """
    if points.numblocks[1] != 1:
        points = points.rechunk({1: -1})
    valid = points.map_blocks(
        _finite_rows, drop_axis=1, dtype=bool, name=task_name("finite", points)
    )
    counts = tuple(
        int(c)
        for c in valid.map_blocks(
            _count,
            chunks=((1,) * valid.numblocks[0],),
            dtype=np.int64,
            name=task_name("count", valid),
        ).compute()
    )
    n = points.shape[0]
    dropped = n - sum(counts)
    if dropped == n:
        raise InvalidRowsError(f"all {n} rows hold NaN or Inf values")
    kept = da.map_blocks(
        _keep,
        points,
        valid[:, None],
        chunks=(counts, points.chunks[1]),
        dtype=points.dtype,
        name=task_name("keep", points, valid),
    )
    if 0 in counts:
        kept = kept.rechunk({0: tuple(c for c in counts if c)})
    return KeptRows(kept, valid, counts, dropped)

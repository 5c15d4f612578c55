"""Before any shifting: check the input, choose the bandwidth, place the seeds.

These work on NumPy and dask arrays alike (reading a dask array computes only small
values: a few statistics, a sample for the bandwidth, the bin seeds).
"""

from __future__ import annotations

import math
from typing import Any

import dask
import numpy as np

from ..errors import InputDataError, InvalidRowsError, ParameterError, warn_user
from ..params import MeanShiftParams
from .bandwidth import estimate_bandwidth
from .seeding import bin_seeds

MAX_SPAN_IN_BANDWIDTHS = 1e12
"""Largest data extent, in bandwidths, that float64 coordinates resolve well."""


def check_shape(points: Any, weights: Any) -> None:
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


def check_weights(weights: Any) -> float:
    """Refuse negative or non-finite weights (NumPy or dask); return the smallest weight."""
    low, finite = dask.compute(weights.min(), np.isfinite(weights).all())
    if not finite or low < 0:
        raise InputDataError("weights must be finite and non-negative")
    return float(low)


def bounds(summaries: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Midpoint and half the largest extent of the bounding box (finite for any finite
    coordinates), from ``tasks.summary_block`` rows."""
    d = (summaries.shape[1] - 1) // 2
    bad_rows = int(summaries[:, 0].sum())
    if bad_rows:
        raise InvalidRowsError(f"{bad_rows} of {n} rows hold NaN or Inf values")
    low, high = summaries[:, 1 : d + 1].min(axis=0), summaries[:, d + 1 :].max(axis=0)
    return low / 2 + high / 2, float(np.max(high / 2 - low / 2))


def resolve_bandwidth(
    points: Any, params: MeanShiftParams, allow_zero: bool = False
) -> tuple[float, bool]:
    """The bandwidth to use and whether it was estimated (from a sample of ``points``).

    An estimate of 0 (most sampled points have a duplicate) is kept with ``allow_zero``
    (every distinct point is then a cluster, as in scikit-learn), refused otherwise.
    """
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
    if value > 0 or allow_zero:
        return value, True
    lo, hi = dask.compute(points.min(axis=0), points.max(axis=0))
    if np.any(np.asarray(hi) > np.asarray(lo)):
        sampled = min(points.shape[0], params.bandwidth_n_samples)
        if int(sampled * params.bandwidth_quantile) <= 1:  # each point's neighbour: itself
            raise InputDataError(
                f"the estimated bandwidth is 0: {params.bandwidth_quantile:.0%} of "
                f"{sampled} sampled points counts no neighbour but each point itself; give "
                "a bandwidth or a larger {bandwidth_quantile}",
                bandwidth_quantile=None,
            )
        raise InputDataError(
            f"the estimated bandwidth is 0: over {params.bandwidth_quantile:.0%} of the "
            "sampled points are duplicates; give a bandwidth"
        )
    warn_user("all points are identical; using bandwidth 1.0")
    return 1.0, True


def check_integer_resolution(largest: float, dtype: Any, bandwidth: float) -> None:
    """Refuse integer coordinates (of magnitude up to ``largest``) that float64 rounds (beyond
    2^53) by more than ``INTEGER_RESOLUTION`` bandwidths."""
    if not np.issubdtype(dtype, np.integer):  # float input: its values are what they are
        return
    spacing = float(np.spacing(np.float64(largest)))
    if spacing > max(1.0, INTEGER_RESOLUTION * bandwidth):
        raise InputDataError(
            f"integer coordinates up to {largest:.4g} are resolved to {spacing:g} in float64, "
            f"too coarse for bandwidth {bandwidth:g}: subtract an offset (such as each "
            "column's minimum) first"
        )


INTEGER_RESOLUTION = 1e-3
"""Integer coordinates are refused where float64 resolves them worse than this many
bandwidths (int64/uint64 beyond 2^53)."""


def check_span(half_span: float, bandwidth: float) -> None:
    """Refuse a bandwidth too small for float64 coordinates over the data's extent (given
    as half of it, which never overflows)."""
    ratio = half_span / bandwidth * 2
    if not math.isfinite(ratio) or ratio > MAX_SPAN_IN_BANDWIDTHS:
        span = half_span * 2
        shown = f"{span:g}" if math.isfinite(span) else f"2 x {half_span:g}"
        raise ParameterError(
            f"bandwidth {bandwidth:g} is too small for data spanning {shown} "
            f"(more than {MAX_SPAN_IN_BANDWIDTHS:.0e} bandwidths)"
        )


def check_seeds(seeds: Any, d: int, params: MeanShiftParams) -> np.ndarray | None:
    """The user's seeds as float64 rows, or None; refused where they cannot apply."""
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


def seeds_in_data_units(
    points: Any, weights: Any, seeds: np.ndarray | None, params: MeanShiftParams, bandwidth: float
) -> np.ndarray | None:
    """The given seeds, bin seeds (``bin_seeding``), or None: the points are the seeds."""
    if seeds is None and params.bin_seeding:
        seeds = bin_seeds(points, bandwidth, params.min_bin_freq, weights)
        if seeds is None:
            warn_user(  # scikit-learn's words
                f"Binning data failed with provided bin_size={bandwidth:f}, "
                "using data points as seeds."
            )
            return None
        if len(seeds) == 0:
            raise InputDataError(
                f"no bin holds min_bin_freq={params.min_bin_freq} points; lower it or the bandwidth"
            )
    return seeds


def seed_chunks(n_seeds: int, n_chunks: int) -> tuple[int, ...]:
    """Split seeds into about as many chunks as the points have (at least one)."""
    parts = max(1, min(n_seeds, n_chunks))
    base, extra = divmod(n_seeds, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


def rows_per_chunk(n: int) -> int:
    """Rows per chunk when in-memory input goes through Dask: about 4 chunks, >= 1024 rows."""
    return max(1, min(n, max(1024, -(-n // 4))))

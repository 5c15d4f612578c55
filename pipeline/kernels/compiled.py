"""Fused CPU kernels (numba): one pass per query over the points, no pairwise matrices.

Only the shift step is compiled. Coordinates arrive in bandwidth units, already
centred near the queries by the caller, and are processed in float32 with float64
sums over blocks of ``BLOCK`` points. For the Gaussian kernel they are scaled by
``GAUSSIAN_SCALE`` so that the weight is ``2^-d2``, computed with a vectorisable
``2^t``: round-to-nearest split, a degree-4 polynomial on [-1/2, 1/2] and the float
exponent bits. Its relative error is below 1e-5 (``EXP_RELATIVE_ERROR``; tested),
and a weight below ``WEIGHT_FLOOR`` (beyond 9.4 bandwidths) is held there: products
of far weights stay normal floats (subnormals are many times slower). Queries
that only see points beyond that distance are recomputed exactly by the caller
(see ``PackedPoints.floor_density``).

On CPUs with AVX-512, LLVM is asked for 512-bit vectors (see ``prefer_wide_vectors``).

Each query row is computed independently, in a fixed order over the points, so a
query's result does not depend on which other queries share its block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dispatch import GAUSSIAN_SCALE

WIDE_VECTORS_ENV = "MEANSHIFT_WIDE_VECTORS"
"""Set to ``0`` to keep numba's default vector width."""


def prefer_wide_vectors() -> bool:
    """Let numba's LLVM use 512-bit vectors on AVX-512 CPUs (it prefers 256 by default).

    Only acts when numba has compiled nothing yet in this process, the CPU has
    AVX-512, and neither ``NUMBA_CPU_FEATURES`` nor ``MEANSHIFT_WIDE_VECTORS=0`` is
    set. The host's own feature list is kept; only the width preference changes.
    Roughly doubles the Gaussian kernel's throughput where it applies.

    Returns
    -------
    bool
        Whether the preference was set.
    """
    if os.environ.get(WIDE_VECTORS_ENV, "1") == "0" or os.environ.get("NUMBA_CPU_FEATURES"):
        return False
    from numba.core import codegen, config, registry

    if config.CPU_FEATURES is not None or "_toplevel_target_context" in vars(registry.cpu_target):
        return False
    features = codegen.get_host_cpu_features()
    if "+avx512f" not in features.split(","):
        return False
    config.CPU_FEATURES = features + ",-prefer-256-bit"
    return True


try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a declared dependency
    AVAILABLE = False

if AVAILABLE:
    WIDE_VECTORS = prefer_wide_vectors()

BLOCK = 1024
"""Points summed in float32 before the running float64 totals take them."""

FLOOR_EXPONENT = 64.0
WEIGHT_FLOOR = 2.0**-FLOOR_EXPONENT
"""Smallest compiled Gaussian weight, exp(-d²/2) at d = 9.42 bandwidths."""

PAD = 64
"""The points are padded with zero weights to a multiple of this, so that the compiled
loops run whole vector iterations only (no scalar remainder)."""

EXP_RELATIVE_ERROR = 1e-5
"""Bound on the relative error of the compiled Gaussian weight for d² < 88 (2.7e-6 from
the polynomial, the rest from rounding the scaled d² to float32)."""

FLAT_FASTMATH = {"reassoc", "nsz", "nnan", "ninf", "arcp"}
"""Vectorisable sums, but no contraction into fused multiply-adds (``contract``)."""

KERNEL_CODES = {"gaussian": 0, "flat": 1, "epanechnikov": 2}

if AVAILABLE:

    @intrinsic
    def _bits_to_float32(typingctx: Any, bits: Any) -> Any:
        signature = types.float32(types.int32)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.FloatType())

        return signature, codegen

    @njit(inline="always", fastmath=True)
    def _exp2(t: float) -> float:  # pragma: no cover - compiled
        t = t if t > np.float32(-FLOOR_EXPONENT) else np.float32(-FLOOR_EXPONENT)
        n = np.rint(t)
        f = t - n  # in [-1/2, 1/2]
        p = np.float32(9.57007e-3)
        p = p * f + np.float32(5.591777e-2)
        p = p * f + np.float32(2.4024744e-1)
        p = p * f + np.float32(6.9312185e-1)
        p = p * f + np.float32(9.999993e-1)
        return _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23)) * p

    @njit(inline="always", fastmath=True)
    def _weight(d2: float, kernel: int) -> float:  # pragma: no cover - compiled
        if kernel == 0:
            return _exp2(-d2)  # coordinates pre-scaled: d2 = |x - q|^2 log2(e) / 2
        if kernel == 1:
            return np.float32(1.0) if d2 <= np.float32(1.0) else np.float32(0.0)
        v = np.float32(1.0) - d2
        return v if v > np.float32(0.0) else np.float32(0.0)

    @njit(nogil=True, fastmath=True, cache=True)
    def _shift_2d(q, pt, w, kernel, out, dens):  # pragma: no cover - compiled
        n = pt.shape[1]
        for i in range(q.shape[0]):
            q0 = np.float32(q[i, 0])
            q1 = np.float32(q[i, 1])
            a0 = 0.0
            a1 = 0.0
            den = 0.0
            for b in range(0, n, BLOCK):
                e = min(n, b + BLOCK)
                p0 = pt[0, b:e]
                p1 = pt[1, b:e]
                wb = w[b:e]
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                sw = np.float32(0.0)
                for j in range(e - b):
                    t0 = p0[j] - q0
                    t1 = p1[j] - q1
                    x = _weight(t0 * t0 + t1 * t1, kernel) * wb[j]
                    s0 += x * t0
                    s1 += x * t1
                    sw += x
                a0 += s0
                a1 += s1
                den += sw
            dens[i] = den
            if den > 0.0:
                out[i, 0] = a0 / den
                out[i, 1] = a1 / den
            else:
                out[i, 0] = 0.0
                out[i, 1] = 0.0

    @njit(nogil=True, fastmath=True, cache=True)
    def _shift_3d(q, pt, w, kernel, out, dens):  # pragma: no cover - compiled
        n = pt.shape[1]
        for i in range(q.shape[0]):
            q0 = np.float32(q[i, 0])
            q1 = np.float32(q[i, 1])
            q2 = np.float32(q[i, 2])
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            den = 0.0
            for b in range(0, n, BLOCK):
                e = min(n, b + BLOCK)
                p0 = pt[0, b:e]
                p1 = pt[1, b:e]
                p2 = pt[2, b:e]
                wb = w[b:e]
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                sw = np.float32(0.0)
                for j in range(e - b):
                    t0 = p0[j] - q0
                    t1 = p1[j] - q1
                    t2 = p2[j] - q2
                    x = _weight(t0 * t0 + t1 * t1 + t2 * t2, kernel) * wb[j]
                    s0 += x * t0
                    s1 += x * t1
                    s2 += x * t2
                    sw += x
                a0 += s0
                a1 += s1
                a2 += s2
                den += sw
            dens[i] = den
            if den > 0.0:
                out[i, 0] = a0 / den
                out[i, 1] = a1 / den
                out[i, 2] = a2 / den
            else:
                out[i, 0] = 0.0
                out[i, 1] = 0.0
                out[i, 2] = 0.0

    @njit(nogil=True, fastmath=True, cache=True)
    def _shift_nd(q, pt, w, kernel, out, dens):  # pragma: no cover - compiled
        d, n = pt.shape
        buf = np.empty(BLOCK, np.float32)
        acc = np.empty(d, np.float64)
        for i in range(q.shape[0]):
            acc[:] = 0.0
            den = 0.0
            for b in range(0, n, BLOCK):
                m = min(BLOCK, n - b)
                for j in range(m):
                    buf[j] = np.float32(0.0)
                for k in range(d):
                    qk = np.float32(q[i, k])
                    pk = pt[k, b : b + m]
                    for j in range(m):
                        t = pk[j] - qk
                        buf[j] += t * t
                wb = w[b : b + m]
                sw = np.float32(0.0)
                for j in range(m):
                    x = _weight(buf[j], kernel) * wb[j]
                    buf[j] = x
                    sw += x
                den += sw
                for k in range(d):
                    qk = np.float32(q[i, k])
                    pk = pt[k, b : b + m]
                    s = np.float32(0.0)
                    for j in range(m):
                        s += buf[j] * (pk[j] - qk)
                    acc[k] += s
            dens[i] = den
            for k in range(d):
                out[i, k] = acc[k] / den if den > 0.0 else 0.0

    @njit(nogil=True, fastmath=FLAT_FASTMATH, cache=True)
    def _shift_flat(q, pt, w, out, dens):  # pragma: no cover - compiled
        # float64 throughout; d² is summed without fused multiply-adds, in dimension
        # order, so "within the bandwidth" is decided as the float64 array path decides it
        d, n = pt.shape
        buf = np.empty(BLOCK, np.float64)
        acc = np.empty(d, np.float64)
        for i in range(q.shape[0]):
            acc[:] = 0.0
            den = 0.0
            for b in range(0, n, BLOCK):
                m = min(BLOCK, n - b)
                for j in range(m):
                    buf[j] = 0.0
                for k in range(d):
                    qk = q[i, k]
                    pk = pt[k, b : b + m]
                    for j in range(m):
                        t = pk[j] - qk
                        buf[j] += t * t
                wb = w[b : b + m]
                sw = 0.0
                for j in range(m):
                    x = wb[j] if buf[j] <= 1.0 else 0.0
                    buf[j] = x
                    sw += x
                den += sw
                for k in range(d):
                    qk = q[i, k]
                    pk = pt[k, b : b + m]
                    s = 0.0
                    for j in range(m):
                        s += buf[j] * (pk[j] - qk)
                    acc[k] += s
            dens[i] = den
            for k in range(d):
                out[i, k] = acc[k] / den if den > 0.0 else 0.0

    @njit(inline="always", fastmath=True)
    def _span_block(q, i, pt, w, b, m, kernel, zero, diff, buf, acc):  # pragma: no cover
        """Add the weighted offsets of points ``b:b+m`` from query ``i`` to ``acc``;
        return their weight sum."""
        d = pt.shape[0]
        for j in range(m):
            buf[j] = zero
        for k in range(d):
            qk = q[i, k]
            pk = pt[k, b : b + m]
            dk = diff[k]
            for j in range(m):
                dk[j] = pk[j] - qk
                buf[j] += dk[j] * dk[j]
        wb = w[b : b + m]
        sw = zero
        for j in range(m):
            x = _weight(buf[j], kernel) * wb[j]
            buf[j] = x
            sw += x
        for k in range(d):
            dk = diff[k]
            sk = zero
            for j in range(m):
                sk += buf[j] * dk[j]
            acc[k] += sk
        return sw

    @njit(nogil=True, fastmath=True, cache=True)
    def _shift_spans(q, pt, w, lo, hi, cell, kernel, zero, out, dens):  # pragma: no cover
        # Each query meets the points in its own spans [lo, hi) of the sorted points.
        # Differences are taken in float64 (any distance from the origin) and kept, with
        # squared distances, weights and per-block sums, in the precision of ``zero``
        # (float32, or float64 for the flat kernel); running totals in float64. The
        # scratch arrays are allocated here, so that the compiler sees they do not alias.
        d = pt.shape[0]
        acc = np.empty(d, np.float64)
        diff = np.full((d, BLOCK), zero)
        buf = np.full(BLOCK, zero)
        for i in range(q.shape[0]):
            acc[:] = 0.0
            den = 0.0
            c = cell[i]
            for s in range(lo.shape[1]):
                for b in range(lo[c, s], hi[c, s], BLOCK):
                    m = min(BLOCK, hi[c, s] - b)
                    den += _span_block(q, i, pt, w, b, m, kernel, zero, diff, buf, acc)
            dens[i] = den
            for k in range(d):
                out[i, k] = acc[k] / den if den > 0.0 else 0.0

    @njit(nogil=True, cache=True)
    def exp_weights(d2):  # pragma: no cover - compiled
        """The compiled Gaussian weight exp(-d2/2), elementwise (for tests)."""
        out = np.empty(d2.shape[0], np.float32)
        for i in range(d2.shape[0]):
            out[i] = _weight(np.float32(d2[i]) * np.float32(GAUSSIAN_SCALE**2), 0)
        return out


@dataclass(frozen=True)
class PackedPoints:
    """A point set laid out for the compiled kernels: built once, used by many shift calls.

    Attributes
    ----------
    columns : ndarray of float32 (float64 for the flat kernel), shape (d, padded)
        Coordinates (scaled by ``scale``), one contiguous row per dimension, padded
        with zero-weight points to a multiple of ``PAD``.
    weights : ndarray of float32, shape (padded,)
    kernel : str
    scale : float
    floor_density : float
        Density of a query whose every weight sits at ``WEIGHT_FLOOR`` (Gaussian), or 0.
        A density at most twice this means the query saw no point within 9.4
        bandwidths and its compiled result is not to be trusted.
    """

    columns: np.ndarray
    weights: np.ndarray
    kernel: str
    scale: float
    floor_density: float


def pack_points(points: np.ndarray, weights: np.ndarray | None, kernel: str) -> PackedPoints:
    """Lay out ``points`` (n, d, bandwidth units) and their weights for :func:`shift_offsets`."""
    n, d = points.shape
    padded = -(-n // PAD) * PAD
    scale = GAUSSIAN_SCALE if kernel == "gaussian" else 1.0
    dtype = np.float64 if kernel == "flat" else np.float32
    columns = np.zeros((d, padded), dtype=dtype)  # padding: weight 0 at the origin
    columns[:, :n] = points.T * scale
    w = np.zeros(padded, dtype=dtype)
    w[:n] = 1.0 if weights is None else weights
    floor = WEIGHT_FLOOR * float(w.sum(dtype=np.float64)) if kernel == "gaussian" else 0.0
    return PackedPoints(columns, w, kernel, scale, floor)


def shift_spans(
    queries: np.ndarray,
    columns: np.ndarray,
    weights: np.ndarray,
    cumulative: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    cell: np.ndarray,
    kernel: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean shift offsets of queries against given spans of sorted points (grid method).

    Parameters
    ----------
    queries : ndarray, shape (m, d)
        Bandwidth units, scaled by ``GAUSSIAN_SCALE`` for the Gaussian kernel.
    columns : ndarray of float64, shape (d, n)
        The points sorted by cell, one row per dimension, scaled like the queries.
    weights : ndarray, shape (n,)
        float32 (float64 for the flat kernel): :func:`span_weights`.
    cumulative : ndarray of float64, shape (n + 1,)
        Running sum of the weights from 0 (:func:`span_weights`).
    lo, hi : ndarray of int64, shape (c, s)
        The spans of ``columns`` that each of ``c`` query cells meets (``lo == hi``: empty).
    cell : ndarray of int64, shape (m,)
        Row of ``lo``/``hi`` for each query.
    kernel : {"gaussian", "flat", "epanechnikov"}

    Returns
    -------
    offsets : ndarray, shape (m, d)
        In the scaled units of the inputs.
    density : ndarray, shape (m,)
    floored : ndarray of bool, shape (m,)
        Gaussian queries whose density is at most twice that of every weight at
        ``WEIGHT_FLOOR`` (nothing within 9.4 bandwidths): not to be trusted, to be
        recomputed exactly (the dense kernel's rule).
    """
    m, d = queries.shape
    out = np.empty((m, d), dtype=np.float64)
    density = np.empty(m, dtype=np.float64)
    zero = weights.dtype.type(0)
    _shift_spans(
        np.ascontiguousarray(queries, dtype=np.float64),
        columns,
        weights,
        lo,
        hi,
        cell,
        KERNEL_CODES[kernel],
        zero,
        out,
        density,
    )
    if kernel != "gaussian":
        return out, density, np.zeros(m, dtype=np.bool_)
    met = (cumulative[hi] - cumulative[lo]).sum(axis=1)[cell]
    floored = (density > 0) & (density <= 2.0 * WEIGHT_FLOOR * met)
    return out, density, floored


def span_weights(weights: np.ndarray | None, n: int, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """The weights of ``n`` sorted points laid out for :func:`shift_spans`: in the kernel's
    precision (float32, float64 for the flat kernel), and their running sum (float64)."""
    dtype = np.float64 if kernel == "flat" else np.float32
    laid = np.ones(n, dtype=dtype) if weights is None else weights.astype(dtype)
    cumulative = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(laid, dtype=np.float64, out=cumulative[1:])
    return laid, cumulative


def shift_offsets(queries: np.ndarray, points: PackedPoints) -> tuple[np.ndarray, np.ndarray]:
    """Kernel-weighted mean offset of each query to the points, and its density.

    Parameters
    ----------
    queries : ndarray, shape (m, d)
        In bandwidth units, near the points' origin (float32 resolves about 1e-7
        of the coordinates' magnitude).
    points : PackedPoints
        From :func:`pack_points`.

    Returns
    -------
    offsets : ndarray, shape (m, d)
        ``sum_j w_j K_ij (x_j - q_i) / sum_j w_j K_ij`` (0 where the sum is 0).
    density : ndarray, shape (m,)
    """
    m, d = queries.shape
    scale = points.scale
    q = np.ascontiguousarray(queries * scale if scale != 1.0 else queries, dtype=np.float64)
    out = np.empty((m, d), dtype=np.float64)
    density = np.empty(m, dtype=np.float64)
    if points.kernel == "flat":
        _shift_flat(q, points.columns, points.weights, out, density)
    else:
        function = _shift_2d if d == 2 else _shift_3d if d == 3 else _shift_nd
        function(q, points.columns, points.weights, KERNEL_CODES[points.kernel], out, density)
    if scale != 1.0:
        out /= scale
    return out, density

"""CuPy shift kernels: one mean shift step on a CUDA device, no query × point matrix held.

Two routes, chosen by the number of dimensions ``d``:

* **fused** (``d <= FUSED_MAX_DIMS``): a CUDA kernel generated per ``d``, kernel and
  weighting (``cupy.RawKernel``; compiled once per process and kept in CuPy's kernel
  cache on disk). One thread per query; the points stream through shared memory in
  tiles of ``THREADS`` points. Gaussian and Epanechnikov weights are computed in
  float32 (coordinates in bandwidth units, the Gaussian pre-scaled so that its
  weight is ``2^-d'²``, one ``ex2.approx`` instruction), the sums of one tile in
  float32 and the running totals in float64. The flat kernel runs in float64 with
  squared distances summed without fused multiply-adds, so "within the bandwidth"
  is decided exactly as on the float64 array path. The points are cut into fixed
  splits (their boundaries depend on the number of points only) that separate
  thread blocks sum, and a second kernel adds the splits in a fixed order: a
  query's result does not depend on which other queries share its launch.
* **GEMM** (``d > FUSED_MAX_DIMS``, Gaussian and Epanechnikov): per block of queries
  and tile of points, ``|q-c|² + |x-c|² - 2 (q-c)·(x-c)`` with ``c`` the mean of the
  block's queries (one float32 ``cupy.matmul``), the weights by an elementwise kernel in
  place, then one more product ``W @ [x-c, 1]`` for numerator and denominator, summed over
  tiles in float64. Only a ``rows × GEMM_TILE`` float32 block exists at a time. The
  product's rounding grows with the queries' distance from ``c``: a block spread beyond
  ``GEMM_RADIUS`` is cut into compact parts, each centred on its own mean, and queries too
  scattered for a part take the float64 array path.

Queries whose float32 Gaussian weights all (nearly) underflow, that is whose density
is at most ``UNDERFLOW_FRACTION`` of the total point weight (nothing within about 11.5
bandwidths), are recomputed in float64 on the array path, like the CPU kernels' floored
queries. Coordinates farther than ``COMPILED_MAX_COORDINATE`` bandwidths from the origin
take the float64 array path altogether (float32 would lose more than 1e-5 bandwidths).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .array import blocked_shift, compact_parts, row_major_strides
from .dispatch import GAUSSIAN_SCALE, KERNELS, float32_resolves

THREADS = 256
"""Threads (queries) per block, and points per shared-memory tile."""

FUSED_MAX_DIMS = 16
"""Largest ``d`` taken by the fused kernel; above it the GEMM route (or the array path)."""

SPLIT_POINTS = 4096
"""Fewest points per split of the point set (a multiple of ``THREADS``)."""

MAX_SPLITS = 256
"""Most splits of the point set (more points make longer splits)."""

GEMM_TILE = 4096
"""Points per tile of the GEMM route (the float32 sums inside a product run over this many)."""

GEMM_RADIUS = 16.0
"""Largest distance (bandwidths) of a query from the centre ``c`` of its GEMM product: a
block of queries farther apart is cut into parts, each centred on its own mean. The float32
product's squared distances round to within about ``(d + 6) 2^-24 (|q-c| + |x-c|)²``, so
their error grows with the queries' spread, not with their distance from the origin; the
tolerances of the GPU tests hold within this radius."""

UNDERFLOW_FRACTION = 2.0**-96
"""A Gaussian query whose density is at most this fraction of the total point weight is
recomputed in float64 (float32 weights flush to zero below 2^-126, so what was lost is at
most 2^-30 of what was kept)."""

GPU_KERNELS = KERNELS

COMPILE_OPTIONS: tuple[str, ...] = ()
"""NVRTC options (the architecture is CuPy's choice: the device's own)."""


# --------------------------------------------------------------------------- CUDA source


def _weight_expression(kernel: str, weighted: bool) -> str:
    """C expression of one point's weight from ``d2`` (and ``pw``, its multiplicity)."""
    if kernel == "gaussian":
        core = "ms_exp2(-d2)"
    elif kernel == "epanechnikov":
        core = "fmaxf(1.0f - d2, 0.0f)"
    elif kernel == "flat":
        return "(d2 <= 1.0 ? pw : 0.0)" if weighted else "(d2 <= 1.0 ? 1.0 : 0.0)"
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return f"{core} * pw" if weighted else core


PRELUDE = r"""
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float ms_exp2(float x) {
    float y;  // one MUFU instruction; results below 2^-126 flush to zero
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#define MS_DADD(a, b) __dadd_rn((a), (b))
#define MS_DMUL(a, b) __dmul_rn((a), (b))
#else  /* host emulation (tests of the source on a CPU) */
static inline float ms_exp2(float x) { float y = exp2f(x); return y < 1.17549435e-38f ? 0.0f : y; }
#define MS_DADD(a, b) ((a) + (b))
#define MS_DMUL(a, b) ((a) * (b))
#endif
"""


def _squared_distance(d: int, kernel: str, indent: str) -> str:
    """CUDA line: ``d2`` from the differences ``t0..t{d-1}`` (flat: float64, in dimension
    order, no fused multiply-adds, so "within the bandwidth" is decided exactly)."""
    if kernel == "flat":
        expr = "0.0"
        for k in range(d):
            expr = f"MS_DADD({expr}, MS_DMUL(t{k}, t{k}))"
        return f"{indent}const double d2 = {expr};\n"
    expr = " + ".join(f"t{k} * t{k}" for k in range(d))
    return f"{indent}const float d2 = {expr};\n"


def _accumulate(d: int, kernel: str, weighted: bool, real: str, indent: str) -> str:
    """CUDA lines: the pair's weight ``x`` added into ``s0..s{d-1}`` (times ``t``) and ``ss``."""
    lines = [f"{indent}const {real} x = {_weight_expression(kernel, weighted)};\n"]
    lines += [f"{indent}s{k} += x * t{k};\n" for k in range(d)]
    lines.append(f"{indent}ss += x;\n")
    return "".join(lines)


def _scalar(kernel: str) -> tuple[str, str]:
    """The kernel's scalar type and its zero literal (float64 for ``flat``, else float32)."""
    real = "double" if kernel == "flat" else "float"
    return real, "0.0" if real == "double" else "0.0f"


def _totals(d: int) -> str:
    """CUDA lines: the float64 running totals ``a0..a{d-1}`` and ``aw``, zero."""
    return "".join(f"    double a{k} = 0.0;\n" for k in range(d)) + "    double aw = 0.0;\n"


def _tile_sums(d: int, real: str, zero: str, indent: str) -> str:
    """CUDA lines: one tile's sums ``s0..s{d-1}`` and ``ss`` in the scalar type, zero."""
    lines = [f"{indent}{real} s{k} = {zero};\n" for k in range(d)]
    lines.append(f"{indent}{real} ss = {zero};\n")
    return "".join(lines)


def _add_tile_sums(d: int, indent: str) -> str:
    """CUDA lines: one tile's sums added into the float64 running totals."""
    lines = [f"{indent}a{k} += (double)s{k};\n" for k in range(d)]
    lines.append(f"{indent}aw += (double)ss;\n")
    return "".join(lines)


def fused_name(n_dims: int, kernel: str, weighted: bool, threads: int = THREADS) -> str:
    """Name of the generated fused kernel for this ``d``, kernel and weighting."""
    return f"ms_fused_{kernel}_d{n_dims}_{'w' if weighted else 'u'}_t{threads}"


def finish_name(n_dims: int) -> str:
    """Name of the generated kernel that adds the splits and divides."""
    return f"ms_finish_d{n_dims}"


def _fused_signature(d: int, kernel: str, weighted: bool, threads: int) -> str:
    """CUDA lines: the fused kernel's signature, its shared tiles and the query index ``i``."""
    name = fused_name(d, kernel, weighted, threads)
    real, _ = _scalar(kernel)
    weight_arg = f"    const {real}* __restrict__ pw_all,\n" if weighted else ""
    return (
        f'extern "C" __global__ void __launch_bounds__({threads}) {name}(\n'
        f"    const {real}* __restrict__ q,\n"
        f"    const {real}* __restrict__ p,\n"
        f"{weight_arg}"
        "    const long long m,\n"
        "    const long long n,\n"
        "    const long long chunk,\n"
        "    double* __restrict__ part)\n"
        "{\n"
        f"    __shared__ {real} sp[{threads * d}];\n"
        + (f"    __shared__ {real} sw[{threads}];\n" if weighted else "")
        + f"    const long long i = (long long)blockIdx.x * {threads} + threadIdx.x;\n"
        "    const bool active = i < m;\n"
    )


def _fused_prologue(d: int, weighted: bool, threads: int, real: str, zero: str) -> str:
    """CUDA lines: the thread's query and totals, and the split's loop loading each tile."""
    lines = [f"    const {real} q{k} = active ? q[i * {d} + {k}] : {zero};\n" for k in range(d)]
    lines.append(_totals(d))
    lines.append(
        "    const long long begin = (long long)blockIdx.y * chunk;\n"
        "    const long long end = begin + chunk < n ? begin + chunk : n;\n"
        f"    for (long long base = begin; base < end; base += {threads}) {{\n"
        f"        const long long count = end - base < {threads} ? end - base : {threads};\n"
        f"        for (int e = threadIdx.x; e < count * {d}; e += {threads}) {{\n"
        f"            sp[e] = p[base * {d} + e];\n"
        "        }\n"
    )
    if weighted:
        lines.append(
            "        if (threadIdx.x < count) sw[threadIdx.x] = pw_all[base + threadIdx.x];\n"
        )
    lines.append("        __syncthreads();\n")
    return "".join(lines)


def _fused_tile(d: int, kernel: str, weighted: bool, real: str, zero: str) -> str:
    """CUDA lines: the thread's query against the tile in shared memory, closing the loop."""
    lines = [
        _tile_sums(d, real, zero, " " * 8),
        "        const int c = (int)count;\n"
        "#pragma unroll 4\n"
        "        for (int j = 0; j < c; ++j) {\n"
        f"            const {real}* r = sp + j * {d};\n",
    ]
    lines += [f"            const {real} t{k} = r[{k}] - q{k};\n" for k in range(d)]
    lines.append(_squared_distance(d, kernel, " " * 12))
    if weighted:
        lines.append(f"            const {real} pw = sw[j];\n")
    lines.append(_accumulate(d, kernel, weighted, real, " " * 12))
    lines.append("        }\n")
    lines.append(_add_tile_sums(d, " " * 8))
    lines.append("        __syncthreads();\n    }\n")
    return "".join(lines)


def _fused_epilogue(d: int) -> str:
    """CUDA lines: an active thread's totals written to its split's row of ``part``."""
    lines = [
        "    if (active) {\n",
        f"        double* o = part + ((long long)blockIdx.y * m + i) * {d + 1};\n",
    ]
    lines += [f"        o[{k}] = a{k};\n" for k in range(d)]
    lines.append(f"        o[{d}] = aw;\n    }}\n}}\n")
    return "".join(lines)


def fused_source(n_dims: int, kernel: str, weighted: bool, threads: int = THREADS) -> str:
    """CUDA source of the fused kernel for one ``d``, kernel and weighting.

    Arguments: ``q`` (m, d) and ``p`` (n, d) in the kernel's scalar type (float32;
    float64 for ``flat``), row-major, in (scaled) bandwidth units; ``pw`` (n,) point
    weights (weighted variant only); ``m``, ``n``; ``chunk``, points per split; ``part``
    (splits, m, d + 1) float64 output: per split, ``sum w (x - q)`` and ``sum w``.
    Launch with ``grid = (ceil(m / threads), splits)`` and ``block = threads``.
    """
    real, zero = _scalar(kernel)
    return "".join(
        [
            PRELUDE,
            _fused_signature(n_dims, kernel, weighted, threads),
            _fused_prologue(n_dims, weighted, threads, real, zero),
            _fused_tile(n_dims, kernel, weighted, real, zero),
            _fused_epilogue(n_dims),
        ]
    )


def finish_source(n_dims: int) -> str:
    """CUDA source of the kernel that adds the splits in order and moves the queries.

    Arguments: ``q`` (m, d) float64 queries (bandwidth units); ``part`` (splits, m,
    d + 1) float64; ``splits``; ``m``; ``inverse_scale``; outputs ``out`` (m, d) float64
    new positions and ``density`` (m,) float64. A query with zero total weight stays.
    """
    d = n_dims
    return (
        f'extern "C" __global__ void {finish_name(d)}(\n'
        "    const double* __restrict__ q,\n"
        "    const double* __restrict__ part,\n"
        "    const int splits,\n"
        "    const long long m,\n"
        "    const double inverse_scale,\n"
        "    double* __restrict__ out,\n"
        "    double* __restrict__ density)\n"
        "{\n"
        "    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
        "    if (i >= m) return;\n"
        f"    double a[{d + 1}];\n"
        f"    for (int k = 0; k <= {d}; ++k) a[k] = part[i * {d + 1} + k];\n"
        "    for (int s = 1; s < splits; ++s) {\n"
        f"        const double* r = part + ((long long)s * m + i) * {d + 1};\n"
        f"        for (int k = 0; k <= {d}; ++k) a[k] += r[k];\n"
        "    }\n"
        f"    const double den = a[{d}];\n"
        "    density[i] = den;\n"
        f"    for (int k = 0; k < {d}; ++k) {{\n"
        f"        const double moved = den > 0.0 ? a[k] / den * inverse_scale : 0.0;\n"
        f"        out[i * {d} + k] = q[i * {d} + k] + moved;\n"
        "    }\n"
        "}\n"
    )


GRID_THREADS = 128
"""Threads (queries) per block of the grid kernel."""

GRID_TILE = 256
"""Points of one run summed in the kernel's scalar type before the float64 running sums
take them (grid kernel; as the fused kernel's tiles)."""


GRID_SEARCH = r"""
#ifdef __CUDA_ARCH__
#define MS_DEVICE __device__ __forceinline__
#else
#define MS_DEVICE static inline
#endif
/* First index in [from, n) of the sorted keys holding a key >= want (n if none): galloping
   from ``from`` (steps 1, 2, 4, ...), then bisection; O(log distance) reads. */
MS_DEVICE long long ms_search(const long long* __restrict__ keys, long long from,
                              const long long n, const long long want) {
    long long step = 1;
    long long hi = from;
    while (hi < n && keys[hi] < want) {
        from = hi + 1;
        hi += step;
        step <<= 1;
    }
    if (hi > n) hi = n;
    while (from < hi) {
        const long long mid = from + ((hi - from) >> 1);
        if (keys[mid] < want) from = mid + 1; else hi = mid;
    }
    return from;
}
"""


def grid_name(n_dims: int, kernel: str, weighted: bool) -> str:
    """Name of the generated grid kernel for this ``d``, kernel and weighting."""
    return f"ms_grid_{kernel}_d{n_dims}_{'w' if weighted else 'u'}"


def _grid_signature(d: int, kernel: str, weighted: bool, threads: int) -> str:
    """CUDA lines: the grid kernel's signature, the thread's query ``i`` and its cell key."""
    name = grid_name(d, kernel, weighted)
    real, _ = _scalar(kernel)
    weight_arg = f"    const {real}* __restrict__ pw_all,\n" if weighted else ""
    return (
        f'extern "C" __global__ void __launch_bounds__({threads}) {name}(\n'
        "    const double* __restrict__ q,\n"
        "    const long long* __restrict__ qkey,\n"
        "    const long long* __restrict__ order,\n"
        "    const double* __restrict__ p,\n"
        f"{weight_arg}"
        "    const long long* __restrict__ keys,\n"
        "    const long long* __restrict__ runs,\n"
        "    const int r,\n"
        "    const long long m,\n"
        "    const long long n,\n"
        "    double* __restrict__ offset,\n"
        "    double* __restrict__ density,\n"
        "    double* __restrict__ reach)\n"
        "{\n"
        f"    const long long t = (long long)blockIdx.x * {threads} + threadIdx.x;\n"
        "    if (t >= m) return;\n"
        "    const long long i = order[t];\n"
        "    const long long key = qkey[i];\n"
    )


def _grid_prologue(d: int, weighted: bool) -> str:
    """CUDA lines: the query and its totals, and the loop over runs finding each run's points."""
    lines = [f"    const double q{k} = q[i * {d} + {k}];\n" for k in range(d)]
    lines.append(_totals(d))
    lines.append(
        "    double an = 0.0;\n"
        "    long long from = 0;\n"
        "    for (int s = 0; key >= 0 && s < r; ++s) {\n"
        "        const long long first = key + runs[s];\n"
        "        const long long begin = ms_search(keys, from, n, first);\n"
        "        const long long end = ms_search(keys, begin, n, first + 3);\n"
        "        from = end;  // runs come in increasing key order\n"
    )
    if not weighted:
        lines.append("        an += (double)(end - begin);\n")
    return "".join(lines)


def _grid_run(d: int, kernel: str, weighted: bool, real: str, zero: str) -> str:
    """CUDA lines: the query against one run's points, in tiles of ``GRID_TILE``."""
    tile = GRID_TILE
    lines = [
        f"        for (long long base = begin; base < end; base += {tile}) {{\n"
        f"            const long long stop = end - base < {tile} ? end : base + {tile};\n",
        _tile_sums(d, real, zero, " " * 12),
    ]
    if weighted:
        lines.append(f"            {real} sn = {zero};\n")
    lines.append(_grid_tile(d, kernel, weighted, real))
    lines.append(_add_tile_sums(d, " " * 12))
    if weighted:
        lines.append("            an += (double)sn;\n")
    lines.append("        }\n    }\n")
    return "".join(lines)


def _grid_tile(d: int, kernel: str, weighted: bool, real: str) -> str:
    """CUDA lines: the loop over one tile's points, summed into the tile's sums."""
    lines = [
        "            for (long long j = base; j < stop; ++j) {\n"
        f"                const double* row = p + j * {d};\n"
    ]
    for k in range(d):  # differences in float64, rounded to float32 but for the flat kernel
        difference = f"row[{k}] - q{k}" if kernel == "flat" else f"(float)(row[{k}] - q{k})"
        lines.append(f"                const {real} t{k} = {difference};\n")
    lines.append(_squared_distance(d, kernel, " " * 16))
    if weighted:
        lines.append(f"                const {real} pw = pw_all[j];\n")
        lines.append("                sn += pw;\n")
    lines.append(_accumulate(d, kernel, weighted, real, " " * 16))
    lines.append("            }\n")
    return "".join(lines)


def _grid_epilogue(d: int) -> str:
    """CUDA lines: the query's density, reach and mean offset written out."""
    lines = ["    density[i] = aw;\n    reach[i] = an;\n"]
    lines += [f"    offset[i * {d} + {k}] = aw > 0.0 ? a{k} / aw : 0.0;\n" for k in range(d)]
    lines.append("}\n")
    return "".join(lines)


def grid_source(n_dims: int, kernel: str, weighted: bool, threads: int = GRID_THREADS) -> str:
    """CUDA source of the grid kernel: each query meets the points of its 3^d neighbour cells.

    The points are sorted by cell key (row-major over the grid, the last axis fastest), so
    the 3 cells adjacent along the last axis have consecutive keys and their points form
    one run of the sorted points: 3^(d-1) runs per query. Each thread takes one query,
    finds each run's range in the sorted keys (galloping from the end of the previous
    run, then bisection: ``ms_search``) and walks it.

    Arguments: ``q`` (m, d) float64 queries (bandwidth units, scaled like the points);
    ``qkey`` (m,) int64 each query's cell key, -1 for a query outside the padded grid
    (it meets nothing); ``order`` (m,) int64, the query taken by each thread (queries
    sorted by key: a warp's threads mostly read the same points); ``p`` (n, d) float64
    points sorted by key, scaled; ``pw_all`` (n,) point weights in the kernel's scalar
    type (weighted variant only); ``keys`` (n,) int64 sorted cell keys; ``runs`` (r,)
    int64 key offset of each run's first cell; ``r``, ``m``, ``n``; outputs ``offset``
    (m, d) float64 ``sum w (x - q) / sum w`` in the scaled units (0 where the sum is 0),
    ``density`` (m,) ``sum w`` and ``reach`` (m,) the total point weight met. Launch with
    ``grid = ceil(m / threads)``, ``block = threads``.

    Precision as the fused kernel's: differences taken in float64 (any distance from the
    origin, as the CPU grid takes them) and rounded to float32 for the Gaussian and
    Epanechnikov kernels, whose squared distances, weights and sums over ``GRID_TILE``
    points are float32; the flat kernel is float64 throughout, its squared distances summed
    in dimension order without fused multiply-adds.
    """
    real, zero = _scalar(kernel)
    return "".join(
        [
            PRELUDE,
            GRID_SEARCH,
            _grid_signature(n_dims, kernel, weighted, threads),
            _grid_prologue(n_dims, weighted),
            _grid_run(n_dims, kernel, weighted, real, zero),
            _grid_epilogue(n_dims),
        ]
    )


def gemm_weight_operation(kernel: str) -> str:
    """Elementwise operation of the GEMM route: squared distance from the product, weight."""
    expr = _weight_expression(kernel, weighted=True)
    return f"float d2 = fmaxf(qn + pn - 2.0f * g, 0.0f); w = {expr};"


# --------------------------------------------------------------------------- compiled kernels


@functools.cache
def _fused_kernel(n_dims: int, kernel: str, weighted: bool) -> Any:
    import cupy

    source = fused_source(n_dims, kernel, weighted)
    return cupy.RawKernel(source, fused_name(n_dims, kernel, weighted), options=COMPILE_OPTIONS)


@functools.cache
def _finish_kernel(n_dims: int) -> Any:
    import cupy

    return cupy.RawKernel(finish_source(n_dims), finish_name(n_dims), options=COMPILE_OPTIONS)


@functools.cache
def _grid_kernel(n_dims: int, kernel: str, weighted: bool) -> Any:
    import cupy

    source = grid_source(n_dims, kernel, weighted)
    return cupy.RawKernel(source, grid_name(n_dims, kernel, weighted), options=COMPILE_OPTIONS)


@functools.cache
def _gemm_weight_kernel(kernel: str) -> Any:
    import cupy

    return cupy.ElementwiseKernel(
        "float32 g, float32 qn, float32 pn, float32 pw",
        "float32 w",
        gemm_weight_operation(kernel),
        f"ms_gemm_weight_{kernel}",
        preamble=PRELUDE,
    )


def compile_kernels(n_dims: int, kernel: str, weighted: bool) -> None:
    """Compile the fused and the grid kernel of one case now (CuPy keeps them on disk, so a
    later process only loads them), rather than in a job's first task."""
    for build in (_fused_kernel, _grid_kernel):
        compile_now = getattr(build(n_dims, kernel, weighted), "compile", None)
        if compile_now is not None:  # RawKernel.compile: no launch needed
            compile_now()


def forget_kernels() -> None:
    """Drop the kernels built in this process (they are built again on next use), for
    example after the ``cupy`` module was replaced."""
    for cached in (_fused_kernel, _finish_kernel, _gemm_weight_kernel, _grid_kernel):
        cached.cache_clear()


# --------------------------------------------------------------------------- routes


def route(n_dims: int, kernel: str) -> str:
    """``fused``, ``gemm`` or ``array`` (the float64 array path) for this ``d`` and kernel."""
    if kernel not in GPU_KERNELS:
        return "array"
    if n_dims <= FUSED_MAX_DIMS:
        return "fused"
    return "array" if kernel == "flat" else "gemm"


def splits_for(n_points: int) -> tuple[int, int]:
    """(points per split, number of splits): fixed by the number of points alone."""
    per_split = -(-n_points // MAX_SPLITS)
    chunk = max(SPLIT_POINTS, -(-per_split // THREADS) * THREADS)
    return chunk, max(1, -(-n_points // chunk))


@dataclass
class DevicePoints:
    """A point set laid out on the device for the shift kernels (built once per set).

    Attributes
    ----------
    points : cupy.ndarray of float64, shape (n, d)
        Bandwidth units, as given.
    weights : cupy.ndarray of float64, shape (n,), or None
    kernel : str
    route : {"fused", "gemm", "array"}
    scale : float
        ``GAUSSIAN_SCALE`` for the Gaussian kernel, else 1.
    coords : cupy.ndarray, shape (n, d)
        Scaled coordinates in the kernel's scalar type (fused route).
    point_weights : cupy.ndarray or None
        Weights in that type (fused route; None when unweighted).
    total_weight : float
    largest : float
        Largest coordinate magnitude (bandwidths).
    """

    points: Any
    weights: Any
    kernel: str
    route: str
    scale: float
    coords: Any
    point_weights: Any
    total_weight: float
    largest: float


def pack(
    points: Any, weights: Any | None, kernel: str, largest: float | None = None
) -> DevicePoints:
    """Lay out a point set (CuPy arrays, bandwidth units) for :func:`shift`."""
    import cupy

    points = cupy.ascontiguousarray(points, dtype=cupy.float64)
    if weights is not None:
        weights = cupy.ascontiguousarray(weights, dtype=cupy.float64)
    n, d = points.shape
    if largest is None:
        largest = float(cupy.abs(points).max()) if points.size else 0.0
    chosen = route(d, kernel)
    if kernel != "flat" and not float32_resolves(largest):
        chosen = "array"  # float32 would lose more than 1e-5 bandwidths, or underflow
    scale = GAUSSIAN_SCALE if kernel == "gaussian" else 1.0
    total = float(n if weights is None else weights.sum())
    coords = point_weights = None
    if chosen == "fused":
        dtype = cupy.float64 if kernel == "flat" else cupy.float32
        coords = cupy.ascontiguousarray((points * scale if scale != 1.0 else points), dtype=dtype)
        point_weights = None if weights is None else weights.astype(dtype)
    return DevicePoints(
        points, weights, kernel, chosen, scale, coords, point_weights, total, largest
    )


def fused_shift(queries: Any, packed: DevicePoints, block_bytes: int) -> tuple[Any, Any]:
    import cupy

    m, d = queries.shape
    n = packed.points.shape[0]
    chunk, splits = splits_for(n)
    weighted = packed.point_weights is not None
    kernel = _fused_kernel(d, packed.kernel, weighted)
    finish = _finish_kernel(d)
    dtype = packed.coords.dtype
    rows = max(THREADS, block_bytes // (splits * (d + 1) * 8) // THREADS * THREADS)
    shifted = cupy.empty((m, d), dtype=cupy.float64)
    density = cupy.empty(m, dtype=cupy.float64)
    part = cupy.empty((splits, min(rows, m), d + 1), dtype=cupy.float64)
    for start in range(0, m, rows):
        block = queries[start : start + rows]
        count = block.shape[0]
        scaled = block * packed.scale if packed.scale != 1.0 else block
        q = cupy.ascontiguousarray(scaled, dtype=dtype)
        args = [q, packed.coords]
        if weighted:
            args.append(packed.point_weights)
        args += [np.int64(count), np.int64(n), np.int64(chunk), part]
        kernel(((count + THREADS - 1) // THREADS, splits), (THREADS,), tuple(args))
        finish(
            ((count + 127) // 128,),
            (128,),
            (
                block,
                part,
                np.int32(splits),
                np.int64(count),
                np.float64(1.0 / packed.scale),
                shifted[start : start + count],
                density[start : start + count],
            ),
        )
    return shifted, density


def gemm_shift(queries: Any, packed: DevicePoints, block_bytes: int) -> tuple[Any, Any]:
    """The GEMM route: each block of queries cut into parts within ``GEMM_RADIUS`` of their
    mean (:func:`.array.compact_parts`), each part centred on its mean; queries scattered
    beyond such parts take the float64 array path."""
    import cupy

    m, d = queries.shape
    n = packed.points.shape[0]
    tile = min(GEMM_TILE, n)
    rows = max(1, block_bytes // (2 * tile * 4))
    if packed.weights is None:
        point_weights = cupy.ones(n, dtype=cupy.float32)
    else:
        point_weights = packed.weights.astype(cupy.float32)
    augmented = cupy.ones((tile, d + 1), dtype=cupy.float32)  # last column: 1 (denominator)
    shifted = cupy.empty((m, d), dtype=cupy.float64)
    density = cupy.empty(m, dtype=cupy.float64)
    for start in range(0, m, rows):
        block = queries[start : start + rows]
        parts = compact_parts(block, GEMM_RADIUS, cupy) or [(slice(None), True)]
        for index, compact in parts:
            part = block[index]
            if compact:
                moved = _gemm_part(part, packed, point_weights, augmented)
            else:
                moved = blocked_shift(
                    part, packed.points, packed.weights, packed.kernel, cupy, block_bytes
                )
            stop = start + block.shape[0]
            shifted[start:stop][index], density[start:stop][index] = moved
    return shifted, density


def _gemm_part(
    queries: Any, packed: DevicePoints, point_weights: Any, augmented: Any
) -> tuple[Any, Any]:
    """One GEMM block: coordinates centred on the queries' mean, float32 products over
    tiles of ``len(augmented)`` points (``augmented``: float32, its last column 1)."""
    import cupy

    n, d = packed.points.shape
    scale = packed.scale
    tile = augmented.shape[0]
    weigh = _gemm_weight_kernel(packed.kernel)
    centre = queries.mean(axis=0)
    q = ((queries - centre) * scale).astype(cupy.float32)
    qn = (q * q).sum(axis=1)[:, None]
    total = cupy.zeros((queries.shape[0], d + 1), dtype=cupy.float64)
    for p_start in range(0, n, tile):
        p = ((packed.points[p_start : p_start + tile] - centre) * scale).astype(cupy.float32)
        width = p.shape[0]
        pn = (p * p).sum(axis=1)[None, :]
        g = cupy.matmul(q, p.T)
        w = weigh(g, qn, pn, point_weights[p_start : p_start + width][None, :])
        del g
        aug = augmented[:width]
        aug[:, :d] = p
        total += cupy.matmul(w, aug)
    den = total[:, d]
    safe = cupy.where(den > 0, den, 1.0)
    mean = total[:, :d] / safe[:, None] / scale + centre  # bandwidth units
    return cupy.where((den > 0)[:, None], mean, queries), den


def shift(
    queries: Any, packed: DevicePoints, block_bytes: int, array_shift: Any
) -> tuple[Any, Any]:
    """One mean shift step of ``queries`` (CuPy, bandwidth units) against ``packed``.

    ``array_shift(queries)`` is the float64 array path, used for coordinates beyond
    ``COMPILED_MAX_COORDINATE``, for routes without a kernel, and to redo Gaussian
    queries whose weights underflowed.

    Returns the same ``(shifted, density)`` as :func:`pipeline.kernels.shift_points`.
    """
    import cupy

    queries = cupy.ascontiguousarray(queries, dtype=cupy.float64)
    if queries.shape[0] == 0 or packed.points.shape[0] == 0 or packed.route == "array":
        return array_shift(queries)
    if packed.kernel != "flat":
        largest = float(cupy.abs(queries).max())
        if not float32_resolves(max(largest, packed.largest)):
            return array_shift(queries)
    if packed.route == "fused":
        shifted, density = fused_shift(queries, packed, block_bytes)
    else:
        shifted, density = gemm_shift(queries, packed, block_bytes)
    if packed.kernel == "gaussian":
        redo = cupy.flatnonzero(density <= packed.total_weight * UNDERFLOW_FRACTION)
        if redo.size:
            shifted[redo], density[redo] = array_shift(queries[redo])
    return shifted, density


# --------------------------------------------------------------------------- grid point sets


def grid_route(n_dims: int, kernel: str) -> bool:
    """Whether a grid point set of this ``d`` and kernel walks its cells in the grid kernel."""
    return kernel in GPU_KERNELS and 1 <= n_dims <= FUSED_MAX_DIMS


@dataclass
class DeviceGrid:
    """A grid point set laid out on the device for :func:`grid_shift` (built once per set).

    Attributes
    ----------
    coords : cupy.ndarray of float64, shape (n, d)
        The points sorted by cell key, bandwidth units, scaled by ``scale``.
    point_weights : cupy.ndarray or None
        Weights in the kernel's scalar type, in the same order (None when unweighted).
    keys : cupy.ndarray of int64, shape (n,)
        Sorted cell keys.
    runs : cupy.ndarray of int64, shape (3^(d-1),)
        Key offset, from a query's cell, of the first cell of each run of 3 neighbour
        cells consecutive along the last axis (increasing).
    kernel : str
    scale : float
    """

    coords: Any
    point_weights: Any
    keys: Any
    runs: Any
    kernel: str
    scale: float


def pack_grid(points: Any, weights: Any | None, keys: Any, runs: Any, kernel: str) -> DeviceGrid:
    """Lay out a grid point set (CuPy arrays, points already sorted by ``keys``)."""
    import cupy

    scale = GAUSSIAN_SCALE if kernel == "gaussian" else 1.0
    points = cupy.asarray(points, dtype=cupy.float64)
    coords = cupy.ascontiguousarray(points * scale if scale != 1.0 else points)
    point_weights = None
    if weights is not None:
        dtype = cupy.float64 if kernel == "flat" else cupy.float32
        point_weights = cupy.ascontiguousarray(weights, dtype=dtype)
    return DeviceGrid(
        coords,
        point_weights,
        cupy.ascontiguousarray(keys, dtype=cupy.int64),
        cupy.ascontiguousarray(runs, dtype=cupy.int64),
        kernel,
        scale,
    )


def grid_shift(
    queries: Any, query_keys: Any, grid: DeviceGrid, exact_shift: Any
) -> tuple[Any, Any]:
    """One mean shift step of ``queries`` (CuPy, bandwidth units) against their 3^d
    neighbour cells of ``grid``.

    ``query_keys`` (m,) int64 holds each query's cell key, -1 for a query outside the
    padded grid (it meets no point: it stays, density 0). ``exact_shift(queries)`` redoes,
    in float64 over the same neighbourhood, the Gaussian queries whose float32 weights
    (nearly) all underflowed: density at most ``UNDERFLOW_FRACTION`` of the weight met.

    Returns the same ``(shifted, density)`` as :meth:`pipeline.kernels.GridPointSet.shift`.
    """
    import cupy

    queries = cupy.ascontiguousarray(queries, dtype=cupy.float64)
    m, d = queries.shape
    shifted = queries.copy()
    density = cupy.zeros(m, dtype=cupy.float64)
    if m == 0 or grid.keys.shape[0] == 0:
        return shifted, density
    scaled = queries * grid.scale if grid.scale != 1.0 else queries
    query_keys = cupy.ascontiguousarray(query_keys, dtype=cupy.int64)
    order = cupy.ascontiguousarray(cupy.argsort(query_keys), dtype=cupy.int64)
    weighted = grid.point_weights is not None
    kernel = _grid_kernel(d, grid.kernel, weighted)
    offset = cupy.empty((m, d), dtype=cupy.float64)
    reach = cupy.empty(m, dtype=cupy.float64)
    args = [cupy.ascontiguousarray(scaled), query_keys, order, grid.coords]
    if weighted:
        args.append(grid.point_weights)
    args += [
        grid.keys,
        grid.runs,
        np.int32(grid.runs.shape[0]),
        np.int64(m),
        np.int64(grid.keys.shape[0]),
        offset,
        density,
        reach,
    ]
    kernel(((m + GRID_THREADS - 1) // GRID_THREADS,), (GRID_THREADS,), tuple(args))
    shifted += offset / grid.scale if grid.scale != 1.0 else offset
    if grid.kernel == "gaussian":
        redo = cupy.flatnonzero((reach > 0) & (density <= reach * UNDERFLOW_FRACTION))
        if redo.size:
            shifted[redo], density[redo] = exact_shift(queries[redo])
    return shifted, density


# --------------------------------------------------------------------------- binning pass


class DeviceCells(NamedTuple):
    """One chunk's weighted cells as :func:`bin_block` finds them (NumPy arrays)."""

    bad: int  # rows holding NaN or Inf (left out)
    low: np.ndarray  # per column minimum of the finite rows
    high: np.ndarray  # per column maximum
    key_low: np.ndarray  # int64: the lowest cell key per column
    strides: np.ndarray  # int64: row-major strides of the box of cells from key_low
    occupied: np.ndarray  # int64: linear keys of the occupied cells in that box
    counts: np.ndarray  # points in each occupied cell
    sums: np.ndarray  # (c, d): summed fixed-point offsets inside each cell


def bin_block(block: Any, cell: float, fixed_point: float) -> DeviceCells | None:
    """The binned method's binning of one unweighted chunk on the device.

    The same integers and sums as the CPU pass (``pipeline.engine.binned.bin_chunk``), bit for
    bit: cell keys are ``floor(x / cell)`` (IEEE float64 division and floor, one CuPy
    kernel per operation, so nothing is contracted into fused multiply-adds); each
    point's offset inside its cell is the integer ``floor((x / cell - key) * fixed_point)``
    and the sums of these integers per cell are exact in float64 in any order (below 2^33
    points per cell), so the device's unordered (atomic) sums equal the CPU's. Weighted
    chunks are not taken: their sums of products depend on the order of addition.

    Returns
    -------
    DeviceCells or None
        None where the CPU pass is to decide (no finite row; coordinates or a box of
        cells too large for int64 keys).
    """
    import cupy

    found = _finite_columns(block)
    if found is None:
        return None
    columns, bad = found
    box = _cell_box(columns, cell)
    if box is None:
        return None
    low, high, key_low, extent = box
    strides = row_major_strides(extent)
    scaled = columns / cell
    keys = cupy.floor(scaled)
    linear = _linear_keys(keys, key_low, strides)
    occupied, counts, sums = _cell_sums(linear, scaled, keys, fixed_point, int(np.prod(extent)))
    return DeviceCells(
        bad,
        low,
        high,
        key_low,
        strides,
        cupy.asnumpy(occupied),
        cupy.asnumpy(counts),
        cupy.asnumpy(sums),
    )


def _finite_columns(block: Any) -> tuple[Any, int] | None:
    """The finite rows as float64 columns (d, kept) and the number left out; None if none."""
    import cupy

    columns = cupy.array(cupy.asarray(block).T, dtype=cupy.float64)  # (d, m), contiguous
    finite = cupy.isfinite(columns).all(axis=0)
    kept = int(finite.sum())
    bad = columns.shape[1] - kept
    if kept == 0:
        return None
    if bad:
        columns = columns[:, finite]
    return columns, bad


def _cell_box(
    columns: Any, cell: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per column ``(low, high, key_low, extent)``; None if too large for int64 cell keys."""
    import cupy

    low = cupy.asnumpy(columns.min(axis=1))
    high = cupy.asnumpy(columns.max(axis=1))
    if not max(np.abs(low).max(), np.abs(high).max()) / cell < 2.0**62:
        return None
    key_low = np.floor(low / cell).astype(np.int64)
    extent = np.floor(high / cell).astype(np.int64) - key_low + 1
    if float(np.prod(extent.astype(float))) >= 2.0**62:
        return None
    return low, high, key_low, extent


def _linear_keys(keys: Any, key_low: np.ndarray, strides: np.ndarray) -> Any:
    """Each point's row-major cell number in the box from ``key_low`` (int64, on the device)."""
    import cupy

    d, kept = keys.shape
    linear = cupy.zeros(kept, dtype=cupy.int64)
    for k in range(d):
        linear += (keys[k].astype(cupy.int64) - int(key_low[k])) * int(strides[k])
    return linear


def _cell_sums(
    linear: Any, scaled: Any, keys: Any, fixed_point: float, total: int
) -> tuple[Any, Any, Any]:
    """The occupied cells' numbers, counts and summed offsets (``total``: cells in the box)."""
    import cupy

    d, kept = keys.shape
    dense = total <= 4 * kept + 4096
    if dense:  # few possible cells: count straight into them, no sort
        index, size = linear, total
    else:
        occupied, index = cupy.unique(linear, return_inverse=True)
        index, size = index.ravel(), int(occupied.shape[0])
    counts = cupy.bincount(index, minlength=size)
    offsets = cupy.floor((scaled - keys) * fixed_point)
    sums = cupy.stack(
        [cupy.bincount(index, weights=offsets[k], minlength=size) for k in range(d)], axis=1
    )
    if dense:
        occupied = cupy.flatnonzero(counts)
        counts, sums = counts[occupied], sums[occupied]
    return occupied, counts, sums

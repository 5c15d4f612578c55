"""Shared checks of the GPU tests (emulated, on a device, on a cluster): reference results,
tolerances, the grid and binning cases and their bodies, and the ``gpu`` marks.

Tolerances (bandwidth units): Gaussian and Epanechnikov work in float32 with float64
sums, positions within ``ATOL`` = 1e-5 of the float64 array path and densities within
1e-5 relative (1e-4 on the GEMM route, d > 16), coordinates within 150 bandwidths;
the flat kernel is float64. The grid kernel takes differences in float64 (any coordinates)
and is held to the same tolerances against the float64 neighbourhood (each query against
exactly the points of its 3^d neighbour cells), and to twice them against the CPU grid
(float32 too). Two groups far apart in one block of queries keep these tolerances (the GEMM
route cuts such blocks into compact parts).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.backend import gpu_available

ATOL = 1e-5
RTOL_DENSITY = 1e-5
RTOL_DENSITY_GEMM = 1e-4  # squared distances from a float32 product: |q|² + |x|² - 2 q·x

needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device"),
]


def on_device(function):
    for mark in needs_gpu:
        function = mark(function)
    return function


def reference(queries, points, weights, kernel):
    from pipeline.kernels import blocked_shift

    return blocked_shift(queries, points, weights, kernel, np, 2**22)


def difference_reference(queries, points, weights, kernel):
    """The definition in float64, one query at a time: ``q + sum w (x - q) / sum w`` with
    ``w`` from ``|x - q|²`` summed over the coordinate differences (any distance from the
    origin, any spread of the queries)."""
    shifted = queries.copy()
    density = np.zeros(len(queries))
    for i, q in enumerate(queries):
        diff = points - q
        d2 = np.einsum("ij,ij->i", diff, diff)
        if kernel == "gaussian":
            w = np.exp(-0.5 * d2)
        elif kernel == "flat":
            w = (d2 <= 1.0).astype(float)
        else:
            w = np.clip(1.0 - d2, 0.0, None)
        if weights is not None:
            w = w * weights
        density[i] = w.sum()
        if density[i] > 0:
            shifted[i] = q + w @ diff / density[i]
    return shifted, density


def check_close(got, expected, kernel, d=2, factor=1.0):
    """Within the tolerances above (times ``factor``: two float32 results against each other)."""
    shifted, density = (np.asarray(a) for a in got)
    expected_shifted, expected_density = expected
    atol = 1e-12 if kernel == "flat" else ATOL * factor
    rtol = (RTOL_DENSITY_GEMM if d > 16 and kernel != "flat" else RTOL_DENSITY) * factor
    np.testing.assert_allclose(shifted, expected_shifted, rtol=0, atol=atol)
    np.testing.assert_allclose(density, expected_density, rtol=rtol, atol=1e-300)


# --------------------------------------------------------------------------- grid point sets
# The same bodies run emulated (CI) and on a device (``gpu``): the device grid kernel against
# the float64 neighbourhood (each query against exactly the points of its 3^d neighbour cells)
# and against the CPU GridPointSet.

GRID_CASES = [  # (d, kernel, weighted): every kernel, both weightings, d = 1, 2, 3, GRID_MAX_DIMS
    (1, "flat", True),
    (1, "gaussian", False),
    (2, "gaussian", True),
    (2, "epanechnikov", False),
    (3, "epanechnikov", True),
    (3, "flat", False),
    (6, "gaussian", False),
]


def host(array):
    get = getattr(array, "get", None)
    return get() if get is not None else np.asarray(array)


def grid_data(d, kernel, weighted, n=1200, seed=0):
    """Points: a blob, 600 points in one cell (several tiles of one run), isolated points far
    apart. Queries: blob points, the crowded cell, the isolated points, empty neighbourhoods,
    a point outside the grid and (d >= 2, Gaussian) one whose only neighbour is 14 bandwidths
    off (every float32 weight underflows)."""
    rng = np.random.default_rng(seed + 10 * d)
    blob = rng.normal(0, 2, (n, d))
    crowded = 7.3 + rng.uniform(-0.05, 0.05, (600, d))
    isolated = np.zeros((3, d))
    isolated[:, 0] = [60.0, 80.0, 100.0]
    lonely = np.full((1, d), 200.01)
    points = np.concatenate([blob, crowded, isolated, lonely])
    weights = rng.uniform(0.5, 2, len(points)) if weighted else None
    empty = isolated[:2] + np.eye(d)[0] * 10.0  # 70, 90: nothing within 2 cells
    outside = np.full((1, d), 1000.0)
    corner = np.full((1, d), 209.99 if kernel == "gaussian" else 201.99)
    queries = np.concatenate([blob[::9], crowded[:40], isolated, empty, outside, corner])
    return points, weights, queries


def grid_reference(grid, queries):
    """Float64: each query against exactly the points of its own and its 3^d neighbour cells."""
    from pipeline.kernels import blocked_shift

    shifted, density = queries.copy(), np.zeros(len(queries))
    rows, keys = grid.query_cells(queries)
    for row, key in zip(rows, keys, strict=True):
        index = np.flatnonzero(np.isin(grid.keys, key + grid.offsets))
        if len(index):
            w = None if grid.weights is None else grid.weights[index]
            got = blocked_shift(
                queries[row : row + 1], grid.points[index], w, grid.kernel, np, 1 << 22
            )
            shifted[row], density[row] = got[0][0], got[1][0]
    return shifted, density


def check_device_grid(xp, monkeypatch, d, kernel, weighted):
    from pipeline.kernels import GridPointSet, dispatch

    monkeypatch.setattr(dispatch, "GPU_DENSE_MAX_POINTS", 0)  # the grid kernel, whatever the size
    monkeypatch.setattr(dispatch, "GPU_GRID_GAIN", 0.0)  # and the neighbourhoods
    points, weights, queries = grid_data(d, kernel, weighted)
    grid = GridPointSet(points, weights, kernel, np, 2**22)
    device = grid.on(xp)
    got = tuple(host(a) for a in device.shift(xp.asarray(queries)))
    assert "grid" in device.built_on_device  # the grid kernel ran
    assert "dense" not in device.built_on_device
    exact = grid_reference(grid, queries)
    check_close(got, exact, kernel)
    check_close(got, grid.shift(queries), kernel, factor=2)  # the CPU grid (compiled, float32)
    n_empty = 2 + 1  # two empty neighbourhoods and one query outside the grid
    empty = slice(len(queries) - 1 - n_empty, len(queries) - 1)
    np.testing.assert_array_equal(got[0][empty], queries[empty])
    assert np.all(got[1][empty] == 0)
    if kernel == "gaussian" and d >= 2:  # underflowed in float32, redone in float64
        assert 0 < exact[1][-1] < 1e-30 and got[1][-1] > 0
    # a query's result does not depend on the other queries of the launch
    part = tuple(host(a) for a in device.shift(xp.asarray(queries[5:60])))
    np.testing.assert_array_equal(part[0], got[0][5:60])
    np.testing.assert_array_equal(part[1], got[1][5:60])


# --------------------------------------------------------------------------- groups far apart
# Above 16 dimensions squared distances come from matrix products centred on the queries: two
# groups far apart in one block of queries, within float32's range (the GEMM route, its blocks
# cut into compact parts), queries scattered too far apart for parts (the GEMM route hands them
# to the float64 array path) and groups far beyond float32's range (the array path).

FAR_APART_CASES = [  # (d, kernel, weighted, gap in bandwidths; None: small clouds scattered)
    (20, "gaussian", False, 600.0),
    (20, "epanechnikov", True, 600.0),
    (32, "gaussian", True, 600.0),
    (20, "epanechnikov", False, None),
    (20, "gaussian", True, 1e9),
    (20, "flat", False, 1e9),
]


def far_apart_data(d, weighted, gap, n=5000, seed=0):
    """Points: two groups (normal, sd 1.5) ``gap`` apart along the diagonal, either side of
    the origin; or (``gap`` None) clouds of 10 points (within about 1) scattered over 140 bandwidths
    either side of the origin in every coordinate. Shuffled. Queries: the first 300 points
    and 5 of them moved a little."""
    rng = np.random.default_rng(seed + d)
    if gap is None:
        points = np.repeat(rng.uniform(-140, 140, (n // 10, d)), 10, axis=0)
        points += rng.normal(0, 0.5 / np.sqrt(d), points.shape)
    else:
        direction = np.ones(d) / np.sqrt(d)
        points = rng.normal(0, 1.5, (n, d))
        points[: n // 2] -= gap / 2 * direction
        points[n // 2 :] += gap / 2 * direction
    points = points[rng.permutation(n)]
    weights = rng.uniform(0.5, 2, n) if weighted else None
    return points, weights, np.r_[points[:300], points[:5] + 0.3]


def check_far_apart(xp, d, kernel, weighted, gap):
    from pipeline.kernels import gpu, shift_points

    points, weights, queries = far_apart_data(d, weighted, gap)
    device_weights = None if weights is None else xp.asarray(weights)
    packed = gpu.pack(xp.asarray(points), device_weights, kernel)
    far = gap is not None and gap > 1000  # beyond float32's range
    assert packed.route == ("array" if far or kernel == "flat" else "gemm")
    got = shift_points(xp.asarray(queries), xp.asarray(points), device_weights, kernel, xp, 2**22)
    got = tuple(host(a) for a in got)
    expected = difference_reference(queries, points, weights, kernel)
    if packed.route == "gemm":
        check_close(got, expected, kernel, d)
        return
    # float64 (the array path): to the rounding of coordinates this far from the origin
    ulp = np.spacing(np.abs(queries).max())
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-7 + 2 * ulp)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-9, atol=1e-300)


# --------------------------------------------------------------------------- binning pass


def bin_cases():
    rng = np.random.default_rng(6)
    blobs = rng.normal(0, 3, (20_000, 2)).astype(np.float32)  # few cells: counted directly
    sparse = rng.uniform(-1e4, 1e4, (5000, 3))  # a large box: occupied cells sorted
    holes = rng.normal(0, 1, (3000, 2))
    holes[::7, 1] = np.nan
    holes[::11, 0] = np.inf
    far = 1e6 + rng.normal(0, 1, (4000, 2))  # far from the origin: offsets keep full precision
    one = rng.normal(0, 1, (2000, 1))
    edges = np.round(rng.uniform(-3, 3, (4000, 2)) * 8) / 8  # on cell boundaries
    return dict(blobs=blobs, sparse=sparse, holes=holes, far=far, one=one, edges=edges)


def check_device_binning(xp):
    from pipeline.engine.binned import bin_chunk

    for name, block in bin_cases().items():
        for cell in (0.25, 0.625):
            expected = bin_chunk(block, None, cell)
            got = bin_chunk(block, None, cell, "cupy")
            assert got[0] == expected[0], name
            for a, b in zip(got[1:], expected[1:], strict=True):
                assert isinstance(a, np.ndarray) and a.dtype == b.dtype, name
                np.testing.assert_array_equal(a, b, err_msg=name)
                assert a.tobytes() == b.tobytes(), name  # bit for bit

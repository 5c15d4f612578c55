"""GPU shift kernels: the same checks as the CPU path, with ``xp = cupy``.

Tests marked ``gpu`` need CuPy and a CUDA device (skipped otherwise). The others run
the generated CUDA sources on the CPU (``tests/gpu_emulation.py``: compiled by the host
C++ compiler, one thread per CUDA thread, a NumPy-backed ``cupy``), so the kernels'
logic and the Python side of :mod:`pipeline.kernels.gpu` are tested where there is no GPU.

Tolerances (bandwidth units): Gaussian and Epanechnikov work in float32 with float64
sums, positions within ``ATOL`` = 1e-5 of the float64 array path and densities within
1e-5 relative (1e-4 on the GEMM route, d > 16), coordinates within 150 bandwidths;
the flat kernel is float64. The grid kernel takes differences in float64 (any coordinates)
and is held to the same tolerances against the float64 neighbourhood (each query against
exactly the points of its 3^d neighbour cells), and to twice them against the CPU grid
(float32 too).
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from pipeline.backend import gpu_available

from .gpu_emulation import compiler_available, fake_cupy

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


def check_close(got, expected, kernel, d=2, factor=1.0):
    """Within the tolerances above (times ``factor``: two float32 results against each other)."""
    shifted, density = (np.asarray(a) for a in got)
    expected_shifted, expected_density = expected
    atol = 1e-12 if kernel == "flat" else ATOL * factor
    rtol = (RTOL_DENSITY_GEMM if d > 16 and kernel != "flat" else RTOL_DENSITY) * factor
    np.testing.assert_allclose(shifted, expected_shifted, rtol=0, atol=atol)
    np.testing.assert_allclose(density, expected_density, rtol=rtol, atol=1e-300)


# --------------------------------------------------------------------------- emulated (CPU)


@pytest.fixture
def emulated(monkeypatch):
    """``cupy`` replaced by the NumPy-backed emulation for the duration of a test."""
    if not compiler_available():
        pytest.skip("needs g++ (C++20) to run the CUDA sources on the CPU")
    from pipeline.kernels import gpu

    fake = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    caches = (gpu._fused_kernel, gpu._finish_kernel, gpu._gemm_weight_kernel, gpu._grid_kernel)
    for cached in caches:
        cached.cache_clear()
    yield fake
    for cached in caches:
        cached.cache_clear()


@pytest.mark.parametrize(
    "d, kernel, weighted",
    [
        (2, "gaussian", False),
        (2, "flat", True),
        (3, "epanechnikov", True),
        (5, "gaussian", True),
        (20, "gaussian", False),  # GEMM route
        (20, "epanechnikov", True),  # GEMM route
    ],
)
def test_emulated_kernels_match_the_array_path(emulated, d, kernel, weighted):
    from pipeline.kernels import gpu, shift_points

    rng = np.random.default_rng(d)
    points = rng.normal(0, 1.5 if d > 16 else 2, (5000, d))  # 5000 points: two splits
    weights = rng.uniform(0.5, 2, len(points)) if weighted else None
    queries = np.r_[points[:300], points[:5] + 0.3]
    assert gpu.route(d, kernel) == ("fused" if d <= gpu.FUSED_MAX_DIMS else "gemm")
    got = shift_points(queries, points, weights, kernel, emulated, 2**22)
    check_close(got, reference(queries, points, weights, kernel), kernel, d)


def test_emulated_results_do_not_depend_on_the_query_block(emulated):
    from pipeline.kernels import gpu

    rng = np.random.default_rng(1)
    points = rng.normal(0, 2, (4500, 2))
    packed = gpu.pack(points, None, "gaussian")
    whole = gpu.shift(points[:600], packed, 2**22, None)
    part = gpu.shift(points[100:400], packed, 2**22, None)
    np.testing.assert_array_equal(whole[0][100:400], part[0])
    np.testing.assert_array_equal(whole[1][100:400], part[1])


def test_emulated_underflow_is_redone_in_float64(emulated):
    from pipeline.kernels import shift_points

    rng = np.random.default_rng(2)
    points = rng.normal(0, 0.5, (3000, 2))
    far = np.array([[40.0, 3.0], [20.0, 20.0], [0.5, 0.5], [13.0, 0.0]])
    got = shift_points(far, points, None, "gaussian", emulated, 2**22)
    expected = reference(far, points, None, "gaussian")
    assert expected[1][0] < 1e-300  # float32 weights are all 0 there
    check_close(got, expected, "gaussian")
    assert np.all(got[0][:2] != far[:2])  # the far queries still moved (toward the data)


def test_emulated_empty_kernel_leaves_queries_in_place(emulated):
    from pipeline.kernels import shift_points

    points = np.zeros((10, 2))
    queries = np.array([[5.0, 5.0], [0.2, 0.0]])
    for kernel in ("flat", "epanechnikov"):
        shifted, density = shift_points(queries, points, None, kernel, emulated, 2**22)
        np.testing.assert_array_equal(shifted[0], queries[0])
        assert density[0] == 0
        np.testing.assert_allclose(shifted[1], [0, 0], atol=1e-7)


def test_emulated_point_sets_move_to_the_device_once(emulated):
    from pipeline.kernels import DensePointSet, GridPointSet

    rng = np.random.default_rng(3)
    points = rng.normal(0, 2, (2000, 2))
    dense = DensePointSet(points, None, "flat", np, 2**22)
    assert dense.on(emulated) is dense.on(emulated)
    check_close(dense.on(emulated).shift(points[:100]), dense.shift(points[:100]), "flat")
    grid = GridPointSet(points, None, "flat", np, 2**22)
    check_close(grid.on(emulated).shift(points[:100]), grid.shift(points[:100]), "flat")


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
    rows, keys = grid._query_cells(queries)
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
    assert device.__dict__.get("_device_grid") is not None  # the grid kernel ran
    assert device.__dict__.get("_dense_set") is None
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


@pytest.mark.parametrize("d, kernel, weighted", GRID_CASES)
def test_emulated_device_grid_matches_the_cpu_grid(emulated, monkeypatch, d, kernel, weighted):
    check_device_grid(emulated, monkeypatch, d, kernel, weighted)


def test_emulated_small_grid_sets_are_met_whole(emulated):
    from pipeline.kernels import GridPointSet

    points, weights, queries = grid_data(2, "flat", False)  # (flat: any coordinates)
    grid = GridPointSet(points, weights, "flat", np, 2**22)
    device = grid.on(emulated)
    check_close(device.shift(queries), grid_reference(grid, queries), "flat")
    assert device._gpu_route() == "dense" and device.__dict__.get("_dense_set") is not None
    assert device.__dict__.get("_device_grid") is None


def test_emulated_grid_routes(emulated, monkeypatch):
    from pipeline.kernels import GridPointSet, dispatch

    monkeypatch.setattr(dispatch, "GPU_DENSE_MAX_POINTS", 1000)
    rng = np.random.default_rng(4)
    spread = rng.uniform(-40, 40, (3000, 2))  # about 4 points per 3 x 3 cells
    compact = rng.normal(0, 2, (3000, 2))  # Gaussian cells of 5: every point is a neighbour
    routes = {
        "spread": GridPointSet(spread, None, "flat", np, 2**22),
        "compact": GridPointSet(compact, None, "gaussian", np, 2**22),
        "far": GridPointSet(compact + 500.0, None, "gaussian", np, 2**22),  # beyond float32's
    }
    assert routes["spread"].mean_neighbourhood() < 10
    assert routes["compact"].mean_neighbourhood() > 2000
    got = {name: grid.on(emulated)._gpu_route() for name, grid in routes.items()}
    assert got == {"spread": "grid", "compact": "dense", "far": "grid"}


def test_emulated_device_grid_sparse_cells(emulated, monkeypatch):
    """Many empty cells and runs of 0 to a few points: the searches' edges, exactly (flat)."""
    from pipeline.kernels import GridPointSet, dispatch

    monkeypatch.setattr(dispatch, "GPU_DENSE_MAX_POINTS", 0)
    rng = np.random.default_rng(5)
    points = np.round(rng.uniform(-8, 8, (1500, 3)), 1)  # on cell boundaries too
    queries = np.concatenate([points[::6], rng.uniform(-9, 9, (60, 3)), np.round(points[:20])])
    grid = GridPointSet(points, None, "flat", np, 2**22)
    device = grid.on(emulated)
    got = device.shift(queries)
    assert device._gpu_route() == "grid"
    check_close(got, grid_reference(grid, queries), "flat")
    check_close(got, grid.shift(queries), "flat")


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
    return {"blobs": blobs, "sparse": sparse, "holes": holes, "far": far, "one": one,
            "edges": edges}  # fmt: skip


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


def test_emulated_binning_pass_on_the_device(emulated, monkeypatch):
    from pipeline.engine.binned import bin_chunk
    from pipeline.kernels import gpu

    calls = []
    original = gpu.bin_block
    monkeypatch.setattr(gpu, "bin_block", lambda *a: calls.append(1) or original(*a))
    check_device_binning(emulated)
    assert len(calls) == 2 * len(bin_cases())
    # weighted chunks, chunks without a finite row and too many cells stay on the CPU
    block = np.r_[np.ones((3, 2)), [[np.nan, 0.0]]]
    weights = np.array([1.0, 2.0, 0.5, 1.0])
    np.testing.assert_array_equal(
        bin_chunk(block, weights, 0.5, "cupy")[4], bin_chunk(block, weights, 0.5)[4]
    )
    assert gpu.bin_block(np.full((3, 2), np.nan), 0.5, 2.0**20) is None
    assert gpu.bin_block(np.array([[-1e12, 0.0], [1e12, 1e12]]), 1.0, 2.0**20) is None


def test_emulated_binning_pass_of_a_dask_array(emulated):
    import dask
    import dask.array as da

    from pipeline.engine.binned import bin_points

    points = da.from_array(bin_cases()["blobs"], chunks=(4000, 2))
    with dask.config.set(scheduler="sync"):
        cpu = bin_points(points, None, 0.3)
        device = bin_points(points, None, 0.3, "cupy")
    assert cpu.keys() == device.keys()
    for name in cpu:
        assert cpu[name].tobytes() == device[name].tobytes(), name


@pytest.mark.parametrize("method", ["binned", "exact"])
def test_emulated_client_without_a_gpu_runs_jobs_on_gpu_workers(
    emulated, monkeypatch, seed_data, method
):
    """A login node without a GPU sends a cupy run to workers advertising the GPU
    resource: every task runs there, nothing that needs the device runs in the client."""
    import logging

    import dask.array as da
    from distributed import Client, LocalCluster

    from pipeline import backend
    from pipeline.engine import mean_shift
    from pipeline.errors import ParameterError
    from pipeline.kernels import gpu
    from pipeline.params import make_params

    monkeypatch.setattr(backend, "gpu_available", lambda: False)  # this process: no GPU
    threads = []
    for name in ("shift", "grid_shift"):  # record where the device kernels run
        original = getattr(gpu, name)

        def recorded(*args, original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return original(*args, **kwargs)

        monkeypatch.setattr(gpu, name, recorded)
    points = seed_data[0]
    params = make_params(kernel="gaussian", bandwidth=2.5, method=method, backend="cupy")
    expected = mean_shift(points, params.model_copy(update={"backend": "numpy"}))
    with pytest.raises(ParameterError, match="no Dask worker advertises the GPU resource"):
        backend.resolve_backend("cupy")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1},
                     dashboard_address=":0", silence_logs=logging.ERROR) as cluster,
        Client(cluster, set_as_default=True) as client,
    ):  # fmt: skip
        assert backend.resolve_backend("auto") == "cupy"
        assert backend.resolve_backend("auto", here=True) == "numpy"
        client.get_task_stream()  # start recording
        result = mean_shift(da.from_array(points, chunks=(500, 2)), params)
        labels = result.labels.compute()
        workers = set(client.scheduler_info()["workers"])
        assert {task["worker"] for task in client.get_task_stream()} == workers
    assert threads and threading.main_thread().name not in threads  # kernels ran on the worker
    np.testing.assert_array_equal(labels, np.asarray(expected.labels))
    np.testing.assert_allclose(result.centers, expected.centers, atol=1e-4)


def test_gpu_module_imports_without_cupy():
    """The sources are plain strings: generating them needs no CuPy."""
    from pipeline.kernels import gpu

    source = gpu.fused_source(3, "gaussian", True)
    assert gpu.fused_name(3, "gaussian", True) in source
    assert "__syncthreads" in source and "double a2" in source
    assert gpu.route(2, "flat") == "fused" and gpu.route(40, "flat") == "array"
    grid = gpu.grid_source(2, "flat", True)
    assert gpu.grid_name(2, "flat", True) in grid and "MS_DADD" in grid and "keys[mid]" in grid
    assert gpu.grid_route(6, "gaussian") and not gpu.grid_route(20, "gaussian")
    assert gpu.splits_for(1000) == (gpu.SPLIT_POINTS, 1)
    chunk, splits = gpu.splits_for(10**7)
    assert splits <= gpu.MAX_SPLITS and chunk * splits >= 10**7 and chunk % gpu.THREADS == 0


# --------------------------------------------------------------------------- on a GPU


@on_device
@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
@pytest.mark.parametrize("d", [1, 2, 3, 8, 16, 20])
@pytest.mark.parametrize("weighted", [False, True])
def test_cupy_shift_matches_numpy(kernel, d, weighted):
    import cupy

    from pipeline.kernels import shift_points

    rng = np.random.default_rng(d)
    points = rng.normal(0, 1.5 if d > 16 else 2, (9000, d))
    weights = rng.uniform(0.5, 2, len(points)) if weighted else None
    queries = points[:700]
    expected = reference(queries, points, weights, kernel)
    got = shift_points(
        cupy.asarray(queries),
        cupy.asarray(points),
        None if weights is None else cupy.asarray(weights),
        kernel,
        cupy,
        2**22,
    )
    check_close(tuple(cupy.asnumpy(a) for a in got), expected, kernel, d)


@on_device
def test_cupy_large_set_many_splits_and_launches():
    import cupy

    from pipeline.kernels import gpu

    rng = np.random.default_rng(5)
    points = rng.normal(0, 3, (300_000, 2))
    queries = points[::1000]
    packed = gpu.pack(cupy.asarray(points), None, "gaussian")
    assert gpu.splits_for(len(points))[1] > 1
    got = gpu.shift(cupy.asarray(queries), packed, 2**16, None)  # small blocks: many launches
    check_close(
        tuple(cupy.asnumpy(a) for a in got),
        reference(queries, points, None, "gaussian"),
        "gaussian",
    )


@on_device
def test_cupy_underflow_is_redone_in_float64():
    import cupy

    from pipeline.kernels import shift_points

    rng = np.random.default_rng(2)
    points = rng.normal(0, 0.5, (3000, 2))
    far = np.array([[40.0, 3.0], [20.0, 20.0], [0.5, 0.5], [13.0, 0.0]])
    got = shift_points(cupy.asarray(far), cupy.asarray(points), None, "gaussian", cupy, 2**22)
    check_close(
        tuple(cupy.asnumpy(a) for a in got), reference(far, points, None, "gaussian"), "gaussian"
    )


@on_device
@pytest.mark.parametrize("d, kernel, weighted", GRID_CASES)
def test_cupy_device_grid_matches_the_cpu_grid(monkeypatch, d, kernel, weighted):
    import cupy

    check_device_grid(cupy, monkeypatch, d, kernel, weighted)


@on_device
@pytest.mark.parametrize("kernel", ["gaussian", "flat"])
def test_cupy_large_grid_set_takes_the_grid_kernel(kernel):
    import cupy

    from pipeline.kernels import GridPointSet, dispatch

    rng = np.random.default_rng(7)
    points = rng.uniform(-150, 150, (dispatch.GPU_DENSE_MAX_POINTS * 4, 2))
    points[:5000] = rng.normal(20, 0.5, (5000, 2))  # a crowded corner: long runs
    queries = np.concatenate([points[::97], points[:5000:50]])
    grid = GridPointSet(points, None, kernel, np, 2**22)
    device = grid.on(cupy)
    got = tuple(cupy.asnumpy(a) for a in device.shift(cupy.asarray(queries)))
    assert device.__dict__.get("_device_grid") is not None
    check_close(got, grid_reference(grid, queries), kernel)
    check_close(got, grid.shift(queries), kernel, factor=2)


@on_device
def test_cupy_binning_pass_is_bitwise_the_cpu_one():
    import cupy

    check_device_binning(cupy)


@on_device
def test_cupy_engine_equals_numpy_engine(seed_data):
    import dask
    import dask.array as da

    from pipeline.engine import mean_shift
    from pipeline.params import make_params

    points, _, _ = seed_data
    results = {}
    for backend in ("numpy", "cupy"):
        params = make_params(kernel="gaussian", blurring=True, bandwidth=2.5, backend=backend)
        with dask.config.set(scheduler="sync"):
            result = mean_shift(da.from_array(points, chunks=(500, 2)), params)
            results[backend] = (result.labels.compute(), result.centers)
    np.testing.assert_array_equal(results["cupy"][0], results["numpy"][0])
    np.testing.assert_allclose(results["cupy"][1], results["numpy"][1], atol=1e-4)


@on_device
@pytest.mark.parametrize(
    "kernel, method, blurring",
    [("flat", "exact", False), ("gaussian", "grid", True), ("epanechnikov", "exact", False)],
)
def test_cupy_in_memory_equals_numpy(seed_data, kernel, method, blurring):
    from pipeline.engine import mean_shift
    from pipeline.params import make_params

    points, _, _ = seed_data
    results = {}
    for backend in ("numpy", "cupy"):
        params = make_params(
            kernel=kernel, blurring=blurring, bandwidth=2.5, backend=backend, method=method
        )
        results[backend] = mean_shift(points, params)
    np.testing.assert_array_equal(results["cupy"].labels, results["numpy"].labels)
    # (grid + Gaussian: the GPU meets every point, the CPU grid none beyond 5 bandwidths)
    np.testing.assert_allclose(results["cupy"].centers, results["numpy"].centers, atol=1e-2)


@on_device
def test_cupy_grid_method_equals_numpy():
    """36,000 points, neighbourhoods of about 7% of them: the grid kernel (the NumPy run takes
    about 8 s on 2 cores, so a few seconds on the GPU machines' 16)."""
    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.kernels import dispatch
    from pipeline.params import make_params

    points, _, _ = make_blobs(6, 6000, 5.0, 3, seed=1)
    assert len(points) > dispatch.GPU_DENSE_MAX_POINTS
    results = {}
    for backend in ("numpy", "cupy"):
        params = make_params(kernel="flat", bandwidth=2.5, backend=backend, method="grid")
        results[backend] = mean_shift(points, params)
    np.testing.assert_array_equal(results["cupy"].labels, results["numpy"].labels)
    np.testing.assert_allclose(results["cupy"].centers, results["numpy"].centers, atol=1e-4)


@on_device
def test_cupy_binned_equals_numpy():
    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.params import make_params

    points, truth, _ = make_blobs(6, 5000, 5.0, 2, seed=0)
    labels = {}
    for backend in ("numpy", "cupy"):
        params = make_params(kernel="flat", bandwidth=2.5, backend=backend, method="binned")
        labels[backend] = np.asarray(mean_shift(points, params).labels)
    np.testing.assert_array_equal(labels["cupy"], labels["numpy"])


@on_device
def test_estimator_with_cupy_arrays(seed_data):
    import cupy

    from pipeline import MeanShift

    points, _, _ = seed_data
    host = MeanShift(bandwidth=2.5, kernel="gaussian", backend="numpy").fit(points)
    device = MeanShift(bandwidth=2.5, kernel="gaussian", backend="cupy").fit(cupy.asarray(points))
    assert isinstance(device.labels_, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(device.labels_), host.labels_)
    np.testing.assert_allclose(
        cupy.asnumpy(device.cluster_centers_), host.cluster_centers_, atol=1e-3
    )


def test_local_cuda_workers_advertise_the_gpu_resource(monkeypatch):
    from pipeline.jobs.cluster import GPU_WORKER_RESOURCES, RMM_POOL_ENV, cuda_cluster_options

    monkeypatch.delenv(RMM_POOL_ENV, raising=False)
    options = cuda_cluster_options(None)
    assert options["resources"] == GPU_WORKER_RESOURCES == {"GPU": 1}
    assert options["preload"] == ["pipeline.worker"] and "rmm_pool_size" not in options
    monkeypatch.setenv(RMM_POOL_ENV, "2GB")
    options = cuda_cluster_options(2)
    assert options["rmm_pool_size"] == "2GB" and options["n_workers"] == 2
    assert options["rmm_allocator_external_lib_list"] == ["cupy"]


@on_device
def test_local_cuda_cluster_runs_gpu_tasks():
    pytest.importorskip("dask_cuda")
    import dask.array as da

    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.jobs.cluster import dask_client
    from pipeline.params import make_params

    points, _, _ = make_blobs(6, 500, 5.0, 2, seed=0)
    params = make_params(kernel="gaussian", bandwidth=2.5, backend="cupy", blurring=True)
    with dask_client(kind="local-cuda") as client:
        workers = client.scheduler_info()["workers"].values()
        assert all(w["resources"] == {"GPU": 1} for w in workers)
        result = mean_shift(da.from_array(points, chunks=(1000, 2)), params)
        labels = result.labels.compute()
    expected = mean_shift(points, params.model_copy(update={"backend": "numpy"}))
    np.testing.assert_array_equal(labels, expected.labels)

"""GPU shift kernels on a CUDA device: the same checks as the CPU path, with ``xp = cupy``.

Every test is marked ``gpu`` and needs CuPy and a CUDA device (skipped otherwise); the
emulated runs of the same checks are in ``test_gpu_emulated.py``, the tolerances in
``gpu_checks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from .gpu_checks import (
    FAR_APART_CASES,
    GRID_CASES,
    check_close,
    check_device_binning,
    check_device_grid,
    check_far_apart,
    grid_reference,
    on_device,
    reference,
)


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
@pytest.mark.parametrize("d, kernel, weighted, gap", FAR_APART_CASES)
def test_cupy_groups_far_apart_match_the_array_path(d, kernel, weighted, gap):
    import cupy

    check_far_apart(cupy, d, kernel, weighted, gap)


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
    assert "grid" in device.built_on_device
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

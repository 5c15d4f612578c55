"""GPU shift kernels without a GPU: the generated CUDA sources run on the CPU
(``tests/gpu_emulation.py``: compiled by the host C++ compiler, one thread per CUDA thread,
a NumPy-backed ``cupy``, the ``emulated`` fixture of ``conftest.py``), so the kernels'
logic and the Python side of :mod:`pipeline.kernels.gpu` are tested where there is no GPU.
The same checks on a device are in ``test_gpu_device.py``; tolerances in ``gpu_checks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from .gpu_checks import (
    FAR_APART_CASES,
    GRID_CASES,
    bin_cases,
    check_close,
    check_device_binning,
    check_device_grid,
    check_far_apart,
    grid_data,
    grid_reference,
    reference,
)

# --------------------------------------------------------------------------- shift kernels


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


@pytest.mark.parametrize("d, kernel, weighted, gap", FAR_APART_CASES)
def test_emulated_groups_far_apart_match_the_array_path(emulated, d, kernel, weighted, gap):
    check_far_apart(emulated, d, kernel, weighted, gap)


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


@pytest.mark.parametrize("d, kernel, weighted", GRID_CASES)
def test_emulated_device_grid_matches_the_cpu_grid(emulated, monkeypatch, d, kernel, weighted):
    check_device_grid(emulated, monkeypatch, d, kernel, weighted)


def test_emulated_small_grid_sets_are_met_whole(emulated):
    from pipeline.kernels import GridPointSet

    points, weights, queries = grid_data(2, "flat", False)  # (flat: any coordinates)
    grid = GridPointSet(points, weights, "flat", np, 2**22)
    device = grid.on(emulated)
    check_close(device.shift(queries), grid_reference(grid, queries), "flat")
    assert device.gpu_route() == "dense" and "dense" in device.built_on_device
    assert "grid" not in device.built_on_device


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
    got = {name: grid.on(emulated).gpu_route() for name, grid in routes.items()}
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
    assert device.gpu_route() == "grid"
    check_close(got, grid_reference(grid, queries), "flat")
    check_close(got, grid.shift(queries), "flat")


# --------------------------------------------------------------------------- binning pass


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


# --------------------------------------------------------------------------- sources


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

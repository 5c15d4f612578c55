"""Kernels against a float64 NumPy reference, and their invariances (Hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.kernels import (
    DensePointSet,
    GridPointSet,
    blocked_shift,
    compiled,
    converge_seeds,
    kernel_radius,
    nearest,
    shift_points,
)


def reference_shift(queries, points, weights, kernel):
    """Direct differences, whole matrices: the definition, not the optimisation."""
    d2 = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    if kernel == "gaussian":
        w = np.exp(-0.5 * d2)
    elif kernel == "flat":
        w = (d2 <= 1.0).astype(float)
    else:
        w = np.clip(1.0 - d2, 0.0, None)
    w = w * (1.0 if weights is None else weights[None, :])
    den = w.sum(1)
    safe = np.where(den > 0, den, 1.0)
    return np.where(den[:, None] > 0, w @ points / safe[:, None], queries), den


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("block_bytes", [2**16, 2**26])
def test_shift_matches_reference(kernel, weighted, block_bytes):
    rng = np.random.default_rng(1)
    points = rng.normal(0, 2, (9000, 3))  # more than one point block
    queries = rng.normal(0, 2, (700, 3))
    weights = rng.uniform(0.5, 3, 9000) if weighted else None
    expected, expected_density = reference_shift(queries, points, weights, kernel)
    # the array path is float64-exact
    shifted, density = blocked_shift(queries, points, weights, kernel, np, block_bytes)
    np.testing.assert_allclose(shifted, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(density, expected_density, rtol=1e-10)
    # the dispatching entry point: compiled float32 kernels for gaussian/epanechnikov
    shifted, density = shift_points(queries, points, weights, kernel, np, block_bytes)
    exact = kernel == "flat"
    np.testing.assert_allclose(shifted, expected, rtol=0, atol=1e-10 if exact else 1e-5)
    np.testing.assert_allclose(density, expected_density, rtol=1e-10 if exact else 1e-5)


@pytest.mark.parametrize("dims", [1, 2, 3, 5])
@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
def test_compiled_kernels_match_reference(dims, kernel):
    rng = np.random.default_rng(dims)
    points = rng.normal(0, 2, (3000, dims))
    weights = rng.uniform(0.5, 2, 3000)
    packed = compiled.pack_points(points, weights, kernel)
    offsets, density = compiled.shift_offsets(points[:300], packed)
    expected, expected_density = reference_shift(points[:300], points, weights, kernel)
    if kernel == "flat":  # float32 can flip pairs at distance ~1: compare away from the edge
        d2 = ((points[:300, None] - points[None]) ** 2).sum(-1)
        clean = (np.abs(d2 - 1) > 1e-5).all(axis=1)
    else:
        clean = np.ones(300, dtype=bool)
    np.testing.assert_allclose((points[:300] + offsets)[clean], expected[clean], atol=1e-5)
    np.testing.assert_allclose(density[clean], expected_density[clean], rtol=1e-5)


def test_compiled_exp_error_bound():
    d2 = np.linspace(0, 88, 400_001)  # up to 9.38 bandwidths; the floor starts at 9.42
    relative = np.abs(compiled.exp_weights(d2) / np.exp(-0.5 * d2) - 1)
    assert relative.max() <= compiled.EXP_RELATIVE_ERROR
    far = compiled.exp_weights(np.array([400.0]))[0]  # far tails: held at the floor
    assert far == pytest.approx(compiled.WEIGHT_FLOOR, rel=compiled.EXP_RELATIVE_ERROR)


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
def test_grid_point_set_matches_dense(kernel):
    rng = np.random.default_rng(4)
    points = rng.normal(0, 4, (6000, 2))
    weights = rng.uniform(0.5, 2, 6000)
    queries = rng.normal(0, 5, (800, 2))  # some outside the data, some far
    dense = DensePointSet(points, weights, kernel, np, 2**24).shift(queries)
    grid = GridPointSet(points, weights, kernel, np, 2**24).shift(queries)
    # flat/epanechnikov: the same neighbours; gaussian: weights beyond 5 bandwidths dropped
    atol = 2e-4 if kernel == "gaussian" else 1e-5
    np.testing.assert_allclose(grid[0], dense[0], atol=atol)
    np.testing.assert_allclose(grid[1], dense[1], rtol=1e-4, atol=1e-12)


def test_query_without_neighbours_stays_put():
    points = np.zeros((5, 2))
    queries = np.array([[10.0, 10.0], [0.5, 0.0]])
    shifted, density = shift_points(queries, points, None, "flat", np, 2**20)
    np.testing.assert_array_equal(shifted[0], [10.0, 10.0])
    assert density[0] == 0 and density[1] == 5
    np.testing.assert_array_equal(shifted[1], [0.0, 0.0])


def test_converge_seeds_reaches_the_mode_and_counts_steps():
    rng = np.random.default_rng(2)
    points = rng.normal(0, 0.3, (500, 2))
    gaussian = DensePointSet(points, None, "gaussian", np, 2**20)
    flat = DensePointSet(points, None, "flat", np, 2**20)
    modes, density, n_iter, converged = converge_seeds(
        np.array([[0.5, 0.5], [5.0, 5.0]]), gaussian, 1e-6, 500, np
    )
    assert np.linalg.norm(modes[0] - points.mean(0)) < 0.05
    assert n_iter[0] > 1 and density[0] > 0 and converged.all()
    # a Gaussian reaches everywhere: the far seed is pulled in too
    assert np.linalg.norm(modes[1] - modes[0]) < 1e-3
    # a flat kernel does not: the far seed sees no point, stops at once, density 0
    modes, density, n_iter, converged = converge_seeds(np.array([[5.0, 5.0]]), flat, 1e-6, 500, np)
    np.testing.assert_array_equal(modes[0], [5.0, 5.0])
    assert density[0] == 0 and n_iter[0] == 0 and converged[0]  # scikit-learn counts 0 too
    # max_iter caps completed iterations: at most max_iter + 1 steps, not converged
    modes, density, n_iter, converged = converge_seeds(np.array([[0.9, 0.9]]), gaussian, 0.0, 3, np)
    assert n_iter[0] == 3 and not converged[0]


def test_nearest_breaks_ties_to_lower_index():
    centers = np.array([[0.0, 0.0], [2.0, 0.0]])
    index, dist2 = nearest(np.array([[1.0, 0.0], [1.9, 0.0]]), centers, np, 2**20)
    np.testing.assert_array_equal(index, [0, 1])
    np.testing.assert_allclose(dist2, [1.0, 0.01])


coordinates = st.floats(-20, 20, allow_nan=False, width=64)
point_sets = arrays(
    np.float64, st.tuples(st.integers(2, 60), st.integers(1, 4)), elements=coordinates
)


@settings(max_examples=40, deadline=None)
@given(
    point_sets,
    st.sampled_from(["gaussian", "flat", "epanechnikov"]),
    st.randoms(use_true_random=False),
)
def test_shift_is_invariant_to_point_order(points, kernel, random):
    order = list(range(len(points)))
    random.shuffle(order)
    a, da_ = shift_points(points, points, None, kernel, np, 2**20)
    b, db = shift_points(points[order], points[order], None, kernel, np, 2**20)
    np.testing.assert_allclose(a[order], b, atol=1e-5)
    np.testing.assert_allclose(da_[order], db, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(point_sets, st.sampled_from(["gaussian", "flat", "epanechnikov"]), coordinates)
def test_shift_is_equivariant_to_translation(points, kernel, offset):
    base, density = shift_points(points, points, None, kernel, np, 2**20)
    moved, moved_density = shift_points(points + offset, points + offset, None, kernel, np, 2**20)
    keep = density > 0
    if kernel == "flat":  # a pair at distance 1 within rounding may flip membership: skip it
        gaps = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        keep &= (np.abs(gaps - 1.0) > 1e-9).all(axis=1)
    # float64 path (flat) to rounding; float32 compiled path to ~1e-7 of the coordinates
    atol = 1e-7 if kernel == "flat" else 1e-4
    np.testing.assert_allclose(moved[keep], base[keep] + offset, atol=atol)
    # flat membership can flip for pairs at distance exactly 1 after rounding: skip densities
    if kernel != "flat":
        np.testing.assert_allclose(moved_density, density, rtol=1e-4, atol=1e-9)


def test_pairwise_memory_stays_within_the_block_budget():
    """12k x 12k pairs would need 1.2 GB as one matrix; the array path keeps to its budget."""
    import tracemalloc

    rng = np.random.default_rng(3)
    points = rng.normal(0, 3, (12_000, 2))
    budget = 4 * 2**20
    tracemalloc.start()
    tracemalloc.reset_peak()
    blocked_shift(points, points, None, "gaussian", np, budget)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # inputs are not counted (allocated before); allow the outputs and small per-block vectors
    assert peak < budget + 4 * points.nbytes


def test_queries_beyond_the_weight_floor_are_computed_exactly():
    # every point of the set is over 9.4 bandwidths from these seeds: all compiled weights
    # sit at the floor, so the exact float64 path takes over (the nearest points dominate)
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 0.3, (500, 2)), rng.normal([0, 30], 0.3, (500, 2))])
    queries = np.array([[0.0, 11.0], [12.0, 0.0], [0.0, 0.5]])
    expected, expected_density = reference_shift(queries, points, None, "gaussian")
    shifted, density = shift_points(queries, points, None, "gaussian", np, 2**20)
    np.testing.assert_allclose(shifted, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(density, expected_density, rtol=1e-5)
    assert shifted[0, 1] < 5  # towards the near blob, not the middle of both


def test_wide_vector_preference_can_be_turned_off():
    import subprocess
    import sys

    probe = (
        "import pipeline.kernels.compiled as c; from numba.core import config; "
        "print(c.WIDE_VECTORS, config.CPU_FEATURES is not None)"
    )

    def run(**env):
        import os

        environment = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_FEATURES"}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=environment | env, capture_output=True, text=True
        )
        return out.stdout.split()

    assert run(MEANSHIFT_WIDE_VECTORS="0") == ["False", "False"]
    wide, features_set = run()
    assert wide == features_set  # set exactly when the CPU has AVX-512


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
@pytest.mark.parametrize("dims", [2, 3, 5])
def test_compiled_grid_matches_the_array_grid(kernel, dims):
    # far from the origin too: differences are taken in float64 before rounding
    rng = np.random.default_rng(dims)
    points = rng.normal(0, 3, (4000, dims)) + 1e5
    weights = rng.uniform(0.5, 2, 4000)
    queries = np.concatenate([points[:500], rng.normal(0, 4, (100, dims)) + 1e5])
    grid = GridPointSet(points, weights, kernel, np, 2**24, cpu_route="grid")
    assert grid._columns is not None  # the compiled layout exists for NumPy point sets
    compiled_step = grid.shift(queries)
    array_step = grid.shift_by_neighbourhood(queries)
    np.testing.assert_allclose(compiled_step[0], array_step[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(compiled_step[1], array_step[1], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
def test_cpu_grid_meets_every_point_where_neighbourhoods_hold_most_of_them(kernel):
    rng = np.random.default_rng(4)
    spread = rng.uniform(-40, 40, (3000, 2)) * kernel_radius(kernel)  # ~4 per 3 x 3 cells
    compact = rng.normal(0, 0.4 * kernel_radius(kernel), (3000, 2))  # most are neighbours
    sets = {
        "spread": GridPointSet(spread, None, kernel, np, 2**22),
        "compact": GridPointSet(compact, None, kernel, np, 2**22),
        "far": GridPointSet(compact + 500.0, None, kernel, np, 2**22),  # beyond float32's
    }
    routes = {name: grid.cpu_route() for name, grid in sets.items()}
    far_route = "dense" if kernel == "flat" else "grid"  # flat: float64, any coordinates
    assert routes == {"spread": "grid", "compact": "dense", "far": far_route}
    queries = compact[::7]
    by_cells = GridPointSet(compact, None, kernel, np, 2**22, cpu_route="grid").shift(queries)
    whole = sets["compact"].shift(queries)
    exact = DensePointSet(sets["compact"].points, None, kernel, np, 2**22).shift(queries)
    np.testing.assert_array_equal(whole[0], exact[0])  # the dense kernel (points in cell order)
    # the grid route: flat to rounding, Gaussian weights beyond 5 bandwidths left out
    np.testing.assert_allclose(
        whole[0], by_cells[0], rtol=0, atol=1e-9 if kernel == "flat" else 2e-4
    )


def test_compiled_grid_redoes_queries_that_only_see_floored_weights():
    # Gaussian grid cells are 5 bandwidths wide: the query at (0, 14.9) meets both blobs,
    # A at 9.5 and B at 9.9 bandwidths, every weight below the compiled floor
    rng = np.random.default_rng(2)
    blob_a = rng.normal([0.0, 5.4], 0.03, (300, 2))
    blob_b = rng.normal([9.9, 14.9], 0.03, (300, 2))
    both = np.concatenate([blob_a, blob_b])
    grid = GridPointSet(both, None, "gaussian", np, 2**20, cpu_route="grid")
    queries = np.array([[0.0, 14.9]])
    shifted, density = grid.shift(queries)
    expected, expected_density = grid.shift_by_neighbourhood(queries)
    np.testing.assert_allclose(shifted, expected, atol=1e-6)
    assert shifted[0, 0] < 1.0  # towards the nearer blob A, not to the middle of both


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "flat"])
@pytest.mark.parametrize("method", ["exact", "grid"])
def test_a_bandwidth_far_beyond_the_data_gives_one_cluster_at_the_mean(kernel, method):
    from pipeline import MeanShift

    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(30, 1, (100, 2))])
    for bandwidth in (1e40, 1e50, 1e300):  # float32 bandwidth units underflow from ~1e45 on
        fitted = MeanShift(bandwidth=bandwidth, kernel=kernel, method=method).fit(points)
        assert len(fitted.cluster_centers_) == 1 and set(fitted.labels_) == {0}
        np.testing.assert_allclose(fitted.cluster_centers_[0], points.mean(axis=0), rtol=1e-9)


@pytest.mark.parametrize("dims", [1, 2, 5])
def test_nearest_through_the_tree_is_the_nearest_of_every_centre(dims, monkeypatch):
    from pipeline.kernels import array

    rng = np.random.default_rng(dims)
    centers = np.round(rng.normal(0, 3, (600, dims)), 1)
    centers[300:310] = centers[:10]  # tied centres: the lower index wins
    queries = np.concatenate([rng.normal(0, 3, (3000, dims)), centers[:50], centers[:5] + 0.05])
    by_tree = nearest(queries, centers, np, 2**24)
    monkeypatch.setattr(array, "TREE_MIN_CENTERS", 10**9)
    against_all = nearest(queries, centers, np, 2**24)
    np.testing.assert_array_equal(by_tree[0], against_all[0])
    np.testing.assert_array_equal(by_tree[1], against_all[1])
    assert by_tree[0][3000:3010].max() < 300

"""The near-linear methods (grid, binned) against exact mean shift."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pipeline.engine import mean_shift
from pipeline.io.datasets import make_blobs
from pipeline.params import make_params, resolve_method


def run(points, chunks, **params):
    with dask.config.set(scheduler="threads"):
        result = mean_shift(
            da.from_array(points, chunks=(chunks, points.shape[1])), make_params(**params)
        )
        return result, result.labels.compute()


def centre_error(found, expected):
    gaps = np.sqrt(((expected[:, None, :] - found[None]) ** 2).sum(-1))
    assert sorted(gaps.argmin(axis=1)) == list(range(len(expected)))  # one to one
    return gaps.min(axis=1).max()


@pytest.mark.parametrize(("dims", "bandwidth"), [(2, 2.5), (5, 3.5)])
def test_binned_matches_exact(dims, bandwidth):
    """Documented bound: centres within 0.01 bandwidth, ARI >= 0.999 (20k+ points)."""
    points, _, _ = make_blobs(6, 3500, 5.0, dims, seed=11)
    common = dict(kernel="gaussian", bandwidth=bandwidth, label_by="mode")
    exact, exact_labels = run(points, 4000, method="exact", **common)
    binned, binned_labels = run(points, 4000, method="binned", **common)
    assert binned.method == "binned" and binned.n_cells < len(points)
    assert len(binned.centers) == len(exact.centers)
    assert centre_error(binned.centers, exact.centers) <= 0.01 * bandwidth
    assert adjusted_rand_score(exact_labels, binned_labels) >= 0.999


@pytest.mark.parametrize(("kernel", "bound"), [("flat", 0.2), ("epanechnikov", 0.03)])
def test_binned_against_exact_for_compact_kernels(kernel, bound):
    """Documented: same clusters (ARI 1), centres within 0.2 (flat) / 0.03 (Epanechnikov) bw.

    Compact kernels have flat-topped densities whose modes move with the binning more than
    the Gaussian's.
    """
    points, _, _ = make_blobs(6, 1000, 5.0, 2, seed=11)
    common = dict(kernel=kernel, bandwidth=2.5, label_by="mode")
    exact, exact_labels = run(points, 4000, method="exact", **common)
    binned, binned_labels = run(points, 4000, method="binned", **common)
    assert len(binned.centers) == len(exact.centers)
    assert centre_error(binned.centers, exact.centers) <= bound * 2.5
    assert adjusted_rand_score(exact_labels, binned_labels) == 1.0


@pytest.mark.parametrize("kernel", ["flat", "epanechnikov"])
def test_grid_is_exact_for_compact_kernels(kernel):
    points, _, _ = make_blobs(4, 1500, 5.0, 3, seed=12)
    exact, exact_labels = run(points, 1000, method="exact", kernel=kernel, bandwidth=3.0)
    grid, grid_labels = run(points, 1000, method="grid", kernel=kernel, bandwidth=3.0)
    np.testing.assert_array_equal(grid_labels, exact_labels)
    np.testing.assert_allclose(grid.centers, exact.centers, atol=1e-4 * 3.0)


def test_grid_gaussian_truncation_error_is_small():
    points, _, _ = make_blobs(4, 1500, 5.0, 2, seed=13)
    exact, exact_labels = run(points, 1000, method="exact", kernel="gaussian", bandwidth=2.5)
    grid, grid_labels = run(points, 1000, method="grid", kernel="gaussian", bandwidth=2.5)
    assert adjusted_rand_score(exact_labels, grid_labels) == 1.0
    assert centre_error(grid.centers, exact.centers) <= 1e-3 * 2.5


@pytest.mark.parametrize("method", ["binned", "grid"])
def test_results_do_not_depend_on_chunking(method):
    """Bitwise, on float64 data away from the origin (cell sums are exact fixed point)."""
    points, _, _ = make_blobs(5, 3000, 5.0, 2, seed=14)
    points = points.astype(np.float64) * 1.37 + 123.456
    outcomes = [
        run(points, chunks, method=method, kernel="gaussian", bandwidth=2.5)
        for chunks in (1000, 7777, len(points))
    ]
    for result, labels in outcomes[1:]:
        np.testing.assert_array_equal(labels, outcomes[0][1])
        np.testing.assert_array_equal(result.sizes, outcomes[0][0].sizes)
        np.testing.assert_array_equal(result.centers, outcomes[0][0].centers)


@pytest.mark.parametrize("blurring", [False, True])
def test_binned_recovers_blobs_with_every_labelling(blurring):
    points, truth, _ = make_blobs(6, 5000, 5.0, 2, seed=0)
    for label_by in ("mode", "nearest"):
        result, labels = run(
            points,
            5000,
            method="binned",
            kernel="gaussian",
            bandwidth=2.5,
            blurring=blurring,
            label_by=label_by,
        )
        assert adjusted_rand_score(truth, labels) >= 0.999
        np.testing.assert_array_equal(np.bincount(labels), result.sizes)


def test_binned_outliers_and_modes():
    points, _, _ = make_blobs(3, 4000, 5.0, 2, seed=15)
    result, labels = run(
        points, 3000, method="binned", kernel="gaussian", bandwidth=2.5, cluster_all=False
    )
    nearest = np.sqrt(((points[:, None, :] - result.centers[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_array_equal(labels == -1, nearest > 2.5)
    np.testing.assert_array_equal(np.bincount(labels[labels >= 0]), result.sizes)
    with dask.config.set(scheduler="threads"):
        modes = result.modes.compute()
    assert modes.shape == points.shape
    assert len(np.unique(modes, axis=0)) <= result.n_cells  # one mode per cell


def test_auto_method_choice():
    params = make_params()
    assert resolve_method(1_500, 2, params) == "exact"
    assert resolve_method(1_000_000, 2, params) == "grid"  # never the binned approximation
    assert resolve_method(1_000_000, 6, params) == "grid"
    assert resolve_method(1_000_000, 12, params) == "exact"
    assert resolve_method(1_500, 2, make_params(method="binned")) == "binned"


def test_binned_cells_keep_precision_far_from_the_origin():
    points, _, _ = make_blobs(3, 4000, 5.0, 2, seed=16)
    near, near_labels = run(
        points.astype(np.float64), 3000, method="binned", kernel="gaussian", bandwidth=2.5
    )
    far, far_labels = run(
        points.astype(np.float64) + 1e8, 3000, method="binned", kernel="gaussian", bandwidth=2.5
    )
    assert adjusted_rand_score(near_labels, far_labels) == 1.0
    # cells are cut elsewhere, so centres differ a little, but not by float64 rounding
    assert centre_error(far.centers - 1e8, near.centers) <= 0.01 * 2.5


def test_compiled_path_precision_away_from_the_origin():
    """Data 140 bandwidths from the centre: the float32 kernel stays within 1e-5 bw of float64."""
    from pipeline.kernels import blocked_shift, shift_points

    rng = np.random.default_rng(17)
    points = np.concatenate([rng.normal(-140, 1, (2000, 2)), rng.normal(140, 1, (2000, 2))])
    compiled_step, _ = shift_points(points, points, None, "gaussian", np, 2**24)
    exact_step, _ = blocked_shift(points, points, None, "gaussian", np, 2**24)
    assert np.abs(compiled_step - exact_step).max() <= 1e-5


@pytest.mark.parametrize("dense", [True, False])
def test_cell_table_finds_each_points_cell_and_refuses_unknown_cells(dense, monkeypatch):
    from pipeline.engine import binned
    from pipeline.errors import InputDataError

    if not dense:
        monkeypatch.setattr(binned, "DENSE_TABLE_MIN_CELLS", 0)
        monkeypatch.setattr(binned, "DENSE_TABLE_CELLS_PER_KEY", 0)
    rng = np.random.default_rng(0)
    points = (rng.normal(0, 3, (5000, 2)) + 1e4).astype(np.float32)  # as Zarr inputs often are
    point_keys = np.floor(points.astype(np.float64) / 0.5).astype(np.int64)  # binning's rounding
    keys = np.unique(point_keys, axis=0)
    rng.shuffle(keys)
    table = binned.CellTable.build(keys, 0.5)
    assert (table.dense is not None) == dense
    np.testing.assert_array_equal(keys[table.lookup(points)], point_keys)
    for stray in ([1e4 + 50, 1e4], [1e4 - 50, 1e4 - 50], [0.0, 0.0]):  # empty or outside
        with pytest.raises(InputDataError, match="input changed"):
            table.lookup(np.array([stray]))


def _bundled_data_sets() -> dict[str, np.ndarray]:
    """Data scikit-learn ships: iris, and every 40th colour pixel of its two photographs."""
    from sklearn.datasets import load_iris, load_sample_image

    pixels = {
        name: load_sample_image(f"{name}.jpg").reshape(-1, 3)[::40].astype(np.float64)
        for name in ("china", "flower")
    }
    return {"iris": load_iris().data, **pixels}


def test_deviation_from_exact_on_bundled_data_is_what_the_readme_says():
    from pipeline import MeanShift

    count_mismatches = 0
    for X in _bundled_data_sets().values():
        bandwidth = MeanShift().fit(X).bandwidth_  # estimated once: it depends on X alone
        for kernel in ("flat", "epanechnikov", "gaussian"):
            exact = MeanShift(kernel=kernel, method="exact", bandwidth=bandwidth).fit(X)
            grid = MeanShift(kernel=kernel, method="grid", bandwidth=bandwidth).fit(X)
            binned = MeanShift(kernel=kernel, method="binned", bandwidth=bandwidth).fit(X)
            assert len(grid.cluster_centers_) == len(exact.cluster_centers_)
            gap = np.abs(grid.cluster_centers_ - exact.cluster_centers_).max() / bandwidth
            assert gap <= (1e-4 if kernel == "gaussian" else 1e-6)
            assert adjusted_rand_score(exact.labels_, grid.labels_) == 1.0
            binned_labels = np.asarray(binned.labels_)
            assert adjusted_rand_score(exact.labels_, binned_labels) >= 0.87
            extra = len(binned.cluster_centers_) - len(exact.cluster_centers_)
            assert abs(extra) <= 1
            if extra == 0:
                gap = np.abs(binned.cluster_centers_ - exact.cluster_centers_).max() / bandwidth
                assert gap <= 0.03
            count_mismatches += extra != 0
    assert count_mismatches == 1  # of 9

"""The near-linear methods (grid, binned) against exact mean shift."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pipeline.datasets import make_blobs
from pipeline.engine import mean_shift
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


def test_binned_results_do_not_depend_on_chunking():
    points, _, _ = make_blobs(5, 5000, 5.0, 2, seed=14)
    outcomes = [
        run(points, chunks, method="binned", kernel="gaussian", bandwidth=2.5)
        for chunks in (1000, 7777, len(points))
    ]
    for result, labels in outcomes[1:]:
        np.testing.assert_array_equal(labels, outcomes[0][1])
        np.testing.assert_array_equal(result.sizes, outcomes[0][0].sizes)
        np.testing.assert_allclose(result.centers, outcomes[0][0].centers, atol=1e-9)


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
    assert resolve_method(1_000_000, 2, params) == "binned"
    assert resolve_method(1_000_000, 6, params) == "grid"
    assert resolve_method(1_000_000, 12, params) == "exact"
    assert resolve_method(1_500, 2, make_params(method="binned")) == "binned"

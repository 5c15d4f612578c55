"""The engine against references: the seed's algorithm, scikit-learn, the truth."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import MeanShift as SklearnMeanShift
from sklearn.metrics import adjusted_rand_score

from pipeline.engine import mean_shift
from pipeline.io.datasets import make_blobs
from pipeline.params import make_params

from .references import seed_blurring_reference

SEED_CONFIG = dict(kernel="gaussian", blurring=True, bandwidth=2.5)


def run(points, chunks=None, seeds=None, weights=None, **params):
    array = da.from_array(points, chunks=(chunks or len(points), points.shape[1]))
    return mean_shift(array, make_params(**params), seeds=seeds, weights=weights)


def test_seed_equivalence_five_blurring_iterations(seed_data):
    points, _, _ = seed_data
    with dask.config.set(scheduler="sync"):
        result = run(points, chunks=400, max_iter=5, tol=0.0, **SEED_CONFIG)
        modes = result.modes.compute()
    assert result.n_iter == 5
    reference = seed_blurring_reference(points, 2.5, 5)
    np.testing.assert_allclose(modes, reference, atol=1e-4, rtol=0)


def test_seed_configuration_recovers_the_blobs(seed_data):
    points, truth, centroids = seed_data
    with dask.config.set(scheduler="sync"):
        result = run(points, chunks=500, **SEED_CONFIG)
        labels = result.labels.compute()
    assert adjusted_rand_score(truth, labels) >= 0.99
    assert result.converged and result.n_iter < 300
    # every true centroid has a found centre near it (blob std is sqrt(5))
    gaps = np.sqrt(((centroids[:, None, :] - result.centers[None]) ** 2).sum(-1)).min(axis=1)
    assert gaps.max() < 1.0


def test_blurring_stops_by_itself_before_max_iter(seed_data):
    points, _, _ = seed_data
    with dask.config.set(scheduler="sync"):
        result = run(points, max_iter=300, **SEED_CONFIG)
    assert result.converged
    assert result.n_iter == 5  # the seed notebook's count, found by the stop rule
    assert len(result.max_shift) == result.n_iter
    assert result.max_shift[-1] <= 1e-3 * 2.5 < result.max_shift[-2]
    assert "moved at most tol" in result.stop_reason


@pytest.mark.parametrize(
    ("n_clusters", "per_cluster", "dims", "seed", "bandwidth"),
    [(6, 250, 2, 0, 2.5), (4, 400, 2, 1, 3.0), (5, 300, 3, 2, 3.5), (3, 500, 2, 3, 4.0)],
)
def test_flat_bin_seeding_matches_sklearn(n_clusters, per_cluster, dims, seed, bandwidth):
    points, _, _ = make_blobs(n_clusters, per_cluster, 5.0, dims, seed)
    reference = SklearnMeanShift(bandwidth=bandwidth, bin_seeding=True).fit(points)
    with dask.config.set(scheduler="sync"):
        result = run(points, chunks=333, kernel="flat", bandwidth=bandwidth, bin_seeding=True)
        labels = result.labels.compute()
    expected = reference.cluster_centers_
    assert len(result.centers) == len(expected)
    # match centres one to one, nearest first
    gaps = np.sqrt(((expected[:, None, :] - result.centers[None]) ** 2).sum(-1))
    assert np.all(gaps.min(axis=1) <= 1e-3 * bandwidth)
    assert sorted(gaps.argmin(axis=1)) == list(range(len(expected)))
    assert adjusted_rand_score(reference.labels_, labels) >= 0.999


def test_flat_all_points_as_seeds_matches_sklearn(seed_data):
    """scikit-learn's default (every point a seed): same centres, same labels, same n_iter."""
    points, _, _ = seed_data
    subset = points[::3]
    reference = SklearnMeanShift(bandwidth=3.0).fit(subset)
    with dask.config.set(scheduler="sync"):
        result = run(subset, chunks=128, kernel="flat", bandwidth=3.0)
        labels = result.labels.compute()
    expected = reference.cluster_centers_
    assert len(result.centers) == len(expected)
    gaps = np.sqrt(((expected[:, None, :] - result.centers[None]) ** 2).sum(-1))
    assert np.all(gaps.min(axis=1) <= 1e-3 * 3.0)
    assert adjusted_rand_score(reference.labels_, labels) >= 0.999
    assert result.n_iter == reference.n_iter_


def test_label_by_mode_follows_each_points_basin(seed_data):
    points, _, _ = seed_data
    subset = points[::3]
    with dask.config.set(scheduler="sync"):
        result = run(subset, chunks=128, kernel="flat", bandwidth=3.0, label_by="mode")
        labels = result.labels.compute()
        modes = result.modes.compute()
    own = np.sqrt(((modes[:, None, :] - result.centers[None]) ** 2).sum(-1)).argmin(axis=1)
    np.testing.assert_array_equal(labels, own)
    nearest = np.sqrt(((subset[:, None, :] - result.centers[None]) ** 2).sum(-1)).argmin(axis=1)
    assert (labels != nearest).any()  # the two rules differ on this data


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
@pytest.mark.parametrize("blurring", [False, True])
def test_partition_invariance_chunk_sizes(seed_data, kernel, blurring):
    points, _, _ = seed_data
    outcomes = []
    for chunks in (100, 1000, len(points)):
        with dask.config.set(scheduler="threads"):
            result = run(points, chunks=chunks, kernel=kernel, blurring=blurring, bandwidth=2.5)
            outcomes.append((result.labels.compute(), result.centers, result.sizes, result.n_iter))
    labels0, centers0, sizes0, iters0 = outcomes[0]
    for labels, centers, sizes, iters in outcomes[1:]:
        np.testing.assert_array_equal(labels, labels0)
        np.testing.assert_array_equal(sizes, sizes0)
        np.testing.assert_allclose(centers, centers0, rtol=0, atol=1e-9)
        assert iters == iters0


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
def test_weights_equal_duplicated_points(seed_data, kernel):
    points, _, _ = seed_data
    sample = points[::5]
    doubled_weights = np.ones(len(sample))
    doubled_weights[::2] = 2.0
    duplicated = np.concatenate([sample, sample[::2]])
    with dask.config.set(scheduler="sync"):
        weighted = run(
            sample,
            weights=da.from_array(doubled_weights, chunks=len(sample)),
            kernel=kernel,
            bandwidth=2.5,
        )
        plain = run(duplicated, kernel=kernel, bandwidth=2.5)
        labels_w = weighted.labels.compute()
        labels_p = plain.labels.compute()[: len(sample)]
    # centres are polished to 1e-5 bandwidths per step, with float32 sums in the kernels
    np.testing.assert_allclose(weighted.centers, plain.centers, atol=1e-4 * 2.5)
    np.testing.assert_array_equal(weighted.sizes, plain.sizes)
    np.testing.assert_array_equal(labels_w, labels_p)


def test_small_block_budget_gives_same_result(seed_data):
    points, _, _ = seed_data
    with dask.config.set(scheduler="sync"):
        small = run(points, kernel="gaussian", blurring=True, bandwidth=2.5, block_bytes=2**16)
        large = run(points, kernel="gaussian", blurring=True, bandwidth=2.5)
        np.testing.assert_allclose(small.modes.compute(), large.modes.compute(), atol=1e-9)
    np.testing.assert_array_equal(small.sizes, large.sizes)


def test_given_seeds_and_outliers(seed_data):
    points, truth, centroids = seed_data
    with dask.config.set(scheduler="sync"):
        result = run(points, seeds=centroids, kernel="gaussian", bandwidth=2.5, cluster_all=False)
        labels = result.labels.compute()
    assert len(result.centers) == 6
    assert result.n_seeds == 6
    assert (labels == -1).any()
    kept = labels >= 0
    assert adjusted_rand_score(truth[kept], labels[kept]) >= 0.99
    # outliers are exactly the points farther than the bandwidth from their centre
    nearest = np.sqrt(((points[:, None, :] - result.centers[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_array_equal(labels == -1, nearest > 2.5)


def test_clusters_numbered_by_descending_size():
    rng = np.random.default_rng(5)
    points = np.concatenate(
        [rng.normal(0, 0.3, (50, 2)), rng.normal(10, 0.3, (200, 2)), rng.normal(-10, 0.3, (120, 2))]
    )
    with dask.config.set(scheduler="sync"):
        result = run(points, kernel="gaussian", bandwidth=1.0)
        labels = result.labels.compute()
    np.testing.assert_array_equal(result.sizes, [200, 120, 50])
    np.testing.assert_array_equal(np.bincount(labels), [200, 120, 50])
    assert labels.dtype == np.int32
    np.testing.assert_allclose(result.centers[0], [10, 10], atol=0.2)


def test_rows_with_nan_or_inf_are_refused():
    from pipeline.errors import InputDataError

    points = np.zeros((100, 2))
    points[[3, 50]] = [np.nan, 1.0]
    points[70, 1] = np.inf
    with pytest.raises(InputDataError, match="3 of 100 rows hold NaN or Inf"):
        run(points, chunks=30, bandwidth=1.0)


def test_seeding_options_need_standard_mean_shift(seed_data):
    from pipeline.errors import ParameterError

    points, _, centroids = seed_data
    with pytest.raises(ParameterError, match="bin_seeding applies to standard mean shift"):
        make_params(blurring=True, bin_seeding=True)
    with pytest.raises(ParameterError, match="seeds apply to standard mean shift"):
        run(points, seeds=centroids, blurring=True, bandwidth=2.5)


def test_estimated_bandwidth_is_recorded(seed_data):
    from pipeline.engine.bandwidth import estimate_bandwidth

    points, _, _ = seed_data
    with dask.config.set(scheduler="sync"):
        result = run(points, chunks=500, kernel="gaussian")
    assert result.bandwidth_estimated
    assert result.bandwidth == pytest.approx(estimate_bandwidth(points))


def test_iteration_graphs_do_not_grow(seed_data):
    """Each blurring iteration computes a graph of the same size, however many came before."""
    from dask.callbacks import Callback

    points, _, _ = seed_data

    def graph_sizes(max_iter):
        sizes = []

        class Count(Callback):
            def _start(self, dsk):
                sizes.append(len(dsk))

        with dask.config.set(scheduler="threads"), Count():
            run(points, chunks=250, max_iter=max_iter, tol=0.0, **SEED_CONFIG)
        return sizes

    short, long = graph_sizes(2), graph_sizes(5)  # the stop rule ends this data at 6
    assert len(long) - len(short) == 2 * 3  # one persist and one statistics call per iteration
    n_chunks = len(points) // 250
    # a graph that kept earlier iterations would hold >= 2 * 5 * n_chunks tasks by now
    assert max(long) <= 5 * n_chunks + 5


@pytest.mark.parametrize(
    ("kernel", "dims", "bandwidth", "label_by"),
    [("epanechnikov", 5, 3.0, "nearest"), ("gaussian", 5, 3.5, "mode"), ("flat", 3, 3.0, "mode")],
)
def test_partition_invariance_standard_higher_dims(kernel, dims, bandwidth, label_by):
    points, _, _ = make_blobs(5, 120, 5.0, dims, seed=1)
    outcomes = []
    for chunks in (7, 64, len(points)):
        with dask.config.set(scheduler="threads"):
            result = run(
                points, chunks=chunks, kernel=kernel, bandwidth=bandwidth, label_by=label_by
            )
            outcomes.append((result.labels.compute(), result.centers, result.n_iter))
    for labels, centers, n_iter in outcomes[1:]:
        np.testing.assert_array_equal(labels, outcomes[0][0])
        np.testing.assert_array_equal(centers, outcomes[0][1])
        assert n_iter == outcomes[0][2]


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["gaussian", "flat", "epanechnikov"]),
    st.booleans(),
    st.floats(-1e6, 1e6),
    st.sampled_from([1e-30, 1e-3, 1.0, 7.5, 1e30]),
)
def test_equivariant_to_translation_and_scaling_together(kernel, blurring, offset, scale):
    """Moving and scaling data and bandwidth together moves and scales the centres alike."""
    points, _, _ = make_blobs(3, 60, 5.0, 2, seed=3)
    points = points.astype(np.float64)
    with dask.config.set(scheduler="sync"):
        base = run(points, kernel=kernel, blurring=blurring, bandwidth=3.0)
        moved = run(
            points * scale + offset * scale, kernel=kernel, blurring=blurring, bandwidth=3.0 * scale
        )
        base_labels, moved_labels = base.labels.compute(), moved.labels.compute()
    np.testing.assert_array_equal(moved_labels, base_labels)
    np.testing.assert_allclose(
        (moved.centers - offset * scale) / scale, base.centers, rtol=0, atol=1e-6
    )


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(
        [
            dict(kernel="gaussian", blurring=True),
            dict(kernel="flat"),
            dict(kernel="epanechnikov", method="grid"),
            dict(kernel="gaussian", bin_seeding=True),
        ]
    ),
    st.integers(2, 5),
    st.randoms(use_true_random=False),
)
def test_invariant_to_point_order(config, clusters, random):
    """Shuffling the rows shuffles the labels alike and leaves centres, sizes and numbering."""
    points, _, _ = make_blobs(clusters, 40, 5.0, 2, seed=clusters)
    points = points.astype(np.float64)
    order = np.array(random.sample(range(len(points)), len(points)))
    params = make_params(bandwidth=2.0, **config)
    base = mean_shift(points, params)
    shuffled = mean_shift(points[order], params)
    np.testing.assert_array_equal(shuffled.labels, np.asarray(base.labels)[order])
    # kernels sum in another order, so seeds stop at another point within tol bandwidths
    np.testing.assert_allclose(shuffled.centers, base.centers, rtol=0, atol=params.tol * 2.0)
    np.testing.assert_array_equal(shuffled.sizes, base.sizes)


IN_MEMORY_CASES = [
    dict(kernel="gaussian", blurring=True, method="exact"),
    dict(kernel="gaussian", blurring=True, method="grid"),
    dict(kernel="flat", method="exact"),
    dict(kernel="flat", method="grid", bin_seeding=True),
    dict(kernel="epanechnikov", method="exact", cluster_all=False),
    dict(kernel="gaussian", method="grid", label_by="mode"),
]


@pytest.mark.parametrize("config", IN_MEMORY_CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_input_runs_in_process_with_the_dask_result(seed_data, config, weighted):
    points, _, _ = seed_data
    weights = np.random.default_rng(1).integers(1, 4, len(points)).astype(float)
    weights = weights if weighted else None
    params = make_params(bandwidth=2.5, **config)
    with dask.config.set(scheduler="threads"):
        on_dask = mean_shift(
            da.from_array(points, chunks=(400, 2)),
            params,
            weights=None if weights is None else da.from_array(weights, chunks=400),
        )
        labels_dask = on_dask.labels.compute()
    outcomes = [mean_shift(points, params, weights=weights, n_threads=t) for t in (1, 3)]
    for in_memory in outcomes:
        assert isinstance(in_memory.labels, np.ndarray)  # no task graph
        np.testing.assert_array_equal(in_memory.labels, labels_dask)
        np.testing.assert_array_equal(in_memory.centers, on_dask.centers)
        np.testing.assert_array_equal(in_memory.sizes, on_dask.sizes)
        assert in_memory.n_iter == on_dask.n_iter
        assert in_memory.stop_reason == on_dask.stop_reason
    if on_dask.modes is not None:
        np.testing.assert_array_equal(outcomes[0].modes, on_dask.modes.compute())


def test_numpy_input_with_binned_method_goes_through_dask(seed_data):
    points, truth, _ = seed_data
    result = mean_shift(points, make_params(bandwidth=2.5, kernel="gaussian", method="binned"))
    assert result.method == "binned" and result.n_cells is not None
    assert adjusted_rand_score(truth, np.asarray(result.labels)) >= 0.99


def test_numpy_input_is_checked_like_dask_input():
    from pipeline.errors import InputDataError, ParameterError

    points = np.zeros((100, 2))
    points[[3, 50]] = [np.nan, 1.0]
    params = make_params(bandwidth=1.0)
    with pytest.raises(InputDataError, match="2 of 100 rows hold NaN or Inf"):
        mean_shift(points, params)
    with pytest.raises(InputDataError, match="2-D"):
        mean_shift(np.zeros(5), params)
    with pytest.raises(InputDataError, match="empty"):
        mean_shift(np.zeros((0, 2)), params)
    with pytest.raises(InputDataError, match="finite and non-negative"):
        mean_shift(np.ones((10, 2)), params, weights=-np.ones(10))
    with pytest.raises(ParameterError, match="weights must have shape"):
        mean_shift(np.ones((10, 2)), params, weights=np.ones(3))

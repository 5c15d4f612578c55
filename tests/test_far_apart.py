"""Groups of data far apart above 16 dimensions, where distances come from matrix products:
the results match the float64 difference form however far apart the groups lie, up to the
1e12 bandwidths of extent the engine accepts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import MeanShift as SklearnMeanShift

from pipeline import MeanShift
from pipeline.engine import mean_shift
from pipeline.kernels import blocked_shift, nearest, shift_points
from pipeline.params import make_params

from .gpu_checks import difference_reference


def far_apart_blobs(d, gap, per_blob=50, spread=0.1, seed=0):
    """Two groups of 3 tight blobs, ``gap`` bandwidths apart (along a random direction, the
    groups either side of the origin as the engine centres them). Blob centres are more than
    3 bandwidths apart and every point within 1 of its own blob's others (flat: no pair near
    the edge). Returns the points, shuffled, and each point's blob (0-2: the first group)."""
    rng = np.random.default_rng(seed)
    while True:
        centres = rng.uniform(-3, 3, (3, d))
        apart = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        if apart[np.triu_indices(3, 1)].min() > 3:
            break
    blobs = np.concatenate([c + rng.normal(0, spread / np.sqrt(d), (per_blob, d)) for c in centres])
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    points = np.concatenate([blobs - gap / 2 * direction, blobs + gap / 2 * direction])
    truth = np.repeat(np.arange(6), per_blob)
    order = rng.permutation(len(points))
    return points[order], truth[order]


def queries_for(points, rng):
    """The points, points moved a little, and points moved a bandwidth and a half (partial
    or empty neighbourhoods), interleaved so every block of queries holds both groups."""
    d = points.shape[1]
    near = points[::3] + rng.normal(0, 0.05 / np.sqrt(d), (len(points[::3]), d))
    off = points[1::7] + 1.5 * np.eye(d)[0]
    queries = np.concatenate([points, near, off])
    return queries[rng.permutation(len(queries))]


def assert_matches(got, expected, queries):
    """Offsets within 1e-7 bandwidths, beyond the rounding of the coordinates themselves."""
    shifted, density = (np.asarray(a) for a in got)
    ulp = np.spacing(np.abs(queries).max())
    np.testing.assert_allclose(shifted, expected[0], rtol=0, atol=1e-7 + 2 * ulp)
    np.testing.assert_allclose(density, expected[1], rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("d", [20, 32])
@pytest.mark.parametrize("gap", [1e8, 1e11])
def test_shift_far_apart_matches_the_difference_form(kernel, weighted, d, gap):
    points, _ = far_apart_blobs(d, gap, per_blob=60)
    rng = np.random.default_rng(d)
    weights = rng.uniform(0.5, 2, len(points)) if weighted else None
    queries = queries_for(points, rng)
    expected = difference_reference(queries, points, weights, kernel)
    assert (expected[1] > 0).sum() > len(queries) // 2
    assert kernel == "gaussian" or (expected[1] == 0).any()  # empty neighbourhoods too
    for block_bytes in (2**18, 2**24):  # blocks of a few queries and of all of them
        got = blocked_shift(queries, points, weights, kernel, np, block_bytes)
        assert_matches(got, expected, queries)
    assert_matches(shift_points(queries, points, weights, kernel, np, 2**22), expected, queries)


@pytest.mark.parametrize(
    "groups, size, scale, d",
    [
        (60, 4, 1e6, 24),  # too small for parts: every pair screened by the product
        (40, 12, 1e11, 24),  # more groups than parts: the rest screened, pair by pair
        (34, 24, 1e11, 40),  # the rest's pairs within reach many: every pair from differences
    ],
)
def test_queries_scattered_beyond_compact_parts(groups, size, scale, d):
    rng = np.random.default_rng(groups)
    anchors = rng.normal(size=(groups, d)) * scale
    points = np.repeat(anchors, size, axis=0)
    points += rng.normal(0, 0.1 / np.sqrt(d), points.shape)
    queries = queries_for(points, rng)
    for kernel in ("gaussian", "flat", "epanechnikov"):
        expected = difference_reference(queries, points, None, kernel)
        for block_bytes in (2**20, 2**24):
            got = blocked_shift(queries, points, None, kernel, np, block_bytes)
            assert_matches(got, expected, queries)


@pytest.mark.parametrize("gap", [1e8, 1e11])
def test_nearest_centre_far_apart(gap):
    points, truth = far_apart_blobs(20, gap)
    centres = np.stack([points[truth == k].mean(axis=0) for k in range(6)])
    index, distance2 = nearest(points, centres, np, 2**22)
    np.testing.assert_array_equal(index, truth)
    expected = np.einsum("ij,ij->i", points - centres[truth], points - centres[truth])
    np.testing.assert_allclose(distance2, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "groups, per_group, n_queries, scale",
    [
        (300, 1, 2000, 1e6),  # scattered centres: few candidates each, from the product
        (16, 25, 80, 1e11),  # groups of centres far apart: every centre from differences
    ],
)
def test_nearest_centre_among_scattered_centres(groups, per_group, n_queries, scale):
    """Each query's nearest among centres far apart (a duplicated one: the lower index)."""
    rng = np.random.default_rng(4)
    d = 20
    centres = np.repeat(rng.normal(size=(groups, d)) * scale, per_group, axis=0)
    centres += rng.normal(0, 3, centres.shape)
    centres[7] = centres[3]
    truth = rng.integers(0, len(centres), n_queries)
    truth[truth == 7] = 3
    queries = centres[truth] + rng.normal(0, 0.3 / np.sqrt(d), (len(truth), d))
    index, distance2 = nearest(queries, centres, np, 2**22)
    np.testing.assert_array_equal(index, truth)
    expected = np.einsum("ij,ij->i", queries - centres[truth], queries - centres[truth])
    np.testing.assert_allclose(distance2, expected, rtol=1e-9)


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
def test_groups_far_apart_cluster_as_each_group_alone(kernel):
    """Two groups of 3 blobs 1e9 bandwidths apart, d = 20: 6 clusters of 50, the blobs."""
    points, truth = far_apart_blobs(20, 1e9)
    result = mean_shift(points, make_params(bandwidth=1.0, kernel=kernel))
    labels = np.asarray(result.labels)
    assert sorted(np.bincount(labels)) == [50] * 6
    assert len(np.unique(np.c_[labels, truth], axis=0)) == 6  # one cluster per blob


def test_flat_far_apart_is_scikit_learn_on_each_group():
    """scikit-learn's own distances lose the groups at this range (its brute-force neighbour
    search takes the same matrix product), so each group is compared alone, near the origin,
    where scikit-learn is right: the same clusters and centres, shifted by the gap."""
    gap = 1e9
    points, truth = far_apart_blobs(20, gap)
    ours = MeanShift(bandwidth=1.0).fit(points)
    assert sorted(np.bincount(ours.labels_)) == [50] * 6
    for group in (truth < 3, truth >= 3):
        offset = points[group].mean(axis=0)
        theirs = SklearnMeanShift(bandwidth=1.0).fit(points[group] - offset)
        assert len(theirs.cluster_centers_) == 3
        assert len(np.unique(np.c_[theirs.labels_, ours.labels_[group]], axis=0)) == 3
        mine = ours.cluster_centers_[np.unique(ours.labels_[group])] - offset
        np.testing.assert_allclose(
            mine[np.lexsort(mine.T)],
            theirs.cluster_centers_[np.lexsort(theirs.cluster_centers_.T)],
            rtol=0,
            atol=1e-6,
        )

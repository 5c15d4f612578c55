"""``MeanShift(kernel="flat")`` against scikit-learn's ``MeanShift``, run side by side.

Identical means: the same integers in ``labels_``, the same centres in the same order
(to rounding, 1e-9), the same ``n_iter_``, the same warnings and the same exceptions
(type and text).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import MeanShift as SklearnMeanShift
from sklearn.cluster import estimate_bandwidth
from sklearn.datasets import load_digits, load_iris, load_wine, make_blobs

from pipeline import MeanShift

TIED = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]], dtype=float)
BLOBS, _ = make_blobs(n_samples=300, centers=3, random_state=0)
BLOBS_BANDWIDTH = estimate_bandwidth(BLOBS)
DUPLICATES = np.array([1, 1, 1, 2, 2, 2, 3, 3], dtype=float)[:, None]  # estimated bandwidth 0


def _fit(estimator, X):
    """The fitted estimator (or the exception it raised) and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = estimator.fit(X)
        except Exception as exc:  # compared with scikit-learn's below
            outcome = exc
    return outcome, [(w.category, str(w.message)) for w in caught]


def assert_identical(X, **parameters):
    theirs, their_warnings = _fit(SklearnMeanShift(**parameters), X)
    ours, our_warnings = _fit(MeanShift(**parameters), X)
    assert our_warnings == their_warnings
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs) and str(ours) == str(theirs)
        return
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    assert ours.cluster_centers_.shape == theirs.cluster_centers_.shape
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-9)
    assert ours.n_iter_ == theirs.n_iter_


CASES = {
    "two tied clusters": (TIED, dict(bandwidth=2)),
    "blobs": (BLOBS, dict(bandwidth=BLOBS_BANDWIDTH)),
    "blobs, estimated bandwidth": (BLOBS, dict()),
    "blobs, bin seeding": (BLOBS, dict(bandwidth=BLOBS_BANDWIDTH, bin_seeding=True)),
    "blobs, max_iter=1": (BLOBS, dict(bandwidth=BLOBS_BANDWIDTH, max_iter=1)),
    "blobs, max_iter=2": (BLOBS, dict(bandwidth=BLOBS_BANDWIDTH, max_iter=2)),
    "blobs, outliers left out": (BLOBS, dict(bandwidth=BLOBS_BANDWIDTH / 3, cluster_all=False)),
    "blobs, min_bin_freq": (BLOBS, dict(bandwidth=2.0, bin_seeding=True, min_bin_freq=5)),
    "blobs, given seeds": (BLOBS, dict(bandwidth=BLOBS_BANDWIDTH, seeds=BLOBS[::37])),
    "seeds far from the data": (BLOBS, dict(bandwidth=0.1, seeds=np.array([[100.0, 100.0]]))),
    "binning fails": (BLOBS, dict(bandwidth=1e-6, bin_seeding=True)),
    "estimated bandwidth 0": (DUPLICATES, dict()),
    "estimated bandwidth 0, bin seeding": (DUPLICATES, dict(bin_seeding=True)),
    "estimated bandwidth 0, outliers left out": (DUPLICATES, dict(cluster_all=False)),
    "all points identical": (np.ones((10, 2)), dict()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_flat_standard_mean_shift_is_scikit_learns(case):
    X, parameters = CASES[case]
    assert_identical(X, **parameters)


@pytest.mark.parametrize("loader", [load_iris, load_wine, load_digits], ids=lambda f: f.__name__)
@pytest.mark.parametrize("bin_seeding", [False, True])
def test_the_bundled_data_sets_cluster_as_in_scikit_learn(loader, bin_seeding):
    X = loader().data[:600]
    assert_identical(X, bin_seeding=bin_seeding)


def test_tied_clusters_are_numbered_as_scikit_learn_numbers_them():
    """Two clusters of 3 points: scikit-learn's order (density, then coordinates, both
    descending), whatever their sizes; ``cluster_order="size"`` is the other choice."""
    labels = MeanShift(bandwidth=2).fit(TIED).labels_
    assert labels.tolist() == SklearnMeanShift(bandwidth=2).fit(TIED).labels_.tolist()
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    by_size = MeanShift(bandwidth=2, cluster_order="size").fit(TIED)
    assert by_size.labels_.tolist() == [0, 0, 0, 1, 1, 1]  # equal sizes: coordinates ascending
    sizes = MeanShift(bandwidth=BLOBS_BANDWIDTH / 3, cluster_order="size").fit(BLOBS)
    assert list(sizes.cluster_sizes_) == sorted(sizes.cluster_sizes_, reverse=True)


def test_where_the_readme_says_we_differ_we_do():
    """An estimated bandwidth of 0 on dask input is refused in one line; a min_bin_freq
    above every bin's count is our ValueError where scikit-learn's fit fails in max()."""
    import dask.array as da

    from pipeline.errors import InputDataError

    with pytest.raises(InputDataError, match="the estimated bandwidth is 0"):
        MeanShift().fit(da.from_array(DUPLICATES, chunks=(4, 1)))
    with pytest.raises(ValueError):
        SklearnMeanShift(bandwidth=2.0, bin_seeding=True, min_bin_freq=10_000).fit(BLOBS)
    with pytest.raises(ValueError, match="no bin holds min_bin_freq=10000 points"):
        MeanShift(bandwidth=2.0, bin_seeding=True, min_bin_freq=10_000).fit(BLOBS)
    assert MeanShift().fit(TIED).labels_.dtype == np.int32

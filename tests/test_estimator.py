"""The scikit-learn compatible estimator."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import MeanShift as SklearnMeanShift
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline import MeanShift


@parametrize_with_checks([MeanShift(), MeanShift(kernel="gaussian", blurring=True)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_defaults_and_results_match_sklearn(seed_data):
    points, _, _ = seed_data
    ours = MeanShift(bandwidth=2.5, bin_seeding=True).fit(points)
    theirs = SklearnMeanShift(bandwidth=2.5, bin_seeding=True).fit(points)
    assert adjusted_rand_score(theirs.labels_, ours.labels_) >= 0.999
    assert ours.cluster_centers_.shape == theirs.cluster_centers_.shape
    assert ours.n_features_in_ == 2
    assert isinstance(ours.labels_, np.ndarray) and ours.labels_.dtype == np.int32
    assert set(SklearnMeanShift().get_params()) <= set(MeanShift().get_params())


def test_dask_input_gives_dask_labels_equal_to_numpy(seed_data):
    points, truth, _ = seed_data
    est = MeanShift(bandwidth=2.5, kernel="gaussian", blurring=True)
    from_numpy = clone(est).fit(points)
    from_dask = clone(est).fit(da.from_array(points, chunks=(250, 2)))
    assert isinstance(from_dask.labels_, da.Array)
    np.testing.assert_array_equal(from_dask.labels_.compute(), from_numpy.labels_)
    np.testing.assert_allclose(from_dask.cluster_centers_, from_numpy.cluster_centers_, atol=1e-9)
    assert adjusted_rand_score(truth, from_numpy.labels_) >= 0.99
    predicted = from_dask.predict(da.from_array(points, chunks=(500, 2)))
    assert isinstance(predicted, da.Array)
    np.testing.assert_array_equal(predicted.compute(), from_numpy.predict(points))


def test_predict_is_nearest_centre(seed_data):
    points, _, _ = seed_data
    est = MeanShift(bandwidth=2.5, kernel="gaussian").fit(points)
    new = np.array([[0.0, 0.0], [50.0, 50.0], *est.cluster_centers_])
    expected = np.sqrt(((new[:, None] - est.cluster_centers_[None]) ** 2).sum(-1)).argmin(axis=1)
    np.testing.assert_array_equal(est.predict(new), expected)
    np.testing.assert_array_equal(est.fit_predict(points), est.labels_)


def test_fit_on_embedded_cluster(seed_data):
    points, truth, _ = seed_data
    est = MeanShift(bandwidth=2.5, kernel="gaussian", blurring=True, n_workers=2).fit(points)
    assert adjusted_rand_score(truth, est.labels_) >= 0.99


def test_invalid_parameters_raise_value_error(seed_data):
    points, _, _ = seed_data
    with pytest.raises(ValueError, match="invalid parameter 'kernel'"):
        MeanShift(kernel="cosine").fit(points)
    with pytest.raises(ValueError, match="invalid parameter 'bandwidth'"):
        MeanShift(bandwidth=-1.0).fit(points)
    with pytest.raises(ValueError, match="invalid parameter 'max_iter'"):
        MeanShift(max_iter=0).fit(points)


def test_fit_on_a_zarr_path_equals_fit_on_its_points(seed_data, tmp_path):
    import zarr

    points, _, _ = seed_data
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    group.create_array("points", shape=points.shape, chunks=(300, 2), dtype="f8")[...] = points
    group.create_array("xy", shape=points.shape, chunks=(500, 2), dtype="f8")[...] = points
    expected = MeanShift(bandwidth=2.5).fit(points)
    for path in (str(tmp_path / "data.zarr"), str(tmp_path / "data.zarr" / "xy")):
        fitted = MeanShift(bandwidth=2.5).fit(path)
        assert isinstance(fitted.labels_, da.Array)  # read as a dask array, as the CLI does
        np.testing.assert_array_equal(fitted.labels_.compute(), expected.labels_)
        np.testing.assert_array_equal(fitted.cluster_centers_, expected.cluster_centers_)
    with pytest.raises(ValueError, match="input not found"):
        MeanShift(bandwidth=2.5).fit(str(tmp_path / "missing.zarr"))


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
def test_predict_by_shift_reproduces_the_mode_labels_on_the_training_points(seed_data, kernel):
    points, _, _ = seed_data
    fitted = MeanShift(bandwidth=2.5, kernel=kernel, label_by="mode").fit(points)
    np.testing.assert_array_equal(fitted.predict(points, method="shift"), fitted.labels_)
    assert (fitted.predict(points) == fitted.predict(points, method="nearest")).all()


def test_predict_by_shift_leaves_out_what_reaches_no_cluster(seed_data):
    points, _, _ = seed_data
    far = np.array([[500.0, 500.0]])
    kept = MeanShift(bandwidth=2.5).fit(points)
    assert kept.predict(far, method="shift")[0] >= 0  # cluster_all: the nearest centre
    strict = MeanShift(bandwidth=2.5, cluster_all=False).fit(points)
    assert strict.predict(far, method="shift").tolist() == [-1]  # no point within reach
    inside = strict.cluster_centers_[:1] + 0.1
    assert strict.predict(inside, method="shift").tolist() == [0]
    with pytest.raises(ValueError, match="method must be 'nearest' or 'shift'"):
        strict.predict(inside, method="closest")
    on_dask = MeanShift(bandwidth=2.5).fit(da.from_array(points, chunks=(500, 2)))
    with pytest.raises(ValueError, match="needs in-memory points"):
        on_dask.predict(points, method="shift")

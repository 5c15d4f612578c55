"""Bandwidth estimation: scikit-learn's definition on a bounded sample."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import estimate_bandwidth as sklearn_estimate_bandwidth

from pipeline.engine.bandwidth import estimate_bandwidth, sample_rows
from pipeline.io.datasets import make_blobs


@pytest.mark.parametrize("quantile", [0.05, 0.3, 0.9])
def test_equals_sklearn_on_the_same_sample(quantile):
    points, _, _ = make_blobs(5, 400, 5.0, 3, seed=7)
    sample = sample_rows(points, 1000, random_state=3)
    ours = estimate_bandwidth(points, quantile, n_samples=1000, random_state=3)
    assert ours == pytest.approx(sklearn_estimate_bandwidth(sample, quantile=quantile), rel=1e-12)


def test_sample_is_the_same_for_numpy_and_dask():
    points, _, _ = make_blobs(4, 3000, 5.0, 2, seed=1)
    np.testing.assert_array_equal(
        sample_rows(points, 500, 9), sample_rows(da.from_array(points, chunks=(777, 2)), 500, 9)
    )
    assert len(np.unique(sample_rows(points, 500, 9), axis=0)) == 500


def test_sample_size_is_bounded_and_estimates_agree():
    points, _, _ = make_blobs(6, 40_000, 5.0, 2, seed=2)
    assert sample_rows(points, 2000, 0).shape == (2000, 2)  # 240k rows in, 2,000 looked at
    a = estimate_bandwidth(points, 0.1, n_samples=2000, random_state=0)
    b = estimate_bandwidth(points, 0.1, n_samples=2000, random_state=1)
    assert a == pytest.approx(b, rel=0.1)


@pytest.mark.parametrize("scale", [1e-170, 1e200])
def test_extreme_magnitudes_scale_the_estimate(scale):
    points, _, _ = make_blobs(3, 200, 5.0, 2, seed=4)
    base = estimate_bandwidth(points.astype(np.float64))
    assert estimate_bandwidth(points.astype(np.float64) * scale) == pytest.approx(
        base * scale, rel=1e-9
    )


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_rules_of_thumb_use_the_data_scale(rule):
    """Unlike scikit-learn's KernelDensity rules, the estimate scales with the data."""
    points, _, _ = make_blobs(4, 2500, 5.0, 3, seed=8)
    points = points.astype(np.float64)
    n, d = points.shape
    base = estimate_bandwidth(points, n_samples=n, rule=rule)
    scale = np.sqrt(points.var(axis=0, ddof=1).mean())
    factor = n if rule == "scott" else n * (d + 2) / 4
    assert base == pytest.approx(scale * factor ** (-1 / (d + 4)), rel=1e-9)
    assert estimate_bandwidth(points * 1e6, n_samples=n, rule=rule) == pytest.approx(base * 1e6)
    # a sample stands in for the whole: n counts every point, the scale comes from the sample
    sampled = estimate_bandwidth(points, n_samples=2000, rule=rule)
    assert sampled == pytest.approx(base, rel=0.05)

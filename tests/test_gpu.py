"""The same kernel and engine checks with ``xp = cupy`` (skipped without a CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.backend import gpu_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device"),
]


@pytest.mark.parametrize("kernel", ["gaussian", "flat", "epanechnikov"])
def test_cupy_shift_matches_numpy(kernel):
    import cupy

    from pipeline.kernels import shift_points

    rng = np.random.default_rng(0)
    points = rng.normal(0, 2, (9000, 2))
    weights = rng.uniform(0.5, 2, 9000)
    expected, expected_density = shift_points(points[:500], points, weights, kernel, np, 2**22)
    got, got_density = shift_points(
        cupy.asarray(points[:500]), cupy.asarray(points), cupy.asarray(weights), kernel, cupy, 2**22
    )
    np.testing.assert_allclose(cupy.asnumpy(got), expected, atol=1e-9)
    np.testing.assert_allclose(cupy.asnumpy(got_density), expected_density, rtol=1e-9)


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
    np.testing.assert_allclose(results["cupy"][1], results["numpy"][1], atol=1e-6)

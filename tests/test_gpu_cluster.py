"""GPU runs on Dask clusters: jobs sent to workers advertising the GPU resource (emulated
``cupy``), the dask-cuda worker options, and a local-cuda cluster (``gpu``: needs CuPy, a
CUDA device and dask-cuda).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from .gpu_checks import on_device


@pytest.mark.parametrize("method", ["binned", "exact"])
def test_emulated_client_without_a_gpu_runs_jobs_on_gpu_workers(
    emulated, monkeypatch, seed_data, method
):
    """A login node without a GPU sends a cupy run to workers advertising the GPU
    resource: every task runs there, nothing that needs the device runs in the client."""
    import logging

    import dask.array as da
    from distributed import Client, LocalCluster

    from pipeline import backend
    from pipeline.engine import mean_shift
    from pipeline.errors import ParameterError
    from pipeline.kernels import gpu
    from pipeline.params import make_params

    monkeypatch.setattr(backend, "gpu_available", lambda: False)  # this process: no GPU
    threads = []
    for name in ("shift", "grid_shift"):  # record where the device kernels run
        original = getattr(gpu, name)

        def recorded(*args, original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return original(*args, **kwargs)

        monkeypatch.setattr(gpu, name, recorded)
    points = seed_data[0]
    params = make_params(kernel="gaussian", bandwidth=2.5, method=method, backend="cupy")
    expected = mean_shift(points, params.model_copy(update={"backend": "numpy"}))
    with pytest.raises(ParameterError, match="no Dask worker advertises the GPU resource"):
        backend.resolve_backend("cupy")
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            resources={"GPU": 1},
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=True) as client,
    ):
        assert backend.resolve_backend("auto") == "cupy"
        assert backend.resolve_backend("auto", here=True) == "numpy"
        client.get_task_stream()  # start recording
        result = mean_shift(da.from_array(points, chunks=(500, 2)), params)
        labels = result.labels.compute()
        workers = set(client.scheduler_info()["workers"])
        assert {task["worker"] for task in client.get_task_stream()} == workers
    assert threads and threading.main_thread().name not in threads  # kernels ran on the worker
    np.testing.assert_array_equal(labels, np.asarray(expected.labels))
    np.testing.assert_allclose(result.centers, expected.centers, atol=1e-4)


def test_local_cuda_workers_advertise_the_gpu_resource(monkeypatch):
    from pipeline.jobs.cluster import GPU_WORKER_RESOURCES, RMM_POOL_ENV, cuda_cluster_options

    monkeypatch.delenv(RMM_POOL_ENV, raising=False)
    options = cuda_cluster_options(None)
    assert options["resources"] == GPU_WORKER_RESOURCES == {"GPU": 1}
    assert options["preload"] == ["pipeline.worker"] and "rmm_pool_size" not in options
    monkeypatch.setenv(RMM_POOL_ENV, "2GB")
    options = cuda_cluster_options(2)
    assert options["rmm_pool_size"] == "2GB" and options["n_workers"] == 2
    assert options["rmm_allocator_external_lib_list"] == ["cupy"]


@on_device
def test_local_cuda_cluster_runs_gpu_tasks():
    pytest.importorskip("dask_cuda")
    import dask.array as da

    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.jobs.cluster import dask_client
    from pipeline.params import make_params

    points, _, _ = make_blobs(6, 500, 5.0, 2, seed=0)
    params = make_params(kernel="gaussian", bandwidth=2.5, backend="cupy", blurring=True)
    with dask_client(kind="local-cuda") as client:
        workers = client.scheduler_info()["workers"].values()
        assert all(w["resources"] == {"GPU": 1} for w in workers)
        result = mean_shift(da.from_array(points, chunks=(1000, 2)), params)
        labels = result.labels.compute()
    expected = mean_shift(points, params.model_copy(update={"backend": "numpy"}))
    np.testing.assert_array_equal(labels, expected.labels)

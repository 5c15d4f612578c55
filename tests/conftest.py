"""Shared fixtures: the seed data set, real Zarr stores on disk, a real Dask cluster, the
emulated ``cupy`` of the GPU tests."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from distributed import Client, LocalCluster

from pipeline.io.datasets import make_blobs, write_blobs

from .gpu_emulation import compiler_available, fake_cupy
from .support import StandingCluster


@pytest.fixture(scope="session")
def seed_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed notebook's data: 6 blobs x 250 points, d=2, variance 5 (seed 0)."""
    return make_blobs(6, 250, 5.0, 2, seed=0)


@pytest.fixture(scope="session")
def seed_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The seed data set in a Zarr group on disk, 300 rows per chunk."""
    path = str(tmp_path_factory.mktemp("stores") / "seed.zarr")
    write_blobs(path, 6, 250, 5.0, 2, seed=0, chunk=300)
    return path


@pytest.fixture(scope="session")
def cluster_2proc():
    """A real LocalCluster with two worker processes (one thread each)."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


@pytest.fixture
def client_2proc(cluster_2proc):
    """A client of the two-process cluster, set as the default scheduler."""
    with Client(cluster_2proc, set_as_default=True) as client:
        yield client


@pytest.fixture(scope="session")
def plain_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A standing cluster: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    cluster = StandingCluster(str(tmp_path_factory.mktemp("plain-cluster")))
    yield cluster
    cluster.close()


@pytest.fixture
def emulated(monkeypatch):
    """``cupy`` replaced by the NumPy-backed emulation for the duration of a test."""
    if not compiler_available():
        pytest.skip("needs g++ (C++20) to run the CUDA sources on the CPU")
    from pipeline.kernels import gpu

    fake = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    gpu.forget_kernels()  # built with the real module, if any
    yield fake
    gpu.forget_kernels()

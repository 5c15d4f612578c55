"""The array module is chosen once; CuPy is optional and the pipeline never imports it for
NumPy runs."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from pipeline.backend import gpu_available, resolve_backend
from pipeline.errors import ParameterError


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_pipeline_works_with_cupy_absent():
    result = run_python(
        """
        import sys
        sys.modules["cupy"] = None  # any import of cupy now fails
        import numpy as np
        from pipeline import MeanShift
        from pipeline.backend import gpu_available, resolve_backend
        assert not gpu_available()
        assert resolve_backend("auto") == "numpy"
        X = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 10]
        est = MeanShift(bandwidth=2.0, kernel="gaussian", backend="auto").fit(X)
        print(len(est.cluster_centers_))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"


def test_numpy_run_never_imports_cupy_itself():
    """Where CuPy is installed, Dask imports it (dask.array registers CuPy's array type), so
    the check is on who asks: no module of the pipeline imports CuPy in a NumPy run."""
    result = run_python(
        """
        import builtins

        askers = []
        original = builtins.__import__

        def watch(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and name.split(".")[0] == "cupy":  # every import statement, cached too
                askers.append((globals or {}).get("__name__", "?"))
            return original(name, globals, locals, fromlist, level)

        builtins.__import__ = watch
        import numpy as np
        from pipeline import MeanShift
        MeanShift(bandwidth=2.0, backend="numpy").fit(np.random.default_rng(0).normal(size=(50, 2)))
        try:
            import cupy  # this script's own import: shows that the watch sees imports
        except ImportError:
            pass
        print(sorted(set(askers)))
        """
    )
    assert result.returncode == 0, result.stderr
    askers = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert "__main__" in askers
    assert [name for name in askers if name.split(".")[0] == "pipeline"] == []


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_asking_for_cupy_without_a_device_is_a_clear_error():
    with pytest.raises(ParameterError, match="no CUDA device"):
        resolve_backend("cupy")


def test_gpu_runs_ask_for_gpu_workers_where_any_advertise_them():
    """On a cluster mixing CPU and GPU workers, a cupy run's tasks go to GPU workers only."""
    import contextlib
    import logging

    import dask.array as da
    from distributed import Client, Scheduler, Worker
    from distributed.deploy.spec import SpecCluster

    from pipeline.backend import task_resources

    workers = {
        "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu": {"cls": Worker, "options": {"nthreads": 1}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with (
        SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR) as cluster,
        Client(cluster, set_as_default=True) as client,
    ):
        where = {cluster.workers[name].address: name for name in cluster.workers}
        assert isinstance(task_resources("numpy"), contextlib.nullcontext)
        client.get_task_stream()  # start recording
        with task_resources("cupy"):
            total = da.ones(4000, chunks=100).map_blocks(lambda b: b * 2).sum().compute()
        assert total == 8000
        ran_on = {where[task["worker"]] for task in client.get_task_stream()}
        assert ran_on == {"gpu"}
    assert isinstance(task_resources("cupy"), contextlib.nullcontext)  # no client: no change

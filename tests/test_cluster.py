"""Jobs submitted to standing Dask clusters: a real `dask scheduler` and two `dask worker`
processes on 127.0.0.1, over plain TCP and over TLS with certificates made here."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest
import zarr
from distributed import get_task_stream
from sklearn.metrics import adjusted_rand_score

from pipeline.engine import mean_shift
from pipeline.params import make_params

from .support import CLI, StandingCluster, meanshift, write_tls_files


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tls-cluster"))
    cluster = StandingCluster(folder, tls=write_tls_files(folder))
    yield cluster
    cluster.close()


JOBS = {  # name: (CLI options, the same parameters for the in-process reference)
    "job_blur": (
        ["--kernel", "gaussian", "--blurring", "--bandwidth", "2.5"],
        dict(kernel="gaussian", blurring=True, bandwidth=2.5),
    ),
    "job_flat": (["--kernel", "flat", "--bandwidth", "3"], dict(kernel="flat", bandwidth=3.0)),
    "job_binned": (
        ["--kernel", "gaussian", "--method", "binned", "--bandwidth", "2.5"],
        dict(kernel="gaussian", method="binned", bandwidth=2.5),
    ),
}
STAGES = {"job_blur": "blur", "job_flat": "standard", "job_binned": "bin"}


def test_concurrent_jobs_on_a_standing_cluster(plain_cluster, seed_store, seed_data, tmp_path):
    points, truth, _ = seed_data
    launched = {}
    for name, (options, _) in JOBS.items():
        out = str(tmp_path / f"{name}.zarr")
        where = ["--scheduler", plain_cluster.address, "--name", name, "--quiet"]
        command = [*CLI, "run", "-i", seed_store, "-o", out]
        command += where + options
        launched[name] = (out, subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
    for name, (out, process) in launched.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        result = zarr.open_group(out, mode="r")
        assert result.attrs["status"] == "complete"
        labels = np.asarray(result["labels"][...])
        # each output is its own job's: equal to the same parameters run in process
        reference = mean_shift(points, make_params(**JOBS[name][1]))
        np.testing.assert_array_equal(labels, np.asarray(reference.labels))
        np.testing.assert_allclose(result["centers"][...], reference.centers, atol=1e-9)
        assert adjusted_rand_score(truth, labels) >= 0.99
    with plain_cluster.client() as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.task_prefixes)
        )
    for name, stage in STAGES.items():
        shown = " ".join(sorted(prefixes))
        assert f"{name}-{stage}" in prefixes, shown  # each job recognisable on the dashboard
        assert f"{name}-read" in prefixes  # workers read the input themselves


def test_tls_cluster_runs_jobs_and_refuses_clients_without_the_certificate(
    tls_cluster, seed_store, seed_data, tmp_path
):
    assert tls_cluster.address.startswith("tls://")
    ca, cert, key = tls_cluster.tls
    out = str(tmp_path / "tls.zarr")
    options = ["--kernel", "gaussian", "--blurring", "--bandwidth", "2.5", "--quiet"]
    tls = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
    done = meanshift(
        "run", "-i", seed_store, "-o", out, "--scheduler", tls_cluster.address, *tls, *options
    )
    assert done.returncode == 0, done.stderr
    labels = zarr.open_group(out, mode="r")["labels"][...]
    assert adjusted_rand_score(seed_data[1], labels) >= 0.99

    # the same certificates from Dask's own configuration instead of flags
    settings = {"CA_FILE": ca, "CLIENT__CERT": cert, "CLIENT__KEY": key}
    env = os.environ | {f"DASK_DISTRIBUTED__COMM__TLS__{k}": v for k, v in settings.items()}
    by_config = str(tmp_path / "tls-config.zarr")
    scheduler = ["--scheduler", tls_cluster.address]
    command = [*CLI, "run", "-i", seed_store, "-o", by_config, *scheduler, *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert zarr.open_group(by_config, mode="r").attrs["status"] == "complete"

    refused_out = str(tmp_path / "refused.zarr")
    refused = meanshift(
        "run", "-i", seed_store, "-o", refused_out, *scheduler, "--connect-timeout", "5", *options
    )
    assert refused.returncode == 5
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs TLS" in lines[0], refused.stderr
    assert not os.path.exists(refused_out)  # refused before any output was made


def test_tls_cluster_refuses_a_certificate_from_another_authority(
    tls_cluster, seed_store, tmp_path
):
    ca = tls_cluster.tls[0]
    _, rogue_cert, rogue_key = write_tls_files(str(tmp_path))  # signed by a different CA
    out = str(tmp_path / "rogue.zarr")
    rogue = ["--tls-ca-file", ca, "--tls-cert", rogue_cert, "--tls-key", rogue_key]
    options = ["--connect-timeout", "5", "--bandwidth", "2.5", "--quiet"]
    refused = meanshift(
        "run", "-i", seed_store, "-o", out, "--scheduler", tls_cluster.address, *rogue, *options
    )
    assert refused.returncode == 5
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Dask scheduler" in lines[0], refused.stderr


@pytest.mark.slow  # fast version: test_concurrent_jobs_on_a_standing_cluster (3 jobs)
def test_ten_concurrent_jobs_on_two_workers_all_finish(
    plain_cluster, seed_store, seed_data, tmp_path
):
    # more jobs than workers: each waits for its turn on the busy cluster instead of failing
    points = seed_data[0]
    bandwidths = [2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0, 4.25]
    options = ["--scheduler", plain_cluster.address, "--kernel", "gaussian", "--quiet"]
    launched = []
    for i, bandwidth in enumerate(bandwidths):
        out = str(tmp_path / f"load-{i}.zarr")
        job = ["--bandwidth", str(bandwidth), "--name", f"load{i}"]
        command = [*CLI, "run", "-i", seed_store, "-o", out, *options, *job]
        launched.append((out, bandwidth, subprocess.Popen(command, stderr=subprocess.PIPE)))
    for out, bandwidth, process in launched:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        result = zarr.open_group(out, mode="r")
        assert result.attrs["status"] == "complete"
        assert result.attrs["bandwidth"] == bandwidth  # each output is its own job's
        params = make_params(kernel="gaussian", bandwidth=bandwidth)
        reference = mean_shift(points, params)
        np.testing.assert_array_equal(result["labels"][...], np.asarray(reference.labels))


def test_a_job_on_a_cluster_whose_workers_are_all_busy_waits_and_finishes(
    plain_cluster, seed_store, tmp_path
):
    occupied_for = 8.0
    with plain_cluster.client() as client, get_task_stream(client) as stream:
        # one long task per worker thread: nothing is free when the job arrives
        busy = [
            client.submit(time.sleep, occupied_for, pure=False, workers=[worker])
            for worker in client.scheduler_info()["workers"]
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            processing = client.processing()
            if sum(len(keys) for keys in processing.values()) >= len(busy):
                break
            time.sleep(0.05)
        out = str(tmp_path / "waited.zarr")
        where = ["--scheduler", plain_cluster.address, "--name", "waited", "--quiet"]
        done = meanshift(
            "run", "-i", seed_store, "-o", out, "--kernel", "flat", "-b", "2.5", *where
        )
        client.gather(busy)
    assert done.returncode == 0, done.stderr
    assert zarr.open_group(out, mode="r").attrs["status"] == "complete"
    # it queued behind the busy workers: on each worker, the job's tasks started only
    # once that worker's long task had slept its time
    freed = {  # when each worker's long task ended, by the worker's own clock
        task["worker"]: max(span["stop"] for span in task["startstops"])
        for task in stream.data
        if str(task["key"]).startswith("sleep")
    }
    job_starts = [
        (task["worker"], span["start"])
        for task in stream.data
        if "waited-" in str(task["key"])
        for span in task["startstops"]
        if span["action"] == "compute"
    ]
    assert len(freed) == len(busy) and job_starts
    # (the worker stamps a task's stop a moment after its thread is free: 50 ms of slack,
    # against the 8 s a job task would have started earlier had it not queued)
    assert all(start >= freed[worker] - 0.05 for worker, start in job_starts)

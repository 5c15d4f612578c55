"""Jobs from Zarr to Zarr on real Dask clusters with worker processes."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

from pipeline.errors import InputDataError, OutputError
from pipeline.io.datasets import write_blobs
from pipeline.io.store import STATUS_COMPLETE, STATUS_FAILED, open_result
from pipeline.jobs.job import run_job
from pipeline.jobs.spec import ClusterSpec, InputSpec, OutputSpec
from pipeline.params import make_params

from .support import tree_digest


def on(cluster) -> ClusterSpec:
    """The ``cluster`` section naming a running cluster's scheduler."""
    return ClusterSpec(scheduler=cluster.scheduler_address)


SEED = make_params(kernel="gaussian", blurring=True, bandwidth=2.5)


def test_job_on_two_worker_processes_writes_complete_output(seed_store, cluster_2proc, tmp_path):
    before = tree_digest(seed_store)
    out = str(tmp_path / "out.zarr")
    report = run_job(seed_store, OutputSpec(path=out, modes=True), SEED, cluster=on(cluster_2proc))
    assert tree_digest(seed_store) == before  # input untouched
    group = open_result(out)
    truth = zarr.open_group(seed_store, mode="r")["truth"][...]
    labels = group["labels"]
    assert labels.shape == (1500,) and labels.dtype == np.int32 and labels.chunks == (300,)
    assert adjusted_rand_score(truth, labels[...]) >= 0.99
    assert group["centers"].shape == (report.n_clusters, 2)
    np.testing.assert_array_equal(group["sizes"][...], np.bincount(labels[...]))
    assert group["modes"].shape == (1500, 2)
    attrs = group.attrs.asdict()
    assert attrs["status"] == STATUS_COMPLETE
    assert attrs["bandwidth"] == 2.5 and attrs["bandwidth_estimated"] is False
    assert attrs["parameters"]["kernel"] == "gaussian" and attrs["parameters"]["blurring"] is True
    assert attrs["n_iter"] == len(attrs["max_shift_per_iteration"]) == report.n_iter
    assert {"pipeline_s", "cluster_start_s", "iterate_s", "merge_s"} <= set(attrs["timings"])
    assert attrs["versions"]["zarr"] == zarr.__version__
    assert attrs["backend"] in ("numpy", "cupy") and attrs["precision"].startswith("float32")


def _outputs(path: str):
    group = open_result(path)
    return group["labels"][...], group["centers"][...], group["sizes"][...]


def test_same_result_for_every_chunking(cluster_2proc, tmp_path):
    # worker counts: test_identical_results_across_worker_counts_threads_and_processes
    runs = []
    for chunk in (100, 1000, 1500):
        data = str(tmp_path / f"data-{chunk}.zarr")
        write_blobs(data, 6, 250, 5.0, 2, seed=4, chunk=chunk)
        out = str(tmp_path / f"out-{chunk}.zarr")
        run_job(data, out, SEED, cluster=on(cluster_2proc))
        runs.append(_outputs(out))
    labels0, centers0, sizes0 = runs[0]
    for labels, centers, sizes in runs[1:]:
        np.testing.assert_array_equal(labels, labels0)
        np.testing.assert_array_equal(sizes, sizes0)
        np.testing.assert_allclose(centers, centers0, rtol=0, atol=1e-9)


def test_integer_points_are_converted(cluster_2proc, tmp_path):
    data = str(tmp_path / "ints.zarr")
    group = zarr.open_group(data, mode="w")
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(0, 5, (100, 2)), rng.integers(100, 105, (100, 2))])
    group.create_array("points", shape=values.shape, chunks=(64, 2), dtype="int16")[...] = values
    out = str(tmp_path / "out.zarr")
    report = run_job(data, out, make_params(bandwidth=10.0), cluster=on(cluster_2proc))
    assert report.n_clusters == 2
    assert report.sizes == [100, 100]


def test_existing_output_is_refused_then_overwritten(seed_store, cluster_2proc, tmp_path):
    out = str(tmp_path / "out.zarr")
    first = run_job(seed_store, out, SEED, cluster=on(cluster_2proc))
    before = tree_digest(out)
    same = run_job(seed_store, out, SEED, cluster=on(cluster_2proc))
    assert same.already_complete and not first.already_complete  # the same job: nothing to do
    assert (same.sizes, same.centers, same.n_iter) == (first.sizes, first.centers, first.n_iter)
    with pytest.raises(OutputError, match="already exists"):  # another job
        run_job(seed_store, out, make_params(bandwidth=3.0), cluster=on(cluster_2proc))
    assert tree_digest(out) == before
    run_job(
        seed_store,
        OutputSpec(path=out, overwrite=True),
        make_params(bandwidth=4.0),
        cluster=on(cluster_2proc),
    )
    assert open_result(out).attrs["bandwidth"] == 4.0


def test_failed_run_is_marked_failed_not_complete(seed_store, cluster_2proc, tmp_path):
    out = str(tmp_path / "out.zarr")
    impossible = make_params(bandwidth=0.5, bin_seeding=True, min_bin_freq=10_000)
    with pytest.raises(InputDataError, match="min_bin_freq"):
        run_job(seed_store, out, impossible, cluster=on(cluster_2proc))
    group = zarr.open_group(out, mode="r")
    assert group.attrs["status"] == STATUS_FAILED
    with pytest.raises(InputDataError, match="not complete"):
        open_result(out)


def test_file_url_and_sharded_input(cluster_2proc, tmp_path):
    from pipeline.io.datasets import make_blobs

    points, truth, _ = make_blobs(3, 400, 5.0, 2, seed=6)
    path = tmp_path / "sharded.zarr"
    group = zarr.open_group(str(path), mode="w")
    array = group.create_array(
        "xy", shape=points.shape, chunks=(100, 2), shards=(400, 2), dtype="f4"
    )
    array[...] = points
    out = str(tmp_path / "out.zarr")
    report = run_job(
        InputSpec(url=f"file://{path}", array="xy"), out, SEED, cluster=on(cluster_2proc)
    )
    labels = open_result(out)["labels"]
    assert labels.chunks == (400,)  # one dask chunk per shard, labels chunked to match
    assert report.n_clusters == 3
    assert adjusted_rand_score(truth, labels[...]) >= 0.99


def test_binned_job_on_worker_processes_matches_one_worker(cluster_2proc, tmp_path):
    """The out-of-core path through real worker processes: same result as one worker."""
    data = str(tmp_path / "many.zarr")
    write_blobs(data, 4, 15_000, 5.0, 2, seed=0, chunk=4096)
    params = make_params(kernel="gaussian", bandwidth=2.5, method="binned")
    two = run_job(data, str(tmp_path / "two.zarr"), params, cluster=on(cluster_2proc))
    one = run_job(data, str(tmp_path / "one.zarr"), params, cluster=ClusterSpec(n_workers=1))
    assert two.method == "binned" and two.n_cells < 60_000
    labels_two, centers_two, sizes_two = _outputs(str(tmp_path / "two.zarr"))
    labels_one, centers_one, sizes_one = _outputs(str(tmp_path / "one.zarr"))
    np.testing.assert_array_equal(labels_two, labels_one)
    np.testing.assert_array_equal(centers_two, centers_one)
    np.testing.assert_array_equal(sizes_two, sizes_one)
    truth = zarr.open_group(data, mode="r")["truth"][...]
    assert adjusted_rand_score(truth, labels_two) >= 0.999
    assert one.n_clusters == 4


def _resident(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def test_binned_worker_memory_does_not_grow_with_the_data(tmp_path):
    """Out of core: 4x the points cost a worker far less than 4x the memory.

    Holding the points (as the exact method does, in float64 plus a normalised
    copy) would add at least 4 bytes x 2 dims x 2 copies x 2 per extra point.
    """
    import logging

    from distributed import Client, LocalCluster

    growth = {}
    for per_cluster in (350_000, 1_400_000):
        data = str(tmp_path / f"d{per_cluster}.zarr")
        write_blobs(data, 6, per_cluster, 5.0, 2, seed=0)
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            (before,) = client.run(_resident, "VmRSS").values()
            params = make_params(kernel="gaussian", bandwidth=2.5, method="binned")
            run_job(
                data,
                str(tmp_path / f"o{per_cluster}.zarr"),
                params,
                cluster=ClusterSpec(scheduler=cluster.scheduler_address),
            )
            (peak,) = client.run(_resident, "VmHWM").values()
        growth[per_cluster] = peak - before
    extra_raw = 6 * (1_400_000 - 350_000) * 2 * 4  # float32 bytes of the extra points
    assert growth[1_400_000] - growth[350_000] < extra_raw


def test_the_readme_run_job_example_runs_as_written(seed_store, cluster_2proc, tmp_path):
    """README's run_job example, against this test's data and standing scheduler (relative
    paths too: the workers of a standing cluster run in another folder)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [block for block in blocks if "run_job(" in block and "s3://" not in block]
    shutil.copytree(seed_store, tmp_path / "data.zarr")
    code = example.replace("tcp://host:8786", cluster_2proc.scheduler_address)
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    report = namespace["report"]
    assert report.n_clusters == 6, report
    assert not report.already_complete  # overwrite=True: computed
    assert open_result(str(tmp_path / "clusters.zarr"))["modes"].shape == (1500, 2)

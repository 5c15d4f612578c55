"""Inputs and outputs in object stores (a real S3 server on 127.0.0.1), storage options, and
the rule that a job never writes into its input's Zarr store."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline import MeanShift
from pipeline.engine import mean_shift
from pipeline.io.datasets import write_blobs
from pipeline.jobs.job import run_job
from pipeline.jobs.spec import ClusterSpec
from pipeline.params import make_params
from pipeline.report import write_report

from .support import (
    CLI,
    S3Server,
    StandingCluster,
    free_port,
    kill_driver_once,
    meanshift,
    tree_digest,
)

PARAMS = ["-b", "2.5", "--kernel", "gaussian", "--quiet"]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.close()


@pytest.fixture
def options_file(s3, tmp_path):
    """A file holding the storage options that reach the server (``@FILE`` on the CLI)."""
    path = tmp_path / "s3.json"
    path.write_text(json.dumps(s3.options()))
    return f"@{path}"


def s3_blobs(s3: S3Server, bucket: str, chunk: int = 300) -> str:
    url = f"s3://{bucket}/data.zarr"
    write_blobs(url, 6, 250, 5.0, 2, seed=3, chunk=chunk, storage_options=s3.options())
    return url


def s3_group(s3: S3Server, url: str) -> zarr.Group:
    return zarr.open_group(url, mode="r", storage_options=s3.options())


def in_process(points: np.ndarray):
    """The same clustering computed here, without Dask or any store."""
    return mean_shift(points, make_params(bandwidth=2.5, kernel="gaussian"))


def assert_same_clusters(group: zarr.Group, expected) -> None:
    assert group.attrs["status"] == "complete"
    np.testing.assert_array_equal(group["labels"][...], expected.labels)
    np.testing.assert_array_equal(group["centers"][...], expected.centers)
    np.testing.assert_array_equal(group["sizes"][...], expected.sizes)


def stored_text(s3: S3Server, bucket: str) -> str:
    """Every object of ``bucket``, decoded as far as it decodes."""
    return "".join(s3.read(bucket, key).decode("latin-1") for key in s3.objects(bucket))


def test_generate_run_status_and_report_with_an_s3_input_and_output(s3, options_file, tmp_path):
    source, target = s3.bucket(), s3.bucket()
    data, out = f"s3://{source}/data.zarr", f"s3://{target}/clusters.zarr"
    made = meanshift("generate", "-o", data, "--storage-options", options_file, "--chunk", "300")
    assert made.returncode == 0, made.stderr
    before = s3.objects(source)
    # in the command's process (auto), with its summary; worker processes reading and writing
    # S3: test_a_spec_on_a_standing_cluster_whose_workers_have_no_credentials
    run = ["-b", "2.5", "--kernel", "gaussian"]
    given = ["--input-storage-options", options_file, "--output-storage-options", options_file]
    done = meanshift("run", "-i", data, "-o", out, *given, *run)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines()[-1] == f"output: {out}"
    expected = in_process(s3_group(s3, data)["points"][...])
    assert_same_clusters(s3_group(s3, out), expected)
    again = meanshift("run", "-i", data, "-o", out, *given, *run)  # read where it is: done
    assert again.returncode == 0 and again.stdout.startswith(f"already complete: {out}")
    status = meanshift("status", out, "--storage-options", options_file)
    assert (status.returncode, status.stdout) == (0, "complete\n")
    folder = str(tmp_path / "report")
    report = meanshift("report", out, "--storage-options", options_file, "-d", folder)
    assert report.returncode == 0 and report.stdout == f"report: {folder}/index.html\n"
    assert s3.objects(source) == before  # nothing written into the input's bucket
    assert not [key for key in s3.objects(target) if not key.startswith("clusters.zarr/")]
    secret = s3.secret
    for printed in (made, done, again, status, report):
        assert secret not in printed.stdout + printed.stderr
    assert secret not in stored_text(s3, target)
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as handle:
            assert secret.encode() not in handle.read()


def test_a_spec_on_a_standing_cluster_whose_workers_have_no_credentials(s3, tmp_path):
    source, target = s3.bucket(), s3.bucket()
    data = s3_blobs(s3, source)
    cluster = StandingCluster(str(tmp_path / "cluster"))  # no AWS variables in the workers
    try:
        spec = {
            "name": "on_s3",
            "input": {"url": data, "storage_options": s3.options()},
            "params": {"bandwidth": 2.5, "kernel": "gaussian"},
            "cluster": {"scheduler": cluster.address},
            "output": {
                "path": f"s3://{target}/run-{{run_id}}.zarr",
                "storage_options": s3.options(),
            },
        }
        path = tmp_path / "spec.yaml"
        path.write_text(json.dumps(spec))
        done = meanshift("run", "--spec", str(path), "--run-id", "20261201T000000Z", "--quiet")
    finally:
        cluster.close()
    assert done.returncode == 0 and done.stderr == "", done.stderr
    out = f"s3://{target}/run-20261201T000000Z.zarr"
    assert_same_clusters(s3_group(s3, out), in_process(s3_group(s3, data)["points"][...]))
    assert s3.secret not in stored_text(s3, target)


def test_credentials_and_endpoint_from_the_environment_alone(s3, tmp_path):
    source, target = s3.bucket(), s3.bucket()
    data, out = s3_blobs(s3, source), f"s3://{target}/clusters.zarr"
    command = [*CLI, "run", "-i", data, "-o", out, *PARAMS, "--n-workers", "1"]

    done = subprocess.run(command, capture_output=True, text=True, env=s3.environment())
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert_same_clusters(s3_group(s3, out), in_process(s3_group(s3, data)["points"][...]))


def test_a_killed_run_resumes_from_its_checkpoint_in_the_bucket(s3, options_file):
    source, target = s3.bucket(), s3.bucket()
    data, out = s3_blobs(s3, source), f"s3://{target}/blurred.zarr"
    given = ["--input-storage-options", options_file, "--output-storage-options", options_file]
    options = ["-b", "2.5", "--kernel", "gaussian", "--blurring", "--tol", "0"]
    options += ["--max-iter", "8", "--quiet", *given]  # in the command's process (auto)
    command = [*CLI, "run", "-i", data, "-o", out, *options]

    def attributes(url: str) -> dict:
        return dict(s3_group(s3, url).attrs)

    saved = kill_driver_once(
        command, out, lambda state: state.get("iteration", 0) >= 2, 120.0, attributes
    )
    assert saved.get("iteration", 0) >= 2, "the run ended before two iterations were saved"
    assert attributes(out)["status"] == "running"
    again = meanshift("run", "-i", data, "-o", out, *options)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    resumed = s3_group(s3, out)
    assert resumed.attrs["resumed_from_iteration"] >= 2
    assert "checkpoint" not in resumed and "blurred.zarr.lease" not in s3.objects(target)
    params = make_params(bandwidth=2.5, kernel="gaussian", blurring=True, tol=0.0, max_iter=8)
    assert_same_clusters(resumed, mean_shift(s3_group(s3, data)["points"][...], params))


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing input bucket", 3, "input not found: {data} (no bucket 'no-such-bucket')"),
        ("missing input object", 3, "input not found: {data}"),
        (
            "wrong input credentials",
            3,
            "cannot open input {data}: access denied (Forbidden): check the credentials "
            "(storage options or the environment)",
        ),
        (
            "missing output bucket",
            4,
            "cannot write output {out}: The specified bucket does not exist",
        ),
        (
            "wrong output credentials",
            4,
            "cannot write output {out}: access denied (Forbidden): check the credentials "
            "(storage options or the environment)",  # the first look at the output refused
        ),
    ],
)
def test_an_unreachable_store_is_one_line_and_nothing_is_written(s3, tmp_path, case, code, message):
    source, target = s3.bucket(), s3.bucket()
    data, out = s3_blobs(s3, source), f"s3://{target}/clusters.zarr"
    input_options, output_options = s3.options(), s3.options()
    if case == "missing input bucket":
        data = "s3://no-such-bucket/data.zarr"
    elif case == "missing input object":
        data = f"s3://{source}/nothing.zarr"
    elif case == "wrong input credentials":
        input_options = s3.options(secret="not-the-secret")
    elif case == "missing output bucket":
        out = "s3://no-such-bucket/clusters.zarr"
    else:
        output_options = s3.options(secret="not-the-secret")
    before = s3.objects(source)
    given = ["--input-storage-options", json.dumps(input_options)]
    given += ["--output-storage-options", json.dumps(output_options)]
    done = meanshift("run", "-i", data, "-o", out, *given, *PARAMS)
    assert done.returncode == code
    assert done.stderr.splitlines() == [f"meanshift: error: {message.format(data=data, out=out)}"]
    assert s3.objects(source) == before and s3.objects(target) == {}
    assert "not-the-secret" not in done.stderr and s3.secret not in done.stderr


def test_the_output_never_lands_in_the_input_store(s3, tmp_path):
    base = str(tmp_path / "base.zarr")
    write_blobs(base, 3, 50, 1.0, 2, seed=0)
    os.symlink(base, tmp_path / "link.zarr")
    before = tree_digest(base)
    cases = [
        (f"{base}/points", f"{base}/res"),  # the array's group is the store
        (base, str(tmp_path / "link.zarr" / "res")),  # a symlink to it
        (f"file://{base}/points", f"{base}/res.zarr"),  # a file:// URL of the same
        (str(tmp_path / "link.zarr" / "points"), str(tmp_path)),  # a folder holding it
    ]
    for data, out in cases:
        done = meanshift("run", "-i", data, "-o", out, "-b", "1", "--quiet")
        assert done.returncode == 4, (data, out, done.stderr)
        assert done.stderr.splitlines() == [
            f"meanshift: error: output {os.path.abspath(out.removeprefix('file://'))} would "
            f"overwrite or nest with the input {os.path.abspath(data.removeprefix('file://'))} "
            "(its Zarr store is never written to)"
        ], (data, out)
    assert tree_digest(base) == before and not os.path.exists(f"{base}/res")
    bucket = s3.bucket()
    data = s3_blobs(s3, bucket)
    objects = s3.objects(bucket)
    given = ["--input-storage-options", json.dumps(s3.options())]
    given += ["--output-storage-options", json.dumps(s3.options())]
    done = meanshift("run", "-i", f"{data}/points", "-o", f"{data}/res", *given, *PARAMS)
    assert done.returncode == 4 and "would overwrite or nest with the input" in done.stderr
    assert s3.objects(bucket) == objects


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["-i", "{data}", "--input-storage-options", '{"anon": true}'],
            "storage options apply to fsspec URLs (s3://, gs://, ...); the input {data} is a "
            "local path",
        ),
        (
            ["-i", "s3://user:hunter2@bucket/data.zarr"],
            "the input URL holds a password; give credentials in storage options or the "
            "environment, where they are never recorded",
        ),
    ],
)
def test_storage_options_that_cannot_apply_are_refused(tmp_path, arguments, message):
    data = str(tmp_path / "d.zarr")
    write_blobs(data, 2, 20, 1.0, 2, seed=0)
    arguments = [part.replace("{data}", data) for part in arguments]
    done = meanshift("run", *arguments, "-o", str(tmp_path / "o.zarr"), "-b", "1", "--quiet")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"meanshift: error: {message.format(data=data)}"]
    assert not os.path.exists(tmp_path / "o.zarr")


def test_unreadable_storage_options_are_a_usage_error_that_repeats_no_secret(tmp_path):
    secret = "s3cr3t-value"
    for given, why in [
        (f'{{"secret": "{secret}"', "the value is not JSON (JSONDecodeError at char 25)"),
        (f'["{secret}"]', "the value must be a JSON object of fsspec options"),
        (f"@{tmp_path}/missing.json", f"cannot read {tmp_path}/missing.json: No such file or"),
    ]:
        done = meanshift(
            "run", "-i", "s3://b/d.zarr", "-o", "o.zarr", "--input-storage-options", given
        )
        assert done.returncode == 2, done.stderr
        assert why in done.stderr and secret not in done.stderr


def test_the_python_doors_take_storage_options(s3, tmp_path):
    source, target = s3.bucket(), s3.bucket()
    data, out = s3_blobs(s3, source), f"s3://{target}/clusters.zarr"
    points = s3_group(s3, data)["points"][...]
    fitted = MeanShift(bandwidth=2.5, kernel="gaussian").fit(data, storage_options=s3.options())
    expected = MeanShift(bandwidth=2.5, kernel="gaussian").fit(points)
    np.testing.assert_array_equal(np.asarray(fitted.labels_), expected.labels_)
    np.testing.assert_array_equal(fitted.cluster_centers_, expected.cluster_centers_)
    params = make_params(bandwidth=2.5, kernel="gaussian")
    report = run_job(
        data, out, params, cluster=ClusterSpec(kind="threads"), storage_options=s3.options()
    )
    assert report.n_clusters == len(expected.cluster_centers_)
    assert_same_clusters(s3_group(s3, out), in_process(points))
    page = write_report(out, str(tmp_path / "report"), storage_options=s3.options())
    assert os.path.exists(page)
    assert s3.secret not in stored_text(s3, target)


def test_a_memory_store_needs_the_job_to_run_in_this_process(tmp_path):
    data, out = "memory://nowhere/in.zarr", str(tmp_path / "o.zarr")
    refused = meanshift("run", "-i", data, "-o", out, "-b", "1", "--cluster", "local", "--quiet")
    assert refused.returncode == 4
    assert refused.stderr.splitlines() == [
        f"meanshift: error: the input {data} lives in this process's memory, which Dask worker "
        "processes cannot see: run with --cluster threads, or use a store the workers share"
    ]
    auto = meanshift("run", "-i", data, "-o", out, "-b", "1", "--quiet")  # auto: in process,
    assert auto.returncode == 3  # where a new process's memory holds no such store
    assert auto.stderr.splitlines() == [f"meanshift: error: input not found: {data}"]
    local = str(tmp_path / "d.zarr")
    write_blobs(local, 3, 100, 1.0, 2, seed=0)
    out = str(tmp_path / "threads.zarr")
    done = meanshift("run", "-i", local, "-o", out, "-b", "1", "--cluster", "threads", "--quiet")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = mean_shift(zarr.open_group(local, mode="r")["points"][...], make_params(bandwidth=1))
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["labels"][...], expected.labels)
    assert not os.path.exists(tmp_path / "o.zarr")


def test_the_readme_object_store_example_runs_as_written(s3):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [block for block in blocks if "storage_options=s3" in block]
    source, target = s3.bucket(), s3.bucket()
    s3_blobs(s3, source)
    lines = example.replace("s3://in/", f"s3://{source}/").replace("s3://out/", f"s3://{target}/")
    code = re.sub(r"^s3 = .*$", f"s3 = {s3.options()!r}", lines, flags=re.M)
    assert code.count(s3.secret) == 1  # the example's options line was replaced
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # run_job on an embedded cluster
    out = s3_group(s3, f"s3://{target}/clusters.zarr")
    expected = mean_shift(
        s3_group(s3, f"s3://{source}/data.zarr")["points"][...], make_params(bandwidth=2.5)
    )
    assert_same_clusters(out, expected)


def test_an_input_served_over_http_is_read_as_any_other(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    write_blobs(str(folder / "d.zarr"), 3, 100, 1.0, 2, seed=0)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        out = str(tmp_path / "o.zarr")
        data = f"http://127.0.0.1:{port}/d.zarr"
        done = meanshift("run", "-i", data, "-o", out, "-b", "1", "--quiet")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    expected = mean_shift(
        zarr.open_group(str(folder / "d.zarr"))["points"][...], make_params(bandwidth=1)
    )
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["labels"][...], expected.labels)
    assert zarr.open_group(out, mode="r").attrs["input"]["url"] == data


def test_a_stale_listing_cached_by_the_filesystem_never_makes_a_live_lease_vanish(s3):
    from pipeline.io.lease import OutputLease

    bucket = s3.bucket()
    out = f"s3://{bucket}/clusters.zarr"
    lease = OutputLease(out, s3.options())
    with lease:
        # a listing of the bucket taken before the lease was written, as s3fs keeps them
        lease.fs.dircache[bucket] = []
        lease.check()  # still this run's: the output may be marked complete
    assert "clusters.zarr.lease" not in s3.objects(bucket)  # released, not left behind

"""Integrity: a changed input never yields a stale result, and one run writes an output.

Real stores on disk, real ``meanshift`` processes and worker processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from pipeline.engine import mean_shift
from pipeline.errors import InputDataError, OutputError
from pipeline.io import lease as lease_module
from pipeline.io import store
from pipeline.io.datasets import write_blobs
from pipeline.io.lease import OutputLease
from pipeline.jobs.job import run_job
from pipeline.jobs.spec import ClusterSpec
from pipeline.params import make_params

from .support import (
    CLI,
    StandingCluster,
    kill_driver_once,
    meanshift,
    tree_digest,
    wait_for_checkpoint,
)

ONE_WORKER = ClusterSpec(n_workers=1)
QUICK = ["-b", "1.0", "--quiet"]
"""A small job, run where ``auto`` puts it (in the command's process): what these tests check
is decided in the job's own process, wherever the points are shifted."""


def generate(path: str, seed: int, per_cluster: int = 500, chunk: int = 300) -> None:
    """The same shape every time; the content depends on ``seed``."""
    done = meanshift(
        "generate",
        "-o",
        path,
        "--clusters",
        "4",
        "--per-cluster",
        str(per_cluster),
        "--chunk",
        str(chunk),
        "--seed",
        str(seed),
        "--overwrite",
    )
    assert done.returncode == 0, done.stderr


def same_result(a: str, b: str) -> None:
    first, second = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    assert first.attrs["status"] == second.attrs["status"] == "complete"
    np.testing.assert_array_equal(first["labels"][...], second["labels"][...])
    np.testing.assert_array_equal(first["centers"][...], second["centers"][...])


def test_a_complete_output_of_since_changed_input_is_refused_not_reported(tmp_path):
    data, out = str(tmp_path / "mut.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1)
    assert meanshift("run", "-i", data, "-o", out, *QUICK).returncode == 0
    before = tree_digest(out)
    generate(data, seed=2)  # same shape and dtype, other points
    data_digest = tree_digest(data)
    again = meanshift("run", "-i", data, "-o", out, *QUICK)
    assert again.returncode == 4
    assert again.stderr.strip().splitlines() == [
        f"meanshift: error: output {out} (status 'complete') was computed from other content "
        f"of the input {data}, which changed since; pass --overwrite to compute it again"
    ]
    assert tree_digest(out) == before and tree_digest(data) == data_digest
    assert meanshift("run", "-i", data, "-o", out, *QUICK, "--overwrite").returncode == 0
    points = zarr.open_group(data, mode="r")["points"][...]
    fresh = mean_shift(points, make_params(bandwidth=1.0))  # the new content, in process
    result = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(result["labels"][...], fresh.labels)
    np.testing.assert_array_equal(result["centers"][...], fresh.centers)
    assert tree_digest(data) == data_digest


# the refusal itself: test_a_complete_output_of_since_changed_input_is_refused_not_reported
@pytest.mark.slow
def test_a_killed_run_does_not_resume_onto_changed_input(tmp_path):
    data, out = str(tmp_path / "mut.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1, per_cluster=3000, chunk=3000)
    options = ["-b", "1.0", "--kernel", "gaussian", "--blurring", "--method", "exact"]
    options += ["--tol", "0", "--max-iter", "12", "--quiet", "--n-workers", "1"]
    command = [*CLI, "run", "-i", data, "-o", out, *options]
    saved = kill_driver_once(command, out, lambda state: state.get("iteration", 0) >= 2)
    assert saved.get("iteration", 0) >= 2, "the run ended before two iterations were saved"
    generate(data, seed=2, per_cluster=3000, chunk=3000)
    again = meanshift("run", "-i", data, "-o", out, *options)
    assert again.returncode == 4
    assert again.stderr.strip().splitlines() == [
        f"meanshift: error: output {out} (status 'running') was computed from other content "
        f"of the input {data}, which changed since; pass --overwrite to compute it again"
    ]
    assert meanshift("run", "-i", data, "-o", out, *options, "--overwrite").returncode == 0
    assert zarr.open_group(out, mode="r").attrs["resumed_from_iteration"] == 0
    fresh = str(tmp_path / "fresh.zarr")
    assert meanshift("run", "-i", data, "-o", fresh, *options).returncode == 0
    same_result(out, fresh)


def test_input_changed_while_the_job_ran_is_never_marked_complete(tmp_path):
    data, out = str(tmp_path / "mut.zarr"), str(tmp_path / "o.zarr")
    write_blobs(data, 4, 500, 1.0, 2, seed=1, chunk=300)
    params = make_params(kernel="gaussian", bandwidth=1.0, blurring=True, tol=0.0, max_iter=6)

    def change_the_input(done: int, shift: float, moving: int) -> None:
        if done == 2:
            write_blobs(data, 4, 500, 1.0, 2, seed=2, chunk=300, overwrite=True)

    with pytest.raises(InputDataError) as raised:
        run_job(data, out, params, cluster=ONE_WORKER, progress=change_the_input)
    assert str(raised.value) == (
        f"input {data} changed while the job ran; its result is not marked complete: "
        "run the job again"
    )
    assert zarr.open_group(out, mode="r").attrs["status"] == "failed"
    again = run_job(data, out, params, cluster=ONE_WORKER)  # the new content, from the start
    assert not again.already_complete
    run_job(data, str(tmp_path / "fresh.zarr"), params, cluster=ONE_WORKER)
    same_result(out, str(tmp_path / "fresh.zarr"))


# the refusal of a live lease: test_a_lease_is_taken_over_only_when_its_holder_is_gone
@pytest.mark.slow
def test_a_second_run_of_a_busy_output_is_refused_and_the_first_completes(tmp_path):
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1)
    options = ["-b", "1.0", "--kernel", "gaussian", "--blurring", "--tol", "0"]
    first = subprocess.Popen(
        [*CLI, "run", "-i", data, "-o", out, *options, "--max-iter", "30", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(out + ".lease") and time.monotonic() < deadline:
        time.sleep(0.01)
    params = make_params(kernel="gaussian", bandwidth=1.0, blurring=True, tol=0.0, max_iter=30)
    with pytest.raises(OutputError) as raised:  # while the first starts its cluster
        run_job(data, out, params, cluster=ONE_WORKER)
    message = str(raised.value)
    assert message.startswith(
        f"output {out} is being written by another run (process {first.pid} on "
        f"{socket.gethostname()}, heartbeat "
    )
    assert message.endswith(f"its lease {out}.lease goes stale 60 s after it stops)")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert zarr.open_group(out, mode="r").attrs["status"] == "complete"
    assert not os.path.exists(out + ".lease")
    assert run_job(data, out, params, cluster=ONE_WORKER).already_complete


def _lease_record(pid: int, age: float) -> bytes:
    record = {"token": "other", "host": socket.gethostname(), "pid": pid}
    return json.dumps(record | {"heartbeat": time.time() - age}).encode()


def _ended_process_id() -> int:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(ended.stdout)


@pytest.mark.parametrize(
    ("holder", "taken_over"),
    [("live", False), ("silent", True), ("ended process", True), ("unreadable", True)],
)
def test_a_lease_is_taken_over_only_when_its_holder_is_gone(tmp_path, holder, taken_over):
    out = str(tmp_path / "o.zarr")
    records = {
        "live": _lease_record(os.getpid(), age=1),
        "silent": _lease_record(os.getpid(), age=lease_module.STALE_AFTER_S + 1),
        "ended process": _lease_record(_ended_process_id(), age=1),
        "unreadable": b"{not json",
    }
    with open(out + ".lease", "wb") as handle:
        handle.write(records[holder])
    lease = OutputLease(out)
    if not taken_over:
        with pytest.raises(OutputError, match="is being written by another run"):
            lease.acquire()
        with open(out + ".lease", "rb") as handle:
            assert handle.read() == records[holder]  # left alone
        return
    with lease:
        with open(out + ".lease") as handle:
            assert json.load(handle)["token"] == lease.token
        lease.check()
    assert not os.path.exists(out + ".lease")


def test_a_run_whose_lease_was_taken_does_not_mark_its_output(tmp_path):
    out = str(tmp_path / "o.zarr")
    lease = OutputLease(out)
    lease.acquire()
    with open(out + ".lease", "wb") as handle:  # another run took it over
        handle.write(_lease_record(os.getpid(), age=0))
    with pytest.raises(OutputError) as raised:
        lease.check()
    assert str(raised.value) == (
        f"output {out} is not marked complete: another run took over its lease"
    )
    lease.release()
    assert os.path.exists(out + ".lease")  # the other run's, left in place


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    # SIGINT is handled as SIGTERM is, which the first case of
    # test_sigterm_and_sigint_end_in_one_line_and_leave_a_resumable_output checks
    [(15, 143, "terminated"), pytest.param(2, 130, "interrupted", marks=pytest.mark.slow)],
)
def test_sigterm_and_sigint_end_in_one_line_and_leave_a_resumable_output(
    tmp_path, signum, code, line
):
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1, per_cluster=3000, chunk=3000)
    options = ["-b", "1.0", "--kernel", "gaussian", "--blurring", "--method", "exact"]
    options += ["--tol", "0", "--max-iter", "12", "--quiet", "--n-workers", "1"]
    run = subprocess.Popen(
        [*CLI, "run", "-i", data, "-o", out, *options], stderr=subprocess.PIPE, text=True
    )
    saved = wait_for_checkpoint(run, out, lambda state: state.get("iteration", 0) >= 1)
    assert saved.get("iteration", 0) >= 1, "the run ended before an iteration was saved"
    run.send_signal(signum)
    assert run.wait(timeout=60) == code
    assert run.stderr.read().strip().splitlines() == [f"meanshift: {line}"]
    assert zarr.open_group(out, mode="r").attrs["status"] == "failed"
    assert not os.path.exists(out + ".lease")
    again = meanshift("run", "-i", data, "-o", out, *options[:-2])  # resumed in process
    assert again.returncode == 0, again.stderr
    assert zarr.open_group(out, mode="r").attrs["resumed_from_iteration"] >= 1


def _damage(out: str, how: str) -> str:
    if how == "sizes deleted":
        shutil.rmtree(os.path.join(out, "sizes"))
        return "no array 'sizes'"
    chunk = os.path.join(out, "labels", "c", "1")
    if how == "label chunk garbage":
        with open(chunk, "wb") as handle:
            handle.write(b"garbage")
        return "unreadable: "
    if how == "label chunk missing":
        os.remove(chunk)
        return "'labels' misses 1 chunk(s)"
    labels = zarr.open_group(out, mode="r+")["labels"]
    labels[:10] = labels[10:20]  # valid numbers, other counts
    return "the labels do not add up to the cluster sizes"


@pytest.fixture(scope="module")
def complete_output(tmp_path_factory):
    """An input and the complete output of a job on it (copied by each test that damages it)."""
    folder = tmp_path_factory.mktemp("complete")
    data, out = str(folder / "in.zarr"), str(folder / "o.zarr")
    generate(data, seed=1)
    assert meanshift("run", "-i", data, "-o", out, *QUICK).returncode == 0
    return data, out


def _refused_as_damaged(done: subprocess.CompletedProcess, out: str, problem: str) -> None:
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"meanshift: error: output {out} is marked complete but damaged")
    assert problem in lines[0] and lines[0].endswith("; run its job again with --overwrite")


@pytest.mark.parametrize(
    "how", ["sizes deleted", "label chunk garbage", "label chunk missing", "labels changed"]
)
def test_a_damaged_complete_output_is_never_reported(complete_output, tmp_path, how):
    out = str(tmp_path / "o.zarr")
    shutil.copytree(complete_output[1], out)
    problem = _damage(out, how)
    _refused_as_damaged(meanshift("report", out), out, problem)
    state = meanshift("status", out)
    assert (state.returncode, state.stdout) == (1, "damaged\n")


def test_a_damaged_complete_output_is_not_called_complete_and_is_recomputed(
    complete_output, tmp_path
):
    data, out = complete_output[0], str(tmp_path / "o.zarr")
    shutil.copytree(complete_output[1], out)
    problem = _damage(out, "label chunk garbage")
    _refused_as_damaged(meanshift("run", "-i", data, "-o", out, *QUICK), out, problem)
    assert meanshift("run", "-i", data, "-o", out, *QUICK, "--overwrite").returncode == 0
    assert meanshift("report", out).returncode == 0


@pytest.mark.parametrize(("base", "clusters"), [(2**40, 4), (2**62, None)])
def test_64_bit_integer_coordinates_are_exact_or_refused(tmp_path, base, clusters):
    rng = np.random.default_rng(0)
    offsets = np.concatenate([rng.integers(0, 3, (50, 2)) + k * 100 for k in range(4)])
    data, out = str(tmp_path / "ints.zarr"), str(tmp_path / "o.zarr")
    group = zarr.open_group(data, mode="w")
    group.create_array("points", data=(np.int64(base) + offsets).astype(np.int64), chunks=(50, 2))
    digest = tree_digest(data)
    done = meanshift("run", "-i", data, "-o", out, *QUICK[2:], "-b", "3")
    assert tree_digest(data) == digest
    if clusters is not None:
        assert done.returncode == 0, done.stderr
        assert zarr.open_group(out, mode="r").attrs["n_clusters"] == clusters
        return
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "meanshift: error: integer coordinates up to 4.612e+18 are resolved to 1024 in float64, "
        "too coarse for bandwidth 3: subtract an offset (such as each column's minimum) first"
    ]
    assert zarr.open_group(out, mode="r").attrs["status"] == "failed"


# the tree's answers: test_nearest_through_the_tree_is_the_nearest_of_every_centre
@pytest.mark.slow
@pytest.mark.timeout(180)  # quadratic labelling took minutes here
def test_a_tiny_bandwidth_on_many_points_ends_with_a_cluster_per_point(tmp_path):
    data, out = str(tmp_path / "many.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1, per_cluster=25_000, chunk=25_000)
    done = meanshift("run", "-i", data, "-o", out, "-b", "1e-4", "--quiet", "--n-workers", "2")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        "meanshift: warning: 100000 clusters for 100000 points: the bandwidth 0.0001 is "
        "probably too small"
    ]
    result = zarr.open_group(out, mode="r")
    assert result.attrs["n_clusters"] == 100_000
    assert sorted(result["labels"][...]) == list(range(100_000))


BOMB = """name: bomb
input:
  url: in.zarr
  storage_options:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
{levels}
output:
  path: out.zarr
params:
  bandwidth: 1.0
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("kind", ["alias bomb", "huge file"])
def test_specs_that_expand_beyond_bounds_are_refused_at_once(tmp_path, command, kind):
    path = str(tmp_path / "spec.yaml")
    names = "abcdefghi"
    levels = "\n".join(
        f"    {b}: &{b} [{', '.join(['*' + a] * 9)}]"
        for a, b in zip(names[:-1], names[1:], strict=True)
    )
    text = BOMB.format(levels=levels)  # 9^9 strings once expanded
    if kind == "huge file":
        text = BOMB.format(levels="") + "# padding\n" * 30_000
    with open(path, "w") as handle:
        handle.write(text)
    args = [path] if command == "validate" else ["--spec", path]
    done = subprocess.run([*CLI, command, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    reason = "more than 10,000 values once its aliases" if kind == "alias bomb" else "256 KiB"
    assert done.stderr.strip().splitlines() == [
        f"meanshift: error: spec {path}: "
        + (f"{reason} are expanded" if kind == "alias bomb" else f"larger than {reason}")
    ]
    assert not os.path.exists(tmp_path / "out.zarr")


def test_workers_that_never_start_end_the_job_in_one_line(tmp_path):
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1)
    digest = tree_digest(data)
    cluster = StandingCluster(
        str(tmp_path / "cluster"), workers=1, worker_options=("--memory-limit", "50MB")
    )
    try:
        done = meanshift(
            "run",
            "-i",
            data,
            "-o",
            out,
            "-b",
            "1",
            "--quiet",
            "--scheduler",
            cluster.address,
            "--connect-timeout",
            "5",
        )
    finally:
        cluster.close()
    assert done.returncode == 5
    assert done.stderr.strip().splitlines() == [
        "meanshift: error: the Dask scheduler has had no worker for 5 s (workers that fail to "
        "start: a memory limit below what a worker needs, about 250 MB, see their logs); the "
        "job was stopped"
    ]
    assert zarr.open_group(out, mode="r").attrs["status"] == "failed"
    assert tree_digest(data) == digest


def test_a_scheduler_killed_mid_job_is_one_line_and_the_job_resumes(tmp_path):
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr")
    generate(data, seed=1, per_cluster=3000, chunk=3000)
    options = ["-b", "1.0", "--kernel", "gaussian", "--blurring", "--method", "exact"]
    options += ["--tol", "0", "--max-iter", "40", "--quiet"]
    cluster = StandingCluster(str(tmp_path / "cluster"), workers=1)
    try:
        command = [*CLI, "run", "-i", data, "-o", out, *options, "--scheduler", cluster.address]
        run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        saved = wait_for_checkpoint(run, out, lambda state: state.get("iteration", 0) >= 1)
        assert saved.get("iteration", 0) >= 1, "the run ended before an iteration was saved"
        cluster.processes[0].kill()  # the scheduler, mid-job
        assert run.wait(timeout=180) == 5
    finally:
        cluster.close()
    assert run.stderr.read().strip().splitlines() == [
        "meanshift: error: lost the Dask cluster mid-job (the connection to the scheduler was "
        "lost); the output keeps its saved state: run the job again to resume"
    ]
    assert zarr.open_group(out, mode="r").attrs["status"] == "failed"
    again = meanshift("run", "-i", data, "-o", out, *options)  # resumed in process
    assert again.returncode == 0, again.stderr
    assert zarr.open_group(out, mode="r").attrs["resumed_from_iteration"] >= 1


def test_a_spec_waiting_longer_than_a_day_for_its_scheduler_is_refused(tmp_path):
    path = str(tmp_path / "spec.yaml")
    with open(path, "w") as handle:
        handle.write(
            "name: patient\ninput: {url: in.zarr}\noutput: {path: out.zarr}\n"
            "params: {bandwidth: 1.0}\n"
            "cluster: {scheduler: 'tcp://127.0.0.1:9', connect_timeout: 1e308}\n"
        )
    done = subprocess.run([*CLI, "validate", path], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"meanshift: error: spec {path}: cluster.connect_timeout: Input should be less than or "
        "equal to 86400"
    ]


def test_a_lease_in_an_fsspec_store_is_exclusive_too(tmp_path):
    out = f"memory://{tmp_path.name}/o.zarr"  # fsspec's exclusive create, not the local link
    first = OutputLease(out)
    with first:
        with pytest.raises(OutputError, match="is being written by another run"):
            OutputLease(out).acquire()
        first.check()
    with OutputLease(out) as second:  # released: free again
        second.check()


def test_a_store_only_this_process_sees_is_refused_for_worker_processes(tmp_path):
    # memory:// is this process's: worker processes would read and write stores of their own
    data, out = f"memory://{tmp_path.name}/in.zarr", f"memory://{tmp_path.name}/o.zarr"
    write_blobs(data, 4, 500, 1.0, 2, seed=1, chunk=300)
    with pytest.raises(OutputError) as raised:
        run_job(data, out, make_params(bandwidth=1.0), cluster=ONE_WORKER)
    assert str(raised.value) == (
        f"the input {data} lives in this process's memory, which Dask worker processes cannot "
        "see: run with cluster threads, or use a store the workers share"
    )
    with pytest.raises(FileNotFoundError):  # refused before anything was written
        zarr.open_group(out, mode="r")
    done = run_job(data, out, make_params(bandwidth=1.0), cluster=ClusterSpec())  # auto: here
    expected = mean_shift(
        zarr.open_group(data, mode="r")["points"][...], make_params(bandwidth=1.0)
    )
    result = zarr.open_group(out, mode="r")
    assert result.attrs["status"] == "complete" and done.n_clusters == len(expected.sizes)
    np.testing.assert_array_equal(result["labels"][...], expected.labels)
    np.testing.assert_array_equal(result["centers"][...], expected.centers)


def test_an_output_not_written_whole_is_never_marked_complete(tmp_path):
    # what workers that wrote somewhere this process cannot see leave behind: no labels
    out = str(tmp_path / "o.zarr")
    group = store.create_output(out, 1000, 300)
    attributes = {"n_points": 1000, "n_clusters": 1, "input": {"shape": [1000, 2]}}
    with pytest.raises(OutputError) as raised:
        store.write_summary(group, np.zeros((1, 2)), np.array([1000]), attributes, out)
    assert str(raised.value) == (
        f"output {out} was not written whole ('labels' misses 4 chunk(s)); it is not marked "
        "complete"
    )
    assert zarr.open_group(out, mode="r").attrs["status"] == "running"

"""Faults: broken inputs, lost workers. Real stores on disk, real worker processes."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import zarr

from pipeline.engine import mean_shift
from pipeline.jobs.spec import ClusterSpec, OutputSpec
from pipeline.params import make_params

from .support import CLI, kill_driver_once, meanshift, tree_digest

ONE_WORKER = ClusterSpec(n_workers=1)
"""An embedded cluster of one worker process."""


def computed_here(data: str, **params):
    """The clustering of the store's points computed in this process, without Dask: what a
    run on worker processes must give bit for bit (test_identical_results_across_...)."""
    points = zarr.open_group(data, mode="r")["points"][...]
    return mean_shift(points, make_params(**params))


def assert_same_result(group, expected) -> None:
    """A stored output equals an in-process result: labels, centres, sizes, iterations."""
    assert group.attrs["status"] == "complete"
    np.testing.assert_array_equal(group["labels"][...], np.asarray(expected.labels))
    np.testing.assert_array_equal(group["centers"][...], expected.centers)
    np.testing.assert_array_equal(group["sizes"][...], expected.sizes)
    assert group.attrs["n_iter"] == expected.n_iter


@pytest.fixture
def chunked_store(tmp_path):
    path = str(tmp_path / "in.zarr")
    done = meanshift("generate", "-o", path, "--per-cluster", "1000", "--chunk", "1000")
    assert done.returncode == 0
    return path


def test_a_broken_input_chunk_is_named_and_nothing_is_marked_complete(chunked_store, tmp_path):
    chunk = os.path.join(chunked_store, "points", "c", "3", "0")
    with open(chunk, "wb") as handle:
        handle.write(b"not zstd data")
    digest = tree_digest(chunked_store)
    out = str(tmp_path / "out.zarr")
    done = meanshift("run", "-i", chunked_store, "-o", out, "-b", "2.5", "--n-workers", "2")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "rows 3000-3999" in lines[0]
    assert "row chunks 3-3" in lines[0]
    assert tree_digest(chunked_store) == digest  # input untouched
    status = meanshift("status", out)
    assert status.returncode == 1 and status.stdout.strip() in ("missing", "failed")


def test_killing_a_worker_mid_run_gives_the_undisturbed_result(tmp_path):
    # standard Gaussian mean shift, every point a seed, exact: each task works for seconds
    data = str(tmp_path / "in.zarr")
    generated = meanshift("generate", "-o", data, "--per-cluster", "4000", "--chunk", "2000")
    assert generated.returncode == 0
    options = ["-b", "2.5", "--kernel", "gaussian", "--method", "exact"]
    out = str(tmp_path / "disturbed.zarr")
    command = [*CLI, "run", "-i", data, "-o", out, "--n-workers", "2", *options]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = _scheduler_address(run)
    # the job's own seed tasks ("<job name>-standard-<token>") are running on that worker
    killed = _kill_the_worker_running(address, "disturbed-standard-")
    _, err = run.communicate(timeout=300)
    assert killed, "no task of the job was seen running"
    assert run.returncode == 0, err
    undisturbed = computed_here(data, bandwidth=2.5, kernel="gaussian", method="exact")
    assert_same_result(zarr.open_group(out, mode="r"), undisturbed)


@pytest.mark.parametrize(
    ("kills", "outcome"),
    [
        (1, "1 Dask worker(s) stopped while the embedded cluster started; replaced them"),
        # both first workers, then one of their replacements: the job runs on the other
        (3, "3 Dask worker(s) stopped while the embedded cluster started; running on 1 of 2"),
    ],
)
def test_workers_killed_while_the_cluster_starts_are_replaced(
    seed_store, seed_data, tmp_path, kills, outcome
):
    out = str(tmp_path / "out.zarr")
    command = [*CLI, "run", "-i", seed_store, "-o", out, "-b", "2.5", "--n-workers", "2", "--quiet"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    killed = _kill_workers_as_they_start(run, most=kills)
    _, err = run.communicate(timeout=300)
    assert killed == kills
    assert run.returncode == 0, err
    assert err.strip().splitlines() == [f"meanshift: warning: {outcome}"]
    result = zarr.open_group(out, mode="r")
    assert result.attrs["status"] == "complete"
    reference = mean_shift(seed_data[0], make_params(bandwidth=2.5))
    np.testing.assert_array_equal(result["labels"][...], np.asarray(reference.labels))
    np.testing.assert_allclose(result["centers"][...], reference.centers, atol=1e-9)


def test_no_worker_able_to_start_is_one_line_and_exit_5(seed_store, tmp_path):
    out = str(tmp_path / "out.zarr")
    command = [*CLI, "run", "-i", seed_store, "-o", out, "-b", "2.5", "--n-workers", "1"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    killed = _kill_workers_as_they_start(run, most=10)
    _, err = run.communicate(timeout=300)
    assert killed == 2, err  # the worker and its one replacement
    assert run.returncode == 5, err
    assert err.strip().splitlines() == [
        "meanshift: error: no Dask worker could be started: 2 worker processes stopped "
        "while starting"
    ]
    assert meanshift("status", out).stdout.strip() != "complete"


def _scheduler_address(run: subprocess.Popen, timeout: float = 120.0) -> str:
    """The scheduler address from the ``dashboard: … (scheduler tcp://…)`` line of a run."""
    import re
    import time

    deadline = time.monotonic() + timeout
    assert run.stdout is not None
    while time.monotonic() < deadline:
        line = run.stdout.readline()
        found = re.search(r"\(scheduler (tcp://[^)]+)\)", line)
        if found:
            return found.group(1)
        assert line, "the run ended without announcing its cluster"
    raise AssertionError("no cluster announced")


def _kill_the_worker_running(address: str, key_prefix: str, timeout: float = 120.0) -> bool:
    """SIGKILL the worker process that the scheduler at ``address`` shows processing a
    task whose key starts with ``key_prefix``."""
    import signal
    import time

    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker, keys in client.processing().items():
                if any(str(key).lstrip("('").startswith(key_prefix) for key in keys):
                    os.kill(pids[worker], signal.SIGKILL)
                    return True
            time.sleep(0.05)
    return False


def _kill_workers_as_they_start(run: subprocess.Popen, most: int, timeout: float = 120) -> int:
    """SIGKILL each worker process of ``run``'s embedded cluster as soon as it appears
    (long before it can have started), at most ``most`` of them; the number killed."""
    import signal
    import time

    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while run.poll() is None and len(killed) < most and time.monotonic() < deadline:
        for pid in _descendants(run.pid):
            if pid not in killed and _is_worker(pid):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                break
        time.sleep(0.02)
    return len(killed)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        below = children.get(queue.pop(), [])
        found += below
        queue += below
    return found


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"spawn_main" in handle.read()  # not multiprocessing's resource tracker
    except OSError:
        return False


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("limit", [1500, 600])  # fails while writing labels / the summary
def test_a_full_disk_is_a_clear_error_and_leaves_the_input_alone(chunked_store, tmp_path, limit):
    # a run without the limit first, so that numba's kernel cache is written already
    options = ["-b", "2.5", "--quiet", "--n-workers", "1"]
    warm = meanshift("run", "-i", chunked_store, "-o", str(tmp_path / "warm.zarr"), *options[:3])
    assert warm.returncode == 0, warm.stderr
    digest = tree_digest(chunked_store)
    out = str(tmp_path / "out.zarr")
    command = [*CLI, "run", "-i", chunked_store, "-o", out, *options]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(limit)
    )
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write output" in lines[0] and "File too large" in lines[0]
    assert tree_digest(chunked_store) == digest
    assert meanshift("status", out).stdout.strip() != "complete"


def test_an_unwritable_output_location_is_a_clear_error(chunked_store):
    digest = tree_digest(chunked_store)
    done = meanshift("run", "-i", chunked_store, "-o", "/proc/meanshift-out.zarr", "-b", "2.5")
    assert done.returncode == 4
    assert done.stderr.strip().splitlines() == [
        "meanshift: error: cannot write output /proc/meanshift-out.zarr: No such file or directory"
    ]
    assert tree_digest(chunked_store) == digest


def test_a_read_only_location_is_a_clear_error(chunked_store):
    # /sys refuses new entries even to root: a read-only location on any Linux machine
    digest = tree_digest(chunked_store)
    done = meanshift("run", "-i", chunked_store, "-o", "/sys/meanshift-out.zarr", "-b", "2.5")
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "meanshift: error: cannot write output /sys/meanshift-out.zarr: "
    )
    assert "denied" in lines[0] or "not permitted" in lines[0]
    assert tree_digest(chunked_store) == digest


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_clear_error(chunked_store, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    digest = tree_digest(chunked_store)
    try:
        done = meanshift("run", "-i", chunked_store, "-o", str(folder / "out.zarr"), "-b", "2.5")
    finally:
        folder.chmod(0o755)
    assert done.returncode == 4
    assert done.stderr.strip().splitlines() == [
        f"meanshift: error: cannot write output {folder / 'out.zarr'}: Permission denied"
    ]
    assert tree_digest(chunked_store) == digest


def test_a_killed_driver_resumes_from_its_last_iteration(tmp_path):
    data = str(tmp_path / "in.zarr")
    generated = meanshift("generate", "-o", data, "--per-cluster", "3000", "--chunk", "3000")
    assert generated.returncode == 0
    options = ["-b", "2.5", "--kernel", "gaussian", "--blurring", "--method", "exact"]
    options += ["--tol", "0", "--max-iter", "10", "--quiet", "--n-workers", "2"]
    out = str(tmp_path / "out.zarr")
    command = [*CLI, "run", "-i", data, "-o", out, *options]
    saved = kill_driver_once(command, out, lambda state: state.get("iteration", 0) >= 2)
    assert saved.get("iteration", 0) >= 2, "the run ended before two iterations were saved"
    assert zarr.open_group(out, mode="r").attrs["status"] == "running"  # not complete
    again = meanshift("run", "-i", data, "-o", out, *options)  # the same command
    assert again.returncode == 0, again.stderr
    b = zarr.open_group(out, mode="r")
    assert b.attrs["resumed_from_iteration"] >= 2  # it did not start from iteration 0
    assert "checkpoint" not in b.attrs and "checkpoint" not in b
    assert not os.path.exists(out + ".lease")  # the killed run's lease taken over, released
    params = dict(bandwidth=2.5, kernel="gaussian", blurring=True, method="exact", tol=0.0)
    uninterrupted = computed_here(data, **params, max_iter=10)
    assert_same_result(b, uninterrupted)
    assert b.attrs["max_shift_per_iteration"] == uninterrupted.max_shift


def test_a_killed_standard_run_reuses_its_finished_seed_chunks(tmp_path):
    # standard Gaussian mean shift, every point a seed, 12 chunks of seeds on 2 workers
    data = str(tmp_path / "in.zarr")
    generated = meanshift("generate", "-o", data, "--per-cluster", "4000", "--chunk", "2000")
    assert generated.returncode == 0
    options = ["-b", "2.5", "--kernel", "gaussian", "--method", "exact"]
    options += ["--quiet", "--n-workers", "2"]
    out = str(tmp_path / "out.zarr")
    command = [*CLI, "run", "-i", data, "-o", out, *options]
    saved = kill_driver_once(command, out, lambda state: len(state.get("done", [])) >= 2)
    done = len(saved.get("done", []))
    assert saved.get("stage") == "standard" and 2 <= done < len(saved["chunks"]), saved
    assert zarr.open_group(out, mode="r").attrs["status"] == "running"
    again = meanshift("run", "-i", data, "-o", out, *options)
    assert again.returncode == 0, again.stderr
    b = zarr.open_group(out, mode="r")
    reused = int(b.attrs["resumed"].split(" of ")[0])  # "<k> of <m> seed chunks"
    assert reused >= done and b.attrs["resumed"].endswith(f"of {len(saved['chunks'])} seed chunks")
    assert "checkpoint" not in b.attrs and "checkpoint" not in b
    uninterrupted = computed_here(data, bandwidth=2.5, kernel="gaussian", method="exact")
    assert_same_result(b, uninterrupted)


class _Crash(Exception):
    """Raised from a progress callback: the job stops mid-run like a crashed driver."""


def _crash_at(iteration: int):
    def progress(done: int, shift: float, moving: int) -> None:
        if done >= iteration:
            raise _Crash(f"stopped at iteration {done}")

    return progress


def test_the_binned_method_resumes_after_its_binning_pass(seed_store, tmp_path):
    from pipeline.jobs.job import run_job
    from pipeline.params import make_params

    params = make_params(kernel="gaussian", bandwidth=2.5, method="binned")
    reference = run_job(seed_store, str(tmp_path / "reference.zarr"), params, cluster=ONE_WORKER)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(_Crash):  # the cells' mean shift runs after the binning pass
        run_job(seed_store, out, params, cluster=ONE_WORKER, progress=_crash_at(2))
    left = zarr.open_group(out, mode="r")
    assert left.attrs["status"] == "failed" and left.attrs["checkpoint"]["stage"] == "binned"
    resumed = run_job(seed_store, out, params, cluster=ONE_WORKER)
    assert resumed.resumed == f"the binning pass ({reference.n_cells:,} cells)"
    a, b = zarr.open_group(str(tmp_path / "reference.zarr"), mode="r"), zarr.open_group(out)
    np.testing.assert_array_equal(a["labels"][...], b["labels"][...])
    np.testing.assert_array_equal(a["centers"][...], b["centers"][...])
    assert "checkpoint" not in b


@pytest.mark.parametrize(
    ("every", "expected"),
    [
        # the default interval: test_a_killed_driver_resumes_from_its_last_iteration
        pytest.param(1, 4, marks=pytest.mark.slow),
        (3, 3),
        (0, 0),
    ],
)
def test_the_checkpoint_interval_sets_where_a_blurring_run_resumes(
    seed_store, tmp_path, every, expected
):
    from pipeline.jobs.job import run_job
    from pipeline.params import make_params

    # checkpoints are saved and read by the job's own process: threads of this process here
    # (worker processes: test_a_killed_driver_resumes_from_its_last_iteration)
    here = ClusterSpec(kind="threads")
    params = dict(kernel="gaussian", bandwidth=1.0, blurring=True, tol=0.0, max_iter=8)
    out = str(tmp_path / "out.zarr")
    every_n = OutputSpec(path=out, checkpoint_every=every)
    with pytest.raises(_Crash):  # after iteration 5's stop test, before its save
        run_job(seed_store, every_n, make_params(**params), cluster=here, progress=_crash_at(5))
    resumed = run_job(seed_store, every_n, make_params(**params), cluster=here)
    b = zarr.open_group(out, mode="r")
    assert b.attrs["resumed_from_iteration"] == expected
    uninterrupted = computed_here(seed_store, **params)
    assert resumed.n_iter == 8
    assert_same_result(b, uninterrupted)
    assert b.attrs["max_shift_per_iteration"] == uninterrupted.max_shift


def test_rerunning_a_finished_job_is_a_no_op_and_another_job_is_refused(chunked_store, tmp_path):
    out = str(tmp_path / "out.zarr")
    first = meanshift("run", "-i", chunked_store, "-o", out, "-b", "2.5", "--quiet")
    assert first.returncode == 0, first.stderr
    digest = tree_digest(out)
    again = meanshift("run", "-i", chunked_store, "-o", out, "-b", "2.5")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"already complete: {out} holds this job's result")
    assert tree_digest(out) == digest  # not rewritten
    other = meanshift("run", "-i", chunked_store, "-o", out, "-b", "3.0")
    assert other.returncode == 4
    assert other.stderr.strip().splitlines() == [
        f"meanshift: error: output {out} already exists (status 'complete'); "
        "pass --overwrite to replace it"
    ]
    assert tree_digest(out) == digest
    forced = meanshift("run", "-i", chunked_store, "-o", out, "-b", "2.5", "--overwrite")
    assert forced.returncode == 0 and "already complete" not in forced.stdout
    assert tree_digest(out) != digest  # recomputed (new timings and finish time)


@pytest.mark.parametrize(
    "config",
    [
        dict(kernel="gaussian", blurring=True, method="exact"),
        # binned: test_results_do_not_depend_on_chunking (test_methods) in process and
        # test_binned_job_on_worker_processes_matches_one_worker (test_job)
        pytest.param(dict(kernel="flat", method="binned", bandwidth=2.0), marks=pytest.mark.slow),
    ],
)
def test_identical_results_across_worker_counts_threads_and_processes(seed_store, tmp_path, config):
    from distributed import LocalCluster

    from pipeline.jobs.job import run_job
    from pipeline.params import make_params

    params = make_params(**({"bandwidth": 2.5} | config))
    outcomes = []
    for workers in (1, 2, 4):
        out = str(tmp_path / f"processes-{workers}.zarr")
        run_job(seed_store, out, params, cluster=ClusterSpec(n_workers=workers))
        outcomes.append(zarr.open_group(out, mode="r"))
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False) as threads:
        out = str(tmp_path / "threads.zarr")
        run_job(seed_store, out, params, cluster=ClusterSpec(scheduler=threads.scheduler_address))
        outcomes.append(zarr.open_group(out, mode="r"))
    for kind in ("threads", "auto"):  # Dask's threaded scheduler in this process, no workers
        out = str(tmp_path / f"{kind}.zarr")
        run_job(seed_store, out, params, cluster=ClusterSpec(kind=kind))
        outcomes.append(zarr.open_group(out, mode="r"))
    first = outcomes[0]
    for other in outcomes[1:]:
        np.testing.assert_array_equal(other["labels"][...], first["labels"][...])
        np.testing.assert_array_equal(other["centers"][...], first["centers"][...])
        np.testing.assert_array_equal(other["sizes"][...], first["sizes"][...])
        assert other.attrs["n_iter"] == first.attrs["n_iter"]


def test_workers_not_started_in_time_are_a_cluster_error():
    from pipeline.errors import ClusterError
    from pipeline.jobs.cluster import start_local_cluster

    # no worker process can import and register in a hundredth of a second
    with pytest.raises(ClusterError, match=r"^no Dask worker started within 0\.01 s$"):
        start_local_cluster(1, timeout=0.01)

"""Time to first result: mistakes refused before heavy imports or clusters, small jobs in
this process, where a job runs said up front, progress that tells the truth."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr

from pipeline.backend import gpu_available
from pipeline.errors import ParameterError
from pipeline.io.datasets import write_blobs
from pipeline.jobs.cluster import THREADS_MEMORY_SHARE, resolve_cluster
from pipeline.jobs.spec import ClusterSpec

from .support import CLI, meanshift

HEAVY = ("zarr", "numba", "distributed", "dask.array", "sklearn", "scipy", "fsspec")
"""Modules a usage error must not wait for."""


def imported_by(folder: str, *args: str) -> tuple[int, list[str], str]:
    """Run ``meanshift ARGS`` in a fresh interpreter in ``folder``: its exit code, which of
    ``HEAVY`` it imported, and its stderr."""
    script = (
        "import json, sys\n"
        "from pipeline.cli import main\n"
        "code = 0\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit as stop:\n"
        "    code = stop.code or 0\n"
        f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=folder
    )
    return done.returncode, json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["run", "--help"], 0),
        (["run", "-i", "x.zarr"], 2),  # no --output
        (["run", "-i", "x.zarr", "-o", "y.zarr", "--blurring", "--bin-seeding"], 2),
        (["run", "-i", "x.zarr", "-o", "y.zarr", "-b", "-1"], 2),
        (["run", "-i", "x.zarr", "-o", "y.zarr", "--cluster", "tcp://host"], 2),
        (["run", "-i", "x.zarr", "-o", "y.zarr", "--scheduler", "host:99999"], 2),
        (["run", "-i", "x.zarr", "-o", "y.zarr", "--kernel", "cosine"], 2),
        (["run", "-i", "x.zarr", "-o", "y.zarr", "-b", "1"], 3),  # no such input
        (["run", "-i", "x.zarr", "-o", "y.zarr", "--input-storage-options", "{}"], 3),
        (["run", "-i", "x.zarr", "-o", "y.zarr", "--input-storage-options", '{"a": 1}'], 2),
        pytest.param(
            ["run", "-i", "x.zarr", "-o", "y.zarr", "--backend", "cupy"],
            2,
            marks=pytest.mark.skipif(gpu_available(), reason="a usable GPU is here"),
        ),
    ],
)
def test_help_and_usage_errors_answer_without_the_heavy_imports(tmp_path, args, code):
    returned, heavy, stderr = imported_by(str(tmp_path), *args)
    assert returned == code, stderr
    assert heavy == []
    assert os.listdir(tmp_path) == []  # nothing written


def test_auto_picks_where_to_compute():
    small, huge = (1500, 2), (10**12, 3)
    assert resolve_cluster(ClusterSpec(), small).kind == "threads"
    assert resolve_cluster(ClusterSpec(), huge).kind == "local"
    assert resolve_cluster(ClusterSpec(), huge, process_local=True).kind == "threads"
    assert resolve_cluster(ClusterSpec(n_workers=2), small).kind == "local"
    for kind in ("threads", "local", "local-cuda"):
        assert resolve_cluster(ClusterSpec(kind=kind), huge).kind == kind
    with dask.config.set({"scheduler-address": "tcp://10.1.2.3:8786"}):
        remote = resolve_cluster(ClusterSpec(), small)
        assert (remote.kind, remote.scheduler) == ("remote", "tcp://10.1.2.3:8786")
    with dask.config.set({"scheduler-address": "nonsense"}):
        with pytest.raises(ParameterError, match="^Dask's configured scheduler-address: "):
            resolve_cluster(ClusterSpec(), small)
    import psutil

    edge = psutil.virtual_memory().total // (8 * THREADS_MEMORY_SHARE)
    assert resolve_cluster(ClusterSpec(), (edge, 1)).kind == "threads"
    assert resolve_cluster(ClusterSpec(), (edge + 1, 1)).kind == "local"


def test_a_small_job_runs_in_this_process_and_says_so(seed_store, tmp_path):
    out = str(tmp_path / "o.zarr")
    done = meanshift("run", "-i", seed_store, "-o", out, "-b", "2.5", "--kernel", "gaussian")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"running in this process: Dask's threaded scheduler, \d+ threads", lines[0]
    )
    assert not any(line.startswith("dashboard:") for line in lines)  # no cluster started
    assert zarr.open_group(out, mode="r").attrs["status"] == "complete"


def test_dask_configured_scheduler_address_is_honoured(seed_store, cluster_2proc, tmp_path):
    out = str(tmp_path / "o.zarr")
    address = cluster_2proc.scheduler_address
    command = [*CLI, "run", "-i", seed_store, "-o", out, "-b", "2.5"]
    environment = dict(os.environ, DASK_SCHEDULER_ADDRESS=address)
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"connecting to the Dask scheduler at {address}",
        f"dashboard: {cluster_2proc.dashboard_link} (scheduler {address})",
    ]


def test_plain_progress_lines_when_stderr_is_not_a_terminal(seed_store, tmp_path):
    out = str(tmp_path / "o.zarr")
    options = ["-b", "2.5", "--kernel", "gaussian", "--blurring", "--progress-every", "0"]
    done = meanshift("run", "-i", seed_store, "-o", out, *options)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    n_iter = zarr.open_group(out, mode="r").attrs["n_iter"]
    assert len(lines) == n_iter >= 2
    pattern = r"meanshift: iteration (\d+): largest shift \S+, ([\d,]+) points moving \(\d+ s\)"
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found), lines
    assert [int(match.group(1)) for match in found] == list(range(1, n_iter + 1))
    assert int(found[-1].group(2).replace(",", "")) == 0  # converged: nothing moves


def test_the_progress_counter_on_a_terminal_has_no_fake_total(seed_store, tmp_path):
    out = str(tmp_path / "o.zarr")
    options = ["-b", "2.5", "--kernel", "gaussian", "--blurring"]
    main, other = pty.openpty()
    fcntl.ioctl(other, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 120 columns
    with subprocess.Popen(
        [*CLI, "run", "-i", seed_store, "-o", out, *options],
        stdout=subprocess.DEVNULL,
        stderr=other,
    ) as run:
        os.close(other)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the run closed its end
                break
            if not chunk:
                break
            shown += chunk
    os.close(main)
    assert run.returncode == 0
    text = shown.decode(errors="replace")
    assert "blurring: " in text and "it [" in text and "max_shift=" in text and "moving=" in text
    assert "/300" not in text and "%" not in text  # max_iter is no total to count towards


def test_points_labelled_minus_one_are_counted_and_explained(tmp_path):
    data, out = str(tmp_path / "d.zarr"), str(tmp_path / "o.zarr")
    write_blobs(data, 4, 200, 20.0, 2, seed=5)  # wide blobs: their edges lie beyond reach
    done = meanshift("run", "-i", data, "-o", out, "-b", "1.5", "--no-cluster-all")
    assert done.returncode == 0, done.stderr
    group = zarr.open_group(out, mode="r")
    outliers = int(np.sum(group["labels"][...] == -1))
    assert outliers > 0
    assert group.attrs["unlabelled"] == {
        "points": outliers,
        "outliers": outliers,
        "dropped_rows": 0,
    }
    assert (
        f"labelled -1: {outliers:,} points farther than the bandwidth from every centre "
        "(--no-cluster-all)"
    ) in done.stdout.splitlines()


def test_the_demo_takes_a_plot_path_relative_to_the_current_folder(tmp_path):
    done = meanshift(
        "demo", "--output-dir", "demo", "--plot", "demo/demo.png", "--quiet", cwd=str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(tmp_path / "demo" / "demo.png")
    assert os.path.isdir(tmp_path / "demo" / "seed-clusters.zarr")
    assert not os.path.exists(tmp_path / "demo" / "demo")


def test_the_readme_estimator_example_runs_as_a_script(seed_store, cluster_2proc, tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [block for block in blocks if "from pipeline import MeanShift\n" in block[:80]]
    shutil.copytree(seed_store, tmp_path / "data.zarr")
    script = tmp_path / "example.py"
    script.write_text(example.replace("tcp://host:8786", cluster_2proc.scheduler_address))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr

"""The `meanshift` console script, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from pipeline.backend import gpu_available
from pipeline.io.store import STATUS_COMPLETE

from .support import meanshift, tree_digest


@pytest.mark.parametrize("command", [[], ["run"], ["generate"], ["demo"]])
def test_help_everywhere(command):
    result = meanshift(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_generate_then_run_on_two_worker_processes(tmp_path):
    data = str(tmp_path / "data.zarr")
    out = str(tmp_path / "out.zarr")
    generated = meanshift(
        "generate",
        "--clusters",
        "4",
        "--per-cluster",
        "200",
        "--seed",
        "3",
        "--chunk",
        "128",
        "--output",
        data,
    )
    assert generated.returncode == 0, generated.stderr
    points = zarr.open_group(data, mode="r")["points"]
    assert points.shape == (800, 2) and points.dtype == np.float32 and points.chunks == (128, 2)
    result = meanshift(
        "run",
        "--input",
        data,
        "--output",
        out,
        "--bandwidth",
        "2.5",
        "--kernel",
        "gaussian",
        "--blurring",
        "--n-workers",
        "2",
        "--modes",
    )
    assert result.returncode == 0, result.stderr
    assert "-> 4 clusters" in result.stdout
    assert f"output: {out}" in result.stdout
    group = zarr.open_group(out, mode="r")
    assert group.attrs["status"] == STATUS_COMPLETE
    assert group["labels"].chunks == (128,)
    truth = zarr.open_group(data, mode="r")["truth"][...]
    labels = group["labels"][...]
    # each true blob maps to exactly one cluster
    assert all(len(np.unique(labels[truth == c])) == 1 for c in range(4))


def test_demo_writes_summary_and_plot(tmp_path):
    result = meanshift("demo", "--plot", "demo.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1,500 points x 2 dims -> 6 clusters" in result.stdout
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.zarr"
    group = zarr.open_group(str(path), mode="w")
    points = np.arange(40, dtype="float32").reshape(20, 2)
    group.create_array("points", shape=(20, 2), chunks=(10, 2), dtype="float32")[...] = points
    group.create_array("line", shape=(20,), chunks=(10,), dtype="float32")[...] = np.arange(20)
    words = group.create_array("words", shape=(20, 2), chunks=(10, 2), dtype=str)
    words[...] = np.full((20, 2), "a")
    points[3, 1] = np.nan
    group.create_array("holes", shape=(20, 2), chunks=(10, 2), dtype="float32")[...] = points
    (path.parent / "plain-folder").mkdir()
    (path.parent / "plain-folder" / "keep.txt").write_text("precious")
    return str(path)


MISTAKES = [
    (["run", "-i", "{tmp}/missing.zarr", "-o", "{tmp}/o.zarr"], 3, "input not found"),
    (["run", "-i", "{parent}/plain-folder", "-o", "{tmp}/o.zarr"], 3, "not a Zarr store"),
    (["run", "-i", "{store}", "--array", "nope", "-o", "{tmp}/o.zarr"], 3, "no array 'nope'"),
    (["run", "-i", "{store}", "--array", "line", "-o", "{tmp}/o.zarr"], 3, "must be 2-D"),
    (["run", "-i", "{store}", "--array", "words", "-o", "{tmp}/o.zarr"], 3, "real numbers"),
    (["run", "-i", "{store}", "--array", "holes", "-o", "{tmp}/o.zarr", "-b", "1"], 3, "NaN"),
    (["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--bandwidth", "-1"], 2, "positive number"),
    (["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--bandwidth", "wide"], 2, "neither a number"),
    (["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "-b", "1e-300"], 2, "too small for data"),
    (["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--kernel", "cosine"], 2, "cosine"),
    (
        ["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--blurring", "--bin-seeding"],
        2,
        "bin_seeding",
    ),
    (["run", "-i", "{store}", "-o", "{store}"], 4, "would overwrite or nest with the input"),
    (["run", "-i", "{store}", "-o", "{store}", "--overwrite"], 4, "nest with the input"),
    (["run", "-i", "{store}", "-o", "{store}/inner"], 4, "nest with the input"),
    (["run", "-i", "{store}", "-o", "{parent}/plain-folder", "--overwrite"], 4, "not a meanshift"),
    (["run", "-i", "{store}", "-o", "nosuch://x.zarr", "-b", "1"], 4, "cannot write output"),
    (
        ["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--scheduler", "nonsense"],
        2,
        "cluster.scheduler: 'nonsense' is not a Dask scheduler address",
    ),
    (["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--cluster", "nonsense"], 2, "nor a scheduler"),
    (
        ["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--cluster", "tcp://127.0.0.1:1"]
        + ["--connect-timeout", "2"],
        5,
        "cannot reach Dask scheduler tcp://127.0.0.1:1",
    ),
    (["run"], 2, "missing option --input"),
    (["run", "-i", "{store}"], 2, "missing option --output"),
    (
        [
            "run",
            "-i",
            "{store}",
            "-o",
            "{tmp}/o.zarr",
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--cluster",
            "local",
        ],
        2,
        "not both",
    ),
    (
        ["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--n-workers", "100000"],
        2,
        "can run: at most",
    ),
    (
        ["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--connect-timeout", "1e10"],
        2,
        "not in the range 0<x<=86400",
    ),
    (
        ["run", "-i", "{store}", "--array", "../x", "-o", "{tmp}/o.zarr"],
        2,
        "leaves the input group",
    ),
    (
        ["run", "-i", "{store}/points", "--array", "line", "-o", "{tmp}/o.zarr"],
        2,
        "is an array itself; --array 'line' names an array inside a group",
    ),
    (["generate", "-o", "{store}", "--overwrite"], 4, "is not generated data"),
    (["demo", "--plot", "{tmp}/no/such/folder/x.png"], 4, "cannot write plot"),
]
if not gpu_available():
    MISTAKES.append(
        (["run", "-i", "{store}", "-o", "{tmp}/o.zarr", "--backend", "cupy"], 2, "no CUDA device")
    )


@pytest.mark.parametrize(("args", "code", "message"), MISTAKES)
def test_user_mistakes_give_one_line_and_exit_code(small_store, tmp_path, args, code, message):
    parent = os.path.dirname(small_store)
    filled = [a.format(tmp=tmp_path, store=small_store, parent=parent) for a in args]
    before = tree_digest(parent)
    result = meanshift(*filled)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(parent) == before  # inputs and unrelated folders untouched
    if code != 3:  # a usage mistake leaves no output (bad data: a failed one, saying why)
        assert not [name for name in os.listdir(tmp_path) if name.startswith("o.zarr")]


def test_unreachable_scheduler_is_a_cluster_error(small_store, tmp_path):
    result = meanshift(
        "run",
        "-i",
        small_store,
        "-o",
        str(tmp_path / "o.zarr"),
        "-b",
        "1",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--connect-timeout",
        "2",
    )
    assert result.returncode == 5
    assert "cannot reach Dask scheduler" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_and_scheduled_workflow_script(tmp_path):
    import shutil

    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    if shutil.which("meanshift", path=env["PATH"]) is None:
        pytest.skip("the meanshift console script is not installed")
    script = os.path.join(os.path.dirname(__file__), "..", "workflows", "seed-demo.sh")
    first = subprocess.run(
        ["bash", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert first.returncode == 0, first.stderr
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith("complete: ")
    output = last.split(": ", 1)[1]
    assert meanshift("status", output).stdout.strip() == "complete"
    second = subprocess.run(
        ["bash", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert second.stdout.strip() == f"already complete: {output}"  # idempotent
    missing = meanshift("status", str(tmp_path / "nothing.zarr"))
    assert missing.returncode == 1 and missing.stdout.strip() == "missing"


def test_file_urls_and_plain_paths_are_the_same_locations(small_store, tmp_path):
    out = str(tmp_path / "o.zarr")
    first = meanshift(
        "run", "-i", f"file://{small_store}", "-o", f"file://{out}", "-b", "1", "--quiet"
    )
    assert first.returncode == 0, first.stderr
    assert zarr.open_group(out, mode="r").attrs["status"] == "complete"
    again = meanshift("run", "-i", small_store, "-o", out, "-b", "1")  # the same job
    assert again.returncode == 0 and again.stdout.startswith(f"already complete: {out}")
    assert meanshift("report", f"file://{out}").returncode == 0
    assert os.path.isfile(tmp_path / "o-report" / "index.html")  # beside it, as for the path

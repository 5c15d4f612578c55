"""An output's lifecycle (pipeline.io.output): the decision table, and each way a location can
be named, held, left half-finished, damaged or made stale, with real processes and stores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import zarr

from pipeline.engine import mean_shift
from pipeline.io.lease import OutputLease, lease_url
from pipeline.io.output import Action, OutputState, Request, Status, decide
from pipeline.params import make_params

from .support import CLI, local_attributes, meanshift, tree_digest

QUICK = ("-b", "2.5", "--cluster", "threads", "-q")
"""A job on the seed data that runs in this process in about a second."""


# ---------------------------------------------------------------- the decision table

JOB = "f" * 64
OTHER = "0" * 64
INPUT = {"url": "/data/in.zarr", "array": "points", "content": "c1"}


def state(status: Status, **attributes) -> OutputState:
    marked = {} if status in (Status.MISSING, Status.FOREIGN) else {"status": status.value}
    if status is Status.DAMAGED:
        marked["status"] = "complete"
    options = {
        key: attributes.pop(key) for key in ("overlaps_input", "writer") if key in attributes
    }
    damage = "no array 'sizes'" if status is Status.DAMAGED else None
    has_modes = attributes.pop("has_modes", False)
    return OutputState(
        "/o.zarr", "file:///o.zarr", status, {**marked, **attributes}, damage, has_modes, **options
    )


def request(**changes) -> Request:
    asked = dict(fingerprint=JOB, input_url="/data/in.zarr", input_array="points")
    return Request(**{**asked, "input_content": "c1", **changes})


ALIVE = {"token": "t", "host": "h", "pid": 1, "heartbeat": 0.0}

TABLE = [
    # (what is there, what is asked, decision, words of the refusal)
    (state(Status.MISSING, overlaps_input=True), request(), Action.REFUSE, "nest with the input"),
    (state(Status.MISSING), request(), Action.CREATE, ""),
    (state(Status.MISSING, writer=ALIVE), request(), Action.REFUSE, "being written by"),
    (state(Status.RUNNING, writer=ALIVE), request(overwrite=True), Action.REFUSE, "being written"),
    (state(Status.FOREIGN), request(), Action.REFUSE, "is not a meanshift output"),
    (state(Status.FOREIGN), request(overwrite=True), Action.REFUSE, "not replacing it"),
    (state(Status.COMPLETE, fingerprint=OTHER), request(overwrite=True), Action.REPLACE, ""),
    (state(Status.COMPLETE, fingerprint=JOB, input=INPUT), request(), Action.REUSE, ""),
    (state(Status.COMPLETE, fingerprint=JOB), request(modes=True), Action.REFUSE, "already"),
    (
        state(Status.COMPLETE, fingerprint=JOB, has_modes=True),
        request(modes=True),
        Action.REUSE,
        "",
    ),
    (state(Status.COMPLETE, fingerprint=OTHER), request(any_complete=True), Action.REUSE, ""),
    (state(Status.COMPLETE, fingerprint=OTHER, input=INPUT), request(), Action.REFUSE, "(status"),
    (
        state(Status.COMPLETE, fingerprint=OTHER, input={**INPUT, "content": "c0"}),
        request(),
        Action.REFUSE,
        "other content of the input",
    ),
    (state(Status.DAMAGED, fingerprint=JOB), request(), Action.REFUSE, "but damaged"),
    (state(Status.DAMAGED, fingerprint=JOB), request(any_complete=True), Action.REPLACE, ""),
    (state(Status.RUNNING, checkpoint={"fingerprint": JOB}), request(), Action.RESUME, ""),
    (state(Status.FAILED, checkpoint={"fingerprint": JOB}), request(), Action.RESUME, ""),
    (
        state(Status.RUNNING, checkpoint={"fingerprint": JOB}),
        request(any_complete=True),
        Action.REPLACE,
        "",
    ),  # fmt: skip
    (state(Status.RUNNING, checkpoint={"fingerprint": OTHER}), request(), Action.REFUSE, "ning'"),
    (state(Status.RUNNING), request(), Action.REFUSE, "already exists (status 'running')"),
    (
        state(Status.RUNNING, input={**INPUT, "content": "c0"}, checkpoint={"fingerprint": OTHER}),
        request(),
        Action.REFUSE,
        "other content",
    ),
    (state(Status.FAILED), request(), Action.REPLACE, ""),
    (state(Status.FAILED, input={**INPUT, "content": "c0"}), request(), Action.REPLACE, ""),
]


@pytest.mark.parametrize(("found", "asked", "action", "words"), TABLE)
def test_the_decision_table(found, asked, action, words):
    decision = decide(found, asked)
    assert decision.action is action
    assert words in decision.reason and (decision.reason == "") == (action is not Action.REFUSE)


# ------------------------------------------------------------ one output, one lease


def test_every_name_of_an_output_takes_its_one_lease(tmp_path, seed_store, monkeypatch):
    """A symlink, ./ and file:// name one output: a second run through any of them is
    refused while the first holds the lease, and reads the first's result back after."""
    out = tmp_path / "out.zarr"
    (tmp_path / "alias.zarr").symlink_to(out)
    monkeypatch.chdir(tmp_path)
    names = ["alias.zarr", "./out.zarr", f"file://{out}", f"{tmp_path}/./out.zarr"]
    assert {lease_url(name) for name in names} == {f"{out}.lease"}
    with OutputLease(str(out)) as held:  # a run that holds the output
        for name in names:
            done = meanshift("run", "-i", seed_store, "-o", name, *QUICK, cwd=str(tmp_path))
            assert done.returncode == 4, done.stderr
            assert done.stderr.count("\n") == 1 and "is being written by another run" in done.stderr
        assert not out.exists() and held.lost is None  # nothing written beside the holder
    first = meanshift("run", "-i", seed_store, "-o", str(out), *QUICK)
    assert first.returncode == 0, first.stderr
    digest = tree_digest(str(out))
    again = meanshift("run", "-i", seed_store, "-o", "alias.zarr", *QUICK, cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert tree_digest(str(out)) == digest
    assert local_attributes(str(out))["status"] == "complete"


def test_an_output_inside_the_input_is_refused_before_any_write(tmp_path, seed_store):
    data = str(tmp_path / "in.zarr")
    shutil.copytree(seed_store, data)
    digest = tree_digest(data)
    for out in (f"{data}/points/out.zarr", f"{data}/out.zarr", data):
        done = meanshift("run", "-i", data, "-o", out, *QUICK)
        assert done.returncode == 4, done.stderr
        assert done.stderr.count("\n") == 1 and "would overwrite or nest with the input" in (
            done.stderr
        )
        assert tree_digest(data) == digest  # no lease, no group, nothing
    assert sorted(os.listdir(tmp_path)) == ["in.zarr"]


def test_a_lease_that_is_a_folder_is_one_line(tmp_path, seed_store):
    out = tmp_path / "out.zarr"
    (tmp_path / "out.zarr.lease").mkdir()
    done = meanshift("run", "-i", seed_store, "-o", str(out), *QUICK)
    assert done.returncode == 4 and done.stderr.count("\n") == 1, done.stderr
    assert "it is a folder, not a lease file" in done.stderr
    assert not out.exists()


def test_a_lease_with_a_heartbeat_far_in_the_future_is_stale(tmp_path, seed_store):
    out = tmp_path / "out.zarr"
    record = {"token": "x", "host": "elsewhere", "pid": 1, "heartbeat": 1e18}
    (tmp_path / "out.zarr.lease").write_text(json.dumps(record))
    done = meanshift("run", "-i", seed_store, "-o", str(out), *QUICK)
    assert done.returncode == 0, done.stderr
    assert local_attributes(str(out))["status"] == "complete"
    assert not (tmp_path / "out.zarr.lease").exists()


# ------------------------------------------------------- chunks equal to the fill value


def write_points(path: str, points: np.ndarray, chunk: int) -> None:
    group = zarr.open_group(path, mode="w")
    group.create_array("points", data=points, chunks=(chunk, points.shape[1]))


def expected(points: np.ndarray, **params):
    return mean_shift(points, make_params(**params))


@pytest.mark.parametrize(
    "case", ["a row at the origin", "every point at the origin", "a chunk of NaN rows dropped"]
)
def test_chunks_equal_to_the_fill_value_are_data_not_damage(tmp_path, case):
    """Zarr 3 stores no chunk equal to the fill value: such chunks of the input read as the
    fill value, and every chunk of an output is stored, so each run completes."""
    rng = np.random.default_rng(0)
    points = rng.normal(0, 1, (40, 2)) + np.repeat([[0, 0], [20, 20]], 20, axis=0)
    extra = []
    if case == "a row at the origin":
        points[7] = 0.0
    elif case == "every point at the origin":
        points = np.zeros((40, 2))
    else:
        points[8:16] = np.nan  # labels -1 for a whole chunk of 8 rows: the labels' fill value
        extra = ["--drop-invalid-rows"]
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    write_points(data, points, 1 if case == "a row at the origin" else 8)
    done = meanshift("run", "-i", data, "-o", out, "-b", "3", *extra, "--cluster", "threads")
    assert done.returncode == 0, done.stderr
    result = zarr.open_group(out, mode="r")
    assert result.attrs["status"] == "complete"
    assert meanshift("status", out).stdout.strip() == "complete"
    finite = np.isfinite(points).all(axis=1)
    reference = expected(points[finite], bandwidth=3.0)
    np.testing.assert_array_equal(result["labels"][...][finite], np.asarray(reference.labels))
    np.testing.assert_array_equal(result["centers"][...], reference.centers)
    assert (result["labels"][...][~finite] == -1).all()


# ------------------------------------------------- stopped just before complete


def test_a_run_killed_while_its_result_is_verified_resumes(tmp_path):
    """The saved state is kept until the output is marked complete: a run stopped while its
    written arrays are read back (one-row label chunks: seconds) resumes, and its result is
    the undisturbed one."""
    points = np.random.default_rng(1).normal(0, 1, (3000, 2))
    points[1500:] += 30
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    write_points(data, points, 1)
    command = [*CLI, "run", "-i", data, "-o", out, "-b", "2", "--method", "exact", "-q"]
    command += ["--cluster", "threads"]
    driver = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE)

    def summary_written(attributes: dict) -> bool:
        return "n_clusters" in attributes and attributes.get("status") == "running"

    deadline, attributes = time.monotonic() + 240, {}
    while not summary_written(attributes) and time.monotonic() < deadline:
        assert driver.poll() is None, driver.stderr.read()
        try:
            attributes = local_attributes(out)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert summary_written(attributes) and attributes.get("checkpoint")
    again = meanshift("run", *command[len(CLI) + 1 :])
    assert again.returncode == 0, again.stderr
    result = zarr.open_group(out, mode="r")
    assert result.attrs["status"] == "complete" and "seed chunks" in result.attrs["resumed"]
    reference = expected(points, bandwidth=2.0, method="exact")
    np.testing.assert_array_equal(result["labels"][...], np.asarray(reference.labels))
    np.testing.assert_array_equal(result["centers"][...], reference.centers)
    assert "checkpoint" not in result and not result.attrs.get("checkpoint")


# ------------------------------------------------------------- stale and damaged


@pytest.fixture
def finished(tmp_path, seed_store):
    data, out = str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    shutil.copytree(seed_store, data)
    done = meanshift("run", "-i", data, "-o", out, *QUICK)
    assert done.returncode == 0, done.stderr
    return data, out


def one_line(done: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert words in done.stderr


def test_report_refuses_an_output_whose_input_changed_or_went(finished, tmp_path):
    data, out = finished
    regenerated = meanshift("generate", "-o", data, "--seed", "1", "--overwrite")
    assert regenerated.returncode == 0, regenerated.stderr
    folder = str(tmp_path / "report")
    one_line(meanshift("report", out, "-d", folder), 4, "computed from other content of the input")
    one_line(meanshift("run", "-i", data, "-o", out, *QUICK), 4, "other content of the input")
    assert not os.path.exists(folder)
    shutil.rmtree(data)
    one_line(meanshift("report", out, "-d", folder), 3, f"input not found: {data}")
    assert not os.path.exists(folder)


def test_report_on_a_failed_output_says_why_it_failed(tmp_path, seed_store):
    out = str(tmp_path / "out.zarr")
    group = zarr.open_group(out, mode="w")
    group.update_attributes({"status": "failed", "error": "Interrupted: SIGTERM"})
    done = meanshift("report", out, "-d", str(tmp_path / "r"))
    one_line(done, 3, "is not complete (status: failed: Interrupted: SIGTERM)")


def test_unreadable_metadata_of_a_complete_output_is_damage_in_one_line(finished, tmp_path):
    data, out = finished
    path = os.path.join(out, "centers", "zarr.json")
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(text[: len(text) // 2])
    state = meanshift("status", out)
    assert (state.returncode, state.stdout.strip(), state.stderr) == (1, "damaged", "")
    one_line(meanshift("report", out, "-d", str(tmp_path / "r")), 4, "is marked complete but")
    one_line(meanshift("run", "-i", data, "-o", out, *QUICK), 4, "damaged (unreadable: ")
    redone = meanshift("run", "-i", data, "-o", out, *QUICK, "--overwrite")
    assert redone.returncode == 0, redone.stderr
    assert meanshift("status", out).stdout.strip() == "complete"

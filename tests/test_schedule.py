"""Scheduled runs through a real `meanshift schedule` process (APScheduler, SQLite job store)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest
import yaml
import zarr
from sklearn.metrics import adjusted_rand_score

from pipeline.jobs.schedule import STATE_FILE, History, run_scheduled
from pipeline.jobs.spec import parse_run_id

from .support import CLI


def write_spec(folder, name, cron, input_url, cluster=None, **schedule):
    spec = {
        "name": name,
        "input": {"url": input_url},
        "params": {"bandwidth": 2.5, "kernel": "gaussian", "blurring": True},
        "cluster": cluster or {"kind": "local", "n_workers": 1},
        "output": {"path": f"out/{name}-{{run_id}}.zarr"},
        "schedule": {"cron": cron, **schedule},
    }
    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(spec, handle)
    return path


def start_scheduler(folder, state):
    command = [*CLI, "schedule", folder, "--state-dir", state]
    log = open(os.path.join(state + ".log"), "a")
    return subprocess.Popen(command, stderr=log, start_new_session=True), log


def stop_scheduler(process, log):
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    log.close()
    return code


def wait_for(condition, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


@pytest.fixture
def workdir(tmp_path, seed_store):
    specs = tmp_path / "specs"
    specs.mkdir()
    return str(specs), str(tmp_path / "state"), seed_store


def test_schedule_fires_retries_and_keeps_history(workdir, seed_data):
    specs, state, store = workdir
    write_spec(specs, "every3s", "*/3 * * * * *", store)
    write_spec(
        specs, "broken", "*/3 * * * * *", "/nonexistent/points.zarr", retries=1, retry_delay_s=1
    )
    unreachable = {"scheduler": "tcp://127.0.0.1:9", "connect_timeout": 1}
    write_spec(
        specs, "unreachable", "*/3 * * * * *", store, unreachable, retries=1, retry_delay_s=1
    )
    process, log = start_scheduler(specs, state)
    try:
        history_file = os.path.join(state, STATE_FILE)
        history = wait_for(lambda: os.path.exists(history_file) and History(history_file))
        good = wait_for(lambda: [r for r in history.runs("every3s") if r.status == "complete"])
        retried = wait_for(lambda: [r for r in history.runs("unreachable") if r.attempt == 2])
        wait_for(lambda: [r for r in history.runs("broken") if r.status == "failed"])
    finally:
        assert stop_scheduler(process, log) == 0
    run = good[-1]
    result = zarr.open_group(run.output, mode="r")
    assert result.attrs["status"] == "complete"
    assert result.attrs["job"] == {"name": "every3s", "run_id": run.run_id}
    assert adjusted_rand_score(seed_data[1], result["labels"][...]) >= 0.99
    assert parse_run_id(run.run_id).second % 3 == 0  # the run id is the scheduled time
    # the unreachable cluster (exit 5) was retried once, and the retry failed too
    failed = [r for r in history.runs("unreachable") if r.status == "failed"]
    assert {r.attempt for r in failed} >= {1, 2} and retried
    assert "cannot reach" in failed[0].error
    # the missing input (exit 3) fails the same way on every retry: none is made
    broken = history.runs("broken")
    assert {r.attempt for r in broken} == {1} and "input not found" in broken[0].error
    # structured log lines, nothing else
    with open(state + ".log") as handle:
        entries = [json.loads(line) for line in handle]
    events = [entry["event"] for entry in entries]
    assert {"job_scheduled", "run_started", "run_complete", "run_failed", "retry_scheduled"} <= set(
        events
    )
    skipped = [e for e in entries if e["event"] == "retry_skipped"]
    assert skipped and {e["job"] for e in skipped} == {"broken"} and skipped[0]["exit_code"] == 3
    assert events[-1] == "scheduler_stopped"
    # the history command lists the runs
    listed = subprocess.run(
        [*CLI, "history", "--state-dir", state, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert any(r["name"] == "every3s" and r["status"] == "complete" for r in rows)
    table = subprocess.run(
        [*CLI, "history", "--state-dir", state], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert table[0].split() == [
        "started",
        "job",
        "run",
        "id",
        "attempt",
        "status",
        "duration",
        "output",
        "error",
    ]
    assert len(table) == len(rows) + 1
    status_at = table[0].index("status")  # aligned: every row's status in the header's column
    assert [line[status_at:].split()[0] for line in table[1:]] == [r["status"] for r in rows]
    # a finished run is not redone: the same run id again is recorded as skipped
    run_scheduled(os.path.join(specs, "every3s.yaml"), os.path.join(state, STATE_FILE), run.run_id)
    latest = History(os.path.join(state, STATE_FILE)).runs("every3s", limit=1)[0]
    assert latest.run_id == run.run_id and latest.status == "skipped"


def test_a_run_missed_while_the_scheduler_was_down_runs_once_on_restart(workdir):
    specs, state, store = workdir
    write_spec(specs, "every15s", "*/15 * * * * *", store, {"kind": "threads"})
    process, log = start_scheduler(specs, state)
    try:
        history_file = os.path.join(state, STATE_FILE)
        history = wait_for(lambda: os.path.exists(history_file) and History(history_file))
        first = wait_for(lambda: [r for r in history.runs() if r.status == "complete"], 60)[0]
    finally:
        assert stop_scheduler(process, log) == 0
    # stay down across the next fire time (at most 15 s away), then come back
    missed = parse_run_id(first.run_id) + dt.timedelta(seconds=15)
    while dt.datetime.now(dt.UTC) < missed + dt.timedelta(seconds=1):
        time.sleep(0.2)
    restarted = dt.datetime.now(dt.UTC)
    process, log = start_scheduler(specs, state)
    try:
        again = wait_for(lambda: [r for r in history.runs() if r.run_id != first.run_id], 30)[0]
    finally:
        assert stop_scheduler(process, log) == 0
    # the missed fire time ran (once) on restart, under its own run id: a regular fire
    # after the restart would carry a later id
    assert parse_run_id(again.run_id) < restarted
    assert len({r.run_id for r in history.runs()}) == 2


@pytest.mark.parametrize(
    ("command", "state", "code", "message"),
    [
        ("history", "garbage", 3, "is not usable (file is not a database); move it away"),
        ("schedule", "garbage", 3, "is not usable (file is not a database); move it away"),
        ("history", "missing", 2, "no schedule state in {state} (--state-dir)"),
        ("history", "folder", 2, "no schedule state in {state} (--state-dir)"),
        ("schedule", "file", 3, "cannot use {state} as the schedule's state folder: File exists"),
    ],
)
def test_unusable_schedule_state_is_one_line(workdir, command, state, code, message):
    specs, folder, store = workdir
    write_spec(specs, "every3s", "*/3 * * * * *", store)
    if state == "garbage":
        os.makedirs(folder)
        with open(os.path.join(folder, STATE_FILE), "w") as handle:
            handle.write("not a database")
    elif state == "folder":
        os.makedirs(os.path.join(folder, STATE_FILE))
    elif state == "file":
        with open(folder, "w") as handle:
            handle.write("a file")
    arguments = [specs] if command == "schedule" else []
    done = subprocess.run(
        [*CLI, command, *arguments, "--state-dir", folder], capture_output=True, text=True
    )
    assert done.returncode == code
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(state=folder) in lines[0], done.stderr


def test_the_scheduler_stops_in_one_line_when_its_state_folder_is_removed(workdir):
    specs, state, store = workdir
    write_spec(specs, "hourly", "0 * * * *", store)
    process, log = start_scheduler(specs, state)
    try:
        wait_for(lambda: "job_scheduled" in pathlib.Path(state + ".log").read_text())
        shutil.rmtree(state)
        assert process.wait(timeout=60) == 3
    finally:
        if process.poll() is None:
            stop_scheduler(process, log)
        log.close()
    with open(state + ".log") as handle:
        last = handle.read().strip().splitlines()[-1]
    assert last == (
        f"meanshift: error: schedule state {os.path.abspath(state)}/{STATE_FILE} was removed "
        "while the scheduler ran; stopped (start it again to begin a new history)"
    )


def test_two_specs_naming_one_job_are_refused_before_anything_is_scheduled(workdir, tmp_path):
    specs, state, store = workdir
    first = write_spec(specs, "nightly", "0 3 * * *", store)
    other = tmp_path / "other"
    other.mkdir()
    second = write_spec(str(other), "nightly", "0 4 * * *", store)
    done = subprocess.run(
        [*CLI, "schedule", specs, str(other), "--state-dir", state], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"meanshift: error: specs {first} and {second} both name the job 'nightly'; "
        "give each job its own name"
    ]
    assert not os.path.exists(os.path.join(state, STATE_FILE))

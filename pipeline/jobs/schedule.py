"""Scheduled workflow runs: APScheduler with a persistent job store, and a run history.

``meanshift schedule workflows/`` loads every spec with a ``schedule`` and runs it on its
cron expression, each run in its own ``meanshift run --spec`` process. State lives in
one SQLite file (``--state-dir``, default ``.meanshift``): APScheduler's job store
(next run times, pending retries) and the history of runs.

Policies
--------
- Run id: the scheduled time (UTC, ``YYYYMMDDTHHMMSSZ``), so a run is the same run
  however late it starts. A run whose output is already complete is not redone; a
  partial or failed one is replaced (``--skip-complete``).
- Retries: a failed run is retried ``schedule.retries`` times, ``retry_delay_s`` apart,
  as one-off jobs in the persistent store (a restart keeps them).
- Missed runs: if the scheduler was not running at a fire time, the run happens once
  when it comes back within ``misfire_grace_s`` of that time (several missed fire
  times coalesce into one run, the latest); later than that, it is skipped and logged.
- At most one run of a job at a time; a fire time reached while the previous run still
  works is skipped (logged as missed).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import logging
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import PERMANENT_EXIT_CODES, InputDataError, ParameterError, first_line, literal
from .spec import WorkflowSpec, cron_trigger, load_spec, make_run_id

LOG = logging.getLogger("meanshift.schedule")
STATE_FILE = "schedule.sqlite"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    LOG.log(level, event, extra={"fields": fields})


@dataclass
class Run:
    """One attempt of a scheduled run, as the history records it."""

    name: str
    run_id: str
    attempt: int
    status: str  # running | complete | skipped | failed
    started_at: str
    finished_at: str | None
    duration_s: float | None
    output: str | None
    error: str | None
    spec: str


class History:
    """The run history, a table in the scheduler's SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (name TEXT, run_id TEXT, attempt INTEGER,"
                " status TEXT, started_at TEXT, finished_at TEXT, duration_s REAL,"
                " output TEXT, error TEXT, spec TEXT, PRIMARY KEY (name, run_id, attempt))"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction on the state file; its failures as one line.

        Raises
        ------
        InputDataError
            The state file is not a database, or cannot be opened or written.
        """
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db, db:
                yield db
        except sqlite3.Error as exc:
            raise InputDataError(
                f"schedule state {literal(self.path)} is not usable ({first_line(exc)}); "
                "move it away to start a new history"
            ) from None

    def record(self, run: Run) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.name,
                    run.run_id,
                    run.attempt,
                    run.status,
                    run.started_at,
                    run.finished_at,
                    run.duration_s,
                    run.output,
                    run.error,
                    run.spec,
                ),
            )

    def runs(self, name: str | None = None, limit: int = 50) -> list[Run]:
        """The latest runs first (of one job, or all)."""
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            args = (name,)
        query += " ORDER BY started_at DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(query, (*args, limit)).fetchall()
        return [Run(*row) for row in rows]


def state_path(state_dir: str) -> str:
    """The state file in ``state_dir`` (created if missing).

    Raises
    ------
    InputDataError
        ``state_dir`` cannot be a folder (a file is in the way, no permission).
    """
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        raise InputDataError(
            f"cannot use {literal(state_dir)} as the schedule's state folder: {exc.strerror or exc}"
        ) from None
    return os.path.join(os.path.abspath(state_dir), STATE_FILE)


def find_specs(locations: list[str]) -> list[str]:
    """Spec files named directly or found (``*.yaml``, ``*.yml``) in the given folders."""
    found: list[str] = []
    for location in locations:
        if os.path.isdir(location):
            found += sorted(
                glob.glob(os.path.join(location, "*.yaml"))
                + glob.glob(os.path.join(location, "*.yml"))
            )
        elif os.path.isfile(location):
            found.append(location)
        else:
            raise ParameterError(f"no spec file or folder at {location}")
    return [os.path.abspath(path) for path in found]


def scheduled_time(spec: WorkflowSpec, now: _dt.datetime) -> _dt.datetime:
    """The latest fire time of the spec's schedule at or before ``now``."""
    assert spec.schedule is not None
    trigger = cron_trigger(spec.schedule.cron, spec.schedule.timezone)
    start = now - _dt.timedelta(seconds=spec.schedule.misfire_grace_s + 1)
    latest = start
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + _dt.timedelta(microseconds=1))
    return latest


def run_scheduled(spec_file: str, state: str, run_id: str | None = None, attempt: int = 1) -> None:
    """One scheduled run (APScheduler calls this): run the spec in a child process, record it,
    schedule a retry on failure."""
    history = History(state)
    try:
        spec = load_spec(spec_file)
    except ParameterError as exc:
        log_event("spec_invalid", logging.ERROR, spec=spec_file, error=str(exc))
        return
    now = _dt.datetime.now(_dt.UTC)
    run_id = run_id or make_run_id(scheduled_time(spec, now))
    output = spec.output_path(run_id)
    run = Run(
        spec.name, run_id, attempt, "running", now.isoformat(), None, None, output, None, spec_file
    )
    history.record(run)
    log_event("run_started", job=spec.name, run_id=run_id, attempt=attempt, output=output)
    done = _run_in_child(spec_file, run_id, run)
    if done.returncode == 0:
        run.status = "skipped" if "already complete" in done.stdout else "complete"
        history.record(run)
        log_event(
            f"run_{run.status}",
            job=spec.name,
            run_id=run_id,
            attempt=attempt,
            output=output,
            duration_s=run.duration_s,
        )
        return
    lines = done.stderr.strip().splitlines()
    run.status, run.error = "failed", lines[-1] if lines else f"exit code {done.returncode}"
    history.record(run)
    log_event(
        "run_failed",
        logging.ERROR,
        job=spec.name,
        run_id=run_id,
        attempt=attempt,
        exit_code=done.returncode,
        error=run.error,
        duration_s=run.duration_s,
    )
    assert spec.schedule is not None
    if done.returncode in PERMANENT_EXIT_CODES:
        log_event(
            "retry_skipped",
            job=spec.name,
            run_id=run_id,
            exit_code=done.returncode,
            reason="the same spec and input fail the same way again",
        )
        return
    if attempt <= spec.schedule.retries:
        when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=spec.schedule.retry_delay_s)
        _retries.put((spec.name, spec_file, state, run_id, attempt + 1, when))


def _run_in_child(spec_file: str, run_id: str, run: Run) -> subprocess.CompletedProcess:
    """``meanshift run --spec`` of one run in a child process; its duration and end go
    into ``run``."""
    options = ["--spec", spec_file, "--run-id", run_id, "--skip-complete", "--quiet"]
    command = [sys.executable, "-m", "pipeline.cli", "run", *options]
    clock = time.monotonic()
    # its own session: a signal to the scheduler's process group does not cut a run short
    done = subprocess.run(command, capture_output=True, text=True, start_new_session=True)
    run.duration_s = round(time.monotonic() - clock, 3)
    run.finished_at = _dt.datetime.now(_dt.UTC).isoformat()
    return done


_retries: queue.Queue = queue.Queue()
"""Retries asked for by finished runs; the scheduler's own thread adds them as jobs."""


def _add_retries(scheduler: Any) -> None:
    while True:
        try:
            name, spec_file, state, run_id, attempt, when = _retries.get_nowait()
        except queue.Empty:
            return
        scheduler.add_job(
            run_scheduled,
            "date",
            run_date=when,
            args=[spec_file, state, run_id, attempt],
            id=f"{name}-retry-{run_id}-{attempt}",
            replace_existing=True,
            misfire_grace_time=None,  # a retry runs however late
        )
        log_event("retry_scheduled", job=name, run_id=run_id, attempt=attempt, at=when.isoformat())


def _on_missed(event: Any) -> None:
    """Fire times that did not run: too late (past the grace time) or the job still busy."""
    from apscheduler.events import EVENT_JOB_MISSED

    if event.code == EVENT_JOB_MISSED:
        reason, when = "past the grace time", [event.scheduled_run_time]
    else:
        reason, when = "previous run still working", event.scheduled_run_times
    log_event(
        "run_missed",
        logging.WARNING,
        job=event.job_id,
        reason=reason,
        scheduled=[str(t) for t in when],
    )


def scheduled_specs(
    locations: list[str], every: bool = False
) -> dict[str, tuple[str, WorkflowSpec]]:
    """The specs found at ``locations`` (files, or folders of ``*.yaml``) that have a
    schedule, or all of them if ``every``, by job name, with their paths.

    Raises
    ------
    ParameterError
        A spec is invalid, none is found, or two specs name the same job.
    """
    specs: dict[str, tuple[str, WorkflowSpec]] = {}
    for path in find_specs(locations):
        spec = load_spec(path)
        if spec.schedule is None and not every:
            continue
        if spec.name in specs:
            raise ParameterError(
                f"specs {literal(specs[spec.name][0])} and {literal(path)} both name the job "
                f"'{spec.name}'; give each job its own name"
            )
        specs[spec.name] = (path, spec)
    if not specs:
        raise ParameterError("no spec with a schedule found")
    return specs


def _new_scheduler(state: str, max_parallel: int) -> Any:
    """A background scheduler on the SQLite job store at ``state``, logging missed runs."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{state}")},
        executors={"default": ThreadPoolExecutor(max_parallel)},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone="UTC",
    )
    scheduler.add_listener(_on_missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return scheduler


def _remove_stale_jobs(scheduler: Any, specs: dict[str, tuple[str, WorkflowSpec]]) -> None:
    """Remove stored jobs (and their retries) whose spec is no longer among ``specs``."""
    for job in scheduler.get_jobs():
        name = job.id.split("-retry-")[0]
        if name not in specs:
            scheduler.remove_job(job.id)
            log_event("job_removed", job=job.id)


def _register_job(scheduler: Any, name: str, path: str, spec: WorkflowSpec, state: str) -> None:
    """(Re)register a spec's schedule unless the store holds it unchanged; log its next run."""
    assert spec.schedule is not None
    trigger = cron_trigger(spec.schedule.cron, spec.schedule.timezone)
    existing = scheduler.get_job(name)
    grace = int(spec.schedule.misfire_grace_s)
    same = (
        existing is not None
        and str(existing.trigger) == str(trigger)
        and list(existing.args) == [path, state]
        and existing.misfire_grace_time == grace
    )
    if not same:
        scheduler.add_job(
            run_scheduled,
            trigger,
            args=[path, state],
            id=name,
            name=name,
            replace_existing=True,
            misfire_grace_time=grace,
        )
    job = scheduler.get_job(name)
    upcoming = job.next_run_time.isoformat() if job.next_run_time else None
    log_event("job_scheduled", job=name, spec=path, cron=spec.schedule.cron, next_run=upcoming)


def _drop_retries() -> None:
    """Log and drop the retries asked for during the shutdown (they cannot be stored now)."""
    while not _retries.empty():
        name, _, _, run_id, attempt, _ = _retries.get_nowait()
        log_event("retry_dropped", logging.WARNING, job=name, run_id=run_id, attempt=attempt)


def _check_state(state: str) -> None:
    """Refuse to go on without the state file.

    Raises
    ------
    InputDataError
    """
    if not os.path.exists(state):
        raise InputDataError(
            f"schedule state {literal(state)} was removed while the scheduler ran; "
            "stopped (start it again to begin a new history)"
        )


def serve(
    locations: list[str], state_dir: str, max_parallel: int = 2, stop: threading.Event | None = None
) -> None:
    """Run the schedules of the specs found at ``locations`` until ``stop`` is set (or Ctrl-C).

    Jobs already in the persistent store with the same schedule keep their next run
    time (so runs missed while the scheduler was down are honoured); new or changed
    schedules are (re)registered; jobs whose spec is gone are removed.
    """
    specs = scheduled_specs(locations)
    state = state_path(state_dir)
    History(state)
    scheduler = _new_scheduler(state, max_parallel)
    scheduler.start(paused=True)
    try:
        _remove_stale_jobs(scheduler, specs)
        for name, (path, spec) in specs.items():
            _register_job(scheduler, name, path, spec, state)
        scheduler.resume()
        stop = stop or threading.Event()
        while not stop.wait(0.2):
            _add_retries(scheduler)
            _check_state(state)
        _add_retries(scheduler)
    except Exception:
        _check_state(state)  # the state's removal, not what it caused, is the reason
        raise
    finally:
        log_event("scheduler_stopping")
        scheduler.shutdown(wait=True)  # lets running runs finish
        _drop_retries()
        log_event("scheduler_stopped")

"""Watching a job's Dask cluster while it runs: workers that keep dying, a lost scheduler.

Dask recomputes what a lost worker held and restarts workers that die, which is right for
a worker lost now and then, and never ends when every worker dies within seconds of its
start (a memory limit below what a worker needs): tasks wait for a worker that never
stays. :class:`CrashLoopWatch` counts such short-lived workers from the scheduler's events
and, past a bound, cancels the job's tasks; :func:`cluster_failures` turns that, and a
scheduler lost mid-job, into one-line :class:`~pipeline.errors.ClusterError`\\ s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, PipelineError, first_line

if TYPE_CHECKING:
    from distributed import Client

WATCH_EVERY_S = 1.0
"""Seconds between two looks at the cluster."""
WORKER_NEEDS = "a memory limit below what a worker needs, about 250 MB"
CRASH_LOOP_STOPS = 10
"""Workers stopping soon after their start that end a job."""
CRASH_LOOP_YOUNG_S = 30.0
"""A worker that stops (unasked) within this many seconds of joining counts as crashing."""


class CrashLoopWatch:
    """Ends a job whose workers keep stopping within ``CRASH_LOOP_YOUNG_S`` of joining, or
    whose scheduler has had no worker for ``no_worker_s`` seconds.

    After ``CRASH_LOOP_STOPS`` such stops (workers removed on purpose, as when a cluster
    scales down, do not count), or that long without a worker (workers that die before
    they join never show), the client's tasks are cancelled and :attr:`reason` says why;
    the job then raises it as a :class:`ClusterError` (see :func:`cluster_failures`).

    Parameters
    ----------
    client : distributed.Client
    no_worker_s : float
        Longest time the job waits with no worker (the cluster's ``connect_timeout``).
    """

    def __init__(self, client: Client, no_worker_s: float = 30.0) -> None:
        self.client = client
        self.no_worker_s = no_worker_s
        self.reason: str | None = None
        self.young_stops = 0
        self._joined: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="crash-loop-watch", daemon=True)

    def __enter__(self) -> CrashLoopWatch:
        self.client.subscribe_topic("all", self._on_event)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # the scheduler may be gone
            self.client.unsubscribe_topic("all")

    def _on_event(self, event: tuple[float, Any]) -> None:
        when, message = event
        if not isinstance(message, dict):
            return
        worker = message.get("worker")
        if message.get("action") == "add-worker":
            self._joined[worker] = when
        elif message.get("action") == "remove-worker" and not message.get("expected"):
            joined = self._joined.pop(worker, None)
            if joined is not None and when - joined < CRASH_LOOP_YOUNG_S:
                self.young_stops += 1

    def _watch(self) -> None:
        last_seen = time.monotonic()
        while not self._stop.wait(WATCH_EVERY_S):
            if self._workers():
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen > self.no_worker_s:
                return self._trip(
                    f"the Dask scheduler has had no worker for {self.no_worker_s:g} s (workers "
                    f"that fail to start: {WORKER_NEEDS}, see their logs); the job was stopped"
                )
            if self.young_stops >= CRASH_LOOP_STOPS:
                return self._trip(
                    f"{self.young_stops} Dask workers stopped within {CRASH_LOOP_YOUNG_S:g} s "
                    f"of starting ({WORKER_NEEDS}, or a crash: see their logs); the job was "
                    "stopped"
                )

    def _workers(self) -> int:
        try:
            return len(self.client.scheduler_info().get("workers", {}))
        except Exception:  # the scheduler unreachable: cluster_failures reports that
            return 1

    def _trip(self, reason: str) -> None:
        self.reason = reason
        from distributed import Future

        keys = list(self.client.futures)
        with contextlib.suppress(Exception):
            self.client.cancel([Future(key, self.client) for key in keys], force=True)


@contextlib.contextmanager
def cluster_failures(watch: CrashLoopWatch | None = None) -> Iterator[None]:
    """Turn a cluster lost mid-job (or stopped by ``watch``) into a :class:`ClusterError`.

    Raises
    ------
    ClusterError
    """
    import asyncio
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError

    lost = (CancelledError, asyncio.CancelledError, CommClosedError, OSError, TimeoutError)
    try:
        yield
    except PipelineError:
        raise
    except lost as exc:
        if watch is not None and watch.reason is not None:
            raise ClusterError(watch.reason) from None
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
            raise
        cause = first_line(exc)
        if "connection-lost" in cause or isinstance(exc, CommClosedError | ConnectionError):
            cause = "the connection to the scheduler was lost"
        raise ClusterError(
            f"lost the Dask cluster mid-job ({cause}); the output keeps its saved state: run "
            "the job again to resume"
        ) from None

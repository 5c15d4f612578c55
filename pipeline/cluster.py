"""Connect to a Dask cluster, or start an embedded local one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from .errors import ClusterError


def default_workers() -> int:
    """Worker processes for an embedded cluster: one per core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    timeout: float = 30.0,
) -> Iterator[Client]:
    """A Dask client for the duration of a job.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``). Without it an
        embedded ``LocalCluster`` is started and closed afterwards.
    n_workers : int, optional
        Workers of the embedded cluster (default: one per core, at most 8).
    threads_per_worker : int
    processes : bool
        Embedded workers as processes (True) or threads of this process.
    timeout : float
        Seconds to wait for a remote scheduler.
    """
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=True)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach Dask scheduler {scheduler}: {exc}") from None
        with client:
            yield client
        return
    workers = default_workers() if n_workers is None else n_workers
    if workers < 1:
        raise ClusterError("the embedded cluster needs at least 1 worker")
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=":0",  # a free port: never collide with another cluster
        silence_logs=logging.ERROR,
        preload=["pipeline.worker"],
    )
    try:
        with Client(cluster, set_as_default=True) as client:
            yield client
    finally:
        cluster.close()

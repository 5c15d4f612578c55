"""Connect to a Dask cluster, or start an embedded local one."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..backend import check_usable_here
from ..errors import ClusterError, ParameterError, first_line, literal

if TYPE_CHECKING:  # distributed is imported when a cluster is used, not before
    from distributed import Client, LocalCluster
    from distributed.security import Security

    from .spec import ClusterSpec


def tls_security(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> Security | None:
    """Dask TLS settings from certificate files (None: none given, Dask's config applies).

    Parameters
    ----------
    ca_file : str
        Certificate authority that signed the scheduler's and workers' certificates.
    cert_file, key_file : str
        This client's certificate and private key (the key may sit in ``cert_file``).
    """
    given = {"CA": ca_file, "certificate": cert_file, "key": key_file}
    if not any(given.values()):
        return None
    if ca_file is None or cert_file is None:
        raise ParameterError(
            "TLS needs at least a CA file and a certificate ({ca_file}, {cert_file})",
            ca_file=None,
            cert_file=None,
        )
    for what, path in given.items():
        if path is not None and not os.path.isfile(path):
            raise ParameterError(f"TLS {what} file not found: {path}")
    from distributed.security import Security

    return Security(
        tls_ca_file=ca_file,
        tls_client_cert=cert_file,
        tls_client_key=key_file,
        require_encryption=True,
    )


def spec_security(cluster: ClusterSpec) -> Security | None:
    """The Dask TLS settings of a spec's ``cluster`` section (None: no ``tls`` given)."""
    tls = cluster.tls
    return None if tls is None else tls_security(tls.ca_file, tls.cert, tls.key)


def cluster_client(
    cluster: ClusterSpec, security: Security | None
) -> contextlib.AbstractContextManager[Client | None]:
    """A client of the cluster a spec's ``cluster`` section names (see :func:`dask_client`);
    None for ``kind: threads``, which runs on Dask's threaded scheduler in this process."""
    if cluster.kind == "threads":
        return _threads(cluster.n_workers)
    if cluster.kind == "manager":
        return _managed_cluster(cluster)
    return dask_client(
        cluster.scheduler if cluster.kind == "remote" else None,
        cluster.n_workers,
        timeout=cluster.connect_timeout,
        security=security,
        kind=cluster.kind,
    )


@contextlib.contextmanager
def _threads(n_workers: int | None) -> Iterator[None]:
    """Dask's threaded scheduler in this process (``n_workers`` threads, default one per core)."""
    import dask
    import dask.threaded

    # the function itself, not "threads": dask would import distributed to look for a client
    with dask.config.set(scheduler=dask.threaded.get, num_workers=n_workers):
        yield None


THREADS_MEMORY_SHARE = 8
"""``auto`` computes in this process's threads when the input, as float64, takes at most
1/8 of this machine's memory (room for its copies: positions, shifted points, modes)."""


def resolve_cluster(
    cluster: ClusterSpec, input_shape: tuple[int, ...], process_local: bool = False
) -> ClusterSpec:
    """The cluster an ``auto`` spec stands for (any other kind: as it is).

    In order: threads for a store only this process sees (``process_local``); an embedded
    cluster when ``n_workers`` is given; the scheduler of Dask's configuration
    (``scheduler-address``, e.g. ``DASK_SCHEDULER_ADDRESS``); threads when the input fits
    comfortably in memory (:data:`THREADS_MEMORY_SHARE`); an embedded cluster above.

    Raises
    ------
    ParameterError
        Dask's configured scheduler address is malformed.
    """
    if cluster.kind != "auto":
        return cluster
    if process_local:
        return cluster.model_copy(update={"kind": "threads"})
    if cluster.n_workers is not None:
        return cluster.model_copy(update={"kind": "local"})
    import dask
    import psutil

    from .spec import check_scheduler_address

    address = dask.config.get("scheduler-address", None)
    if address:
        try:
            check_scheduler_address(str(address))
        except ValueError as exc:
            raise ParameterError(f"Dask's configured scheduler-address: {exc}") from None
        return cluster.model_copy(update={"kind": "remote", "scheduler": str(address)})
    n_bytes = 8 * math.prod(input_shape)
    fits = n_bytes * THREADS_MEMORY_SHARE <= psutil.virtual_memory().total
    return cluster.model_copy(update={"kind": "threads" if fits else "local"})


def check_cluster(cluster: ClusterSpec, backend: str = "auto") -> Security | None:
    """Check what can be checked of a (resolved) cluster before it starts: its TLS files,
    the number of embedded workers, the GPU a ``cupy`` run on this machine needs, dask-cuda
    for ``local-cuda``. Returns its TLS settings.

    Raises
    ------
    ParameterError, ClusterError
    """
    security = spec_security(cluster)
    if cluster.kind == "local":
        check_local_workers(cluster.n_workers)
    if cluster.kind == "manager":
        manager_class(cluster)  # importable, before anything is written
    if cluster.kind == "local-cuda" and importlib.util.find_spec("dask_cuda") is None:
        raise ClusterError(
            "a local-cuda cluster needs dask-cuda: pip install 'meanshift-pipeline[gpu]'"
        )
    if cluster.computes_here():
        check_usable_here(backend)
    return security


def describe_cluster(cluster: ClusterSpec) -> str:
    """One line saying where a (resolved) cluster's job runs."""
    if cluster.kind == "threads":
        threads = cluster.n_workers or os.cpu_count() or 1
        return f"running in this process: Dask's threaded scheduler, {threads} threads"
    if cluster.kind == "local":
        workers = cluster.n_workers or default_workers()
        return f"starting a local Dask cluster: {workers} worker processes"
    if cluster.kind == "local-cuda":
        return "starting a local CUDA Dask cluster: one worker per GPU"
    if cluster.kind == "manager":
        if cluster.adapt is not None:
            size = f"adaptive, {cluster.adapt.minimum} to {cluster.adapt.maximum} workers"
        else:
            size = f"{cluster.scale or 1} workers"
        return f"starting a Dask cluster with {cluster.manager_class}: {size}"
    return f"connecting to the Dask scheduler at {cluster.scheduler}"


def manager_class(cluster: ClusterSpec) -> type:
    """The cluster manager class a ``kind: manager`` spec names (``package.module:Class``).

    Raises
    ------
    ClusterError
        It cannot be imported.
    """
    module_name, _, class_name = str(cluster.manager_class).partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ClusterError(
            f"cannot import the cluster manager {cluster.manager_class}: {first_line(exc)}"
        ) from None


@contextlib.contextmanager
def _managed_cluster(cluster: ClusterSpec) -> Iterator[Client]:
    """A cluster manager's cluster: made with the spec's ``options``, scaled (``scale``, one
    worker by default) or adaptive (``adapt``), at least one worker awaited for
    ``connect_timeout`` seconds, closed afterwards."""
    from distributed import Client

    manager = manager_class(cluster)
    try:
        made = manager(**cluster.options)
    except Exception as exc:
        raise ClusterError(
            f"the cluster manager {cluster.manager_class} failed to start: {first_line(exc)}"
        ) from None
    try:
        if cluster.adapt is not None:
            made.adapt(minimum=cluster.adapt.minimum, maximum=cluster.adapt.maximum)
        else:
            made.scale(cluster.scale or 1)
        with Client(made, set_as_default=True) as client:
            try:
                client.wait_for_workers(1, timeout=cluster.connect_timeout)
            except TimeoutError:
                raise ClusterError(
                    f"no worker of the cluster manager {cluster.manager_class} joined within "
                    f"{cluster.connect_timeout:g} s"
                ) from None
            yield client
    finally:
        made.close()


def default_workers() -> int:
    """Worker processes for an embedded cluster: one per core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


WORKERS_PER_CORE = 4
"""Most embedded workers per CPU core."""
MEMORY_PER_WORKER = 256 * 2**20
"""Least memory (bytes) an embedded worker process is given."""


def most_local_workers() -> int:
    """The most workers an embedded cluster may start on this machine: ``WORKERS_PER_CORE``
    per core, and no more than ``MEMORY_PER_WORKER`` each of its memory allow."""
    import psutil

    by_memory = psutil.virtual_memory().total // MEMORY_PER_WORKER
    return int(max(1, min(WORKERS_PER_CORE * (os.cpu_count() or 1), by_memory)))


def check_local_workers(n_workers: int | None) -> None:
    """Refuse more embedded workers than this machine can run (before any starts).

    Raises
    ------
    ParameterError
    """
    most = most_local_workers()
    if n_workers is not None and n_workers > most:
        raise ParameterError(
            f"{{n_workers}} {n_workers} is more than this machine can run: at most {most} "
            f"({WORKERS_PER_CORE} per CPU core, {MEMORY_PER_WORKER // 2**20} MiB of memory each)",
            n_workers=None,
        )


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    timeout: float = 30.0,
    security: Security | None = None,
    kind: str = "local",
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
    security : distributed.security.Security, optional
        TLS settings for a remote scheduler (default: Dask's configuration,
        ``distributed.comm.tls.*``).
    kind : {"local", "local-cuda", "remote"}
        Embedded cluster type: ``local`` (CPU worker processes) or ``local-cuda``
        (dask-cuda ``LocalCUDACluster``, one worker per GPU). Ignored with ``scheduler``.
    """
    if scheduler is not None:
        with _remote_client(scheduler, timeout, security) as client:
            yield client
        return
    if kind == "remote":
        raise ClusterError("a remote cluster needs a scheduler address")
    if kind == "local-cuda":
        with _cuda_cluster(n_workers) as client:
            yield client
        return
    workers = default_workers() if n_workers is None else n_workers
    if workers < 1:
        raise ClusterError("the embedded cluster needs at least 1 worker")
    check_local_workers(workers)
    from distributed import Client

    cluster = start_local_cluster(workers, threads_per_worker, processes)
    try:
        with Client(cluster, set_as_default=True) as client:
            yield client
    finally:
        cluster.close()


def _check_tls(scheduler: str, security: Security | None) -> None:
    """Refuse a tls:// scheduler address when neither ``security`` nor Dask's config has TLS."""
    if scheduler.startswith("tls://"):
        from distributed.security import Security

        settings = security or Security()  # default: Dask's distributed.comm.tls config
        if settings.get_connection_args("client").get("ssl_context") is None:
            raise ClusterError(
                f"{literal(scheduler)} needs TLS: give {{security}} "
                "(or set distributed.comm.tls in the Dask config)",
                security=None,
            )


@contextlib.contextmanager
def _remote_client(scheduler: str, timeout: float, security: Security | None) -> Iterator[Client]:
    """A client of a running scheduler, closed afterwards (the scheduler keeps running)."""
    from distributed import Client

    _check_tls(scheduler, security)
    try:
        client = Client(scheduler, timeout=timeout, set_as_default=True, security=security)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach Dask scheduler {scheduler}: {first_line(exc)}") from None
    with client:
        yield client


_log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 300.0
"""Seconds an embedded cluster waits for its workers before running with those that started."""

GONE_STATES = ("failed", "closing", "closed", "closing_gracefully")
"""Worker states (``distributed.core.Status`` names) of a worker that will not run."""


def start_local_cluster(
    n_workers: int,
    threads_per_worker: int = 1,
    processes: bool = True,
    timeout: float = WORKER_START_TIMEOUT_S,
) -> LocalCluster:
    """Start an embedded ``LocalCluster`` that tolerates workers lost while starting.

    The scheduler starts first, then the workers. A worker whose process dies or
    fails during its start (killed, out of memory, a failing preload) is replaced
    once per worker asked for; a worker whose replacement fails too is given up, and
    the job runs on the workers that started (with a warning). Workers that have not
    started after ``timeout`` seconds are given up the same way.

    Parameters
    ----------
    n_workers : int
        Workers to start (at least 1).
    threads_per_worker : int
    processes : bool
        Workers as processes (True) or threads of this process.
    timeout : float
        Seconds to wait for the workers.

    Raises
    ------
    ClusterError
        When the scheduler cannot start or no worker can be started.
    """
    from distributed import LocalCluster
    from distributed.worker_memory import parse_memory_limit

    options: dict = {
        "n_workers": 0,
        "threads_per_worker": threads_per_worker,
        "processes": processes,
        "dashboard_address": ":0",  # a free port: never collide with another cluster
        "silence_logs": logging.CRITICAL,  # task errors reach the user as one line, not twice
        "preload": ["pipeline.worker"],
        # what LocalCluster gives each of n_workers workers (it cannot know n here)
        "memory_limit": parse_memory_limit("auto", 1, n_workers, logger=_log),
    }
    try:
        cluster = LocalCluster(**options)
    except Exception as exc:
        raise ClusterError(f"cannot start the embedded Dask cluster: {first_line(exc)}") from None
    try:
        _start_workers(cluster, n_workers, timeout)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _start_workers(cluster: LocalCluster, wanted: int, timeout: float) -> None:
    """Scale ``cluster`` to ``wanted`` workers, replacing each lost one once (see
    :func:`start_local_cluster`)."""
    target, replacements, lost = wanted, wanted, 0
    cluster.sync(_rescale, cluster, (), target)
    deadline = time.monotonic() + timeout
    while True:
        planned, states = cluster.sync(_worker_states, cluster)
        running = [name for name in planned if states.get(name) == "running"]
        failed = [name for name in planned if states.get(name) in GONE_STATES]
        if not failed and len(running) >= target:
            break
        if time.monotonic() > deadline:  # run with the workers that started
            if not running:
                raise ClusterError(f"no Dask worker started within {timeout:g} s")
            stalled = [name for name in planned if name not in running]
            cluster.sync(_rescale, cluster, stalled, len(running))
            lost, target = lost + len(stalled), len(running)
            break
        if failed:
            lost += len(failed)
            replaced = min(len(failed), replacements)
            replacements -= replaced
            target -= len(failed) - replaced
            if target < 1:
                raise ClusterError(
                    f"no Dask worker could be started: {lost} worker processes stopped "
                    "while starting"
                )
            cluster.sync(_rescale, cluster, failed, target)
        time.sleep(0.05)
    if lost:
        started = "replaced them" if target == wanted else f"running on {target} of {wanted}"
        warnings.warn(
            f"{lost} Dask worker(s) stopped while the embedded cluster started; {started}",
            RuntimeWarning,
            stacklevel=3,
        )


async def _worker_states(cluster: LocalCluster) -> tuple[list, dict]:
    """The workers the cluster plans to have, and the status (its name) of each it has
    launched."""
    planned = list(cluster.worker_spec)
    return planned, {name: worker.status.name for name, worker in cluster.workers.items()}


async def _rescale(cluster: LocalCluster, forget: list | tuple, n: int) -> None:
    """Close and forget the given workers, then ask the cluster for ``n`` workers
    (a replacement may reuse a forgotten worker's name)."""
    for name in forget:
        cluster.worker_spec.pop(name, None)
        worker = cluster.workers.pop(name, None)
        if worker is not None:
            await worker.close()
    cluster.scale(n)


GPU_WORKER_RESOURCES = {"GPU": 1}
"""What each GPU worker advertises (Dask worker resources); GPU tasks ask for it."""

RMM_POOL_ENV = "MEANSHIFT_RMM_POOL_SIZE"
"""Set (e.g. ``24GB``) to give each local-cuda worker an RMM pool that CuPy allocates from."""


def cuda_cluster_options(n_workers: int | None) -> dict:
    """Keyword arguments of ``LocalCUDACluster``: one worker per GPU, each advertising
    ``GPU_WORKER_RESOURCES``, with an RMM pool shared with CuPy when ``RMM_POOL_ENV`` is set."""
    options: dict = {
        "n_workers": n_workers,
        "dashboard_address": ":0",
        "silence_logs": logging.CRITICAL,  # task errors reach the user as one line, not twice
        "preload": ["pipeline.worker"],
        "resources": dict(GPU_WORKER_RESOURCES),
    }
    pool = os.environ.get(RMM_POOL_ENV, "").strip()
    if pool:
        options["rmm_pool_size"] = pool
        options["rmm_allocator_external_lib_list"] = ["cupy"]
    return options


@contextlib.contextmanager
def _cuda_cluster(n_workers: int | None) -> Iterator[Client]:
    """dask-cuda's LocalCUDACluster: one worker process per visible GPU."""
    from distributed import Client

    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise ClusterError(
            "a local-cuda cluster needs dask-cuda: pip install 'meanshift-pipeline[gpu]'"
        ) from None
    try:
        cluster = LocalCUDACluster(**cuda_cluster_options(n_workers))
    except Exception as exc:  # no GPU, no driver
        raise ClusterError(f"cannot start a local CUDA cluster: {exc}") from None
    try:
        with Client(cluster, set_as_default=True) as client:
            yield client
    finally:
        cluster.close()

"""One clustering job: Zarr input → Dask cluster → Zarr output. The CLI and workflows call this."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import MeanShiftResult, ProgressCallback, mean_shift
from ..errors import InputDataError, InvalidRowsError, OutputError, ParameterError, literal
from ..io import store
from ..io.checkpoint import ZarrCheckpoint
from ..io.lease import OutputLease
from ..io.output import Action, Decision, OutputState, Request, Status, decide, inspect, open_output
from ..io.rows import KeptRows, keep_finite_rows
from ..naming import job_tag
from ..params import MeanShiftParams
from ..worker import warm_up

if TYPE_CHECKING:
    from distributed import Client
from .cluster import check_cluster, cluster_client, describe_cluster, resolve_cluster
from .spec import ClusterSpec, InputSpec, OutputSpec, default_job_name
from .watch import CrashLoopWatch, cluster_failures


@dataclass
class JobReport:
    """Summary of a finished job (also stored in the output's attributes)."""

    input: str
    output: str
    n_points: int
    n_dims: int
    n_clusters: int
    sizes: list[int]
    centers: list[list[float]]
    bandwidth: float
    bandwidth_estimated: bool
    n_iter: int
    converged: bool
    stop_reason: str
    method: str = "exact"
    n_cells: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    dashboard: str | None = None
    resumed: str | None = None
    already_complete: bool = False
    dropped_rows: int = 0
    unlabelled: int = 0


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result."""
    versions = {}
    for name in ("meanshift-pipeline", "numpy", "dask", "distributed", "zarr", "scikit-learn"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def input_attributes(source: store.InputInfo, content: str | None) -> dict[str, Any]:
    """The input as an output's attributes name it: where, which array, its content."""
    return {
        "url": source.url,
        "array": source.name,
        "shape": list(source.array.shape),
        "content": content,
    }


def result_attributes(
    result: MeanShiftResult,
    params: MeanShiftParams,
    source: store.InputInfo,
    n_points: int,
    content: str | None = None,
) -> dict[str, Any]:
    """JSON-ready attributes describing a run."""
    return {
        "input": input_attributes(source, content),
        "parameters": params.model_dump(),
        "bandwidth": result.bandwidth,
        "bandwidth_estimated": result.bandwidth_estimated,
        "n_points": n_points,
        "method": result.method,
        "n_cells": result.n_cells,
        "n_seeds": result.n_seeds,
        "n_clusters": len(result.sizes),
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "max_shift_per_iteration": result.max_shift,
        "versions": package_versions(),
        "backend": result.backend,
        "precision": precision(params.kernel),
        "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def precision(kernel: str) -> str:
    """How a run's kernel sums are computed (the same on CPU and GPU workers)."""
    if kernel == "flat":
        return "float64"
    return "float32 weights and tile sums, float64 totals (float64 redo where weights underflow)"


def job_fingerprint(
    source: store.InputInfo,
    params: MeanShiftParams,
    drop_invalid_rows: bool = False,
    content: str | None = None,
) -> str:
    """What makes two runs the same job: the input, its shape, type and content
    (:func:`.store.content_stamp`), and every parameter."""
    described = {
        "input": [source.url, source.name, list(source.array.shape), str(source.array.dtype)],
        "content": content,
        "invalid_rows": "drop" if drop_invalid_rows else "refuse",
        "parameters": params.model_dump(mode="json"),
        "version": package_versions()["meanshift-pipeline"],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """One job, as :func:`run_job` was asked to run it, and its input as opened."""

    input: InputSpec
    output: OutputSpec
    params: MeanShiftParams
    source: store.InputInfo
    content: str | None  # store.content_stamp of the input when the job was opened
    fingerprint: str
    name: str
    run_id: str | None
    started: float  # time.perf_counter() when the job was asked for

    @classmethod
    def open(
        cls,
        input: InputSpec,
        output: OutputSpec,
        params: MeanShiftParams,
        name: str | None,
        run_id: str | None,
        started: float,
    ) -> Job:
        """The job, with its input opened read-only, checked and fingerprinted."""
        source = store.open_points(input.url, input.array, input.storage_options or None)
        content = store.content_stamp(source)
        fingerprint = job_fingerprint(source, params, input.drop_invalid_rows, content)
        name = name or default_job_name(output.path)
        return cls(input, output, params, source, content, fingerprint, name, run_id, started)

    def request(self, any_complete: bool = False) -> Request:
        """What this job asks of its output location (:func:`.io.output.decide`)."""
        return Request(
            fingerprint=self.fingerprint,
            input_url=self.input.url,
            input_array=self.source.name,
            input_content=self.content,
            overwrite=self.output.overwrite,
            modes=self.output.modes,
            any_complete=any_complete,
        )

    def check_input_unchanged(self) -> None:
        """Refuse a result computed while the input changed (its content stamp moved).

        Raises
        ------
        InputDataError
        """
        if store.content_stamp(self.source) != self.content:
            raise InputDataError(
                f"input {literal(self.input.url)} changed while the job ran; its result is "
                "not marked complete: run the job again"
            )


def run_job(
    input: str | InputSpec,
    output: str | OutputSpec,
    params: MeanShiftParams,
    *,
    cluster: ClusterSpec | None = None,
    name: str | None = None,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    dashboard: bool = False,
    on_cluster_ready: Callable[[Client], None] | None = None,
    storage_options: store.StorageOptions | None = None,
    on_start: Callable[[str], None] | None = None,
    any_complete: bool = False,
) -> JobReport:
    """Cluster a Zarr point set and write the result to a Zarr group.

    The input is checked, and what the output may not become refused
    (:func:`.io.output.decide`), before anything is written or any cluster starts; on an
    error the output is marked ``failed``, and ``complete`` only after everything is
    written. The same job (input, parameters, version) continues from its saved state in
    its unfinished output and reads back the report of its complete one
    (``already_complete``); ``overwrite`` recomputes, or replaces another's.

    Parameters
    ----------
    input : str or InputSpec
        Path or fsspec URL of the input group (or array); an :class:`InputSpec` for
        its array name, storage options, or to leave rows holding NaN/Inf out.
    output : str or OutputSpec
        Path or fsspec URL of the output group; an :class:`OutputSpec` to overwrite,
        store each point's mode, or checkpoint less often.
    params : MeanShiftParams
    cluster : ClusterSpec, optional
        Where to compute (default: an embedded local cluster, one worker per core).
    name, run_id : str, optional
        The prefix of its task names (default: the output's name); recorded (workflows).
    progress : callable, optional
        Called after each blurring iteration.
    dashboard : bool
        Put the cluster's dashboard address in the report.
    on_cluster_ready : callable, optional
        Called with the ``distributed.Client`` once connected (none for ``threads``).
    storage_options : dict, optional
        fsspec options (endpoint, credentials, ...) of an input and output given as URLs
        (a spec object carries its own). Never recorded.
    on_start : callable, optional
        Called with one line saying where the job runs, before its cluster starts.
    any_complete : bool
        A complete output is read back whatever job wrote it, and any other output of
        ours is replaced (a scheduled run's own output, named by its run id).
    """
    started = time.perf_counter()
    callbacks = dict(progress=progress, dashboard=dashboard, on_cluster_ready=on_cluster_ready)
    input, output, given = _absolute_specs(input, output, storage_options)
    cluster = cluster or ClusterSpec()
    check_locations(input, output, cluster)
    state = _inspect(input, output)
    if any_complete and state.status is Status.COMPLETE:  # no need to read the input
        report = _reused(state, output.storage_options)
    else:
        job = Job.open(input, output, params, name, run_id, started)
        report = _reuse_or_compute(job, state, cluster, any_complete, on_start, callbacks)
    return dataclasses.replace(report, **given)


def _reuse_or_compute(
    job: Job,
    state: OutputState,
    cluster: ClusterSpec,
    any_complete: bool,
    on_start: Callable[[str], None] | None,
    callbacks: dict[str, Any],
) -> JobReport:
    """Read back the job's complete output, or compute it: every refusal first, then the
    lease, the decision again under it (another run may have ended meanwhile), the cluster."""
    input, output = job.input, job.output
    decision = _decided(state, job.request(any_complete))
    if decision.action is Action.REUSE:
        return _reused(state, output.storage_options)
    cluster = resolve_cluster(cluster, job.source.array.shape, _process_local(input, output))
    security = check_cluster(cluster, job.params.backend)  # all before anything is written
    with OutputLease(output.path, output.storage_options) as lease:  # one writer per output
        state = _inspect(input, output, lease.token)
        decision = _decided(state, job.request(any_complete))
        if decision.action is Action.REUSE:
            return _reused(state, output.storage_options)
        if on_start is not None:
            on_start(describe_cluster(cluster))
        connection = cluster_client(cluster, security)
        return _run(job, state, decision, connection, cluster, lease, **callbacks)


def _inspect(input: InputSpec, output: OutputSpec, lease_token: str | None = None) -> OutputState:
    """The output location as it is (a complete output verified unless it is to be
    replaced anyway); ``lease_token``: this run's lease, held."""
    return inspect(
        output.path,
        output.storage_options,
        input.url,
        input.storage_options,
        verify=not output.overwrite,
        lease_token=lease_token,
    )


def _decided(state: OutputState, request: Request) -> Decision:
    """What to do with the output; a refusal raised.

    Raises
    ------
    OutputError
    """
    decision = decide(state, request)
    if decision.action is Action.REFUSE:
        raise decision.refusal()
    return decision


def _process_local(input: InputSpec, output: OutputSpec) -> bool:
    """Whether the input or output is a store only this process can see (``memory://``)."""
    return any(
        store.protocol(url) in store.PROCESS_LOCAL_PROTOCOLS for url in (input.url, output.path)
    )


@contextlib.contextmanager
def _failed_on_error(group: Any, lease: OutputLease, created: bool) -> Iterator[None]:
    """Mark the output failed on any error or signal (unless another run took it over);
    remove an output this run ``created`` when a parameter proves wrong for the data (a
    bandwidth too small for it: a mistake, with nothing to resume)."""
    try:
        yield
    except BaseException as exc:
        if lease.lost is not None:
            raise
        if created and isinstance(exc, ParameterError):
            store.remove_output(group)
        else:
            store.mark_failed(group, f"{type(exc).__name__}: {exc}")
        raise


def check_locations(input: InputSpec, output: OutputSpec, cluster: ClusterSpec) -> None:
    """Refuse, before anything is read or written, an input or output the job cannot use:
    storage options for a local path, a password in a URL (:func:`.store.check_location`),
    or a store only this process can see (``memory://``) for worker processes (asked for by
    kind, or by ``n_workers``; ``auto`` without them runs such a job in this process).

    Raises
    ------
    ParameterError, OutputError
    """
    in_process = cluster.kind == "threads" or (cluster.kind == "auto" and not cluster.n_workers)
    for url, options, what in (
        (input.url, input.storage_options, "input"),
        (output.path, output.storage_options, "output"),
    ):
        store.check_location(url, options, what)
        if store.protocol(url) in store.PROCESS_LOCAL_PROTOCOLS and not in_process:
            raise OutputError(
                f"the {what} {literal(url)} lives in this process's memory, which Dask worker "
                "processes cannot see: run with {cluster} threads, or use a store the workers "
                "share",
                cluster=None,
            )


def _absolute_specs(
    input: str | InputSpec,
    output: str | OutputSpec,
    storage_options: store.StorageOptions | None = None,
) -> tuple[InputSpec, OutputSpec, dict[str, str]]:
    """Input and output as specs with absolute local paths (Dask workers may run in another
    folder), and their paths as given (the report names them so)."""

    def options(url: str) -> dict[str, Any]:  # for URLs only: a local path takes none
        return {} if store.is_local(url) else dict(storage_options or {})

    if not isinstance(input, InputSpec):
        input = InputSpec(url=input, storage_options=options(input))
    if not isinstance(output, OutputSpec):
        output = OutputSpec(path=output, storage_options=options(output))
    given = {"input": input.url, "output": output.path}
    input = input.model_copy(update={"url": store.absolute(input.url)})
    output = output.model_copy(update={"path": store.absolute(output.path)})
    return input, output, given


def _run(
    job: Job,
    state: OutputState,
    decision: Decision,
    connection: contextlib.AbstractContextManager[Client | None],
    cluster: ClusterSpec,
    lease: OutputLease,
    progress: ProgressCallback | None,
    dashboard: bool,
    on_cluster_ready: Callable[[Client], None] | None,
) -> JobReport:
    """Start or reach the cluster; then create the output (or reopen it, to continue), as
    ``decision`` says, and compute, write and mark it complete (:func:`_compute`), or failed
    on any error."""
    before_cluster = time.perf_counter()
    # while a cluster starts, load the kernels this process runs (binned cells); threads of
    # this process have nothing to wait for: they load the one kernel they use when they use it
    warming = threading.Thread(target=warm_up, daemon=True)
    if cluster.kind != "threads":
        warming.start()
    with connection as client, _watching(client, cluster.connect_timeout) as watch:
        if warming.is_alive():
            warming.join()
        cluster_start = time.perf_counter() - before_cluster
        if on_cluster_ready is not None and client is not None:
            on_cluster_ready(client)
        n, attributes = (
            job.source.array.shape[0],
            {"input": input_attributes(job.source, job.content)},
        )
        group = open_output(
            state, decision, n, job.source.row_chunk, attributes, job.output.storage_options
        )
        created = decision.action is not Action.RESUME
        with _failed_on_error(group, lease, created):
            result, attributes = _compute(job, group, progress, watch, lease, cluster_start)
        link = client.dashboard_link if dashboard and client is not None else None
    return _job_report(
        job.input.url, job.output.path, attributes, result.centers, result.sizes, link
    )


def _compute(
    job: Job,
    group: Any,
    progress: ProgressCallback | None,
    watch: CrashLoopWatch | None,
    lease: OutputLease,
    cluster_start: float,
) -> tuple[MeanShiftResult, dict[str, Any]]:
    """Cluster the points, write everything, mark the output complete (only if the input did
    not change meanwhile and this run still holds the output); the result and attributes."""
    checkpoint = ZarrCheckpoint(
        group, job.source.row_chunk, job.fingerprint, job.output.checkpoint_every
    )
    lost_cluster = contextlib.nullcontext() if watch is None else cluster_failures(watch)
    with job_tag(job.name), lost_cluster:  # threads of this process: no cluster to lose
        result, kept = _cluster(job, progress, checkpoint)
        clock = time.perf_counter()
        _write_per_point(group, result, kept, job.source.row_chunk, job.output.modes)
    timings = dict(result.timings)
    timings["write_s"] = time.perf_counter() - clock
    timings["cluster_start_s"] = cluster_start  # includes loading this process's kernels
    timings["pipeline_s"] = time.perf_counter() - job.started - cluster_start
    n = job.source.array.shape[0]
    attributes = result_attributes(result, job.params, job.source, n, job.content)
    attributes |= {
        "timings": timings,
        "job": {"name": job.name, "run_id": job.run_id},
        "resumed_from_iteration": result.resumed_from_iteration,
        "resumed": result.resumed,
        "fingerprint": job.fingerprint,
        "dropped_rows": 0 if kept is None else kept.dropped,
    }
    attributes["unlabelled"] = unlabelled_points(n, result.sizes, attributes["dropped_rows"])
    job.check_input_unchanged()
    lease.check()
    store.write_summary(group, result.centers, result.sizes, attributes, job.output.path)
    checkpoint.clear()  # kept until complete: a run stopped before that resumes from it
    return result, attributes


def unlabelled_points(n_points: int, sizes: Any, dropped_rows: int) -> dict[str, int]:
    """How many points are labelled -1, and why: ``outliers`` (farther than the bandwidth
    from every centre, ``cluster_all=False``) and ``dropped_rows`` (NaN or Inf)."""
    total = n_points - int(np.sum(sizes))
    return {"points": total, "outliers": total - dropped_rows, "dropped_rows": dropped_rows}


def _watching(
    client: Client | None, no_worker_s: float
) -> contextlib.AbstractContextManager[CrashLoopWatch | None]:
    """A watch on the cluster's workers (none on the threaded scheduler)."""
    return contextlib.nullcontext() if client is None else CrashLoopWatch(client, no_worker_s)


def _cluster(
    job: Job, progress: ProgressCallback | None, checkpoint: ZarrCheckpoint
) -> tuple[MeanShiftResult, KeptRows | None]:
    """Mean shift of the input's points (those without NaN/Inf if ``drop_invalid_rows``)."""
    points, kept = store.points_as_dask(job.source), None
    if job.input.drop_invalid_rows:
        kept = keep_finite_rows(points)
        points = kept.points
    try:
        return mean_shift(points, job.params, progress=progress, checkpoint=checkpoint), kept
    except InvalidRowsError as exc:
        raise InvalidRowsError(
            f"{literal(str(exc))}; {{drop_invalid_rows}} leaves them out",
            drop_invalid_rows=True,
        ) from None


def _write_per_point(
    group: Any, result: MeanShiftResult, kept: KeptRows | None, row_chunk: int, modes: bool
) -> None:
    """Write the labels (and modes), -1 and NaN for rows left out."""
    labels, point_modes = result.labels, result.modes
    if kept is not None:
        labels = kept.spread(labels, -1)
        point_modes = None if point_modes is None else kept.spread(point_modes, np.nan)
    store.write_per_point(group, "labels", labels, row_chunk)
    if modes and point_modes is not None:
        store.write_per_point(group, "modes", point_modes, row_chunk)


def _job_report(
    input_url: str,
    output_url: str,
    attributes: dict[str, Any],
    centers: Any,
    sizes: Any,
    dashboard: str | None = None,
    already_complete: bool = False,
) -> JobReport:
    """The report of a job from its output's attributes, centres and sizes."""
    return JobReport(
        input=input_url,
        output=output_url,
        n_points=int(attributes["n_points"]),
        n_dims=int(attributes["input"]["shape"][1]),
        n_clusters=int(attributes["n_clusters"]),
        sizes=[int(s) for s in np.asarray(sizes)],
        centers=np.asarray(centers).tolist(),
        bandwidth=float(attributes["bandwidth"]),
        bandwidth_estimated=bool(attributes["bandwidth_estimated"]),
        n_iter=int(attributes["n_iter"]),
        converged=bool(attributes["converged"]),
        stop_reason=str(attributes["stop_reason"]),
        method=str(attributes["method"]),
        n_cells=attributes.get("n_cells"),
        timings=dict(attributes.get("timings") or {}),
        dashboard=dashboard,
        resumed=attributes.get("resumed"),
        already_complete=already_complete,
        dropped_rows=int(attributes.get("dropped_rows") or 0),
        unlabelled=int((attributes.get("unlabelled") or {}).get("points", 0)),
    )


def _reused(state: OutputState, storage_options: store.StorageOptions | None) -> JobReport:
    """The report of a complete output (``already_complete``), read back."""
    group = store.open_result(state.url, storage_options, verified=True)
    return _job_report(
        state.input["url"],
        state.url,
        state.attributes,
        group["centers"][...],
        group["sizes"][...],
        already_complete=True,
    )

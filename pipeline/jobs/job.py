"""One clustering job: Zarr input → Dask cluster → Zarr output. The CLI and workflows call this."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import MeanShiftResult, ProgressCallback, mean_shift
from ..errors import InvalidRowsError, literal
from ..io import store
from ..io.checkpoint import ZarrCheckpoint, resumable
from ..io.rows import KeptRows, keep_finite_rows
from ..naming import job_tag
from ..params import MeanShiftParams
from ..worker import warm_up
from .cluster import dask_client


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


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result."""
    versions = {}
    for name in ("meanshift-pipeline", "numpy", "dask", "distributed", "zarr", "scikit-learn"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def result_attributes(
    result: MeanShiftResult, params: MeanShiftParams, source: store.InputInfo, n_points: int
) -> dict[str, Any]:
    """JSON-ready attributes describing a run."""
    return {
        "input": {"url": source.url, "array": source.name, "shape": list(source.array.shape)},
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
    source: store.InputInfo, params: MeanShiftParams, drop_invalid_rows: bool = False
) -> str:
    """What makes two runs the same job: input, its shape and type, every parameter."""
    described = {
        "input": [source.url, source.name, list(source.array.shape), str(source.array.dtype)],
        "invalid_rows": "drop" if drop_invalid_rows else "refuse",
        "parameters": params.model_dump(mode="json"),
        "version": package_versions()["meanshift-pipeline"],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def default_job_name(output_url: str) -> str:
    """A job's name from its output: the last path element without its extension."""
    last = output_url.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[0] or "meanshift"


def run_job(
    input_url: str,
    output_url: str,
    params: MeanShiftParams,
    *,
    array: str = "points",
    scheduler: str | None = None,
    n_workers: int | None = None,
    overwrite: bool = False,
    write_modes: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    dashboard: bool = False,
    on_cluster_ready: Any = None,
    connect_timeout: float = 30.0,
    name: str | None = None,
    security: Any = None,
    cluster_kind: str = "local",
    run_id: str | None = None,
    checkpoint_every: int = 1,
    drop_invalid_rows: bool = False,
) -> JobReport:
    """Cluster a Zarr point set and write the result to a Zarr group.

    The input is validated and the output created (``status: "running"``)
    before any cluster starts, so user mistakes fail fast. On any error the
    output is marked ``failed``; it is marked ``complete`` only after every
    array and attribute is written.

    The same job (same input, parameters and version) aimed at its own output
    continues from the saved state if the output is unfinished, and does nothing
    if it is complete (the report is read back, ``already_complete`` set); only
    ``overwrite`` recomputes it. A different job's output is never replaced
    without ``overwrite``.

    Parameters
    ----------
    input_url, output_url : str
        Paths or fsspec URLs of the input group (or array) and the output group.
    params : MeanShiftParams
    array : str
        Array of the input group holding the points.
    scheduler : str, optional
        Address of a running Dask scheduler; default: an embedded local cluster.
    n_workers : int, optional
        Workers of the embedded cluster.
    overwrite : bool
        Replace an existing output.
    write_modes : bool
        Also store where each point converged (``modes``).
    progress : callable, optional
        Called after each blurring iteration.
    on_cluster_ready : callable, optional
        Called with the ``distributed.Client`` once connected.
    connect_timeout : float
        Seconds to wait for ``scheduler``.
    name : str, optional
        Prefix of the job's task names on the dashboard (default: the output's folder
        name without extension).
    security : distributed.security.Security, optional
        TLS settings for ``scheduler`` (see :func:`pipeline.jobs.cluster.tls_security`).
    cluster_kind : {"local", "local-cuda", "remote"}
        Embedded cluster type when no ``scheduler`` is given (``local-cuda``: one
        worker per GPU, dask-cuda).
    run_id : str, optional
        Recorded in the output's attributes (workflow runs).
    checkpoint_every : int
        Save blurring positions after every ``checkpoint_every``-th iteration (0: keep
        no state; standard mean shift and the binned method save theirs unless 0).
    drop_invalid_rows : bool
        Leave rows holding NaN or Inf out of the clustering (labelled -1, counted in
        the report) instead of refusing the input.
    """
    opened = time.perf_counter()
    source = store.open_points(input_url, array, storage_options)
    fingerprint = job_fingerprint(source, params, drop_invalid_rows)
    if not overwrite:
        done = _completed_report(output_url, fingerprint, write_modes)
        if done is not None:
            return done
    group = _open_output(output_url, input_url, source, fingerprint, overwrite)
    checkpoint = ZarrCheckpoint(group, source.row_chunk, fingerprint, checkpoint_every)
    job_name = name or default_job_name(output_url)
    try:
        before_cluster = time.perf_counter()
        warming = threading.Thread(target=warm_up, daemon=True)  # while the cluster starts
        warming.start()
        with dask_client(
            scheduler, n_workers, timeout=connect_timeout, security=security, kind=cluster_kind
        ) as client:
            warming.join()
            cluster_start = time.perf_counter() - before_cluster
            link = client.dashboard_link if dashboard else None
            if on_cluster_ready is not None:
                on_cluster_ready(client)
            with job_tag(job_name):
                result, kept = _cluster(source, params, progress, checkpoint, drop_invalid_rows)
                clock = time.perf_counter()
                _write_per_point(group, result, kept, source.row_chunk, write_modes)
            timings = dict(result.timings)
            timings["write_s"] = time.perf_counter() - clock
            timings["cluster_start_s"] = cluster_start  # includes loading this process's kernels
            timings["pipeline_s"] = time.perf_counter() - opened - cluster_start
            attributes = result_attributes(result, params, source, source.array.shape[0])
            attributes |= {
                "timings": timings,
                "job": {"name": job_name, "run_id": run_id},
                "resumed_from_iteration": result.resumed_from_iteration,
                "resumed": result.resumed,
                "fingerprint": fingerprint,
                "dropped_rows": 0 if kept is None else kept.dropped,
            }
            checkpoint.clear()
            store.write_summary(group, result.centers, result.sizes, attributes)
    except BaseException as exc:
        store.mark_failed(group, f"{type(exc).__name__}: {exc}")
        raise
    return _job_report(input_url, output_url, attributes, result.centers, result.sizes, link)


def _open_output(
    output_url: str, input_url: str, source: store.InputInfo, fingerprint: str, overwrite: bool
) -> Any:
    """The output group: reopened when this job stopped part way (to continue from its
    saved state), created (``status: "running"``) otherwise."""
    if not overwrite and resumable(output_url, fingerprint):
        return store.reopen_output(output_url)
    n = source.array.shape[0]
    return store.create_output(output_url, n, source.row_chunk, overwrite, input_url=input_url)


def _cluster(
    source: store.InputInfo,
    params: MeanShiftParams,
    progress: ProgressCallback | None,
    checkpoint: ZarrCheckpoint,
    drop_invalid_rows: bool,
) -> tuple[MeanShiftResult, KeptRows | None]:
    """Mean shift of the input's points (those without NaN/Inf if ``drop_invalid_rows``)."""
    points, kept = store.points_as_dask(source), None
    if drop_invalid_rows:
        kept = keep_finite_rows(points)
        points = kept.points
    try:
        return mean_shift(points, params, progress=progress, checkpoint=checkpoint), kept
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
    )


def _completed_report(output_url: str, fingerprint: str, modes: bool) -> JobReport | None:
    """The report of ``output_url`` if it is a complete output of this very job (holding
    ``modes`` if they are asked for), else None."""
    attributes = store.existing_attributes(output_url) or {}
    if attributes.get("status") != store.STATUS_COMPLETE:
        return None
    if attributes.get("fingerprint") != fingerprint:
        return None
    group = store.open_result(output_url)
    if modes and "modes" not in group:
        return None
    return _job_report(
        attributes["input"]["url"],
        output_url,
        attributes,
        group["centers"][...],
        group["sizes"][...],
        already_complete=True,
    )

"""Run a workflow spec: the one door behind ``meanshift run`` (with or without ``--spec``) and
scheduled runs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..backend import check_usable_here
from ..errors import InputDataError, ParameterError
from ..io.locations import check_location, is_local, local_path
from ..naming import clean_tag
from .spec import (
    ClusterSpec,
    TLSSpec,
    WorkflowSpec,
    default_job_name,
    describe_spec_error,
    make_run_id,
)

if TYPE_CHECKING:  # the job machinery (Dask, Zarr) is imported when a job runs, not before
    from ..engine import ProgressCallback
    from .job import JobReport

CLI_TO_SPEC = {
    "input_url": ("input", "url"),
    "array": ("input", "array"),
    "input_storage_options": ("input", "storage_options"),
    "output_storage_options": ("output", "storage_options"),
    "drop_invalid_rows": ("input", "drop_invalid_rows"),
    "output": ("output", "path"),
    "overwrite": ("output", "overwrite"),
    "modes": ("output", "modes"),
    "checkpoint_every": ("output", "checkpoint_every"),
    "n_workers": ("cluster", "n_workers"),
    "connect_timeout": ("cluster", "connect_timeout"),
    "cluster": ("cluster", "kind"),
}
"""Command-line options and where they land in a spec (the rest are parameters)."""

NOT_PARAMS = {"scheduler", "tls_ca_file", "tls_cert", "tls_key", "name", "quiet", "spec", "run_id"}


def _spec_fields(spec: WorkflowSpec | None) -> dict[str, Any]:
    """The spec's fields as plain data, every part present (all empty without a spec)."""
    data: dict[str, Any] = (
        spec.model_dump(exclude_none=True)
        if spec is not None
        else {"input": {}, "output": {}, "params": {}, "cluster": {}}
    )
    for part in ("input", "output", "params", "cluster"):
        data.setdefault(part, {})
    return data


def _apply_option(data: dict[str, Any], option: str, value: Any) -> None:
    """Put one command-line option's value where it lands in the spec's fields."""
    if option == "scheduler" or (option == "cluster" and "://" in str(value)):
        data["cluster"].update(kind="remote", scheduler=value)
    elif option in CLI_TO_SPEC:
        part, key = CLI_TO_SPEC[option]
        data[part][key] = value
    elif option in ("tls_ca_file", "tls_cert", "tls_key"):
        key = {"tls_ca_file": "ca_file", "tls_cert": "cert", "tls_key": "key"}[option]
        data["cluster"].setdefault("tls", {})[key] = value
    elif option == "name":
        data["name"] = value
    elif option not in NOT_PARAMS:
        data["params"][option] = value


def _require_input_and_output(data: dict[str, Any]) -> None:
    """Refuse a job from options alone that lacks an input or an output."""
    for part, key, option in (("input", "url", "input_url"), ("output", "path", "output")):
        if part in data and key not in data[part]:
            raise ParameterError(
                f"missing option {{{option}}} (or give {{spec}} FILE)", **{option: None}, spec=None
            )


def spec_with_options(spec: WorkflowSpec | None, options: dict[str, Any]) -> WorkflowSpec:
    """A spec with command-line options applied over it (or built from them alone).

    Parameters
    ----------
    spec : WorkflowSpec or None
        The spec file's contents; None: the options describe the whole job.
    options : dict
        Command-line option names and values; only those the user gave.

    Raises
    ------
    ParameterError
        The result is not a valid job (one line naming the field).
    """
    data = _spec_fields(spec)
    if "scheduler" in options and "cluster" in options:
        raise ParameterError(
            "give either {scheduler} (a running cluster) or {cluster}, not both",
            scheduler=None,
            cluster=None,
        )
    for option, value in options.items():
        _apply_option(data, option, value)
    if "name" not in data:
        output = data["output"].get("path")
        data["name"] = clean_tag(default_job_name(output)) if output else "meanshift"
    if spec is None:
        _require_input_and_output(data)
    try:
        merged = WorkflowSpec(**data)
    except ValidationError as exc:
        where = f"spec {spec.source}: " if spec is not None and spec.source else ""
        raise ParameterError(where + describe_spec_error(exc)) from None
    return merged.read_from(None if spec is None else spec.source)


def progress_line(iteration: int, shift: float, moving: int, elapsed_s: float) -> str:
    """One plain line of a job's progress (the command line's, a Prefect run's log)."""
    return (
        f"iteration {iteration}: largest shift {shift:.3g}, {moving:,} points moving "
        f"({elapsed_s:.0f} s)"
    )


def _resolved_cluster(spec: WorkflowSpec) -> ClusterSpec:
    """The spec's ``cluster`` section with its TLS files relative to the spec's folder."""
    tls = spec.cluster.tls
    if tls is None:
        return spec.cluster
    key = None if tls.key is None else spec.resolve(tls.key)
    resolved = TLSSpec(ca_file=spec.resolve(tls.ca_file), cert=spec.resolve(tls.cert), key=key)
    return spec.cluster.model_copy(update={"tls": resolved})


def _check_before_imports(spec: WorkflowSpec, params: Any) -> None:
    """What can be refused before the job machinery (Dask, Zarr) is imported: ``cupy``
    without a GPU here, storage options that cannot apply, a missing local input.

    Raises
    ------
    ParameterError, InputDataError
    """
    if spec.cluster.computes_here():
        check_usable_here(params.backend)
    input_url = spec.resolve(spec.input.url)
    check_location(input_url, spec.input.storage_options, "input")
    check_location(spec.output.path, spec.output.storage_options, "output")
    if is_local(input_url) and not os.path.exists(local_path(input_url)):
        raise InputDataError(f"input not found: {os.path.abspath(local_path(input_url))}")


def run_spec(
    spec: WorkflowSpec,
    run_id: str | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_cluster_ready: Any = None,
    dashboard: bool = False,
    skip_complete: bool = False,
    on_start: Any = None,
) -> JobReport:
    """Run one job described by ``spec``.

    Parameters
    ----------
    spec : WorkflowSpec
    run_id : str, optional
        Fills ``{run_id}`` and ``{date}`` in the output path (default: now, UTC).
    progress, on_cluster_ready, dashboard, on_start
        As for :func:`pipeline.run_job`.
    skip_complete : bool
        Scheduled runs: an output already complete is left alone, whatever job wrote
        it (its report is read back, ``already_complete`` set); one left running or
        failed by an earlier attempt of the same run is replaced.

    Returns
    -------
    JobReport
    """
    params = spec.mean_shift_params()
    _check_before_imports(spec, params)
    from .job import run_job

    run_id = run_id or make_run_id()
    output = spec.output.model_copy(update={"path": spec.output_path(run_id)})
    return run_job(
        spec.input.model_copy(update={"url": spec.resolve(spec.input.url)}),
        output,
        params,
        cluster=_resolved_cluster(spec),
        name=spec.name,
        run_id=run_id,
        progress=progress,
        dashboard=dashboard,
        on_cluster_ready=on_cluster_ready,
        on_start=on_start,
        any_complete=skip_complete,
    )

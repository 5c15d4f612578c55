"""Prefect 3 flows: a workflow spec run as a Prefect flow (the optional extra ``prefect``).

::

    from pipeline.flows import meanshift_flow

    result = meanshift_flow("workflows/seed-demo.yaml")  # one run now
    result.run_id, result.output, result.status           # "complete" or "skipped"

``meanshift prefect-serve SPEC...`` serves one deployment per spec on its
``schedule.cron`` (:func:`serve_specs`); ``--cron`` gives another schedule.

The flow has three tasks, each calling the engine the command line calls:

- ``validate``: reads the spec; every problem goes to the run's log, the first fails
  the run (never retried).
- ``run``: :func:`pipeline.jobs.workflow.run_spec` with the spec's retry policy
  (``schedule.retries``, ``schedule.retry_delay_s``) applied as Prefect retries, for
  transient failures only: a cluster problem or an unexpected error. A parameter,
  input or output problem (exit codes 2, 3, 4) fails the run at once, since the same spec
  and data fail the same way again.
- ``report``: the PNGs and ``index.html`` of :func:`pipeline.report.write_report` (a run
  found complete keeps the report it has).

The run id is the flow run's scheduled start time (UTC, ``YYYYMMDDTHHMMSSZ``), so a run
that starts late, or a flow run retried, is the same run; a run whose output is already
complete is not redone (status ``skipped``), and one left partial is replaced, as in
``meanshift schedule``.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from prefect import flow, get_run_logger, task
    from prefect.cache_policies import NO_CACHE
except ImportError as _missing:  # pragma: no cover - tested in a venv without the extra
    raise ImportError(
        "pipeline.flows needs Prefect 3: pip install 'meanshift-pipeline[prefect]'"
    ) from _missing

from .errors import ParameterError, is_permanent, literal
from .jobs.spec import WorkflowSpec, load_spec, make_run_id, spec_problems
from .jobs.workflow import progress_line, run_spec

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from .jobs.job import JobReport

PROGRESS_EVERY_S = 10.0
"""Seconds between two progress lines in a run's log."""


@dataclass(frozen=True)
class FlowResult:
    """What one flow run did.

    Attributes
    ----------
    run_id : str
        The run's id (UTC, ``YYYYMMDDTHHMMSSZ``).
    output : str
        The output group the run wrote (or found complete).
    status : str
        ``complete`` (computed now) or ``skipped`` (already complete).
    n_clusters : int
    report : str or None
        Path of the report's ``index.html``; None when no report was asked for.
    """

    run_id: str
    output: str
    status: str
    n_clusters: int
    report: str | None


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry unless the failure is one a retry cannot mend."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        error = state.result(raise_on_failure=False)
    return not (isinstance(error, BaseException) and is_permanent(error))


@task(name="validate", cache_policy=NO_CACHE, persist_result=False)
def validate_spec(spec_file: str) -> WorkflowSpec:
    """Read and check a spec file; every problem is logged, the first one raised.

    Raises
    ------
    ParameterError
    """
    spec, problems = spec_problems(spec_file)
    if spec is None:
        logger = get_run_logger()
        for problem in problems:
            logger.error(problem)
        more = f" (and {len(problems) - 1} more, in this run's log)" if len(problems) > 1 else ""
        raise ParameterError(literal(problems[0]) + more)
    return spec


class _LogProgress:
    """A progress callback writing one line to the run's log every ``every_s`` seconds."""

    def __init__(self, logger: Any, every_s: float) -> None:
        self._logger = logger
        self._every_s = every_s
        self._started = self._said = time.monotonic()

    def __call__(self, iteration: int, shift: float, moving: int) -> None:
        now = time.monotonic()
        if now - self._said >= self._every_s:
            self._said = now
            self._logger.info(progress_line(iteration, shift, moving, now - self._started))


@task(
    name="run",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_transient,
)
def run_job_task(spec: WorkflowSpec, run_id: str) -> JobReport:
    """Run the spec's job as run ``run_id`` (an output already complete is left alone)."""
    logger = get_run_logger()
    report = run_spec(
        spec,
        run_id,
        progress=_LogProgress(logger, PROGRESS_EVERY_S),
        skip_complete=True,
        on_start=logger.info,
    )
    if report.already_complete:
        logger.info(f"already complete: {report.output}")
    else:
        logger.info(
            f"{report.n_points:,} points x {report.n_dims} dims -> {report.n_clusters} "
            f"clusters in {report.n_iter} iterations ({report.stop_reason}): {report.output}"
        )
    return report


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def report_task(spec: WorkflowSpec, output: str, folder: str | None) -> str:
    """Write the report of a complete output; returns the path of its ``index.html``."""
    from .report import write_report

    return write_report(
        output,
        folder,
        storage_options=spec.output.storage_options,
        input_storage_options=spec.input.storage_options,
    )


def _existing_report(job: JobReport, folder: str | None) -> str | None:
    """The report page of a run found complete, if it has one."""
    from .report import default_report_folder

    page = os.path.join(folder or default_report_folder(job.output), "index.html")
    return page if job.already_complete and os.path.exists(page) else None


def _scheduled_run_id() -> str:
    """The run id of this flow run: its scheduled start time (now, outside a flow run)."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    if when is None:
        return make_run_id()
    return make_run_id(_dt.datetime.fromtimestamp(when.timestamp(), _dt.UTC))


@flow(name="meanshift", validate_parameters=True)
def meanshift_flow(
    spec_file: str,
    run_id: str | None = None,
    report: bool = True,
    report_folder: str | None = None,
    retries: int | None = None,
    retry_delay_s: float | None = None,
) -> FlowResult:
    """Run one workflow spec: validate it, run its job, write its report.

    Parameters
    ----------
    spec_file : str
        The spec (YAML); its relative paths are relative to its folder.
    run_id : str, optional
        ``YYYYMMDDTHHMMSSZ`` (default: the flow run's scheduled start time, UTC).
    report : bool
        Write the report (PNGs and ``index.html``; needs matplotlib).
    report_folder : str, optional
        Where the report goes (default: ``<output>-report`` beside a local output).
    retries, retry_delay_s : optional
        Retries of the run task on a transient failure, and seconds between them
        (default: the spec's ``schedule.retries`` and ``schedule.retry_delay_s``; 0 retries
        without a ``schedule``).

    Returns
    -------
    FlowResult
    """
    spec = validate_spec(spec_file)
    run_id = run_id or _scheduled_run_id()
    policy = spec.schedule
    retries = retries if retries is not None else (policy.retries if policy else 0)
    delay = retry_delay_s if retry_delay_s is not None else (policy.retry_delay_s if policy else 0)
    job = run_job_task.with_options(retries=retries, retry_delay_seconds=delay)(spec, run_id)
    page = None
    if report:
        page = _existing_report(job, report_folder) or report_task(spec, job.output, report_folder)
    return FlowResult(
        run_id=run_id,
        output=job.output,
        status="skipped" if job.already_complete else "complete",
        n_clusters=job.n_clusters,
        report=page,
    )


def prefect_cron(spec: WorkflowSpec, cron: str | None = None) -> str:
    """The cron expression of a spec's deployment: ``cron``, else its ``schedule.cron``.

    Raises
    ------
    ParameterError
        No schedule at all, or a 6-field expression (Prefect's have 5, minute first).
    """
    expression = cron or (spec.schedule.cron if spec.schedule else None)
    if expression is None:
        raise ParameterError(
            f"spec {literal(str(spec.source))}: no schedule.cron (give {{cron}})", cron=None
        )
    if len(expression.split()) != 5:
        raise ParameterError(
            f"cron '{expression}': Prefect schedules take 5 fields (minute hour day month "
            "weekday); a seconds field is not supported"
        )
    return expression


def spec_deployment(spec_file: str, cron: str | None = None) -> RunnerDeployment:
    """A Prefect deployment of :func:`meanshift_flow` for one spec, on a cron schedule.

    Parameters
    ----------
    spec_file : str
    cron : str, optional
        5-field cron expression (default: the spec's ``schedule.cron``, in its
        ``schedule.timezone``).

    Returns
    -------
    prefect.deployments.runner.RunnerDeployment
        Named after the spec's job, with ``spec_file`` (absolute) as its parameter.

    Raises
    ------
    ParameterError
        The spec is invalid, or has no usable schedule.
    """
    return _deployment(spec_file, load_spec(spec_file), cron)


def _deployment(spec_file: str, spec: WorkflowSpec, cron: str | None) -> RunnerDeployment:
    """:func:`spec_deployment` of a spec already read from ``spec_file``."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    timezone = spec.schedule.timezone if spec.schedule else "UTC"
    return meanshift_flow.to_deployment(
        name=spec.name,
        schedules=[Cron(prefect_cron(spec, cron), timezone=timezone)],
        parameters={"spec_file": os.path.abspath(spec_file)},
        description=f"meanshift job {spec.name} ({os.path.abspath(spec_file)})",
        entrypoint_type=EntrypointType.MODULE_PATH,  # pipeline.flows.meanshift_flow, anywhere
    )


def serve_specs(locations: list[str], cron: str | None = None) -> None:
    """Serve a deployment of each spec with a schedule (every spec, given ``cron``) found at
    ``locations`` (files, or folders of ``*.yaml``) in this process until interrupted
    (Prefect's ``serve``; runs go to the Prefect API that ``PREFECT_API_URL`` names).

    Raises
    ------
    ParameterError
        A spec is invalid, none has a schedule, two name the same job, or a cron
        expression is not one Prefect takes.
    """
    from prefect import serve

    from .jobs.schedule import scheduled_specs

    specs = scheduled_specs(locations, every=cron is not None)
    deployments = [_deployment(path, spec, cron) for path, spec in specs.values()]
    serve(*deployments)

"""The ``meanshift`` command: generate data, run a clustering job, run the demo."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from typing import Any, get_args

import click

from .errors import ParameterError, PipelineError, literal
from .jobs.spec import MAX_CONNECT_TIMEOUT_S
from .params import BANDWIDTH_ESTIMATES, MeanShiftParams


class BandwidthType(click.ParamType):
    """A positive number, or the name of an estimate (auto = knn, scott, silverman)."""

    name = "FLOAT|auto|scott|silverman"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | str | None:
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in BANDWIDTH_ESTIMATES:
            return BANDWIDTH_ESTIMATES[value.lower()]
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor auto/scott/silverman", param, ctx)
        if not number > 0 or number == float("inf"):
            self.fail(f"{value!r} must be a positive number", param, ctx)
        return number


class ClusterType(click.ParamType):
    """Where a job computes: auto, threads, local, local-cuda, or a scheduler's address."""

    name = "auto|threads|local|local-cuda|ADDRESS"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from .jobs.spec import CLUSTER_KINDS, check_scheduler_address

        if value in CLUSTER_KINDS and value != "remote":
            return value
        if "://" not in value:
            kinds = ", ".join(kind for kind in CLUSTER_KINDS if kind != "remote")
            self.fail(f"{value!r} is none of {kinds}, nor a scheduler address", param, ctx)
        try:
            return check_scheduler_address(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


PROGRESS_EVERY_S = 10.0
"""Seconds between plain progress lines when stderr is not a terminal."""


class StorageOptionsType(click.ParamType):
    """fsspec storage options: a JSON object, or ``@FILE`` naming a file that holds one (which
    keeps credentials off the command line, where other users' ``ps`` can read them)."""

    name = "JSON|@FILE"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, Any]:
        import json

        if isinstance(value, dict):
            return value
        text, where = value, "the value"
        if value.startswith("@"):
            where = value[1:]
            try:
                with open(where) as handle:
                    text = handle.read()
            except OSError as exc:
                self.fail(f"cannot read {where}: {exc.strerror or exc}", param, ctx)
        try:
            options = json.loads(text)
        except ValueError as exc:  # the text itself is not repeated: it may hold secrets
            self.fail(f"{where} is not JSON ({type(exc).__name__} at char {exc.pos})", param, ctx)
        if not isinstance(options, dict):
            self.fail(f"{where} must be a JSON object of fsspec options", param, ctx)
        return options


def storage_options_option(*names: str, what: str) -> Any:
    """An option taking the fsspec storage options of ``what``."""
    return click.option(
        *names,
        type=StorageOptionsType(),
        default=None,
        help=f"fsspec options of {what} (endpoint, credentials, ...): JSON, or @FILE holding "
        "it [default: none; credentials from the environment].",
    )


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    click.echo(f"meanshift: warning: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="meanshift-pipeline")
def cli() -> None:
    """Distributed mean shift clustering of Zarr point sets on Dask."""


@cli.command()
@click.option("--output", "-o", required=True, help="Zarr group to write (points, truth).")
@click.option("--clusters", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--per-cluster", default=250, show_default=True, type=click.IntRange(min=1))
@click.option("--spread", default=5.0, show_default=True, type=float, help="Variance of each blob.")
@click.option("--dims", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--chunk", default=None, type=click.IntRange(min=1), help="Rows per Zarr chunk.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@storage_options_option("--storage-options", what="a remote output")
def generate(
    output: str,
    clusters: int,
    per_cluster: int,
    spread: float,
    dims: int,
    seed: int,
    chunk: int | None,
    overwrite: bool,
    storage_options: dict[str, Any] | None,
) -> None:
    """Write the seed notebook's data set: Gaussian blobs, centroids uniform in [-35, 35]^d."""
    from .io.datasets import write_blobs

    write_blobs(
        output, clusters, per_cluster, spread, dims, seed, chunk, overwrite, storage_options
    )
    click.echo(
        f"wrote {clusters * per_cluster:,} points x {dims} dims to {output} (arrays: points, truth)"
    )


def parameter_option(name: str) -> Any:
    """The ``run`` option of one run parameter, built from its field in MeanShiftParams
    (flag name, choices, range, default and help)."""
    field = MeanShiftParams.model_fields[name]
    flag = "--" + name.replace("_", "-")
    settings: dict[str, Any] = {"default": field.default, "help": field.description}
    settings["show_default"] = field.default is not None
    if field.annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", **settings)
    choices = [a for a in get_args(field.annotation) if isinstance(a, str)]
    choices += [c for a in get_args(field.annotation) for c in get_args(a)]
    if choices:
        return click.option(flag, type=click.Choice(choices), **settings)
    bounds: dict[str, Any] = {}
    for rule in field.metadata:  # pydantic's ge / gt / le / lt constraints
        for key, bound, is_open in (
            ("ge", "min", False),
            ("gt", "min", True),
            ("le", "max", False),
            ("lt", "max", True),
        ):
            if getattr(rule, key, None) is not None:
                bounds[bound], bounds[f"{bound}_open"] = getattr(rule, key), is_open
    if field.annotation is int:
        bounds = {k: v for k, v in bounds.items() if not k.endswith("_open")}
        return click.option(flag, type=click.IntRange(**bounds), **settings)
    return click.option(flag, type=click.FloatRange(**bounds), **settings)


PARAMETERS_ELSEWHERE = {"bandwidth_rule": "--bandwidth auto|knn|scott|silverman"}
"""Run parameters without an option of their own, and where the command line takes them."""


def _bandwidth_option() -> Any:
    """The ``run`` option of the bandwidth: a number or the name of an estimate."""
    return click.option(
        "--bandwidth",
        "-b",
        type=BandwidthType(),
        default="auto",
        show_default=True,
        help="Kernel bandwidth, or the rule that estimates it from a sample "
        "(auto = knn, scott, silverman).",
    )


def _cluster_options() -> list[Any]:
    """The ``run`` options choosing the Dask cluster: a running scheduler or an embedded one."""
    return [
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Use a running Dask scheduler (tcp://host:8786) instead of an embedded cluster.",
        ),
        click.option(
            "--connect-timeout",
            default=30.0,
            show_default=True,
            type=click.FloatRange(min=0, min_open=True, max=MAX_CONNECT_TIMEOUT_S),
            help="Seconds to wait for --scheduler (at most a day).",
        ),
        click.option(
            "--cluster",
            type=ClusterType(),
            default="auto",
            show_default=True,
            help="Where to compute: threads of this process (no worker processes), a local "
            "cluster of worker processes, one worker per GPU (dask-cuda), a scheduler's "
            "address; auto: local with --n-workers, else Dask's configured scheduler-address "
            "if set, else threads for inputs that fit comfortably in memory, else local.",
        ),
        click.option(
            "--n-workers",
            default=None,
            type=click.IntRange(min=1),
            help="Workers of the embedded cluster [default: one per core, at most 8].",
        ),
    ]


def _tls_options() -> list[Any]:
    """The ``run`` options naming the certificate files of a tls:// scheduler."""
    return [
        click.option(
            "--tls-ca-file",
            default=None,
            metavar="FILE",
            help="CA certificate for a tls:// scheduler (or Dask config distributed.comm.tls).",
        ),
        click.option("--tls-cert", default=None, metavar="FILE", help="Client certificate."),
        click.option(
            "--tls-key",
            default=None,
            metavar="FILE",
            help="Client private key (if not in the cert).",
        ),
    ]


def _job_options() -> list[Any]:
    """The ``run`` options of the job's name on the dashboard and of what it prints."""
    return [
        click.option(
            "--name",
            default=None,
            help="Job name, the prefix of its task names on the dashboard [default: output name].",
        ),
        click.option(
            "--quiet", "-q", is_flag=True, help="No progress bar or summary; errors only."
        ),
        click.option(
            "--progress-every",
            default=PROGRESS_EVERY_S,
            show_default=True,
            type=click.FloatRange(min=0),
            metavar="SECONDS",
            help="When stderr is not a terminal (cron, logs): a progress line every SECONDS "
            "(0: every iteration).",
        ),
    ]


def _run_options(func: Any) -> Any:
    """Add the options shared by every job of ``run``: parameters, cluster, TLS, name, quiet."""
    options = [_bandwidth_option()] + [
        parameter_option(name)
        for name in MeanShiftParams.model_fields
        if name != "bandwidth" and name not in PARAMETERS_ELSEWHERE
    ]
    options += _cluster_options() + _tls_options() + _job_options()
    for option in reversed(options):
        func = option(func)
    return func


class _Progress:
    """A progress callback: on a terminal, a tqdm counter of iterations (no total: a run
    stops when its points stop moving, not at ``max_iter``) with the largest shift and the
    points still moving; otherwise (cron, container logs) a plain line on stderr every
    ``every_s`` seconds (0: every iteration)."""

    def __init__(self, params: MeanShiftParams, every_s: float) -> None:
        self._params = params
        self._every_s = every_s
        self._terminal = sys.stderr.isatty()
        self._bar: Any = None
        self._started = self._said = time.monotonic()

    def __call__(self, iteration: int, shift: float, moving: int) -> None:
        """Report one more iteration: its largest shift and the points still moving."""
        if not self._terminal:
            now = time.monotonic()
            if now - self._said >= self._every_s:
                self._said = now
                from .jobs.workflow import progress_line

                line = progress_line(iteration, shift, moving, now - self._started)
                click.echo(f"meanshift: {line}", err=True)
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                desc="blurring" if self._params.blurring else "mean shift",
                unit="it",
                file=sys.stderr,
                leave=False,
            )
        self._bar.update(1)
        self._bar.set_postfix(max_shift=f"{shift:.3g}", moving=f"{moving:,}")

    def close(self) -> None:
        """Close the bar, if the job got as far as opening it."""
        if self._bar is not None:
            self._bar.close()


def _echo_outcome(report: Any, params: MeanShiftParams, quiet: bool, skip_complete: bool) -> None:
    """Print how a job ended: already complete, or its summary (only the first if quiet)."""
    if report.already_complete and skip_complete:  # scheduled runs: always said
        click.echo(f"already complete: {report.output}")
    elif report.already_complete:
        if not quiet:
            click.echo(
                f"already complete: {report.output} holds this job's result (same input and "
                "parameters); nothing to do (--overwrite recomputes it)"
            )
    elif not quiet:
        click.echo(format_summary(report, params))


def _execute(
    spec_file: str | None,
    given: dict[str, Any],
    quiet: bool,
    run_id: str | None = None,
    skip_complete: bool = False,
):
    """Run one job from a spec file and/or command-line options (those the user gave)."""
    from .jobs.spec import load_spec
    from .jobs.workflow import run_spec, spec_with_options

    every_s = given.pop("progress_every", PROGRESS_EVERY_S)
    spec = spec_with_options(None if spec_file is None else load_spec(spec_file), given)
    params = spec.mean_shift_params()
    progress = None if quiet else _Progress(params, every_s)

    def announce(client: Any) -> None:
        if not quiet:
            click.echo(f"dashboard: {client.dashboard_link} (scheduler {client.scheduler.address})")

    try:
        report = run_spec(
            spec,
            run_id,
            progress=progress,
            on_cluster_ready=announce,
            dashboard=not quiet,
            skip_complete=skip_complete,
            on_start=None if quiet else click.echo,
        )
    finally:
        if progress is not None:
            progress.close()
    _echo_outcome(report, params, quiet, skip_complete)
    return report


def format_summary(report: Any, params: Any) -> str:
    """One screen describing a finished job."""
    method = "blurring" if params.blurring else "standard"
    bw = f"{report.bandwidth:.4g}" + (" (estimated)" if report.bandwidth_estimated else "")
    lines = [
        f"{report.n_points:,} points x {report.n_dims} dims -> {report.n_clusters} clusters "
        f"({params.kernel} kernel, {method} mean shift, bandwidth {bw})",
        f"method: {report.method}"
        + (f" ({report.n_cells:,} weighted cells)" if report.n_cells else "")
        + f"; iterations: {report.n_iter} ({report.stop_reason})",
    ]
    shown = min(report.n_clusters, 10)
    lines.append("cluster     size  centre")
    for i in range(shown):
        centre = ", ".join(f"{c:.3f}" for c in report.centers[i][:4])
        more = ", ..." if report.n_dims > 4 else ""
        lines.append(f"{i:>7} {report.sizes[i]:>8,}  ({centre}{more})")
    if report.n_clusters > shown:
        rest = sum(report.sizes[shown:])
        lines.append(f"{'...':>7} {rest:>8,}  in {report.n_clusters - shown} smaller clusters")
    t = report.timings
    stages = ("bandwidth", "binning", "iterate", "merge", "label", "write")
    spent = ", ".join(f"{s} {t[s + '_s']:.2f}" for s in stages if s + "_s" in t)
    lines.append(
        f"time: {t['pipeline_s']:.2f} s ({spent}); cluster start {t['cluster_start_s']:.2f} s"
    )
    if report.dropped_rows:
        lines.append(f"left out {report.dropped_rows:,} rows holding NaN or Inf (labelled -1)")
    outliers = report.unlabelled - report.dropped_rows
    if outliers:
        lines.append(
            f"labelled -1: {outliers:,} points farther than the bandwidth from every centre "
            "(--no-cluster-all)"
        )
    lines.append(f"output: {report.output}")
    return "\n".join(lines)


@cli.command()
@click.option(
    "--spec",
    "spec_file",
    default=None,
    metavar="FILE",
    help="Workflow spec (YAML); the options given here override its values.",
)
@click.option(
    "--run-id",
    default=None,
    metavar="YYYYMMDDTHHMMSSZ",
    help="Fills {run_id} and {date} in the output path [default: now, UTC].",
)
@click.option(
    "--input", "-i", "input_url", default=None, help="Zarr group (or array) holding the points."
)
@click.option("--output", "-o", default=None, help="Zarr group to write the clusters to.")
@storage_options_option("--input-storage-options", what="a remote input")
@storage_options_option("--output-storage-options", what="a remote output")
@click.option(
    "--array",
    default="points",
    show_default=True,
    help="Array of the input group holding the (n, d) points.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output (also recompute a complete output of the same job).",
)
@click.option("--modes", is_flag=True, help="Also write where every point converged.")
@click.option(
    "--drop-invalid-rows",
    is_flag=True,
    help="Leave rows holding NaN or Inf out (labelled -1, counted) instead of refusing the input.",
)
@click.option(
    "--checkpoint-every",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="K",
    help="Save blurring positions every K-th iteration for resuming (0: keep no state).",
)
@click.option(
    "--skip-complete",
    is_flag=True,
    help="Leave a complete output alone (exit 0); replace a partial or failed one.",
)
@_run_options
@click.pass_context
def run(
    ctx: click.Context,
    spec_file: str | None,
    run_id: str | None,
    skip_complete: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Cluster an (n, d) Zarr point set and write labels, centres and sizes to a Zarr group.

    The job comes from the options, or from a workflow spec (--spec) with the options
    given here taking precedence.
    """
    given = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    _execute(spec_file, given, quiet, run_id, skip_complete)


@cli.command()
@click.argument("locations", nargs=-1, required=True, metavar="SPEC_OR_FOLDER...")
@click.option(
    "--state-dir",
    default=".meanshift",
    show_default=True,
    help="Where the schedule's job store and run history live (one SQLite file).",
)
@click.option(
    "--max-parallel",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs (of different jobs) at the same time.",
)
def schedule(locations: tuple[str, ...], state_dir: str, max_parallel: int) -> None:
    """Run the specs' schedules until stopped (Ctrl-C or SIGTERM); logs one JSON line per event.

    Each run is `meanshift run --spec SPEC --run-id <scheduled time> --skip-complete`.
    """
    import logging
    import signal
    import threading

    from .jobs.schedule import LOG, JsonFormatter, serve

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for logger in (LOG, logging.getLogger("apscheduler")):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if logger is LOG else logging.WARNING)
        logger.propagate = False
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    serve(list(locations), state_dir, max_parallel, stop)


@cli.command("prefect-serve")
@click.argument("locations", nargs=-1, required=True, metavar="SPEC_OR_FOLDER...")
@click.option(
    "--cron",
    default=None,
    help="A 5-field cron expression for every spec [default: each spec's schedule.cron; "
    "specs without a schedule are left out].",
)
def prefect_serve(locations: tuple[str, ...], cron: str | None) -> None:
    """Serve each spec with a schedule as a Prefect deployment on its cron schedule, until
    stopped.

    Runs are recorded by the Prefect API that PREFECT_API_URL names (`prefect server start`,
    or Prefect Cloud); each one is the flow pipeline.flows.meanshift_flow. Needs the extra
    'prefect'.
    """
    import importlib.util

    from .jobs.schedule import scheduled_specs

    scheduled_specs(list(locations), every=cron is not None)  # refused before Prefect's import
    try:
        installed = importlib.util.find_spec("prefect") is not None
    except ImportError:
        installed = False
    if not installed:
        raise ParameterError(
            "prefect-serve needs Prefect 3: pip install 'meanshift-pipeline[prefect]'"
        )
    from .flows import serve_specs

    serve_specs(list(locations), cron)


@cli.command()
@click.option("--state-dir", default=".meanshift", show_default=True)
@click.option("--name", default=None, help="Only this job.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def history(state_dir: str, name: str | None, limit: int, as_json: bool) -> None:
    """List scheduled runs, latest first: when, job, run id, attempt, status, duration, output."""
    import dataclasses
    import json

    from .jobs.schedule import STATE_FILE, History

    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.isfile(path):
        raise ParameterError(
            f"no schedule state in {literal(state_dir)} ({{state_dir}})", state_dir=None
        )
    runs = History(path).runs(name, limit)
    if as_json:
        for entry in runs:
            click.echo(json.dumps(dataclasses.asdict(entry)))
        return
    rows = [
        (
            entry.started_at[:19],
            entry.name,
            entry.run_id,
            str(entry.attempt),
            entry.status,
            "" if entry.duration_s is None else f"{entry.duration_s:.1f} s",
            entry.output or "",
            entry.error or "",
        )
        for entry in runs
    ]
    for line in aligned(HISTORY_COLUMNS, rows, right={"attempt", "duration"}):
        click.echo(line)


HISTORY_COLUMNS = ("started", "job", "run id", "attempt", "status", "duration", "output", "error")


def aligned(
    headers: tuple[str, ...], rows: list[tuple[str, ...]], right: set[str] | frozenset = frozenset()
) -> list[str]:
    """A header row and the rows in columns as wide as their widest cell (the ``right``
    columns aligned right), two spaces apart; a last column left empty by every row is
    left out."""
    while len(headers) > 1 and rows and not any(row[len(headers) - 1] for row in rows):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.rjust(width) if header in right else cell.ljust(width)
            for header, cell, width in zip(headers, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


@cli.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
def validate(specs: tuple[str, ...]) -> None:
    """Check workflow spec files: every problem of every file, one line each; exit 0 only if
    every one is valid."""
    from .jobs.spec import spec_problems

    failed = 0
    for path in specs:
        spec, problems = spec_problems(path)
        for problem in problems:
            click.echo(f"meanshift: error: {problem}", err=True)
        if spec is None:
            failed += 1
            continue
        when = f", schedule '{spec.schedule.cron}'" if spec.schedule else ""
        click.echo(f"{path}: ok (job {spec.name}{when})")
    if failed:
        sys.exit(2)


@cli.command()
@click.option(
    "--output-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Keep the data, output and plot here [default: a temporary folder; plot in .].",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    help="Where to save the picture (relative to the current folder) [default: "
    "meanshift-demo.png in --output-dir, or here].",
)
@click.option("--n-workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--quiet", "-q", is_flag=True)
def demo(
    output_dir: str | None, plot_path: str | None, n_workers: int, seed: int, quiet: bool
) -> None:
    """Run the seed notebook end to end on an embedded Dask cluster and plot the clusters.

    6 Gaussian blobs of 250 points (d=2, variance 5), Gaussian kernel, bandwidth 2.5,
    blurring mean shift.
    """
    from .io.datasets import write_blobs
    from .io.store import open_result

    with tempfile.TemporaryDirectory(prefix="meanshift-demo-") as scratch:
        folder = output_dir or scratch
        os.makedirs(folder, exist_ok=True)
        data = os.path.join(folder, "seed-data.zarr")
        out = os.path.join(folder, "seed-clusters.zarr")
        write_blobs(data, 6, 250, 5.0, 2, seed, overwrite=True)
        if not quiet:
            click.echo(f"generated 1,500 points (6 blobs) in {data}")
        job = dict(input_url=data, output=out, overwrite=True, modes=True, n_workers=n_workers)
        job.update(name="seed_demo", bandwidth=2.5, kernel="gaussian", blurring=True)
        report = _execute(None, job, quiet)
        import numpy as np
        import zarr

        from .plot import plot_clusters

        result = open_result(out)
        points = np.asarray(zarr.open_group(data, mode="r")["points"][...])
        path = plot_path or os.path.join(output_dir or ".", "meanshift-demo.png")
        plot_clusters(
            points,
            np.asarray(result["labels"][...]),
            np.asarray(result["centers"][...]),
            path,
            title=f"meanshift demo: {report.n_clusters} clusters (gaussian, bandwidth 2.5)",
        )
        if not quiet:
            click.echo(f"plot: {path}")


@cli.command()
@click.argument("output")
@click.option(
    "--folder",
    "-d",
    default=None,
    help="Where to write the PNGs and index.html [default: <output>-report beside it].",
)
@click.option(
    "--max-points",
    default=50_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most points in the scatter plot (a uniform random sample of rows beyond).",
)
@storage_options_option("--storage-options", what="a remote output")
@storage_options_option(
    "--input-storage-options", what="the run's remote input [default: the output's]"
)
def report(
    output: str,
    folder: str | None,
    max_points: int,
    storage_options: dict[str, Any] | None,
    input_storage_options: dict[str, Any] | None,
) -> None:
    """Write PNGs and an HTML page for a complete output: clusters, convergence, sizes, run."""
    from .report import write_report

    page = write_report(
        output,
        folder,
        max_points,
        storage_options=storage_options,
        input_storage_options=input_storage_options,
    )
    click.echo(f"report: {page}")


@cli.command()
@click.argument("output")
@storage_options_option("--storage-options", what="a remote output")
def status(output: str, storage_options: dict[str, Any] | None) -> None:
    """Print the status of an output group (complete, damaged, running, failed); exit 0 only
    if complete (marked so, and every array verified)."""
    import zarr

    from .io.store import check_location, damage, zarr_options

    check_location(output, storage_options, "output")
    try:
        group = zarr.open_group(
            output, mode="r", storage_options=zarr_options(output, storage_options)
        )
        state = str(group.attrs.get("status", "unknown"))
    except Exception:
        state = "missing"
    if state == "complete" and damage(group) is not None:
        state = "damaged"
    click.echo(state)
    if state != "complete":
        sys.exit(1)


OPTION_NAMES = {
    "input_url": "--input",
    "n_clusters": "--clusters",
    "n_dims": "--dims",
    "ca_file": "--tls-ca-file",
    "cert_file": "--tls-cert",
    "key_file": "--tls-key",
    "security": "--tls-ca-file and --tls-cert",
}
"""Library parameter names whose command-line option is not ``--`` + the name."""


def option_name(parameter: str, value: Any) -> str:
    """How the command line names a parameter in an error message (its option; a
    switch that would change the outcome as the flag that sets it)."""
    flag = OPTION_NAMES.get(parameter, "--" + parameter.replace("_", "-"))
    return f"--no-{flag[2:]}" if value is False else flag


class Interrupted(BaseException):
    """SIGINT or SIGTERM asked the command to stop. It unwinds like ``KeyboardInterrupt``
    (an unfinished output is marked failed, keeps its saved state and is resumed by the
    same command), but is not click's to handle."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)


STOPPED_BY = {2: "interrupted", 15: "terminated"}
"""What the one line says for SIGINT and SIGTERM."""


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _ignore_abandoned_coroutines(unraisable: Any) -> None:
    """Drop what a coroutine left unfinished by a sibling's error says when it is collected
    (Zarr reads a store's metadata files together: when one read is refused, the others
    end as "Exception ignored in: <coroutine ...>" tracebacks after the error's one line)."""
    import types

    if not isinstance(unraisable.object, types.CoroutineType):
        sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``meanshift`` console script."""
    import logging
    import signal

    warnings.showwarning = _show_warning
    # tasks cut short by an error or a signal (Dask's, Zarr's reads) would be logged as
    # "Task was destroyed but it is pending" or "Task exception was never retrieved"; a lost
    # scheduler is one line, not the client's reconnection tracebacks (filters: distributed
    # sets its loggers' levels when it is imported)
    for name in ("asyncio", "distributed.client", "distributed.batched"):
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.CRITICAL)
    sys.unraisablehook = _ignore_abandoned_coroutines
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_on_signal)
    try:
        code = cli.main(args=argv, prog_name="meanshift", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("meanshift: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "meanshift"
        click.echo(f"{where}: error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"meanshift: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except PipelineError as exc:
        click.echo(f"meanshift: error: {exc.worded(option_name)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("meanshift: interrupted", err=True)
        sys.exit(130)
    except Interrupted as stopped:
        click.echo(f"meanshift: {STOPPED_BY.get(stopped.signum, 'stopped')}", err=True)
        sys.exit(128 + stopped.signum)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

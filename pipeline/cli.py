"""The ``meanshift`` command: generate data, run a clustering job, run the demo."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from typing import Any

import click

from .errors import PipelineError
from .params import KERNELS, make_params

RULES = {"auto": "knn", "knn": "knn", "scott": "scott", "silverman": "silverman"}


class BandwidthType(click.ParamType):
    """A positive number, or the name of an estimate (auto = knn, scott, silverman)."""

    name = "FLOAT|auto|scott|silverman"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | str | None:
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in RULES:
            return RULES[value.lower()]
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor auto/scott/silverman", param, ctx)
        if not number > 0 or number == float("inf"):
            self.fail(f"{value!r} must be a positive number", param, ctx)
        return number


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
def generate(
    output: str,
    clusters: int,
    per_cluster: int,
    spread: float,
    dims: int,
    seed: int,
    chunk: int | None,
    overwrite: bool,
) -> None:
    """Write the seed notebook's data set: Gaussian blobs, centroids uniform in [-35, 35]^d."""
    from .datasets import write_blobs

    write_blobs(output, clusters, per_cluster, spread, dims, seed, chunk, overwrite)
    click.echo(
        f"wrote {clusters * per_cluster:,} points x {dims} dims to {output} (arrays: points, truth)"
    )


def _run_options(func: Any) -> Any:
    options = [
        click.option(
            "--bandwidth",
            "-b",
            type=BandwidthType(),
            default="auto",
            show_default=True,
            help="Kernel bandwidth, or 'auto' to estimate it from a sample.",
        ),
        click.option("--kernel", type=click.Choice(KERNELS), default="flat", show_default=True),
        click.option(
            "--blurring/--no-blurring",
            default=False,
            show_default=True,
            help="Blurring mean shift (the point set moves) or standard (seeds move).",
        ),
        click.option(
            "--bin-seeding",
            is_flag=True,
            help="Seed from grid bins of side bandwidth (standard mean shift).",
        ),
        click.option("--min-bin-freq", default=1, show_default=True, type=click.IntRange(min=1)),
        click.option(
            "--cluster-all/--no-cluster-all",
            default=True,
            show_default=True,
            help="Without it, points farther than the bandwidth from their centre get label -1.",
        ),
        click.option(
            "--method",
            type=click.Choice(["auto", "exact", "grid", "binned"]),
            default="auto",
            show_default=True,
            help="exact: all pairs; grid: neighbouring cells only; binned: weighted cells first.",
        ),
        click.option(
            "--bin-fraction",
            default=0.25,
            show_default=True,
            type=click.FloatRange(min=0, max=1, min_open=True),
            help="Cell side of the binned method, as a fraction of the bandwidth.",
        ),
        click.option(
            "--label-by",
            type=click.Choice(["nearest", "mode"]),
            default=None,
            help="Join the centre nearest to each point (scikit-learn) or to its mode "
            "[default: mode when blurring, else nearest].",
        ),
        click.option("--max-iter", default=300, show_default=True, type=click.IntRange(min=1)),
        click.option(
            "--tol",
            default=1e-3,
            show_default=True,
            type=click.FloatRange(min=0, max=1, max_open=True),
            help="Stop when shifts are at most tol x bandwidth.",
        ),
        click.option(
            "--backend",
            type=click.Choice(["auto", "numpy", "cupy"]),
            default="auto",
            show_default=True,
        ),
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
            type=click.FloatRange(min=0, min_open=True),
            help="Seconds to wait for --scheduler.",
        ),
        click.option(
            "--n-workers",
            default=None,
            type=click.IntRange(min=1),
            help="Workers of the embedded cluster [default: one per core, at most 8].",
        ),
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
        click.option(
            "--name",
            default=None,
            help="Job name, the prefix of its task names on the dashboard [default: output name].",
        ),
        click.option(
            "--quiet", "-q", is_flag=True, help="No progress bar or summary; errors only."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _execute(
    input_url: str,
    output: str,
    array: str,
    overwrite: bool,
    modes: bool,
    quiet: bool,
    scheduler: str | None,
    n_workers: int | None,
    connect_timeout: float = 30.0,
    tls_ca_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    name: str | None = None,
    **values: Any,
):
    from .cluster import tls_security
    from .job import run_job

    if isinstance(values.get("bandwidth"), str):
        values["bandwidth_rule"] = values.pop("bandwidth")
    params = make_params(**values)
    bar = None
    progress = None
    if not quiet:
        from tqdm import tqdm

        def progress(iteration: int, shift: float, moving: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(
                    total=params.max_iter,
                    desc="blurring",
                    unit="it",
                    file=sys.stderr,
                    leave=False,
                    disable=None,
                )
            bar.update(1)
            bar.set_postfix(max_shift=f"{shift:.3g}", moving=moving)

    security = tls_security(tls_ca_file, tls_cert, tls_key)

    def announce(client: Any) -> None:
        if not quiet:
            click.echo(f"dashboard: {client.dashboard_link}")

    try:
        report = run_job(
            input_url,
            output,
            params,
            array=array,
            scheduler=scheduler,
            n_workers=n_workers,
            overwrite=overwrite,
            write_modes=modes,
            progress=progress,
            dashboard=not quiet,
            on_cluster_ready=announce,
            connect_timeout=connect_timeout,
            name=name,
            security=security,
        )
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        click.echo(format_summary(report, params))
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
    lines.append(f"output: {report.output}")
    return "\n".join(lines)


@cli.command()
@click.option(
    "--input", "-i", "input_url", required=True, help="Zarr group (or array) holding the points."
)
@click.option("--output", "-o", required=True, help="Zarr group to write the clusters to.")
@click.option(
    "--array",
    default="points",
    show_default=True,
    help="Array of the input group holding the (n, d) points.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--modes", is_flag=True, help="Also write where every point converged.")
@_run_options
def run(
    input_url: str, output: str, array: str, overwrite: bool, modes: bool, **options: Any
) -> None:
    """Cluster an (n, d) Zarr point set and write labels, centres and sizes to a Zarr group."""
    _execute(input_url, output, array, overwrite, modes, **options)


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
    default="meanshift-demo.png",
    show_default=True,
    help="Where to save the picture.",
)
@click.option("--n-workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--quiet", "-q", is_flag=True)
def demo(output_dir: str | None, plot_path: str, n_workers: int, seed: int, quiet: bool) -> None:
    """Run the seed notebook end to end on an embedded Dask cluster and plot the clusters.

    6 Gaussian blobs of 250 points (d=2, variance 5), Gaussian kernel, bandwidth 2.5,
    blurring mean shift.
    """
    from .datasets import write_blobs
    from .store import open_result

    with tempfile.TemporaryDirectory(prefix="meanshift-demo-") as scratch:
        folder = output_dir or scratch
        os.makedirs(folder, exist_ok=True)
        data = os.path.join(folder, "seed-data.zarr")
        out = os.path.join(folder, "seed-clusters.zarr")
        write_blobs(data, 6, 250, 5.0, 2, seed, overwrite=True)
        if not quiet:
            click.echo(f"generated 1,500 points (6 blobs) in {data}")
        report = _execute(
            data,
            out,
            "points",
            True,
            True,
            quiet,
            None,
            n_workers,
            name="seed_demo",
            bandwidth=2.5,
            kernel="gaussian",
            blurring=True,
        )
        import numpy as np
        import zarr

        from .plot import plot_clusters

        result = open_result(out)
        points = np.asarray(zarr.open_group(data, mode="r")["points"][...])
        path = (
            plot_path
            if output_dir is None or os.path.isabs(plot_path)
            else os.path.join(folder, plot_path)
        )
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
def status(output: str) -> None:
    """Print the status of an output group (complete, running, failed); exit 0 only if complete."""
    import zarr

    try:
        state = str(zarr.open_group(output, mode="r").attrs.get("status", "unknown"))
    except Exception:
        state = "missing"
    click.echo(state)
    if state != "complete":
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``meanshift`` console script."""
    warnings.showwarning = _show_warning
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
        click.echo(f"meanshift: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("meanshift: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

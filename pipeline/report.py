"""A finished run at a glance: PNGs and one HTML page (``meanshift report OUT.zarr``).

The page shows the points coloured by cluster with the centres (the first two
coordinates for d = 2, the first two principal components of the sample for d > 2),
the largest shift per blurring iteration, the cluster sizes, and the run's parameters,
timings and package versions. Point sets larger than ``max_points`` are drawn from a
uniform random sample of rows (reading the chunks that hold them).
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np

from .errors import InputDataError, OutputError, first_line
from .io.output import complete_result, current_input, inspect
from .io.store import StorageOptions, check_location, is_local, local_path
from .plot import draw_clusters, pyplot, save_figure

DEFAULT_MAX_POINTS = 50_000


def default_report_folder(output_url: str) -> str:
    """``clusters.zarr`` -> ``clusters-report`` beside it (a ``file://`` URL's path); for an
    output elsewhere (``s3://...``), in the current folder."""
    base = local_path(output_url).rstrip("/")
    if not is_local(output_url):
        base = base.rsplit("/", 1)[-1]
    return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + "-report"


def sample_rows(n: int, max_points: int, random_state: int) -> np.ndarray:
    """Sorted row indices: all rows, or a uniform random sample of ``max_points``."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(random_state).choice(n, max_points, replace=False))


def principal_plane(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, the two leading principal axes (2, d) and their explained variance fractions."""
    mean = sample.mean(axis=0)
    _, singular, axes = np.linalg.svd(sample - mean, full_matrices=False)
    variance = singular**2
    return mean, axes[:2], variance[:2] / max(variance.sum(), 1e-300)


def write_report(
    output_url: str,
    folder: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    random_state: int = 0,
    *,
    storage_options: StorageOptions | None = None,
    input_storage_options: StorageOptions | None = None,
) -> str:
    """Write ``clusters.png``, ``convergence.png``, ``sizes.png`` and ``index.html``.

    Parameters
    ----------
    output_url : str
        A complete meanshift output group.
    folder : str, optional
        Where to write (default: ``<output>-report`` beside the output).
    max_points : int
        Most points drawn in the scatter plot.
    random_state : int
        Seed of the point sample.
    storage_options : dict, optional
        fsspec options of a remote output.
    input_storage_options : dict, optional
        fsspec options of the run's remote input (default: ``storage_options``).

    Returns
    -------
    str
        Path of ``index.html``.
    """
    plt = pyplot()
    check_location(output_url, storage_options, "output")
    state = inspect(output_url, storage_options)
    result = complete_result(state, storage_options)
    attrs = state.attributes
    input_options = storage_options if input_storage_options is None else input_storage_options
    source = current_input(state, input_options)  # the points those labels are of
    folder = _make_report_folder(folder or default_report_folder(output_url))
    centers = np.asarray(result["centers"][...])
    sizes = np.asarray(result["sizes"][...])
    labels_array = result["labels"]
    n = labels_array.shape[0]
    rows = sample_rows(n, max_points, random_state)
    labels = np.asarray(labels_array.get_orthogonal_selection((rows,)))
    points = _input_rows(source, rows)
    d = points.shape[1]
    shown = f"{len(rows):,} of {n:,} points" + (" (random sample)" if len(rows) < n else "")
    k = max(len(centers), 1)
    colours = plt.cm.tab10(np.arange(k) % 10)  # cluster i and i + 10 share a colour
    _plot_clusters(plt, folder, points, labels, centers, colours, shown)
    _plot_convergence(plt, folder, attrs)
    _plot_sizes(plt, folder, sizes, colours, n)

    page = os.path.join(folder, "index.html")
    try:
        with open(page, "w") as handle:
            handle.write(_html(output_url, attrs, centers, sizes, n, d, shown))
    except OSError as exc:
        raise OutputError(f"cannot write {page}: {exc.strerror or exc}") from None
    return page


def _make_report_folder(folder: str) -> str:
    """Create the report folder if need be; the folder."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the report to {folder}: {exc.strerror or exc}") from None
    return folder


def _plot_plane(
    points: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Points and centres in the plotted plane, and the names of its two axes."""
    d = points.shape[1]
    if d > 2:
        mean, axes, explained = principal_plane(points)
        xy, cxy = (points - mean) @ axes.T, (centers - mean) @ axes.T
        axis_names = [f"PC{i + 1} ({explained[i]:.0%} of variance)" for i in range(2)]
    elif d == 2:
        xy, cxy, axis_names = points, centers, ["x0", "x1"]
    else:
        xy = np.column_stack([points[:, 0], np.zeros(len(points))])
        cxy = np.column_stack([centers[:, 0], np.zeros(len(centers))])
        axis_names = ["x0", ""]
    return xy, cxy, axis_names


def _plot_clusters(
    plt: Any,
    folder: str,
    points: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    colours: np.ndarray,
    shown: str,
) -> None:
    """Write ``clusters.png``: the (sampled) points coloured by cluster, centres marked."""
    xy, cxy, axis_names = _plot_plane(points, centers)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    draw_clusters(ax, xy, labels, cxy, colours, outlier_label="outliers (-1)")
    if (labels < 0).any():
        ax.legend(loc="best")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"{len(centers)} clusters; {shown}")
    if points.shape[1] >= 2:
        ax.set_aspect("equal", adjustable="datalim")
    save_figure(fig, os.path.join(folder, "clusters.png"))


def _plot_convergence(plt: Any, folder: str, attrs: dict[str, Any]) -> None:
    """Write ``convergence.png``: largest shift per blurring iteration, or a standard run's note."""
    shifts = attrs.get("max_shift_per_iteration") or []
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if shifts:
        ax.semilogy(np.arange(1, len(shifts) + 1), np.maximum(shifts, 1e-300), "o-")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("iteration")
        ax.set_ylabel("largest shift (data units)")
        ax.set_title(f"blurring mean shift: {attrs.get('stop_reason', '')}", fontsize=9)
    else:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"standard mean shift: seeds converged independently\n"
            f"most iterations of any seed: {attrs.get('n_iter')}\n"
            f"{attrs.get('stop_reason', '')}",
            ha="center",
            va="center",
        )
    save_figure(fig, os.path.join(folder, "convergence.png"))


def _plot_sizes(plt: Any, folder: str, sizes: np.ndarray, colours: np.ndarray, n: int) -> None:
    """Write ``sizes.png``: a bar per cluster (the 50 largest at most)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    top = min(len(sizes), 50)
    ax.bar(np.arange(top), sizes[:top], color=colours[:top])
    ax.set_xlabel("cluster" + (f" (largest {top} of {len(sizes)})" if top < len(sizes) else ""))
    ax.set_ylabel("points")
    ax.set_title(f"cluster sizes ({int(sizes.sum()):,} points in clusters, {n:,} in all)")
    save_figure(fig, os.path.join(folder, "sizes.png"))


def _input_rows(source: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of the run's input (:class:`.io.store.InputInfo`) as float64.

    Raises
    ------
    InputDataError
        They cannot be read (a corrupt chunk, a vanished file).
    """
    try:
        selection = source.array.get_orthogonal_selection((rows, slice(None)))
        return np.asarray(selection, dtype=np.float64)
    except Exception as exc:
        raise InputDataError(
            f"cannot read the run's input {source.url} (array {source.name}): {first_line(exc)}"
        ) from None


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in rows
    )
    return f"<table>{cells}</table>"


def _summary_rows(output_url: str, attrs: dict[str, Any], n: int, d: int, k: int) -> list:
    """The report's summary table: output, input, job, clusters, bandwidth, method, ..."""
    job = attrs.get("job") or {}
    bandwidth = f"{attrs.get('bandwidth'):.6g}"
    if attrs.get("bandwidth_estimated"):
        bandwidth += " (estimated)"
    method = attrs.get("method")
    if attrs.get("n_cells"):
        method += f" ({attrs['n_cells']:,} weighted cells)"
    return [
        ("output", output_url),
        ("input", f"{(attrs.get('input') or {}).get('url')} ({n:,} points x {d} dims)"),
        ("job", f"{job.get('name', '')} {job.get('run_id') or ''}".strip()),
        ("clusters", k),
        ("bandwidth", bandwidth),
        ("method", method),
        ("iterations", f"{attrs.get('n_iter')} ({attrs.get('stop_reason')})"),
        ("finished", attrs.get("finished_at")),
    ]


def _html(
    output_url: str,
    attrs: dict[str, Any],
    centers: np.ndarray,
    sizes: np.ndarray,
    n: int,
    d: int,
    shown: str,
) -> str:
    timings = attrs.get("timings") or {}
    summary = _summary_rows(output_url, attrs, n, d, len(sizes))
    shown_centres = [
        (
            f"cluster {i}",
            f"{int(sizes[i]):,} points at ({', '.join(f'{c:.4g}' for c in row[:8])}"
            + (", ...)" if d > 8 else ")"),
        )
        for i, row in enumerate(centers[:20])
    ]
    params = sorted((attrs.get("parameters") or {}).items())
    times = [(stage, f"{seconds:.3f} s") for stage, seconds in timings.items()]
    versions = sorted((attrs.get("versions") or {}).items())
    title = html.escape(f"meanshift report: {os.path.basename(output_url.rstrip('/'))}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 2px 12px 2px 0; vertical-align: top; }}
th {{ font-weight: normal; color: #555; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
</style></head><body>
<h1>{title}</h1>
{_table(summary)}
<h2>Clusters</h2>
<p>{html.escape(shown)}{"; first two principal components" if d > 2 else ""}.</p>
<img src="clusters.png" alt="points coloured by cluster, centres marked">
{_table(shown_centres)}
<h2>Convergence</h2>
<img src="convergence.png" alt="largest shift per iteration">
<h2>Sizes</h2>
<img src="sizes.png" alt="cluster sizes">
<h2>Parameters</h2>
{_table(params)}
<h2>Timings</h2>
{_table(times)}
<h2>Versions</h2>
{_table(versions)}
</body></html>
"""

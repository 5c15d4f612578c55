"""Pictures of a clustering: points coloured by cluster, centres marked (matplotlib)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import OutputError, PipelineError

MAX_PLOTTED_POINTS = 200_000
"""Larger point sets are drawn from a uniform random subsample of this size."""


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend.

    Raises
    ------
    PipelineError
        matplotlib is not installed (``pip install 'meanshift-pipeline[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PipelineError(
            "plotting needs matplotlib: pip install 'meanshift-pipeline[plot]'"
        ) from None
    return plt


def draw_clusters(
    ax: Any,
    xy: np.ndarray,
    labels: np.ndarray,
    centers_xy: np.ndarray,
    colours: np.ndarray,
    outlier_label: str = "outliers",
) -> None:
    """Points coloured by cluster (outliers, label -1, in grey) and centres as X."""
    k = max(len(colours), 1)
    outliers = labels < 0
    if outliers.any():
        ax.scatter(xy[outliers, 0], xy[outliers, 1], c="0.7", s=2, label=outlier_label)
    ax.scatter(xy[~outliers, 0], xy[~outliers, 1], c=colours[labels[~outliers] % k], s=2)
    for colour, size, width in (("k", 10, 5), ("m", 5, 2)):
        ax.plot(
            centers_xy[:, 0],
            centers_xy[:, 1],
            "x",
            color=colour,
            markersize=size,
            mew=width,
            linestyle="none",
        )


def save_figure(fig: Any, path: str) -> str:
    """Lay out, save and close a figure; returns ``path``.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    plt = pyplot()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise OutputError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


def plot_clusters(
    points: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    path: str,
    title: str = "",
    random_state: int = 0,
) -> str:
    """Save a scatter plot of the first two coordinates, coloured by cluster, centres as X.

    Outliers (label -1) are grey. Returns ``path``.

    Raises
    ------
    PipelineError
        matplotlib is not installed (``pip install 'meanshift-pipeline[plot]'``).
    """
    plt = pyplot()
    if len(points) > MAX_PLOTTED_POINTS:
        keep = np.random.default_rng(random_state).choice(len(points), MAX_PLOTTED_POINTS, False)
        points, labels = points[keep], labels[keep]
    xy = (
        points[:, :2]
        if points.shape[1] > 1
        else np.column_stack([points[:, 0], np.zeros(len(points))])
    )
    cxy = (
        centers[:, :2]
        if centers.shape[1] > 1
        else np.column_stack([centers[:, 0], np.zeros(len(centers))])
    )
    colours = plt.cm.rainbow(np.linspace(0, 1, max(len(centers), 1)))
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    draw_clusters(ax, xy, labels, cxy, colours)
    ax.set_title(title or f"{len(centers)} clusters")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    return save_figure(fig, path)

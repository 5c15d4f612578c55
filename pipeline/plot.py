"""Pictures of a clustering: points coloured by cluster, centres marked (matplotlib)."""

from __future__ import annotations

import numpy as np

from .errors import OutputError, PipelineError

MAX_PLOTTED_POINTS = 200_000
"""Larger point sets are drawn from a uniform random subsample of this size."""


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PipelineError(
            "plotting needs matplotlib: pip install 'meanshift-pipeline[plot]'"
        ) from None
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
    k = max(len(centers), 1)
    colours = plt.cm.rainbow(np.linspace(0, 1, k))
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    outliers = labels < 0
    if outliers.any():
        ax.scatter(xy[outliers, 0], xy[outliers, 1], c="0.7", s=2, label="outliers")
    ax.scatter(xy[~outliers, 0], xy[~outliers, 1], c=colours[labels[~outliers] % k], s=2)
    ax.plot(cxy[:, 0], cxy[:, 1], "x", color="k", markersize=10, mew=5, linestyle="none")
    ax.plot(cxy[:, 0], cxy[:, 1], "x", color="m", markersize=5, mew=2, linestyle="none")
    ax.set_title(title or f"{len(centers)} clusters")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise OutputError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path

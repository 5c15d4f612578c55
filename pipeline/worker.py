"""Dask worker preload: import the engine and load the compiled kernels at worker start.

Embedded clusters use it automatically. For workers of a standing cluster::

    dask worker tcp://scheduler:8786 --preload pipeline.worker

so that the first task of every job does not pay for imports and kernel loading.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def warm_up() -> None:
    """Import the task code and load (or compile) the numba kernels once."""
    from . import compiled, engine  # noqa: F401

    if compiled.AVAILABLE:
        points = np.zeros((4, 2))
        for kernel in ("gaussian", "epanechnikov"):
            compiled.shift_offsets(points, compiled.pack_points(points, None, kernel))


def dask_setup(worker: Any = None) -> None:
    """Entry point Dask calls for a ``--preload`` module."""
    warm_up()

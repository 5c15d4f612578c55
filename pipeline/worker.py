"""Dask worker preload: import the engine and load the compiled kernels at worker start.

The job runner warms itself up the same way while its cluster starts (the binned
method's cell mean shift runs in the runner's process).

Embedded clusters use it automatically. For workers of a standing cluster::

    dask worker tcp://scheduler:8786 --preload pipeline.worker

so that the first task of every job does not pay for imports and kernel loading.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np


def warm_up() -> None:
    """Import the task code and Zarr, load (or compile) the numba kernels, run a binning step."""
    import zarr  # noqa: F401  (tasks read the input with it; the import alone takes ~0.3 s)

    from .engine.binned import bin_chunk
    from .kernels import KERNELS, compiled

    if compiled.AVAILABLE:
        points = np.zeros((4, 2))
        for kernel in KERNELS:
            compiled.shift_offsets(points, compiled.pack_points(points, None, kernel))
    bin_chunk(np.arange(8.0).reshape(4, 2), None, 1.0)


def warm_up_gpu() -> None:
    """Compile the GPU kernels of the common cases once: d = 2, each kernel, weighted
    (the binned method's cells) or not, the fused and the grid kernel.

    CuPy keeps compiled kernels on disk too, so later processes only load them.
    Never fails: a worker without a usable GPU just starts without them.
    """
    try:
        import cupy

        from .kernels import KERNELS, gpu, shift_points

        points = cupy.zeros((4, 2))
        for kernel in KERNELS:
            shift_points(points, points, None, kernel, cupy, 2**20)  # fused + finish
            for weighted in (False, True):
                gpu.compile_kernels(2, kernel, weighted)
    except Exception:  # pragma: no cover - depends on the device
        pass


def _has_gpu_resource(worker: Any) -> bool:
    resources = getattr(worker, "total_resources", None)
    if resources is None:
        resources = getattr(getattr(worker, "state", None), "total_resources", None) or {}
    return bool(resources.get("GPU"))


UNCLOSED_SESSION_NOTES = ("Unclosed client session", "Unclosed connector")
"""What aiohttp says when a worker process ends with an object store's HTTP session open
(s3fs, gcsfs keep one per filesystem for the worker's life): noise on the user's terminal."""


def _not_an_unclosed_session(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(UNCLOSED_SESSION_NOTES)


def dask_setup(worker: Any = None) -> None:
    """Entry point Dask calls for a ``--preload`` module (GPU workers also compile the
    GPU kernels: workers that advertise the ``GPU`` resource, e.g. local-cuda's)."""
    logging.getLogger("asyncio").addFilter(_not_an_unclosed_session)
    warm_up()
    if worker is not None and _has_gpu_resource(worker):
        warm_up_gpu()

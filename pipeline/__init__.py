"""meanshift-pipeline: distributed mean shift clustering of Zarr point sets on Dask.

The same engine serves three doors: the estimator :class:`MeanShift`, the
``meanshift`` command line, and the workflow runner.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["MeanShift", "MeanShiftParams", "estimate_bandwidth", "mean_shift", "run_job"]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `meanshift --help` fast and CuPy untouched.
    if name == "MeanShift":
        from .estimator import MeanShift

        return MeanShift
    if name == "MeanShiftParams":
        from .params import MeanShiftParams

        return MeanShiftParams
    if name == "estimate_bandwidth":
        from .bandwidth import estimate_bandwidth

        return estimate_bandwidth
    if name == "mean_shift":
        from .engine import mean_shift

        return mean_shift
    if name == "run_job":
        from .job import run_job

        return run_job
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

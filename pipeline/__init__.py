"""meanshift-pipeline: distributed mean shift clustering of Zarr point sets on Dask.

The same engine serves three doors: the estimator :class:`MeanShift`, the
``meanshift`` command line, and the workflow runner.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

try:
    __version__ = importlib.metadata.version("meanshift-pipeline")  # pyproject.toml's
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "unknown"
__all__ = [
    "MeanShift",
    "MeanShiftParams",
    "estimate_bandwidth",
    "load_spec",
    "mean_shift",
    "run_job",
    "run_spec",
]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `meanshift --help` fast and CuPy untouched.
    if name == "MeanShift":
        from .estimator import MeanShift

        return MeanShift
    if name == "MeanShiftParams":
        from .params import MeanShiftParams

        return MeanShiftParams
    if name == "estimate_bandwidth":
        from .engine.bandwidth import estimate_bandwidth

        return estimate_bandwidth
    if name == "mean_shift":
        from .engine import mean_shift

        return mean_shift
    if name == "run_job":
        from .jobs.job import run_job

        return run_job
    if name == "load_spec":
        from .jobs.spec import load_spec

        return load_spec
    if name == "run_spec":
        from .jobs.workflow import run_spec

        return run_spec
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

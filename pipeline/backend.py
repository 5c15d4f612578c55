"""The one place that decides the array module: NumPy on CPUs, CuPy on GPUs.

CuPy is imported only when the ``cupy`` backend is asked for, or when ``auto``
looks for a GPU and CuPy is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import ParameterError


def gpu_available() -> bool:
    """Return True when CuPy is installed and sees at least one CUDA device."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # no driver, no device, broken install: all mean "no GPU"
        return False


def gpu_workers() -> bool:
    """Whether the default ``distributed`` client has a worker advertising the ``GPU``
    resource (False without a client)."""
    if "distributed" not in sys.modules:  # never imported: no client can exist
        return False
    try:
        from distributed import default_client

        workers = default_client().scheduler_info()["workers"].values()
    except (ImportError, ValueError, KeyError):  # no distributed client
        return False
    return any((w.get("resources") or {}).get(GPU_RESOURCE) for w in workers)


def resolve_backend(name: str, *, here: bool = False) -> Literal["numpy", "cupy"]:
    """Turn ``auto``/``numpy``/``cupy`` into the backend actually used.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}
        ``auto`` picks CuPy when a CUDA device is usable, NumPy otherwise.
    here : bool
        The work runs in this process (NumPy input): only this process's GPU counts.
        Otherwise (Dask work) workers advertising the ``GPU`` resource count too, so a
        client without a GPU (a login node) can run jobs on a GPU cluster.
    """
    if name == "numpy":
        return "numpy"
    if name not in ("auto", "cupy"):
        raise ParameterError(f"unknown backend {name!r}: use auto, numpy or cupy")
    usable = gpu_available() or (not here and gpu_workers())
    if name == "cupy" and not usable:
        where = "" if here else " and no Dask worker advertises the GPU resource"
        raise ParameterError(f"backend 'cupy' was asked for but no CUDA device is usable{where}")
    return "cupy" if usable else "numpy"


def check_usable_here(backend: str) -> None:
    """Refuse the ``cupy`` backend for work on this machine when it has no usable GPU.

    Raises
    ------
    ParameterError
    """
    if backend == "cupy" and not gpu_available():
        raise ParameterError("backend 'cupy' was asked for but no CUDA device is usable")


def runs_here(backend: str) -> bool:
    """Whether this process can run work of a resolved ``backend`` itself."""
    return backend == "numpy" or gpu_available()


def get_namespace(backend: str) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) for a resolved backend name."""
    if backend == "cupy":
        import cupy

        return cupy
    return np


def namespace_of(array: Any) -> ModuleType:
    """Return the array module an array belongs to, without importing CuPy for NumPy input."""
    if type(array).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(array: Any) -> np.ndarray:
    """Return a NumPy copy (or view) of a NumPy or CuPy array."""
    if isinstance(array, np.ndarray):
        return array
    get = getattr(array, "get", None)
    if get is not None:
        return get()
    return np.asarray(array)


GPU_RESOURCE = "GPU"
"""The Dask worker resource GPU workers advertise (``--resources GPU=1``; local-cuda does)."""


def task_resources(backend: str) -> contextlib.AbstractContextManager:
    """Annotate the Dask tasks built inside: GPU runs ask for a ``GPU`` worker.

    For the (resolved) ``cupy`` backend, when the default ``distributed`` client has at
    least one worker advertising the ``GPU`` resource, tasks built inside get
    ``resources={"GPU": 1}``: on a cluster mixing CPU and GPU workers they run on GPU
    workers only, so results of different precision never mix. Otherwise (NumPy runs,
    no client, no worker advertising GPUs: nothing could run such tasks) it changes
    nothing.
    """
    if backend != "cupy" or not gpu_workers():
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={GPU_RESOURCE: 1})

"""The one place that decides the array module: NumPy on CPUs, CuPy on GPUs.

CuPy is imported only when the ``cupy`` backend is asked for, or when ``auto``
looks for a GPU and CuPy is installed.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import ParameterError

BackendName = Literal["auto", "numpy", "cupy"]


def gpu_available() -> bool:
    """Return True when CuPy is installed and sees at least one CUDA device."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # no driver, no device, broken install: all mean "no GPU"
        return False


def resolve_backend(name: str) -> Literal["numpy", "cupy"]:
    """Turn ``auto``/``numpy``/``cupy`` into the backend actually used.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}
        ``auto`` picks CuPy when a CUDA device is usable, NumPy otherwise.
    """
    if name == "numpy":
        return "numpy"
    if name == "cupy":
        if not gpu_available():
            raise ParameterError("backend 'cupy' was asked for but no CUDA device is usable")
        return "cupy"
    if name == "auto":
        return "cupy" if gpu_available() else "numpy"
    raise ParameterError(f"unknown backend {name!r}: use auto, numpy or cupy")


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

"""Run pipeline.kernels.gpu's generated CUDA sources on the CPU, to test them without a GPU.

Each kernel source is compiled unchanged by the host C++ compiler with a few shims
(``__shared__`` becomes a static shared by the block's threads, ``__syncthreads`` a
barrier); one block runs at a time, one ``std::thread`` per CUDA thread. ``fake_cupy()``
is a module named ``cupy`` backed by NumPy whose ``RawKernel`` and ``ElementwiseKernel``
run that way, so the whole Python side of :mod:`pipeline.kernels.gpu` (splits, launches, the
finishing kernel, the underflow redo, the GEMM route) runs too.

Floating point differs from a GPU's only where the CUDA compiler contracts
``a * b + c`` into fused multiply-adds (this build does not) and in ``ex2.approx``
(emulated by ``exp2f`` with flush to zero).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import types
from typing import Any

import numpy as np

SHIMS = r"""#include <math.h>
#include <barrier>
#include <thread>
#include <vector>
struct ms_dim3 { unsigned x, y, z; };
static thread_local ms_dim3 threadIdx;
static ms_dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* ms_barrier;
#define __global__
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() ms_barrier->arrive_and_wait()
"""

LAUNCHER = r"""
extern "C" int ms_launch(unsigned gx, unsigned gy, unsigned bx, void** a) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, 0};
            std::barrier<> bar(bx);
            ms_barrier = &bar;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < bx; ++t) {
                threads.emplace_back([=] { threadIdx = {t, 0, 0}; NAME(ARGS); });
            }
            for (auto& thread : threads) thread.join();
        }
    }
    return 0;
}
"""

_CACHE = os.path.join(tempfile.gettempdir(), "meanshift-gpu-emulation")

_LAUNCH_LOCK = threading.Lock()
"""One launch at a time: a block's shared memory and barrier are statics of the library."""


def compiler_available() -> bool:
    """Whether a C++20 compiler (``g++``) is on the PATH."""
    return shutil.which("g++") is not None


FLAGS = ["-O2", "-std=c++20", "-fPIC", "-pthread", "-ffp-contract=off"]

HEADERS = "#include <math.h>\n#include <barrier>\n#include <thread>\n#include <vector>\n"
"""The standard headers the shims need: precompiled once (most of a build's time)."""


def _precompiled_headers() -> str | None:
    """A header holding ``HEADERS``, precompiled with ``FLAGS`` (None if that fails)."""
    digest = hashlib.sha256((HEADERS + " ".join(FLAGS)).encode()).hexdigest()[:16]
    header = os.path.join(_CACHE, f"h{digest}.h")
    if not os.path.exists(header + ".gch"):
        partial = f"{header}.{os.getpid()}.{threading.get_ident()}"
        with open(partial, "w") as handle:
            handle.write(HEADERS)
        os.replace(partial, header)
        done = subprocess.run(
            ["g++", *FLAGS, "-x", "c++-header", header, "-o", f"{partial}.gch"],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return None
        os.replace(f"{partial}.gch", header + ".gch")
    return header


def _build(code: str) -> ctypes.CDLL:
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    os.makedirs(_CACHE, exist_ok=True)
    library = os.path.join(_CACHE, f"k{digest}.so")
    if not os.path.exists(library):
        source = os.path.join(_CACHE, f"k{digest}.cpp")
        with open(source, "w") as handle:
            handle.write(code)
        partial = f"{library}.{os.getpid()}"
        header = _precompiled_headers() if code.startswith(HEADERS) else None
        include = ["-include", header] if header else []  # (g++ skips a stale .gch)
        subprocess.run(
            ["g++", *FLAGS, "-shared", *include, source, "-o", partial],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(partial, library)
    return ctypes.CDLL(library)


def _parameters(source: str, name: str) -> list[str]:
    match = re.search(re.escape(name) + r"\((.*?)\)\s*\{", source, re.S)
    assert match, f"no kernel {name} in the source"
    return [" ".join(p.replace("__restrict__", "").split()) for p in match.group(1).split(",")]


def _ctype(declared: str, value: Any) -> Any:
    if "*" in declared:
        return ctypes.c_void_p(value.ctypes.data)
    base = declared.replace("const", "").strip()
    kind = {"long long": ctypes.c_longlong, "int": ctypes.c_int, "double": ctypes.c_double}
    return kind[base](value.item() if hasattr(value, "item") else value)


class RawKernel:
    """``cupy.RawKernel`` run on the CPU (arrays are NumPy arrays)."""

    def __init__(self, code: str, name: str, options: tuple = (), **_: Any) -> None:
        self.code, self.name, self.options = code, name, options
        self.parameters = _parameters(code, name)
        declared = [p.rsplit(" ", 1)[0] for p in self.parameters]
        args = ", ".join(f"*({t}*)a[{k}]" for k, t in enumerate(declared))
        launcher = LAUNCHER.replace("NAME", name).replace("ARGS", args)
        self.library = _build(SHIMS + code + launcher)

    def __call__(self, grid: tuple, block: tuple, args: tuple, **_: Any) -> None:
        assert len(args) == len(self.parameters), (self.name, len(args), self.parameters)
        held = []
        for declared, value in zip(self.parameters, args, strict=True):
            if "*" in declared:
                assert isinstance(value, np.ndarray) and value.flags.c_contiguous, declared
                base = " ".join(declared.replace("const", "").replace("*", "").split()[:-1])
                want = {"float": np.float32, "double": np.float64, "long long": np.int64}[base]
                assert value.dtype == want, (self.name, declared, value.dtype)
            held.append(_ctype(declared.rsplit(" ", 1)[0], value))
        pointers = (ctypes.c_void_p * len(held))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in held]
        )
        grid = tuple(grid) + (1,) * (2 - len(grid))
        with _LAUNCH_LOCK:
            self._launch(grid, block, pointers)

    def _launch(self, grid: tuple, block: tuple, pointers: Any) -> None:
        self.library.ms_launch(
            ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]), pointers
        )


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` (float32 arguments, one output) run on the CPU."""

    def __init__(
        self,
        in_params: str,
        out_params: str,
        operation: str,
        name: str,
        preamble: str = "",
        **_: Any,
    ) -> None:
        self.inputs = [p.split()[1] for p in in_params.split(",")]
        self.output = out_params.split()[1]
        assert all(p.split()[0] == "float32" for p in in_params.split(","))
        unpack = " ".join(f"float {v} = {v}_[i];" for v in self.inputs)
        params = ", ".join(f"const float* {v}_" for v in self.inputs)
        code = (
            "#include <math.h>\n"
            + preamble
            + f'\nextern "C" void ms_elementwise({params}, float* out_, long long n) {{\n'
            f"  for (long long i = 0; i < n; ++i) {{ {unpack} float {self.output}; "
            f"{operation} out_[i] = {self.output}; }}\n}}\n"
        )
        self.library = _build(code)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        inputs = arrays[: len(self.inputs)]
        if len(arrays) > len(self.inputs):
            out = arrays[len(self.inputs)]
        else:  # CuPy allocates the output: the inputs' broadcast shape
            out = np.empty(np.broadcast_shapes(*(np.shape(a) for a in inputs)), np.float32)
        shaped = [np.ascontiguousarray(np.broadcast_to(a, out.shape), np.float32) for a in inputs]
        result = np.empty(out.shape, np.float32)
        pointers = [ctypes.c_void_p(a.ctypes.data) for a in shaped]
        self.library.ms_elementwise(
            *pointers, ctypes.c_void_p(result.ctypes.data), ctypes.c_longlong(result.size)
        )
        out[...] = result
        return out


def fake_cupy() -> types.ModuleType:
    """A module named ``cupy``: NumPy's functions, and kernels that run on the CPU."""
    module = types.ModuleType("cupy")

    def __getattr__(name: str) -> Any:
        return getattr(np, name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    module.RawKernel = RawKernel  # type: ignore[attr-defined]
    module.ElementwiseKernel = ElementwiseKernel  # type: ignore[attr-defined]
    module.asnumpy = np.asarray  # type: ignore[attr-defined]
    module.ndarray = np.ndarray  # type: ignore[attr-defined]
    module.__version__ = "emulated"  # type: ignore[attr-defined]
    module.cuda = _fake_cuda()  # type: ignore[attr-defined]
    return module


def _fake_cuda() -> types.SimpleNamespace:
    """The little of ``cupy.cuda`` the benchmark uses: synchronise, events, device facts."""
    import time

    class Device:
        def synchronize(self) -> None:
            pass

    class Event:
        def record(self) -> None:
            self.at = time.perf_counter()

        def synchronize(self) -> None:
            pass

    def get_elapsed_time(start: Event, stop: Event) -> float:
        return (stop.at - start.at) * 1e3

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda index: {"name": b"CPU emulation"},
        runtimeGetVersion=lambda: 0,
        driverGetVersion=lambda: 0,
    )
    return types.SimpleNamespace(
        Device=Device, Event=Event, get_elapsed_time=get_elapsed_time, runtime=runtime
    )

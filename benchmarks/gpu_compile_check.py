"""Compile the generated CUDA sources of pipeline.kernels.gpu with NVRTC, no GPU needed.

    python benchmarks/gpu_compile_check.py [--arch compute_90] [--ptxas]

Needs NVRTC's Python binding from CuPy (``pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12``
in any environment; no driver or device is used) and, with ``--ptxas``, CUDA's ``ptxas`` on
the PATH to report registers and spills for sm_90. A check to run by hand, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.kernels import gpu  # noqa: E402  (the sources are plain strings: no CuPy import)


def nvrtc_ptx(source: str, arch: str) -> bytes:
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(source, "meanshift.cu", [], [])
    options = [f"-arch={arch}", *gpu.COMPILE_OPTIONS]
    try:
        nvrtc.compileProgram(program, options)
    except Exception as exc:
        raise RuntimeError(f"{exc}\n{nvrtc.getProgramLog(program)}") from None
    return nvrtc.getPTX(program)


def ptxas_report(ptx: bytes, arch: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "k.ptx")
        with open(path, "wb") as handle:
            handle.write(ptx.rstrip(b"\0"))
        result = subprocess.run(
            ["ptxas", "-v", f"-arch={arch}", path, "-o", os.path.join(folder, "k.cubin")],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(result.stderr)
        lines = [line for line in result.stderr.splitlines() if "Used" in line or "spill" in line]
        return " | ".join(line.split("info    : ")[-1] for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="compute_90")
    parser.add_argument("--ptxas", action="store_true", help="report registers and spills")
    args = parser.parse_args()
    use_ptxas = args.ptxas and shutil.which("ptxas") is not None
    sm = args.arch.replace("compute_", "sm_")
    failures = 0
    sources = []
    for d in (1, 2, 3, 4, 5, 8, 16):
        for kernel in gpu.GPU_KERNELS:
            for weighted in (False, True):
                sources.append(
                    (gpu.fused_name(d, kernel, weighted), gpu.fused_source(d, kernel, weighted))
                )
        sources.append((gpu.finish_name(d), gpu.finish_source(d)))
    for d in (1, 2, 3, 4, 5, 6, 16):  # the grid kernel (GRID_MAX_DIMS = 6; it takes up to 16)
        for kernel in gpu.GPU_KERNELS:
            for weighted in (False, True):
                sources.append(
                    (gpu.grid_name(d, kernel, weighted), gpu.grid_source(d, kernel, weighted))
                )
    for kernel in ("gaussian", "epanechnikov"):  # the GEMM route's elementwise body
        body = (
            gpu.PRELUDE + 'extern "C" __global__ void gemm_weight(const float* G, const float* QN,'
            " const float* PN, const float* PW, float* W, int n) {\n"
            " int i = blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
            " float g = G[i], qn = QN[i], pn = PN[i], pw = PW[i]; float w;\n "
            + gpu.gemm_weight_operation(kernel)
            + "\n W[i] = w; }\n"
        )
        sources.append((f"gemm_weight_{kernel}", body))
    for name, source in sources:
        try:
            ptx = nvrtc_ptx(source, args.arch)
            report = ptxas_report(ptx, sm) if use_ptxas else f"{len(ptx)} bytes of PTX"
            print(f"ok   {name}: {report}")
        except Exception as exc:
            failures += 1
            print(f"FAIL {name}: {exc}")
    print(f"{len(sources) - failures} of {len(sources)} sources compiled for {args.arch}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

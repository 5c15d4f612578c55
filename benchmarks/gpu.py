"""GPU benchmark: ``python -m benchmarks.gpu [--only B1,B2,B3] [--json results.json]``.

B1  the seed workload (6x250 points, d=2, Gaussian, bandwidth 2.5, 5 blurring iterations,
    exact): the engine with ``backend="cupy"`` on NumPy input, and the same five steps
    on device arrays (pack + fused step per iteration); target <= 1 ms per run.
B2  pair evaluations per second of one exact Gaussian step (fused kernel alone, timed
    with CUDA events after a warm-up): d=2 and d=16 (also the GEMM route at d=16 and
    d=32); target >= 1e12 at d=2. Also one grid step (``GridPointSet`` on the device, the
    grid kernel: query cells, sort, kernel) of 1M points at d=2 spread so that a flat
    neighbourhood holds about 36 points (a Gaussian one about 900), in queries per second,
    against the CPU grid (compiled, one thread) on 20,000 of the queries.
B3  1.5M points (the seed distribution, as benchmarks/run.py B3: flat kernel, bandwidth
    2.5) through the pipeline: method auto (the exact grid method) with
    ``backend="cupy"``, method binned with ``backend="cupy"`` and ``"numpy"``, against
    scikit-learn's MeanShift(bin_seeding=True, n_jobs=-1) on this machine's CPU cores;
    ARI against the truth for each; target >= 100x.

Prints one table at the end and writes the results as JSON. Each part catches its own
errors, so one failure leaves the others' numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

BANDWIDTH = 2.5
SMALL = False
"""``--small``: tiny sizes and one repeat (to check the script itself, e.g. on an emulation)."""


def _sync() -> None:
    import cupy

    cupy.cuda.Device().synchronize()


def best_of(function, repeat: int, sync: bool = True) -> float:
    times = []
    for _ in range(repeat):
        if sync:
            _sync()
        start = time.perf_counter()
        function()
        if sync:
            _sync()
        times.append(time.perf_counter() - start)
    return min(times)


def b1() -> dict:
    import cupy

    from benchmarks.references import seed_batched
    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.kernels import blocked_shift, gpu
    from pipeline.params import make_params

    points, _, _ = make_blobs(6, 250, 5.0, 2, seed=0)
    reference = seed_batched(points)
    params = make_params(
        kernel="gaussian", blurring=True, bandwidth=BANDWIDTH, max_iter=5, tol=0.0,
        method="exact", backend="cupy",
    )  # fmt: skip

    def engine():
        return mean_shift(points, params).modes

    modes = engine()  # compile and warm up
    t_engine = best_of(engine, 1 if SMALL else 20)
    engine_error = float(np.abs(modes - reference).max())

    # the same five Jacobi steps on the device: the data centred and in bandwidth units
    origin = (points.min(axis=0).astype(np.float64) + points.max(axis=0)) / 2
    z_host = (points.astype(np.float64) - origin) / BANDWIDTH

    def device_loop():
        z = cupy.asarray(z_host)
        for _ in range(5):
            packed = gpu.pack(z, None, "gaussian")
            z, _density = gpu.shift(
                z, packed, 2**26, lambda q, z=z: blocked_shift(q, z, None, "gaussian", cupy, 2**26)
            )
        return z

    device_loop()
    t_device = best_of(device_loop, 1 if SMALL else 50)
    device_modes = cupy.asnumpy(device_loop()) * BANDWIDTH + origin
    return {
        "engine_ms": t_engine * 1e3,
        "engine_max_abs_error_vs_seed_batched": engine_error,
        "device_loop_ms": t_device * 1e3,
        "device_loop_max_abs_error_vs_seed_batched": float(np.abs(device_modes - reference).max()),
        "target_ms": 1.0,
    }


def _events_time(function, repeat: int = 5) -> float:
    import cupy

    function()  # warm-up (and compile)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    best = float("inf")
    for _ in range(repeat):
        start.record()
        function()
        stop.record()
        stop.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def b2() -> dict:
    import cupy

    from pipeline.kernels import gpu

    out: dict = {}
    rng = np.random.default_rng(0)
    block_bytes = 2**31
    sizes = (
        ((2, 3000), (16, 2000), (32, 1000))
        if SMALL
        else ((2, 100_000), (16, 100_000), (32, 50_000))
    )
    for d, n in sizes:
        points = cupy.asarray(rng.normal(0, 3, (n, d)) / np.sqrt(d / 2))
        row: dict = {"n": n}
        if d <= gpu.FUSED_MAX_DIMS:
            packed = gpu.pack(points, None, "gaussian")
            t = _events_time(
                lambda packed=packed, points=points: gpu.fused_shift(points, packed, block_bytes)
            )
            row["fused_pairs_per_s"] = n * n / t
            row["fused_s"] = t
        packed = gpu.pack(points, None, "gaussian")
        packed.route = "gemm"
        m = min(n, 20_000)
        t = _events_time(
            lambda packed=packed, points=points, m=m: gpu.gemm_shift(points[:m], packed, 2**28), 3
        )
        row["gemm_pairs_per_s"] = m * n / t
        out[f"d{d}"] = row
    out["target_pairs_per_s_d2"] = 1e12
    try:
        out["grid_d2"] = b2_grid()
    except Exception as exc:  # keep the fused and GEMM numbers
        traceback.print_exc()
        out["grid_d2"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    return out


def b2_grid() -> dict:
    """One grid step of 1M points (d=2, 4 points per unit cell) against themselves."""
    import cupy

    from pipeline.kernels import GridPointSet

    n = 40_000 if SMALL else 1_000_000  # (above GPU_DENSE_MAX_POINTS either way)
    side = np.sqrt(n / 4)
    points = np.random.default_rng(1).uniform(-side / 2, side / 2, (n, 2))
    out: dict = {"n": n}
    for kernel in ("flat", "gaussian"):
        grid = GridPointSet(points, None, kernel, np, 2**26)
        device = grid.on(cupy)
        queries = cupy.asarray(points)
        t = _events_time(lambda device=device, queries=queries: device.shift(queries), 3)
        host = points[: min(n, 20_000)]
        grid.shift(host[:100])  # compile
        start = time.perf_counter()
        grid.shift(host)
        t_cpu = time.perf_counter() - start
        out[kernel] = {
            "route": device.gpu_route(),
            "mean_neighbourhood": grid.mean_neighbourhood(),
            "queries_per_s": n / t,
            "step_s": t,
            "cpu_queries_per_s": len(host) / t_cpu,
        }
    return out


SKLEARN_LIMIT_S = 90.0
"""Longest wait for scikit-learn in B3 (beyond it the speedup is reported as a lower bound)."""

SKLEARN_CODE = """
import json, sys, time
from sklearn.cluster import MeanShift
from sklearn.metrics import adjusted_rand_score
from pipeline.io.datasets import make_blobs
points, truth, _ = make_blobs(6, int(sys.argv[1]), 5.0, 2, seed=0)
start = time.perf_counter()
labels = MeanShift(bandwidth=float(sys.argv[2]), bin_seeding=True, n_jobs=-1).fit(points).labels_
seconds = time.perf_counter() - start
print(json.dumps({"sklearn_s": seconds, "ari": adjusted_rand_score(truth, labels)}))
"""


def b3(out: dict, per_cluster: int = 250_000, save=lambda: None) -> dict:
    """Fills ``out`` as it goes and calls ``save`` (a run stopped later keeps what was
    measured)."""
    import subprocess

    import dask
    from sklearn.metrics import adjusted_rand_score

    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.params import make_params

    points, truth, _ = make_blobs(6, per_cluster, 5.0, 2, seed=0)
    out.update({"n": len(points), "cpus": os.cpu_count()})
    # auto (the exact grid method) on the device; binned (the method scikit-learn's
    # bin_seeding matches) on the device and on this machine's CPU cores. The CPU's exact
    # grid run is left out: it takes minutes at this size (benchmarks/run.py measures it).
    for backend, method in (("cupy", "auto"), ("cupy", "binned"), ("numpy", "binned")):
        name = f"{backend}_{method}"
        params = make_params(kernel="flat", bandwidth=BANDWIDTH, backend=backend, method=method)
        with dask.config.set(scheduler="threads"):
            mean_shift(points[::50], params)  # warm up: imports, kernels
            start = time.perf_counter()
            result = mean_shift(points, params)
            labels = np.asarray(result.labels)
            elapsed = time.perf_counter() - start
        out[f"pipeline_{name}_s"] = elapsed
        out[f"pipeline_{name}_method"] = result.method
        out[f"pipeline_{name}_timings"] = result.timings
        out[f"ari_{name}_vs_truth"] = float(adjusted_rand_score(truth, labels))
        print(f"B3 pipeline {backend} {method} ({result.method}): {elapsed:.3f} s", flush=True)
        save()
    del points, truth
    command = [sys.executable, "-c", SKLEARN_CODE, str(per_cluster), str(BANDWIDTH)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SKLEARN_LIMIT_S)
        reference = json.loads(done.stdout.strip().splitlines()[-1])
        out["sklearn_s"] = reference["sklearn_s"]
        out["ari_sklearn_vs_truth"] = reference["ari"]
        sklearn_s = out["sklearn_s"]
    except subprocess.TimeoutExpired:
        out["sklearn_s"] = None
        out["sklearn_over_s"] = SKLEARN_LIMIT_S
        sklearn_s = SKLEARN_LIMIT_S  # speedups below are lower bounds
    for name in ("cupy_auto", "cupy_binned", "numpy_binned"):
        out[f"speedup_{name}_vs_sklearn"] = sklearn_s / out[f"pipeline_{name}_s"]
    out["speedup_is_lower_bound"] = out["sklearn_s"] is None
    out["target_speedup"] = 100
    return out


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: dict) -> str:
    r1, r2, r3 = (results.get(k) or {} for k in ("B1", "B2", "B3"))
    d2, d16, d32 = (r2.get(k) or {} for k in ("d2", "d16", "d32"))
    flat, gauss = ((r2.get("grid_d2") or {}).get(k) or {} for k in ("flat", "gaussian"))

    def _grid(row: dict) -> str:
        if not row:
            return "n/a"
        return (
            f"{_fmt(row.get('queries_per_s'), '.2e')} ({row.get('route')}; "
            f"CPU {_fmt(row.get('cpu_queries_per_s'), '.1e')})"
        )

    rows = [
        ("B1 engine, cupy backend (ms / 5 iterations)", _fmt(r1.get("engine_ms"), ".3f"), "<= 1"),
        ("B1 device loop (ms / 5 iterations)", _fmt(r1.get("device_loop_ms"), ".3f"), "<= 1"),
        ("B1 max error vs seed batched (data units)",
         _fmt(r1.get("device_loop_max_abs_error_vs_seed_batched"), ".1e"), ""),
        ("B2 fused Gaussian d=2 (pairs/s)", _fmt(d2.get("fused_pairs_per_s"), ".3e"), ">= 1e12"),
        ("B2 fused Gaussian d=16 (pairs/s)", _fmt(d16.get("fused_pairs_per_s"), ".3e"), ""),
        ("B2 GEMM route d=16 (pairs/s)", _fmt(d16.get("gemm_pairs_per_s"), ".3e"), ""),
        ("B2 GEMM route d=32 (pairs/s)", _fmt(d32.get("gemm_pairs_per_s"), ".3e"), ""),
        ("B2 grid step flat d=2, 1M points (queries/s)", _grid(flat), ""),
        ("B2 grid step Gaussian d=2, 1M (queries/s)", _grid(gauss), ""),
        ("B3 pipeline cupy auto (exact grid), 1.5M points (s)",
         _fmt(r3.get("pipeline_cupy_auto_s"), ".3f"), ""),
        ("B3 pipeline cupy binned (s)", _fmt(r3.get("pipeline_cupy_binned_s"), ".3f"), ""),
        ("B3 pipeline numpy binned, same machine (s)",
         _fmt(r3.get("pipeline_numpy_binned_s"), ".3f"), ""),
        ("B3 sklearn bin_seeding n_jobs=-1 (s)",
         _fmt(r3.get("sklearn_s"), ".2f") if "sklearn_over_s" not in r3
         else f"> {r3['sklearn_over_s']:.0f} (stopped)", ""),
        *(
            (f"B3 speedup {name.replace('_', ' ')} vs sklearn",
             (">= " if r3.get("speedup_is_lower_bound") else "")
             + _fmt(r3.get(f"speedup_{name}_vs_sklearn"), ".1f"), ">= 100")
            for name in ("cupy_auto", "cupy_binned", "numpy_binned")
        ),
        ("B3 ARI cupy auto / cupy binned / numpy binned / sklearn vs truth",
         " / ".join(_fmt(r3.get(k), ".5f") for k in
                    ("ari_cupy_auto_vs_truth", "ari_cupy_binned_vs_truth",
                     "ari_numpy_binned_vs_truth", "ari_sklearn_vs_truth")), ""),
    ]  # fmt: skip
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'measure':<{width}}  {'value':>36}  target", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value:>36}  {target}" for name, value, target in rows]
    for key, message in results.get("errors", {}).items():
        lines.append(f"{key} FAILED: {message}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="B1,B2,B3")
    parser.add_argument("--json", default="gpu-results.json")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check the script")
    parser.add_argument("--table", metavar="JSON", help="only print the table of a results file")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as handle:
            print(table(json.load(handle)))
        return 0
    global SMALL
    SMALL = args.small
    from pipeline.backend import gpu_available

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "errors": {},
    }  # fmt: skip
    if not gpu_available():
        results["skipped"] = "no CUDA device visible to CuPy"
        print("no GPU: benchmark skipped")
    else:
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(0)
        results["machine"]["gpu"] = properties["name"].decode()
        results["machine"]["cupy"] = cupy.__version__
        results["B3"] = {}
        per_cluster = 2000 if SMALL else 250_000

        def save() -> None:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2, default=float)

        parts = (("B1", b1), ("B2", b2), ("B3", lambda: b3(results["B3"], per_cluster, save)))
        for name, function in parts:
            if name not in args.only.upper().split(","):
                continue
            start = time.perf_counter()
            try:
                results[name] = function()
            except Exception as exc:  # keep the other parts' numbers
                traceback.print_exc()
                results["errors"][name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"{name} done in {time.perf_counter() - start:.1f} s", flush=True)
            with open(args.json, "w") as handle:  # after every part: a timeout keeps the rest
                json.dump(results, handle, indent=2, default=float)
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=2, default=float)
    print(table(results))
    print(f"results: {args.json}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the benchmark suite: ``python -m benchmarks.run [--only B1,B2] [--sizes ...]``.

Prints a table and writes JSON (``--json``). Every ratio is measured side by side
in the same run, on the same machine.

B1  seed workload (6x250 points, d=2, Gaussian bw 2.5, 5 blurring iterations, exact), in process
B2  throughput of one exact Gaussian step, n=20,000, d=2 and d=8 (pair evaluations per second),
    and of the grid method's span kernel on the same pairs (every point in every neighbourhood)
B3  1.5M points (seed distribution) with ``meanshift run --method binned`` against
    scikit-learn's bin seeding
B4  scaling 1.5M -> 15M (-> 150M with --sizes) points (binned), time and peak memory of every
    process
B5  time to first result: the seed job through ``meanshift run`` (1,500 points, Gaussian,
    blurring; ``--cluster auto``: in process), its wall time split into interpreter start,
    imports, cluster start and the pipeline, against the seed notebook's loop; and a usage
    error's wall time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.references import gemm_gaussian_step, seed_batched, seed_loop


def best_of(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def b1() -> dict:
    import dask
    import dask.array as da

    from pipeline.engine import mean_shift
    from pipeline.io.datasets import make_blobs
    from pipeline.params import make_params

    points, _, _ = make_blobs(6, 250, 5.0, 2, seed=0)
    params = make_params(
        kernel="gaussian", blurring=True, bandwidth=2.5, max_iter=5, tol=0.0, method="exact"
    )

    def ours():
        return mean_shift(points, params).modes  # NumPy input: in process, no task graph

    def ours_dask():
        with dask.config.set(scheduler="sync"):
            result = mean_shift(da.from_array(points, chunks=points.shape), params)
            return result.modes.compute()

    modes = ours()  # compile and warm up
    t_ours = best_of(ours, 20)
    ours_dask()
    t_dask = best_of(ours_dask, 5)
    t_loop = best_of(lambda: seed_loop(points), 1)
    t_batched = best_of(lambda: seed_batched(points), 3)
    error = float(np.abs(modes - seed_batched(points)).max())
    return {
        "ours_s": t_ours,
        "ours_dask_sync_s": t_dask,
        "seed_loop_s": t_loop,
        "seed_batched_s": t_batched,
        "speedup_vs_loop": t_loop / t_ours,
        "speedup_vs_batched": t_batched / t_ours,
        "max_abs_error_vs_batched": error,
        "target_speedup_vs_loop": 200,
    }


def b2() -> dict:
    from pipeline.kernels import DensePointSet, GridPointSet

    out = {}
    rng = np.random.default_rng(0)
    threads = os.cpu_count() or 1
    pool = ThreadPoolExecutor(threads)
    for d in (2, 8):
        n = 20_000
        points = rng.normal(0, 3, (n, d))
        point_set = DensePointSet(points, None, "gaussian", np, 64 * 2**20)
        grid_set = GridPointSet(points / 10, None, "gaussian", np, 64 * 2**20, cpu_route="grid")
        parts = np.array_split(np.arange(n), threads)

        def step(point_set=point_set, points=points, parts=parts):
            list(pool.map(lambda rows: point_set.shift(points[rows]), parts))

        step()
        t = best_of(step, 3)
        # the grid's cells are 5 bandwidths wide: at 1/10 scale all points are neighbours
        assert grid_set.mean_neighbourhood() == n
        scaled = points / 10
        step(grid_set, scaled)
        t_grid = best_of(lambda grid_set=grid_set, scaled=scaled: step(grid_set, scaled), 3)
        sub = points[:2000]
        t_gemm = best_of(lambda sub=sub, points=points: gemm_gaussian_step(sub, points), 2)
        t_gemm *= n / len(sub)
        out[f"d{d}"] = {
            "pairs_per_s": n * n / t,
            "grid_pairs_per_s": n * n / t_grid,
            "grid_cost_per_pair_vs_exact": t_grid / t,
            "gemm_numpy_pairs_per_s": n * n / t_gemm,
            "ratio_vs_gemm": t_gemm / t,
            "threads": threads,
        }
    out["target_pairs_per_s_d2"] = 5e9
    return out


def _peak_rss_watch(root_pid: int, stop: threading.Event, peaks: dict) -> None:
    """Poll VmHWM (peak resident memory) of a process and all its descendants."""
    while not stop.is_set():
        pids = [root_pid]
        i = 0
        while i < len(pids):
            try:
                for tid in os.listdir(f"/proc/{pids[i]}/task"):
                    with open(f"/proc/{pids[i]}/task/{tid}/children") as handle:
                        pids += [int(p) for p in handle.read().split()]
            except OSError:
                pass
            i += 1
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
            except OSError:
                pass
        stop.wait(0.2)


def run_cli(
    data: str, out: str, bandwidth: float, extra: list[str], where: tuple[str, ...] = ()
) -> dict:
    """``meanshift run`` in a new process (``where``: its cluster options; none: auto)."""
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "-i",
        data,
        "-o",
        out,
        "--overwrite",
        "--bandwidth",
        str(bandwidth),
        *where,
        "--quiet",
        *extra,
    ]
    peaks: dict[int, int] = {}
    stop = threading.Event()
    start = time.perf_counter()
    process = subprocess.Popen(command)
    watcher = threading.Thread(target=_peak_rss_watch, args=(process.pid, stop, peaks))
    watcher.start()
    code = process.wait()
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    if code:
        raise RuntimeError(f"meanshift run failed ({code})")
    import zarr

    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    return {
        "wall_s": wall,
        "pipeline_s": attrs["timings"]["pipeline_s"],
        "cluster_start_s": attrs["timings"]["cluster_start_s"],
        "timings": attrs["timings"],
        "method": attrs.get("method"),
        "peak_rss_bytes": max(peaks.values(), default=0),
        "peak_rss_per_process": sorted(peaks.values(), reverse=True),
    }


def generate(path: str, per_cluster: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "generate",
            "--clusters",
            "6",
            "--per-cluster",
            str(per_cluster),
            "--seed",
            "0",
            "--output",
            path,
            "--overwrite",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def b3(workdir: str, bandwidth: float = 2.5) -> dict:
    import zarr
    from sklearn.cluster import MeanShift
    from sklearn.metrics import adjusted_rand_score

    data = os.path.join(workdir, "b3.zarr")
    out = os.path.join(workdir, "b3-out.zarr")
    generate(data, 250_000)
    ours = run_cli(data, out, bandwidth, ["--kernel", "flat", "--method", "binned"])
    group = zarr.open_group(data, mode="r")
    points, truth = group["points"][...], group["truth"][...]
    labels = zarr.open_group(out, mode="r")["labels"][...]
    start = time.perf_counter()
    reference = MeanShift(bandwidth=bandwidth, bin_seeding=True, n_jobs=2).fit(points)
    t_sklearn = time.perf_counter() - start
    return {
        "ours": ours,
        "sklearn_fit_s": t_sklearn,
        "pipeline_speedup": t_sklearn / ours["pipeline_s"],
        "wall_speedup": t_sklearn / ours["wall_s"],
        "ari_ours_vs_truth": adjusted_rand_score(truth, labels),
        "ari_sklearn_vs_truth": adjusted_rand_score(truth, reference.labels_),
        "targets": {"pipeline_speedup": 50, "wall_speedup": 5, "ari": 0.999},
    }


def b4(workdir: str, sizes: list[int], bandwidth: float = 2.5) -> dict:
    rows = []
    for n in sizes:
        data = os.path.join(workdir, f"b4-{n}.zarr")
        out = os.path.join(workdir, f"b4-{n}-out.zarr")
        generate(data, n // 6)
        binned = ["--kernel", "gaussian", "--method", "binned"]
        result = run_cli(data, out, bandwidth, binned, ("--n-workers", "2"))
        result["n"] = n
        result["raw_bytes"] = n * 2 * 4
        result["peak_rss_over_raw"] = result["peak_rss_bytes"] / result["raw_bytes"]
        rows.append(result)
        subprocess.run(["rm", "-rf", data, out], check=False)
    for a, b in zip(rows, rows[1:], strict=False):
        b["time_ratio_vs_previous"] = b["pipeline_s"] / a["pipeline_s"]
    return {"rows": rows, "targets": {"time_per_10x": 11, "peak_rss_over_raw_at_150M": 0.25}}


def wall_of(command: list[str], repeat: int = 3) -> float:
    """Best wall time of a command (its exit code ignored: usage errors are timed too)."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return best_of(lambda: subprocess.run(command, **quiet), repeat)


def b5(workdir: str) -> dict:
    from benchmarks.references import seed_loop
    from pipeline.io.datasets import make_blobs

    data = os.path.join(workdir, "b5.zarr")
    generate(data, 250)
    options = ["--kernel", "gaussian", "--blurring"]
    runs = [run_cli(data, os.path.join(workdir, f"b5-{i}.zarr"), 2.5, options) for i in range(3)]
    best = min(runs, key=lambda run: run["wall_s"])
    python = [sys.executable]
    interpreter_s = wall_of([*python, "-c", "pass"])
    imports_s = wall_of([*python, "-c", "import pipeline.cli, pipeline.jobs.job"]) - interpreter_s
    usage_error_s = wall_of([*python, "-m", "pipeline.cli", "run", "-i", data])
    points, _, _ = make_blobs(6, 250, 5.0, 2, seed=0)
    loop_s = best_of(lambda: seed_loop(points), 1)
    rest_s = best["wall_s"] - interpreter_s - imports_s - best["cluster_start_s"]
    return {
        "wall_s": best["wall_s"],
        "interpreter_s": interpreter_s,
        "imports_s": imports_s,
        "cluster_start_s": best["cluster_start_s"],
        "pipeline_s": best["pipeline_s"],
        "other_s": rest_s - best["pipeline_s"],
        "usage_error_s": usage_error_s,
        "seed_loop_s": loop_s,
        "wall_vs_seed_loop": loop_s / best["wall_s"],
        "targets": {"wall_s": 2.0, "usage_error_s": 0.5},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="B1,B2,B3,B4,B5")
    parser.add_argument("--sizes", default="1500000,15000000", help="B4 point counts")
    parser.add_argument("--json", default="benchmarks/results.json")
    parser.add_argument("--workdir", default=None, help="where B3/B4 put their Zarr stores")
    args = parser.parse_args()
    wanted = set(args.only.upper().split(","))
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        }
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        if "B1" in wanted:
            results["B1"] = b1()
            r = results["B1"]
            print(
                f"B1 seed workload: ours {r['ours_s'] * 1e3:.2f} ms "
                f"(through Dask's sync scheduler {r['ours_dask_sync_s'] * 1e3:.1f} ms), "
                f"loop {r['seed_loop_s'] * 1e3:.0f} ms "
                f"({r['speedup_vs_loop']:.0f}x), batched {r['seed_batched_s'] * 1e3:.0f} ms "
                f"({r['speedup_vs_batched']:.0f}x), max error {r['max_abs_error_vs_batched']:.1e}"
            )
        if "B2" in wanted:
            results["B2"] = b2()
            for d in ("d2", "d8"):
                r = results["B2"][d]
                print(
                    f"B2 exact Gaussian step {d}: {r['pairs_per_s'] / 1e9:.2f} G pairs/s "
                    f"({r['ratio_vs_gemm']:.1f}x the NumPy GEMM baseline, {r['threads']} threads); "
                    f"grid span kernel {r['grid_pairs_per_s'] / 1e9:.2f} G pairs/s "
                    f"({r['grid_cost_per_pair_vs_exact']:.1f}x the cost per pair)"
                )
        if "B3" in wanted:
            results["B3"] = b3(workdir)
            r = results["B3"]
            print(
                f"B3 1.5M points: pipeline {r['ours']['pipeline_s']:.2f} s, "
                f"CLI wall {r['ours']['wall_s']:.2f} s, sklearn fit {r['sklearn_fit_s']:.2f} s "
                f"-> {r['pipeline_speedup']:.1f}x / {r['wall_speedup']:.1f}x; "
                f"ARI ours {r['ari_ours_vs_truth']:.5f}, sklearn {r['ari_sklearn_vs_truth']:.5f}"
            )
        if "B4" in wanted:
            sizes = [int(float(s)) for s in args.sizes.split(",")]
            results["B4"] = b4(workdir, sizes)
            for row in results["B4"]["rows"]:
                ratio = row.get("time_ratio_vs_previous")
                print(
                    f"B4 n={row['n']:>11,}: pipeline {row['pipeline_s']:.2f} s"
                    + (f" ({ratio:.1f}x previous)" if ratio else "")
                    + f", peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB "
                    f"= {row['peak_rss_over_raw']:.2f} x raw data"
                )
        if "B5" in wanted:
            results["B5"] = b5(workdir)
            r = results["B5"]
            print(
                f"B5 seed job via meanshift run: wall {r['wall_s']:.2f} s = interpreter "
                f"{r['interpreter_s']:.2f} + imports {r['imports_s']:.2f} + cluster start "
                f"{r['cluster_start_s']:.2f} + pipeline {r['pipeline_s']:.2f} + other "
                f"{r['other_s']:.2f} s ({r['wall_vs_seed_loop']:.2f}x the seed loop's "
                f"{r['seed_loop_s']:.2f} s in process); usage error {r['usage_error_s']:.2f} s"
            )
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=2, default=float)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()

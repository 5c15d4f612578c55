#!/usr/bin/env bash
# GPU check in one call: versions, the GPU tests (with a local-cuda cluster when dask-cuda
# imports), the GPU benchmark (B1-B3) and a CPU smoke test (CuPy hidden), each under its
# own timeout (30 + 150 + 170 + 40 s at most, plus about 20 s of wheel installing);
# a failing stage does not stop the next. Logs and results go to stdout and to $OUT
# (default ./gpu-check-out): versions.txt, tests-gpu.log, bench.log, results.json,
# tests-cpu.log, summary.txt.
#
# On an offline machine without dask/zarr, wheels carried in .whl/ are
# installed into /tmp/site first (see docs/gpu.md). Without a GPU every GPU stage is
# skipped with a message and the script still succeeds.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 by default
#   PYTHON=.venv/bin/python OUT=/tmp/gpuout bash benchmarks/gpu_check.sh

set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$(date +%s)

stage() {  # stage NAME SECONDS LOG COMMAND...: run with a timeout, tee to LOG, record status
    local name=$1 limit=$2 log=$3
    shift 3
    echo "=== $name (limit ${limit}s) ===" | tee -a "$log"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    local line="$name: rc=$rc ($(($(date +%s) - t0)) s)"
    [ "$rc" = 124 ] && line="$line TIMED OUT"
    echo "$line" | tee -a "$SUMMARY"
}

if ! "$PYTHON" -c "import dask, distributed, zarr, pydantic" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        echo "=== installing carried wheels into /tmp/site ==="
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl 2>&1 | tail -5
        export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "dask/zarr missing and no .whl/ to install from" | tee -a "$SUMMARY"
    fi
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
case ":$PYTHONPATH:" in *":$PWD:"*) ;; *) export PYTHONPATH=$PWD:$PYTHONPATH ;; esac

stage versions 30 "$OUT/versions.txt" bash -c "
    $PYTHON -c 'import sys, platform; print(sys.version); print(platform.platform())'
    $PYTHON - <<'EOF'
import importlib
for name in ('numpy', 'cupy', 'numba', 'dask', 'distributed', 'zarr', 'pydantic', 'sklearn',
             'scipy', 'dask_cuda', 'pytest'):
    try:
        module = importlib.import_module(name)
        print(f'{name} {getattr(module, \"__version__\", \"?\")}')
    except Exception as exc:
        print(f'{name} MISSING ({type(exc).__name__}: {str(exc)[:120]})')
from pipeline.backend import gpu_available
print('gpu_available', gpu_available())
try:
    import cupy
    print('cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'driver',
          cupy.cuda.runtime.driverGetVersion())
except Exception as exc:
    print('cupy runtime:', exc)
EOF
    nvidia-smi -L 2>&1 || echo 'nvidia-smi: not available'
"

GPU=$("$PYTHON" -c "from pipeline.backend import gpu_available; print(int(gpu_available()))" 2>/dev/null || echo 0)
if [ "$GPU" = 1 ] || [ "${FORCE_GPU_STAGES:-0}" = 1 ]; then  # (forced: to check the script)
    stage tests-gpu 150 "$OUT/tests-gpu.log" \
        "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -W default \
        tests/test_gpu_device.py tests/test_gpu_cluster.py
    stage bench 170 "$OUT/bench.log" "$PYTHON" -m benchmarks.gpu --json "$OUT/results.json"
else
    echo "no GPU visible to CuPy: GPU tests and benchmark skipped" | tee -a "$SUMMARY"
    "$PYTHON" -m benchmarks.gpu --json "$OUT/results.json" >"$OUT/bench.log" 2>&1
fi
stage tests-cpu 40 "$OUT/tests-cpu.log" \
    "$PYTHON" -m pytest -q -m "not gpu and not slow" -p no:cacheprovider tests/test_backend.py

echo "total: $(($(date +%s) - START)) s" >>"$SUMMARY"
echo "=== summary ==="
cat "$SUMMARY"
if grep -q '^measure' "$OUT/bench.log" 2>/dev/null; then
    sed -n '/^measure/,$p' "$OUT/bench.log"
elif [ -f "$OUT/results.json" ]; then  # the benchmark was stopped: what it had saved
    "$PYTHON" -m benchmarks.gpu --table "$OUT/results.json"
fi
exit 0

#!/usr/bin/env bash
# Everything that needs a GPU, in one command that fits in 10 minutes on one H100/H200:
#   1. build the extension in place with its CUDA kernels (sm_90)
#   2. the CUDA tests (tests/leadfl_ext, the aggregator and batched-engine tests on cuda)
#   3. bench/step_latency.py --device cuda   (fused op vs eager, foreach, torch.compile, a copy;
#                                             kernel launches per step)
#   4. bench/sim_throughput.py --device cuda (sequential vs batched at 10, 100, 1000 clients per
#                                             round; peak memory)
#   5. bench/aggregators.py --device cuda    (every rule at 10/100/1000 clients, two model sizes)
#   6. the demo comparison on CUDA (real FashionMNIST), with its wall time
# Every result names the device it ran on. Results and one log per step go to --out (default
# bench/results); gpu_check_<device>.md sums up each step's status and wall time. A step that
# fails is recorded and the next one runs; the exit status is 1 if any failed.
#
#   bash scripts/gpu_check.sh                            # on the GPU machine
#   bash scripts/gpu_check.sh --out /tmp/g --data DIR    # FashionMNIST from DIR
#   bash scripts/gpu_check.sh --device cpu --quick --no-build --out /tmp/g
#       the same steps, small, on the CPU (what tests/sim/test_gpu_check.py runs)
#
# The GPU machines lent here hand back at most 8 files, so pack the folder there:
#   bash scripts/gpu_check.sh --out /tmp/g --data .data/fashion-mnist; tar czf $OUT/gpu_check.tgz -C /tmp/g .
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}

DEVICE=cuda
QUICK=0
BUILD=1
OUT="$ROOT/bench/results"
DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'; allowed: --device cuda|cpu, --quick, --no-build, --out DIR, --data DIR" >&2; exit 2 ;;
  esac
done
if [ "$DEVICE" != cuda ] && [ "$DEVICE" != cpu ]; then
  echo "error: --device $DEVICE is not cuda or cpu" >&2; exit 2
fi
if [ -n "$DATA" ] && [ ! -d "$DATA" ]; then
  echo "error: --data $DATA is not a folder; point it at the folder holding the FashionMNIST idx files" >&2; exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: --device cuda but torch sees no CUDA GPU; run on a GPU machine or use --device cpu --quick" >&2; exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

DEVICE_NAME=$("$PYTHON" -c "from bench.common import device_name; print(device_name('$DEVICE'))")
SUMMARY="$OUT/gpu_check_$DEVICE.md"
{
  echo "# scripts/gpu_check.sh on $DEVICE_NAME"
  echo
  echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), device $DEVICE, $( [ $QUICK = 1 ] && echo 'quick (small sizes)' || echo 'full sizes'), started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "| step | status | wall time (s) | log |"
  echo "|---|---|---:|---|"
} > "$SUMMARY"

FAILED=0
TOTAL_START=$(date +%s)
# step NAME TIMEOUT_S COMMAND...: runs COMMAND with its output in $OUT/NAME.log, records the result.
step() {
  local name=$1 limit=$2
  shift 2
  local log="$OUT/$name.log" start status
  start=$(date +%s)
  echo "== $name (at most ${limit} s)"
  echo "device: $DEVICE_NAME" > "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  if [ $rc = 0 ]; then status=ok; elif [ $rc = 124 ]; then status="timed out"; else status="failed (exit $rc)"; fi
  [ $rc = 0 ] || FAILED=1
  local took=$(( $(date +%s) - start ))
  echo "   $status in ${took} s (log: $log)"
  [ $rc = 0 ] || tail -5 "$log" | sed 's/^/   | /'
  echo "| $name | $status | $took | $(basename "$log") |" >> "$SUMMARY"
  LAST_TOOK=$took
  LAST_STATUS=$status
}

if [ $BUILD = 1 ]; then
  step build 300 env MAX_JOBS=${MAX_JOBS:-16} "$PYTHON" setup.py build_ext --inplace -q
fi
step extension_check 60 "$PYTHON" -c "
import torch, leadfl_ext
cuda = leadfl_ext.cuda_available()
print('leadfl_ext imported with torch', torch.__version__, '; CUDA kernels:', cuda)
assert cuda or '$DEVICE' == 'cpu', 'the build has no CUDA kernels: is CUDA_HOME set and torch a CUDA build?'
"

if [ $QUICK = 1 ]; then
  step tests 300 "$PYTHON" -m pytest -q tests/leadfl_ext/test_cuda.py
  step step_latency 300 "$PYTHON" bench/step_latency.py --device "$DEVICE" --sizes fmnist_cnn --no-compile \
    --out "$OUT/step_latency_$DEVICE.json"
  step sim_throughput 300 "$PYTHON" bench/sim_throughput.py --device "$DEVICE" --engines sequential,batched \
    --steps 2:1 --repeats 1 --out "$OUT"
  step aggregators 300 "$PYTHON" bench/aggregators.py --device "$DEVICE" --quick --out "$OUT"
  DEMO_SETTINGS=(--rounds 1 --set data.dataset=synthetic --set data.synthetic_train_size=600
                 --set data.synthetic_test_size=100 --set training.local_steps=1 --set eval.test_size=100)
else
  step tests 150 "$PYTHON" -m pytest -q tests/leadfl_ext tests/sim/test_aggregators_scale.py tests/sim/test_engine_batched.py
  step step_latency 120 "$PYTHON" bench/step_latency.py --device "$DEVICE" --out "$OUT/step_latency_$DEVICE.json"
  step sim_throughput 150 "$PYTHON" bench/sim_throughput.py --device "$DEVICE" --engines sequential,batched,auto \
    --steps 10:10,100:4,1000:1 --repeats 3 --out "$OUT"
  step aggregators 150 "$PYTHON" bench/aggregators.py --device "$DEVICE" --repeats 5 --big-repeats 2 --max-gb 16 --out "$OUT"
  DEMO_SETTINGS=()
  if [ -n "$DATA" ]; then DEMO_SETTINGS+=(--set "data.data_dir=$DATA"); fi
fi

step demo 180 "$PYTHON" -m sim compare --preset demo --device "$DEVICE" --no-progress --out "$OUT/demo_$DEVICE" "${DEMO_SETTINGS[@]}"
{
  echo "# Demo comparison (leadfl-sim compare --preset demo) on $DEVICE_NAME"
  echo
  echo "Wall time of the whole command: $LAST_TOOK s ($LAST_STATUS), torch $("$PYTHON" -c 'import torch; print(torch.__version__)')$( [ $QUICK = 1 ] && echo '; quick settings: synthetic data, 1 round, 1 local step')."
  echo
  tail -n 20 "$OUT/demo.log"
} > "$OUT/demo_$DEVICE.md"

TOTAL=$(( $(date +%s) - TOTAL_START ))
{
  echo
  echo "Total wall time: $TOTAL s. Results: step_latency_$DEVICE.*, sim_throughput_$DEVICE.*, aggregators_$DEVICE*.*, demo_$DEVICE.md."
} >> "$SUMMARY"
echo "total ${TOTAL} s; summary in $SUMMARY"
exit $FAILED

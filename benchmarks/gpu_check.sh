#!/usr/bin/env bash
# One full GPU check of ia_kernels, for a machine with a CUDA GPU and torch + triton installed (and,
# to compare with them, liger-kernel and cut-cross-entropy). Runs within 10 minutes:
#   1. build the package with its CUDA part (editable, in place);
#   2. gpu-build: every Triton variant and CUDA kernel compiled for sm_80/sm_90, registers, spills,
#      shared memory (the same check CI runs without a GPU);
#   3. the GPU tests (pytest -m gpu), then the whole suite with CUDA visible;
#   4. every benchmark suite at GPU sizes (eager, ia_kernels, Liger, cut-cross-entropy in one run;
#      linear_stats: the fused GEMM + row-statistics kernel against cuBLAS + row pass);
#   5. each measurement beside the performance model's prediction (python -m benchmarks model).
# Results go to $OUT (default ./gpu_check_out): <step>.log, bench_*.json, model_vs_measured.json,
# summary.txt (step, exit status, seconds). Commit the JSON under benchmarks/results/<device>/.
#
#   benchmarks/gpu_check.sh --dry-run   runs every step that needs no GPU (build, gpu-build, the
#                                       GPU tests' clean skips, the suites' quick mode on CPU, the
#                                       model beside those numbers): what CI machines can check.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 IA_KERNELS_CUDA=ON HF_HUB_OFFLINE=1 TRITON_DEFAULT_FP_FUSION=1
: > "$OUT/summary.txt"
status=0
t_all=$(date +%s)

# step NAME SECONDS CMD...: runs CMD under a time limit, output to $OUT/NAME.log (its tail shown).
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -${TAIL:-8} "$OUT/$name.log"
  printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

if [ "$DRY" = 0 ]; then
  nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || { echo "no GPU visible (nvidia-smi failed); use --dry-run" >&2; exit 2; }
  DEVICE=cuda
  QUICK=()
  GPU_BUILD_ARGS=()
  GPU_BUILD_LIMIT=90
else
  DEVICE=cpu
  QUICK=(--quick)
  GPU_BUILD_ARGS=(--quick)  # CI compiles every variant; here the production shapes (~1 min on 2 cores)
  GPU_BUILD_LIMIT=300
fi

step build 90 python -m pip install --no-build-isolation --no-deps -e . || { cat "$OUT/build.log" | tail -40; exit 1; }
if [ "$DRY" = 0 ]; then
  step cuda_module 20 python -c "import ia_kernels._cuda, torch; print('CUDA module ok on', torch.cuda.get_device_name())"
else
  step cuda_module 20 python -c "import ia_kernels._cuda as m; print('CUDA module compiled (not run):', m.__file__)"
fi
step gpu_build "$GPU_BUILD_LIMIT" python -m benchmarks gpu-build "${GPU_BUILD_ARGS[@]}" --json "$OUT/gpu_build.json"
step pytest_gpu 45 python -m pytest -m gpu -q -rs
if [ "$DRY" = 0 ]; then
  # The whole suite with CUDA visible (the CPU suite is CI's; here what changes is the device).
  step pytest_all 95 python -m pytest -q -x --ignore=tests/train -m "not slow"
fi
# Limits: the step limits add up to 595 s on a GPU machine (gpu-build ~30-45 s cold on 16 cores).
for suite_limit in logprobs:65 ppo:95 linear_stats:35 advantages:45; do
  suite=${suite_limit%%:*}
  step "bench_$suite" "${suite_limit##*:}" python -m benchmarks "$suite" --device "$DEVICE" "${QUICK[@]}" --json "$OUT/bench_$suite.json"
done
TAIL=20 step model_vs_measured 15 python -m benchmarks model --annotate "$OUT/bench_logprobs.json" "$OUT/bench_ppo.json" \
  --json "$OUT/model_vs_measured.json"
echo "total $(( $(date +%s) - t_all ))s; status $status" | tee -a "$OUT/summary.txt"
exit $status

#!/usr/bin/env bash
# One full GPU check of ia_kernels, for a machine with a CUDA GPU and torch + triton installed:
#   1. build the package with its CUDA part (editable, in place);
#   2. the GPU tests (pytest -m gpu) and the whole suite with CUDA visible;
#   3. the benchmark suite at GPU sizes (eager PyTorch and, where installed, Liger-Kernel in the
#      same run), JSON results beside the logs.
# Results go to $OUT (default ./gpu_check_out): build.log, pytest_gpu.log, pytest_all.log,
# bench_*.log and bench_*.json. Commit the JSON under benchmarks/results/<device>/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 IA_KERNELS_CUDA=ON HF_HUB_OFFLINE=1
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || true

python -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python -c "import ia_kernels._cuda, torch; print('CUDA module ok on', torch.cuda.get_device_name())" | tee -a "$OUT/build.log"

status=0
python -m pytest -m gpu -q -rs 2>&1 | tee "$OUT/pytest_gpu.log" | tail -5 || status=1
python -m pytest -q -x --ignore=tests/train 2>&1 | tee "$OUT/pytest_all.log" | tail -5 || status=1

for suite in logprobs ppo advantages; do
  python -m benchmarks "$suite" --device cuda --json "$OUT/bench_$suite.json" 2>&1 | tee "$OUT/bench_$suite.log" | tail -12 || status=1
done
exit $status

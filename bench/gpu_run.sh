#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, from anywhere: the CUDA matmul tests on the GPU (the kernel
# emulator's runs are left to machines without one), then the GPU suite (bench/gpu_suite.py):
# its matmul items (TF32 on wgmma; again with TF32 on mma.sync only if some failed),
# then the others. Installs nothing; each step has a time limit (8 minutes in all at most).
# Full logs go to $OUT (or /tmp); the test summary, the tuning choices and the suite's tables are
# printed last.
set -u
cd "$(dirname "$0")/.."
logs=${OUT:-/tmp}
export ARRAYJIT_CUDA_TEST_RUNNERS=gpu
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader || true

timeout 180 python3 -m pytest -q -p no:cacheprovider -rfE \
  tests/arrayjit/test_cuda_matmul.py tests/arrayjit/test_cuda_mma16.py \
  tests/arrayjit/test_cuda_tuning.py tests/arrayjit/test_cuda_wgmma.py \
  > "$logs/gpu_matmul_tests.log" 2>&1
tests=$?

timeout 150 python3 bench/gpu_suite.py --items matmul > "$logs/gpu_suite_matmul.log" 2>&1
matmul=$?
if [ $matmul -ne 0 ] || grep -q "FAILED" "$logs/gpu_suite_matmul.log"; then
  timeout 70 python3 bench/gpu_suite.py --items matmul --no-wgmma \
    > "$logs/gpu_suite_matmul_mma.log" 2>&1
fi
timeout 70 python3 bench/gpu_suite.py --items other > "$logs/gpu_suite_other.log" 2>&1
other=$?

echo "== matmul tests on the GPU: exit $tests"
grep -E "^(FAILED|ERROR)|passed|failed|Timeout" "$logs/gpu_matmul_tests.log" | tail -n 30
echo "== tuning choices"
grep -h "tuned" "$logs"/gpu_suite_matmul*.log | cut -c1-400
echo "== suite, matmul items: exit $matmul"
grep -h ": ours\|FAILED\|Error" "$logs/gpu_suite_matmul.log" | tail -n 12
sed -n '/^item /,$p' "$logs/gpu_suite_matmul.log"
if [ -f "$logs/gpu_suite_matmul_mma.log" ]; then
  echo "== suite, matmul items with TF32 on mma.sync (the first run had failures)"
  grep -h ": ours\|FAILED" "$logs/gpu_suite_matmul_mma.log" | tail -n 8
  sed -n '/^item /,$p' "$logs/gpu_suite_matmul_mma.log"
fi
echo "== suite, other items: exit $other"
sed -n '/^item /,$p' "$logs/gpu_suite_other.log"

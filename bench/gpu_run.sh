#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, from anywhere: the CUDA matmul tests on the GPU (the kernel
# emulator's runs are left to machines without one) and the GPU suite (bench/gpu_suite.py).
# Order: the wgmma tests, the suite's matmul items (TF32 on wgmma; TF32 again with the default
# tile, untuned, only if some failed), the other matmul tests, then the suite's other items (left out with
# `--matmul-only`); with `--sanitize`, compute-sanitizer's memcheck and racecheck over a few
# wgmma and SIMT tests. Installs nothing; each step has a time limit (under 8 minutes in all,
# under 4.5 with --matmul-only, under 6 with both). Full logs go to $OUT (or /tmp); the test summaries, the tuning
# timings and the suite's tables are printed last.
set -u
cd "$(dirname "$0")/.."
logs=${OUT:-/tmp}
matmul_only=0
sanitize=0
for option in "$@"; do
  [ "$option" = "--matmul-only" ] && matmul_only=1
  [ "$option" = "--sanitize" ] && sanitize=1
done
export ARRAYJIT_CUDA_TEST_RUNNERS=gpu PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader || true

# A kernel that faults spoils its process's CUDA context: wgmma first, in a process of its own.
timeout 60 python3 -m pytest -q -p no:cacheprovider -rfE tests/arrayjit/test_cuda_wgmma.py \
  > "$logs/gpu_wgmma_tests.log" 2>&1
wgmma_tests=$?

timeout 120 python3 bench/gpu_suite.py --items matmul > "$logs/gpu_suite_matmul.log" 2>&1
matmul=$?
if [ $matmul -ne 0 ] || grep -q "FAILED" "$logs/gpu_suite_matmul.log"; then
  timeout 50 python3 bench/gpu_suite.py --items tf32 --no-tune \
    > "$logs/gpu_suite_matmul_default.log" 2>&1
fi

timeout 70 python3 -m pytest -q -p no:cacheprovider -rfE \
  tests/arrayjit/test_cuda_matmul.py tests/arrayjit/test_cuda_mma16.py \
  tests/arrayjit/test_cuda_tuning.py > "$logs/gpu_matmul_tests.log" 2>&1
tests=$?

if [ $matmul_only -eq 0 ]; then
  timeout 70 python3 bench/gpu_suite.py --items other > "$logs/gpu_suite_other.log" 2>&1
  other=$?
fi

if [ $sanitize -eq 1 ]; then
  subset="test_tf32_wgmma_is_exact_on_integers or test_matmul_is_exact_on_integers"
  for tool in memcheck racecheck; do
    timeout 35 compute-sanitizer --tool $tool --error-exitcode 9 python3 -m pytest -q \
      -p no:cacheprovider tests/arrayjit/test_cuda_wgmma.py tests/arrayjit/test_cuda_matmul.py \
      -k "$subset" > "$logs/gpu_sanitizer_$tool.log" 2>&1
    echo "$tool: exit $?" >> "$logs/gpu_sanitizer_exits.log"
  done
fi

echo "== wgmma tests on the GPU: exit $wgmma_tests"
grep -E "^(FAILED|ERROR)|passed|failed|Timeout|Error" "$logs/gpu_wgmma_tests.log" | cut -c1-300 | tail -n 20
echo "== other matmul tests on the GPU: exit $tests"
grep -E "^(FAILED|ERROR)|passed|failed|Timeout|Error" "$logs/gpu_matmul_tests.log" | cut -c1-300 | tail -n 20
echo "== tuning timings (seconds per candidate)"
grep -h "tuned" "$logs"/gpu_suite_matmul*.log | cut -c1-700
echo "== suite, matmul items: exit $matmul"
grep -h "FAILED\|Error" "$logs/gpu_suite_matmul.log" | cut -c1-400 | tail -n 12
sed -n '/^item /,$p' "$logs/gpu_suite_matmul.log"
if [ -f "$logs/gpu_suite_matmul_default.log" ]; then
  echo "== suite, TF32 with the default tile, untuned (the first run had failures)"
  grep -h "FAILED" "$logs/gpu_suite_matmul_default.log" | cut -c1-400 | tail -n 8
  sed -n '/^item /,$p' "$logs/gpu_suite_matmul_default.log"
fi
if [ $sanitize -eq 1 ]; then
  echo "== compute-sanitizer over a few wgmma and SIMT tests"
  cat "$logs/gpu_sanitizer_exits.log"
  grep -h -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed|Error|error" \
    "$logs"/gpu_sanitizer_*check.log | cut -c1-300 | head -n 20
fi
if [ $matmul_only -eq 0 ]; then
  echo "== suite, other items: exit $other"
  sed -n '/^item /,$p' "$logs/gpu_suite_other.log"
fi

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, from the repository root: the arrayjit tests (the CUDA cases
# on the GPU; the kernel emulator's runs are left to machines without one), then the GPU suite.
# Installs nothing. Full logs go to $OUT (or /tmp); the test summary and the suite's table are
# printed last.
set -u
cd "$(dirname "$0")/.."
logs=${OUT:-/tmp}
export ARRAYJIT_CUDA_TEST_RUNNERS=gpu
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader || true
python3 -m pytest -q -p no:cacheprovider -rfE tests/arrayjit > "$logs/gpu_tests.log" 2>&1
echo "tests: exit $?"
grep -E "^(FAILED|ERROR)|passed|failed" "$logs/gpu_tests.log" | tail -n 40
python3 bench/gpu_suite.py > "$logs/gpu_suite.log" 2>&1
echo "suite: exit $?"
tail -n 60 "$logs/gpu_suite.log"

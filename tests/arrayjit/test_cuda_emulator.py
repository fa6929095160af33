"""The CPU emulator of CUDA kernels can fail: kernels with a barrier or an asynchronous-copy wait
removed give wrong results (or a reported deadlock) on it, and a tensor-core product of one warp
equals numpy's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from cuda_emulator import EmulatedRoutine
from cuda_runners import RUNNERS
from test_cuda_matmul import TF32, fill, matmul
from test_cuda_reductions import full_reduction

from arrayjit.lowering import compile_to_ir
from arrayjit.schedule.gpu_kernels import GpuOptions
from arrayjit.tnode import TNode

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++)"),
    pytest.mark.skipif("emulator" not in RUNNERS, reason="emulator runs left out by request"),
]


def without(needle: str):
    """A source edit that drops every line containing `needle`."""

    def edit(source: str) -> str:
        kept = [line for line in source.splitlines() if needle not in line]
        assert len(kept) < len(source.splitlines()), f"no {needle!r} in the source"
        return "\n".join(kept) + "\n"

    return edit


def test_a_block_reduction_without_its_barrier_goes_wrong():
    n = 5000
    x, total = TNode("x", (n,)), TNode("total", (1,))
    x.set_host(np.arange(n) % 7)
    stmt = compile_to_ir(full_reduction(x, total), True)
    intact = EmulatedRoutine(stmt, GpuOptions())
    intact.run(seed=0)
    assert total.host()[0] == x.host().sum()
    broken = EmulatedRoutine(stmt, GpuOptions(), edit=without("__syncthreads"))
    results = set()
    for seed in range(4):
        total.set_host(np.nan)
        broken.run(seed)
        results.add(float(total.host()[0]))
    assert results != {float(x.host().sum())}


def test_a_matmul_that_reads_tiles_before_their_copies_land_goes_wrong():
    code, a, b, c = matmul(64, 64, 64)
    x, y = fill(np.random.default_rng(0), a, b)
    stmt = compile_to_ir(code, True)
    EmulatedRoutine(stmt, GpuOptions(), edit=without("ocannl_cp_async_wait<")).run()
    assert not np.array_equal(c.host(), x @ y)
    EmulatedRoutine(stmt, GpuOptions()).run()
    np.testing.assert_array_equal(c.host(), x @ y)


def test_one_warp_of_tf32_tensor_core_products_matches_numpy():
    """A 64 x 64 x 8 product is one k-slice of one warp's 4 x 8 mma tiles."""
    code, a, b, c = matmul(64, 8, 64)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (64, 8)).astype(np.float32)
    y = rng.uniform(-1, 1, (8, 64)).astype(np.float32)
    a.set_host(x)
    b.set_host(y)
    routine = EmulatedRoutine(compile_to_ir(code, True), TF32)
    routine.run()
    assert routine.plans[0].matmul.config.tensor_cores == "tf32"
    # Operands rounded to 10 mantissa bits: each product is within 2^-10 relative.
    expected = x.astype(np.float64) @ y
    bound = 2.0**-10 * (np.abs(x) @ np.abs(y)) + 1e-6
    assert (np.abs(c.host() - expected) <= bound).all()

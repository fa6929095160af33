"""The CPU emulator of CUDA kernels can fail: kernels with a barrier or an asynchronous-copy wait
removed give wrong results (or a reported deadlock) on it, and a tensor-core product of one warp
equals numpy's; kernels that rely on what the hardware does not promise (threads passing values
through `__restrict__` buffers, lanes at different collectives, barriers some threads never
reach) fail on it."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from cuda_emulator import EmulatedRoutine
from cuda_runners import RUNNERS
from test_cuda_matmul import TF32, fill, matmul
from test_cuda_reductions import full_reduction
from test_row_fusion import stored_softmax_case

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


# ---- what the hardware does not promise ------------------------------------------------------


def row_kernel(rows: int, length: int, edit=None) -> EmulatedRoutine:
    """The row-fused softmax with stored row values (test_row_fusion), its source edited."""
    _, _, _, code = stored_softmax_case(rows, length)
    return EmulatedRoutine(compile_to_ir(code, True), GpuOptions(), edit=edit)


def inserted(after: str, text: str):
    """A source edit that puts `text` after the first line containing `after`."""

    def edit(source: str) -> str:
        lines = source.splitlines()
        k = next(k for k, line in enumerate(lines) if after in line)
        return "\n".join([*lines[: k + 1], text, *lines[k + 1 :]]) + "\n"

    return edit


def test_threads_passing_values_through_a_restrict_buffer_fail():
    """A row's max is stored by its team's first lane and read by the others after a barrier:
    through a `__restrict__` parameter, NVCC may read it before the store (it did on an H100)."""

    def restrict_all(source: str) -> str:
        return re.sub(r"float \*(?!__restrict__)", "float *__restrict__ ", source)

    row_kernel(3, 5).run()
    with pytest.raises(AssertionError, match=r"share top\[\d+\], of a __restrict__ parameter"):
        row_kernel(3, 5, restrict_all).run()


def test_lanes_of_a_warp_at_different_shuffles_fail():
    """A full-mask shuffle needs every lane of the warp at the same one."""
    row_kernel(3, 17).run()
    extra = "    if (lane == 1) partialb = __shfl_xor_sync(0xffffffffu, partialb, 1, 8);"
    with pytest.raises(AssertionError, match="lanes of a warp at different warp collectives"):
        row_kernel(3, 17, inserted("float partialb", extra)).run()


def test_a_barrier_that_exited_threads_never_reach_fails():
    row_kernel(3, 4096).run()
    exit_warp = inserted("const int team", "  if (threadIdx.x / 32 == 1) return;")
    with pytest.raises(AssertionError, match="exited threads of the block never reach"):
        row_kernel(3, 4096, exit_warp).run()


def test_threads_at_different_barriers_fail():
    extra = inserted("const int team", "  if (threadIdx.x / 32 == 1) __syncthreads();")
    with pytest.raises(AssertionError, match="threads of a block at different __syncthreads"):
        row_kernel(3, 4096, extra).run()

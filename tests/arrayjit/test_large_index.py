"""Buffers of 2^31 elements or more: loop variables, index arithmetic and GPU thread indices are
64-bit wherever a dim, a product of dims or an offset can pass 2^31 - 1, and 32-bit elsewhere.
Read from the generated C and CUDA, and run for real on the C backend over 2^31 + 8 cells."""

from __future__ import annotations

import re

import numpy as np
import pytest

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Constant, Fetch, RangeOfShape
from arrayjit.backends.cc import CBackend
from arrayjit.backends.chunks import split
from arrayjit.codegen import cuda_syntax
from arrayjit.codegen.c_syntax import INT32_MAX, index_type
from arrayjit.indexing import Fixed, Iterator, Projections, identity_projections
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime.runtime import Runtime, cuda_usable
from arrayjit.schedule import gpu_kernels
from arrayjit.tnode import MemoryMode, TNode

BIG = 2**31 + 8


def c_source(code) -> str:
    """The C functions the C backend compiles for `code` (one per chunk), without compiling."""
    backend = CBackend()
    return "\n".join(backend.chunk_function(c, "").text() for c in split(compile_to_ir(code)))


def cuda_source(code) -> str:
    stmt = compile_to_ir(code, reductions_innermost=True)
    plans = gpu_kernels.plan_kernels(stmt)
    source, _ = cuda_syntax.kernel_source(
        cuda_syntax.CudaSyntax(), plans, ir.tnodes_in(stmt), "ocannl_f", stmt
    )
    return source


def loop_headers(source: str) -> list[tuple[str, int]]:
    """(index type, extent) of every `for (T i = 0; i < N; ...)` loop over a constant extent."""
    return [
        (kind, int(extent))
        for kind, extent in re.findall(r"for \((\w+) \w+ = 0; \w+ < (\d+);", source)
    ]


def test_index_type_is_32_bit_up_to_int32_max():
    assert index_type(1) == index_type(INT32_MAX) == "int"
    assert index_type(INT32_MAX + 1) == index_type(BIG) == "int64_t"


def test_c_loop_over_more_than_int32_max_cells_is_64_bit():
    x = TNode("x", (BIG,))
    source = c_source(Fetch(x, Constant(1.0)))
    assert loop_headers(source) == [("int64_t", BIG)]
    assert "for (int i0 = 0; i0 < 2147483656" not in source


def test_c_loops_of_small_dims_with_a_large_product_use_64_bit_offsets():
    x, y = TNode("x", (3, 2**30)), TNode("y", (3, 2**30))
    source = c_source(Accum(y, None, "neg", (x,), identity_projections(x.dims, 1)))
    assert loop_headers(source) == [("int", 3), ("int", 2**30)]
    # Offsets like 1073741824 * i0 + i1 are computed in 64 bits.
    assert re.search(r"y_\d\[1073741824 \* \(int64_t\)\w+ \+ \(int64_t\)\w+\]", source), source


def reduction(x: TNode, out: TNode) -> Accum:
    """`out[i] = sum_k x[i, k]` (or the sum of all of a one-axis `x` into one cell)."""
    i, k = Iterator(name="i"), Iterator(name="k")
    if len(x.dims) == 1:
        return Accum(
            out, "add", "identity", (x,), Projections(x.dims, (k,), (Fixed(0),), ((k,),)), True
        )
    projections = Projections(x.dims, (i, k), (i,), ((i, k),))
    return Accum(out, "add", "identity", (x,), projections, True)


def test_c_reduction_over_a_large_axis_is_64_bit():
    source = c_source(reduction(TNode("x", (BIG,)), TNode("total", (1,))))
    assert loop_headers(source) == [("int64_t", BIG)]


def test_c_small_nests_stay_32_bit():
    source = c_source(reduction(TNode("x", (5, 7)), TNode("total", (5,))))
    assert loop_headers(source) == [("int", 5), ("int", 7)] and "int64_t " not in source


def test_cuda_grid_over_more_than_int32_max_cells_is_64_bit():
    x = TNode("x", (BIG,))
    source = cuda_source(Fetch(x, RangeOfShape()))
    assert "long long cell" in source
    # The flattened iterator itself can exceed int: declared 64-bit.
    assert re.search(r"const int64_t \w+ = \(int64_t\)\(cell\)", source), source
    assert re.search(r"\(\(float\)\(\(int64_t\)\w+\)\)", source)


def test_cuda_grid_of_small_dims_with_a_large_product():
    x, y = TNode("x", (4, 2**30)), TNode("y", (4, 2**30))
    source = cuda_source(Accum(y, None, "neg", (x,), identity_projections(x.dims, 1)))
    assert "long long cell" in source
    assert re.findall(r"const (\w+) \w+ = \(\1\)", source) == ["int", "int"]
    assert "1073741824 * (int64_t)" in source


def test_cuda_small_grid_stays_32_bit():
    x, y = TNode("x", (1000,)), TNode("y", (1000,))
    source = cuda_source(Accum(y, None, "neg", (x,), identity_projections(x.dims, 1)))
    assert "int cell" in source and "int64_t" not in source.split("__global__", 1)[1]


def test_cuda_tiled_matmul_with_a_large_output_uses_64_bit_offsets():
    m, k, n = 65536, 16, 65537
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    code = Accum(
        c, "add", "mul", (a, b), Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j))), True
    )
    source = cuda_source(code)
    assert "tilex" in source
    store = next(line for line in source.splitlines() if "if (row <" in line and "c_" in line)
    assert "65537 * (int64_t)row + (int64_t)col" in store, store


def test_cuda_tiled_matmul_positions_near_int32_max_are_64_bit():
    def source(cols: int) -> str:
        a, b, c = TNode("a", (256, 64)), TNode("b", (64, cols)), TNode("c", (256, cols))
        i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
        projections = Projections((256, cols, 64), (i, j, r), (i, j), ((i, r), (r, j)))
        return cuda_source(Accum(c, "add", "mul", (a, b), projections, True))

    # The last tile's positions pass the extent by up to a tile: 32-bit only with that margin.
    small = source(1000)
    assert "tilex" in small and "int64_t" not in small.split("__global__", 1)[1]
    wide = source(INT32_MAX - 64)
    assert "tilex" in wide and "const int64_t rowbase" in wide and "int64_t tile = 0" in wide
    assert "const int64_t gs" in wide and "const int64_t row" in wide


# ---- a real run over more than 2^31 cells -------------------------------------------------


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def assert_offsets(values: np.ndarray) -> None:
    """Each cell holds its offset, rounded to float32 as C rounds an int64_t to float."""
    # Small chunks stay in cache: the check takes seconds, not minutes.
    chunk = 2**16
    offsets, expected = np.arange(chunk, dtype=np.int64), np.empty(chunk, np.float32)
    for start in range(0, values.size, chunk):
        n = min(chunk, values.size - start)
        expected[:n] = offsets[:n] + start
        if not np.array_equal(values[start : start + n], expected[:n]):
            np.testing.assert_array_equal(values[start : start + n], expected[:n])


# About 40 s on a 2-core machine: under the minute that would move it out of the default run.
@pytest.mark.slow
def test_c_run_over_more_than_int32_max_cells():
    """Every one of 2^31 + 8 float32 cells holds its own offset (a 32-bit loop would overflow and
    write out of bounds or stop early), and a max over all of them reaches the last."""
    # Checked when the test starts, not at collection: other processes may have taken memory.
    if _available_memory() < 12 * 2**30:
        pytest.skip("needs 12 GiB of free memory for 2^31 + 8 floats")
    x, top = TNode("x", (BIG,), memory_mode=MemoryMode.HOST), TNode("top", (1,))
    k = Iterator(name="k")
    biggest = Accum(
        top, "max", "identity", (x,), Projections((BIG,), (k,), (Fixed(0),), ((k,),)), True
    )
    code = Fetch(x, RangeOfShape()) + biggest
    ctx = Runtime("c")
    routine = ctx.compile(code, "big")
    routine.run()
    assert_offsets(x.host())
    assert top.host()[0] == np.float32(BIG - 1)


needs_gpu_memory = pytest.mark.skipif(
    not cuda_usable(), reason="CUDA backend: no usable NVIDIA GPU, driver or cuda-python here"
)


@pytest.mark.slow
@needs_gpu_memory
def test_cuda_run_over_more_than_int32_max_cells():
    """As the C run: 2^31 + 8 cells on the grid, each its own offset. (No max here: a full
    reduction runs in one GPU thread, minutes over 2^31 cells.)"""
    x = TNode("x", (BIG,))
    Runtime("cuda").compile(Fetch(x, RangeOfShape()), "big").run()
    assert_offsets(x.host())


@pytest.mark.slow
@needs_gpu_memory
def test_cuda_tiled_matmul_with_more_than_int32_max_output_cells():
    """65536 x 65537 outputs of a tiled matrix product, exact (small integers), against numpy."""
    m, k, n = 65536, 16, 65537
    rng = np.random.default_rng(0)
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    a.set_host(rng.integers(-3, 4, (m, k)))
    b.set_host(rng.integers(-3, 4, (k, n)))
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j)))
    Runtime("cuda").compile(Accum(c, "add", "mul", (a, b), projections, True), "big_matmul").run()
    values = c.host()
    for start in range(0, m, 4096):
        expected = a.host()[start : start + 4096] @ b.host()
        np.testing.assert_array_equal(values[start : start + 4096], expected)

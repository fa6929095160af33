"""The 16-bit tensor-core matmul (mma.m16n8k16 with fp32 accumulation), prepared for the float16
and bfloat16 dtypes: the dtypes are made here as they will be named (`arrayjit.dtypes` entries
"float16"/"bfloat16", CUDA C names `__half`/`__nv_bfloat16`). Small integers are exact in both,
and their products' sums in fp32, so results must match numpy exactly."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from cuda_runners import RUNNERS, nvcc_cubin, resources, runner, sass
from test_cuda_matmul import matmul_plan

from arrayjit.assignments import Accum
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.dtypes import DType
from arrayjit.indexing import Iterator, Projections
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule.gpu_matmul import OperandLoad
from arrayjit.tnode import TNode

BFLOAT16 = DType("bfloat16", np.dtype(ml_dtypes.bfloat16), "__nv_bfloat16", True, "f", "")
FLOAT16 = DType("float16", np.dtype(np.float16), "__half", True, "f", "")


def matmul16(m, k, n, dtype, transpose_a=False, transpose_b=False):
    """`c =:+ a * b` with 16-bit a, b and an fp32 c."""
    a = TNode("a", (k, m) if transpose_a else (m, k), dtype)
    b = TNode("b", (n, k) if transpose_b else (k, n), dtype)
    c = TNode("c", (m, n))
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    index_a = (r, i) if transpose_a else (i, r)
    index_b = (j, r) if transpose_b else (r, j)
    projections = Projections((m, n, k), (i, j, r), (i, j), (index_a, index_b))
    return Accum(c, "add", "mul", (a, b), projections, True), a, b, c


def test_16_bit_products_take_tensor_cores_with_16_byte_copies_where_aligned():
    code, *_ = matmul16(256, 64, 256, BFLOAT16)
    shape = matmul_plan(code)
    assert shape.config.tensor_cores == "bf16"
    # a (k contiguous): 8 values per copy into a [row][k] tile; b along the columns.
    assert shape.loads == (OperandLoad("async16", 8, True), OperandLoad("async16", 8, False))
    code, *_ = matmul16(100, 60, 90, FLOAT16)  # rows of 60 and 90: not 16-byte aligned
    shape = matmul_plan(code)
    assert shape.config.tensor_cores == "f16"
    assert shape.loads == (OperandLoad("raw", 1, True), OperandLoad("raw", 1, False))


@pytest.mark.parametrize("dtype", [BFLOAT16, FLOAT16], ids=["bf16", "f16"])
@pytest.mark.parametrize(
    ("m", "k", "n", "transpose_a", "transpose_b"),
    [(136, 72, 80, False, False), (64, 48, 200, True, True), (100, 60, 90, False, True)],
)
def test_16_bit_matmul_is_exact_on_integers(dtype, m, k, n, transpose_a, transpose_b):
    if "emulator" not in RUNNERS:
        pytest.skip("emulator runs left out by request")
    run = runner("emulator")  # no 16-bit dtypes in the backend yet: the emulator runs it
    rng = np.random.default_rng(m + n)
    code, a, b, c = matmul16(m, k, n, dtype, transpose_a, transpose_b)
    x = rng.integers(-4, 5, a.dims).astype(np.float32)
    y = rng.integers(-4, 5, b.dims).astype(np.float32)
    a.set_host(x)
    b.set_host(y)
    c.set_host(np.full((m, n), np.nan, np.float32))
    ran = run(code)
    assert ran.plans[0].matmul.config.tensor_cores in ("bf16", "f16")
    x = x.T if transpose_a else x
    y = y.T if transpose_b else y
    np.testing.assert_array_equal(c.host(), x.astype(np.float64) @ y)


def test_16_bit_kernel_compiles_to_ldmatrix_and_hmma(tmp_path):
    code, *_ = matmul16(4096, 4096, 4096, BFLOAT16)
    source = generate(compile_to_ir(code, True), "ocannl_bf16").source
    # Until the dtype lands, its header and its helper functions (which will compute through
    # float) are not in the printer: include the header, leave the generic helpers out.
    helpers = "OCANNL_FN __nv_bfloat16 "
    source = "\n".join(line for line in source.splitlines() if not line.startswith(helpers))
    cubin = nvcc_cubin(source, tmp_path, headers="#include <cuda_bf16.h>")
    assert resources(cubin)["ocannl_bf16_k0"]["LOCAL"] == 0
    code_of = sass(cubin)["ocannl_bf16_k0"]
    assert code_of.count("HMMA.16816.F32.BF16") == 2 * 32 and "LDSM" in code_of


# ---- the dtypes themselves (arrayjit.dtypes): reads widened, a 16-bit result rounded ---------

#: nvcc includes the CUDA headers outside the namespace `nvcc_cubin` puts the source in; the
#: source's own includes are then no-ops (NVRTC has the headers built in).
HALF_HEADERS = "#include <cuda_fp16.h>\n#include <cuda_bf16.h>"


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
@pytest.mark.parametrize("out_dtype", ["float32", "same"])
def test_16_bit_dtypes_take_tensor_cores_and_round_a_16_bit_result(name, out_dtype, tmp_path):
    """`c =:+ a * b` over the real 16-bit dtypes: the reads are widened to float32 in the loop
    IR, the planner sees through that to the 16-bit reads (tensor cores), a 16-bit c is rounded
    once per cell. Exact on small integers (sums below 256 are exact in both types)."""
    m, k, n = 100, 64, 72
    a, b = TNode("a", (m, k), name), TNode("b", (k, n), name)
    c = TNode("c", (m, n), name if out_dtype == "same" else "float32")
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    code = Accum(
        c, "add", "mul", (a, b), Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j))), True
    )
    source = generate(compile_to_ir(code, True), "ocannl_half").source
    assert "#include <cuda_bf16.h>" in source
    nvcc_cubin(source, tmp_path, headers=HALF_HEADERS)
    if "emulator" not in RUNNERS:
        pytest.skip("emulator runs left out by request")
    rng = np.random.default_rng(4)
    x, y = rng.integers(-2, 3, (m, k)), rng.integers(-2, 3, (k, n))
    a.set_host(x)
    b.set_host(y)
    ran = runner("emulator")(code)
    assert ran.plans[0].matmul.config.tensor_cores == {"bfloat16": "bf16", "float16": "f16"}[name]
    np.testing.assert_array_equal(c.host().astype(np.float64), x @ y)

"""The tiled matrix-product kernels of the CUDA backend: configuration and operand loading
(pure Python), the generated source and its SASS (with nvcc), and values against numpy on the CPU
emulator and, where one is usable, on a GPU.

Sums of products of small integers are exact in float32 and in TF32 (their operands round to
themselves), so they must match numpy exactly in every configuration; random values are checked
by the relative error of the whole product (SIMT under 1e-5; TF32, whose operands keep 10
mantissa bits, under 1e-3).
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, nvcc_cubin, resources, runner, sass

from arrayjit.assignments import Accum
from arrayjit.codegen.cuda_device import MMA_HELPERS
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Iterator, Projections, identity_projections
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule import gpu_matmul
from arrayjit.schedule.gpu_kernels import GpuOptions, plan_kernels
from arrayjit.schedule.gpu_matmul import CANDIDATES, CANDIDATES_TF32, MatmulConfig, OperandLoad
from arrayjit.tnode import MemoryMode, TNode

TF32 = GpuOptions(allow_tf32=True)


def matmul(m, k, n, dtype="float32", transpose_a=False, transpose_b=False, zero_first=True):
    """`c (=:)+ a * b` with a stored (m, k) or (k, m), b stored (k, n) or (n, k)."""
    a = TNode("a", (k, m) if transpose_a else (m, k), dtype)
    b = TNode("b", (n, k) if transpose_b else (k, n), dtype)
    c = TNode("c", (m, n), dtype)
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections(
        (m, n, k),
        (i, j, r),
        (i, j),
        ((r, i) if transpose_a else (i, r), (j, r) if transpose_b else (r, j)),
    )
    return Accum(c, "add", "mul", (a, b), projections, zero_first), a, b, c


def fill(rng, a: TNode, b: TNode, transpose_a=False, transpose_b=False, integers=True):
    """Random operands; returns them as (m, k) and (k, n) float64 arrays."""
    make = (lambda s: rng.integers(-4, 5, s)) if integers else rng.standard_normal
    x, y = make(a.dims).astype(a.dtype.numpy), make(b.dims).astype(b.dtype.numpy)
    a.set_host(x)
    b.set_host(y)
    x, y = x.astype(np.float64), y.astype(np.float64)
    return (x.T if transpose_a else x), (y.T if transpose_b else y)


def matmul_plan(code, options=None):
    (plan,) = plan_kernels(compile_to_ir(code, reductions_innermost=True), options)
    return plan.matmul


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


# ---- configuration and loading (pure Python) ---------------------------------------------


def test_4096_fp32_gets_the_simt_default_with_asynchronous_copies():
    code, *_ = matmul(4096, 4096, 4096)
    shape = matmul_plan(code)
    assert shape.config == MatmulConfig(128, 128, 8, 4) and shape.config.threads == 256
    # a is row-major (k contiguous): element copies transposed into the tile; b is contiguous
    # along the output columns: 16-byte copies.
    assert shape.loads == (OperandLoad("async", 1, True), OperandLoad("async16", 4, False))
    assert shape.config.shared_bytes(4, 4) == 4 * 8 * (132 + 132) * 4


def test_tf32_only_when_allowed_and_only_for_fp32_sums_of_products():
    code, *_ = matmul(512, 512, 512)
    assert matmul_plan(code, TF32).config.tensor_cores == "tf32"
    assert matmul_plan(code).config.tensor_cores is None
    code, *_ = matmul(512, 512, 512, "float64")
    assert matmul_plan(code, TF32).config.tensor_cores is None
    a, b, c = TNode("a", (64, 64)), TNode("b", (64, 64)), TNode("c", (64, 64))
    i, j, r = Iterator(), Iterator(), Iterator()
    projections = Projections((64, 64, 64), (i, j, r), (i, j), ((i, r), (r, j)))
    max_plus = Accum(c, "max", "add", (a, b), projections, True)
    assert matmul_plan(max_plus, TF32).config.tensor_cores is None


def test_operand_layouts_choose_the_copies():
    code, *_ = matmul(256, 64, 256, transpose_a=True, transpose_b=True)
    assert matmul_plan(code).loads == (
        OperandLoad("async16", 4, False),  # a stored (k, m): contiguous along rows
        OperandLoad("async", 1, True),  # b stored (n, k): contiguous along k
    )
    code, *_ = matmul(130, 64, 67, "float64")  # 67 columns: not 16-byte aligned rows
    assert matmul_plan(code).loads == (
        OperandLoad("async", 1, True),
        OperandLoad("async", 1, False),
    )


def test_tensor_cores_copy_k_contiguous_operands_along_k():
    code, *_ = matmul(256, 64, 256, transpose_b=True)
    assert matmul_plan(code, TF32).loads == (
        OperandLoad("async16", 4, True),  # [row][k] tile
        OperandLoad("async16", 4, True),  # b stored (n, k): [col][k] tile
    )
    assert matmul_plan(code).loads[0] == OperandLoad("async", 1, True)  # SIMT: [k][row] tiles


def test_a_computed_operand_is_evaluated_into_the_tile():
    a, b, c = TNode("a", (64, 48)), TNode("b", (48, 40)), TNode("c", (64, 40))
    e = TNode("e", (64, 48), memory_mode=MemoryMode.VIRTUAL)
    i, j, r = Iterator(), Iterator(), Iterator()
    projections = Projections((64, 40, 48), (i, j, r), (i, j), ((i, r), (r, j)))
    code = Accum(e, None, "exp", (a,), identity_projections((64, 48), 1)) + Accum(
        c, "add", "mul", (e, b), projections, True
    )
    assert matmul_plan(code).loads[0] == OperandLoad("compute", 1, True)


def test_tuned_configuration_is_taken_by_key():
    code, *_ = matmul(300, 100, 200)
    shape = matmul_plan(code)
    key = gpu_matmul.config_key(shape, None)
    chosen = MatmulConfig(64, 64, 16, 3)
    assert matmul_plan(code, GpuOptions(matmul_configs={key: chosen})).config == chosen
    # A TF32 choice for a SIMT key is ignored.
    bad = GpuOptions(matmul_configs={key: CANDIDATES_TF32[0]})
    assert matmul_plan(code, bad).config == gpu_matmul.default_config(shape, None)


def test_source_has_asynchronous_copies_and_dynamic_shared_memory():
    code, *_ = matmul(4096, 4096, 4096)
    stmt = compile_to_ir(code, True)
    simt = generate(stmt, "ocannl_mm")
    assert "ocannl_cp_async<16>(" in simt.source and "ocannl_cp_async<4>(" in simt.source
    assert "ocannl_cp_async_wait<2>()" in simt.source and MMA_HELPERS not in simt.source
    (launch,) = simt.launches
    assert launch.grid == (32, 32, 1) and launch.block == 256 and launch.shared_bytes == 33792
    tf32 = generate(stmt, "ocannl_mm", TF32)
    assert MMA_HELPERS in tf32.source and "ocannl_mma_tf32(fragc[mt][nt]" in tf32.source
    (launch,) = tf32.launches
    # a (k contiguous) is copied 16 bytes along k into a [row][k] tile; b into a [k][col] one.
    assert launch.block == 128 and launch.shared_bytes == 3 * (128 * 36 + 32 * 136) * 4


def test_kernels_compile_for_sm90_without_spills_and_use_the_intended_instructions(tmp_path):
    code, *_ = matmul(4096, 4096, 4096)
    stmt = compile_to_ir(code, True)
    simt = nvcc_cubin(generate(stmt, "ocannl_simt").source, tmp_path)
    usage = resources(simt)["ocannl_simt_k0"]
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0 and usage["REG"] <= 128
    code_of = sass(simt)["ocannl_simt_k0"]
    # One 8-deep tile: 8 x 64 fused multiply-adds fed by 16-byte shared loads; copies bypass
    # registers (LDGSTS).
    assert code_of.count("FFMA") >= 512 and "LDS.128" in code_of and "LDGSTS" in code_of
    folder = tmp_path / "tf32"
    folder.mkdir()
    tf32 = nvcc_cubin(generate(stmt, "ocannl_tf32", TF32).source, folder)
    assert resources(tf32)["ocannl_tf32_k0"]["LOCAL"] == 0
    assert sass(tf32)["ocannl_tf32_k0"].count("HMMA.1688.F32.TF32") == 4 * 32


def test_8_by_16_thread_patches_compile_without_spills_to_fewer_shared_loads(tmp_path):
    code, *_ = matmul(4096, 4096, 4096)
    stmt = compile_to_ir(code, True)
    config = MatmulConfig(128, 256, 8, 2, thread_cols=16)
    key = gpu_matmul.config_key(matmul_plan(code), None)
    generated = generate(stmt, "ocannl_wide", GpuOptions(matmul_configs={key: config}))
    assert generated.plans[0].matmul.config == config
    assert generated.launches[0].block == 256
    cubin = nvcc_cubin(generated.source, tmp_path)
    usage = resources(cubin)["ocannl_wide_k0"]
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0
    code_of = sass(cubin)["ocannl_wide_k0"]
    # One 8-deep tile: 8 x 128 fused multiply-adds on 8 x 6 16-byte shared loads (8 x 4 feed
    # the 8 x 8 patch's 8 x 64).
    assert code_of.count("FFMA") >= 1024 and code_of.count("LDS.128") == 48


# ---- values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "k", "n", "transpose_a", "transpose_b"),
    [
        (130, 37, 67, False, False),
        (64, 256, 96, True, False),
        (33, 3, 200, False, True),
        (257, 129, 65, True, True),
        (32, 1, 32, False, False),
    ],
)
def test_matmul_is_exact_on_integers(run, m, k, n, transpose_a, transpose_b):
    rng = np.random.default_rng(m + k + n)
    code, a, b, c = matmul(m, k, n, transpose_a=transpose_a, transpose_b=transpose_b)
    x, y = fill(rng, a, b, transpose_a, transpose_b)
    c.set_host(np.full((m, n), np.nan, np.float32))  # poison: every cell must be written
    ran = run(code)
    assert ran.plans[0].matmul is not None
    np.testing.assert_array_equal(c.host(), x @ y)


@pytest.mark.parametrize("config", [*CANDIDATES, *CANDIDATES_TF32], ids=MatmulConfig.describe)
def test_every_tuning_candidate_is_exact_on_integers(run, config):
    rng = np.random.default_rng(1)
    m, k, n = 136, 70, 150  # partial tiles along every axis
    code, a, b, c = matmul(m, k, n)
    x, y = fill(rng, a, b)
    c.set_host(np.full((m, n), np.nan, np.float32))
    kind = config.tensor_cores
    options = GpuOptions(allow_tf32=kind == "tf32")
    key = gpu_matmul.config_key(matmul_plan(code, options), kind)
    ran = run(code, GpuOptions(allow_tf32=kind == "tf32", matmul_configs={key: config}))
    assert ran.plans[0].matmul.config == config
    np.testing.assert_array_equal(c.host(), x @ y)


@pytest.mark.parametrize("tf32", [False, True], ids=["simt", "tf32"])
def test_random_values_are_within_rounding(run, tf32):
    rng = np.random.default_rng(2)
    m, k, n = 200, 300, 160
    code, a, b, c = matmul(m, k, n, zero_first=False)
    x, y = fill(rng, a, b, integers=False)
    start = rng.standard_normal((m, n)).astype(np.float32)
    c.set_host(start)
    run(code, GpuOptions(allow_tf32=tf32))
    expected = start + x @ y
    error = np.linalg.norm(c.host() - expected) / np.linalg.norm(expected)
    assert error < (1e-3 if tf32 else 1e-5)


@pytest.mark.parametrize(
    ("transpose_a", "transpose_b"), [(False, False), (False, True), (True, True), (True, False)]
)
def test_tf32_is_exact_on_integers_in_every_tile_layout(run, transpose_a, transpose_b):
    rng = np.random.default_rng(8)
    m, k, n = 136, 72, 80  # k: two 32-deep tiles and a partial one
    code, a, b, c = matmul(m, k, n, transpose_a=transpose_a, transpose_b=transpose_b)
    x, y = fill(rng, a, b, transpose_a, transpose_b)
    c.set_host(np.full((m, n), np.nan, np.float32))
    ran = run(code, TF32)
    assert ran.plans[0].matmul.config.tensor_cores == "tf32"
    np.testing.assert_array_equal(c.host(), x @ y)


def test_batched_max_plus_and_float64_are_exact(run):
    rng = np.random.default_rng(5)
    batch, m, k, n = 3, 40, 19, 50
    x, y = rng.standard_normal((batch, m, k)), rng.standard_normal((batch, k, n))
    a, b = TNode("a", (batch, m, k), "float64"), TNode("b", (batch, k, n), "float64")
    c = TNode("c", (batch, m, n), "float64")
    h, i, j, r = (Iterator(name=s) for s in "hijr")
    projections = Projections((batch, m, n, k), (h, i, j, r), (h, i, j), ((h, i, r), (h, r, j)))
    a.set_host(x)
    b.set_host(y)
    ran = run(Accum(c, "max", "add", (a, b), projections, True))
    assert ran.plans[0].matmul is not None
    np.testing.assert_array_equal(c.host(), (x[:, :, :, None] + y[:, None, :, :]).max(axis=2))


def test_computed_operand_matches_numpy(run):
    rng = np.random.default_rng(6)
    a, b, c = TNode("a", (70, 45)), TNode("b", (45, 90)), TNode("c", (70, 90))
    e = TNode("e", (70, 45), memory_mode=MemoryMode.VIRTUAL)
    i, j, r = Iterator(), Iterator(), Iterator()
    projections = Projections((70, 90, 45), (i, j, r), (i, j), ((i, r), (r, j)))
    code = Accum(e, None, "exp", (a,), identity_projections((70, 45), 1)) + Accum(
        c, "add", "mul", (e, b), projections, True
    )
    x = rng.standard_normal((70, 45)).astype(np.float32)
    y = rng.standard_normal((45, 90)).astype(np.float32)
    a.set_host(x)
    b.set_host(y)
    ran = run(code)
    assert ran.plans[0].matmul.loads[0].mode == "compute"
    expected = np.exp(x.astype(np.float64)) @ y
    assert np.linalg.norm(c.host() - expected) / np.linalg.norm(expected) < 1e-5


@pytest.mark.parametrize(
    "rows, cols, large",
    [
        (2048, 768, False),
        (768, 768, False),
        (2048, 3072, True),
        (300, 100, False),
        (4096, 4096, True),
    ],
)
def test_products_too_small_to_fill_the_gpu_take_small_tiles(rows, cols, large):
    code, *_ = matmul(rows, 64, cols)
    shape = matmul_plan(code)
    assert shape.config == (gpu_matmul.DEFAULT if large else gpu_matmul.SMALL)

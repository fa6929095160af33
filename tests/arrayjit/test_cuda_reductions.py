"""Parallel reductions of the CUDA backend: which nests get which form (pure Python), and their
values against numpy on the CPU emulator of the kernels and, where one is usable, on a GPU.

Exactness: sums of small integers are exact in any order, so they must match numpy exactly (a
value read twice or missed shows). Random values may differ from the sequential order by
rounding only: at most `depth * eps * sum(|x|)`, where `depth` is the longest chain of additions
any value goes through in the plan (values folded per thread, then the combining tree).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cuda_runners import RUNNERS, runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Arg, Call, Constant, Fetch, Lit, seq
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Fixed, Iterator, Projections
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule import gpu_reductions
from arrayjit.schedule.gpu_kernels import GpuOptions, plan_kernels
from arrayjit.tnode import MemoryMode, TNode

REFERENCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def row_reduction(x: TNode, out: TNode, accum: str = "add", zero_first: bool = True) -> Accum:
    """`out[i] accum= x[i, j]` over j."""
    (rows, length) = x.dims
    i, j = Iterator(name="i"), Iterator(name="j")
    projections = Projections((rows, length), (i, j), (i,), ((i, j),))
    return Accum(out, accum, "identity", (x,), projections, zero_first)


def column_reduction(x: TNode, out: TNode, accum: str = "add") -> Accum:
    """`out[j] accum= x[i, j]` over i."""
    (length, cols) = x.dims
    i, j = Iterator(name="i"), Iterator(name="j")
    projections = Projections((length, cols), (i, j), (j,), ((i, j),))
    return Accum(out, accum, "identity", (x,), projections, True)


def full_reduction(x: TNode, out: TNode, accum: str = "add", zero_first: bool = True) -> Accum:
    """`out[0] accum= x[...]` over every axis of x."""
    its = tuple(Iterator(name=f"r{k}") for k in range(len(x.dims)))
    projections = Projections(x.dims, its, (Fixed(0),), (its,))
    return Accum(out, accum, "identity", (x,), projections, zero_first)


def plans_of(code) -> list:
    return plan_kernels(compile_to_ir(code, reductions_innermost=True))


def forms(plans) -> list[tuple | None]:
    """(team, parts, vector, across cells) of each kernel, None for one thread per cell."""
    return [
        (p.reduction.team, p.reduction.parts, p.reduction.vector, p.reduction.across_cells)
        if p.reduction
        else None
        for p in plans
    ]


def depth(plans, length: int) -> int:
    """The longest chain of `op`s a value goes through in these plans (see the docstring)."""
    total = 1
    for plan in plans:
        red = plan.reduction
        if red is None:
            total += length
            continue
        per_thread = math.ceil(red.shape.length / (red.team * red.parts))
        total += per_thread + max(1, math.ceil(math.log2(red.team))) + 1
        length = red.parts
    return total


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


# ---- which form (pure Python) ------------------------------------------------------------


def test_sum_of_2_to_24_is_two_passes_of_vector_loads():
    x, total = TNode("x", (1 << 24,)), TNode("total", (1,))
    plans = plans_of(full_reduction(x, total))
    assert forms(plans) == [(256, 1024, 4, False), (256, 1, 4, False)]
    assert plans[0].scratch == plans[1].scratch and plans[0].scratch[0].dims == (1024,)


def test_row_sums_8192_by_4096_are_a_block_per_row():
    x, rows = TNode("x", (8192, 4096)), TNode("rows", (8192,))
    assert forms(plans_of(row_reduction(x, rows))) == [(256, 1, 4, False)]


def test_short_rows_are_a_warp_or_less_per_row():
    x, rows = TNode("x", (10000, 100)), TNode("rows", (10000,))
    assert forms(plans_of(row_reduction(x, rows))) == [(8, 1, 4, False)]
    x, rows = TNode("x", (10000, 1000), "float64"), TNode("rows", (10000,), "float64")
    assert forms(plans_of(row_reduction(x, rows))) == [(32, 1, 2, False)]


def test_column_sums_take_neighbouring_cells_and_split_into_parts():
    x, cols = TNode("x", (8192, 4096)), TNode("cols", (4096,))
    plans = plans_of(column_reduction(x, cols))
    assert forms(plans) == [(8, 8, 1, True), None]  # 8 partials per column: one thread each
    # With cells enough to fill the GPU, one thread per column already reads rows together.
    x, cols = TNode("x", (64, 1 << 18)), TNode("cols", (1 << 18,))
    assert forms(plans_of(column_reduction(x, cols))) == [None]


def test_short_or_unregroupable_reductions_stay_in_one_thread():
    x, rows = TNode("x", (100, 15)), TNode("rows", (100,))
    assert forms(plans_of(row_reduction(x, rows))) == [None]
    x, rows = TNode("x", (100, 500)), TNode("rows", (100,))
    assert forms(
        plan_kernels(
            compile_to_ir(row_reduction(x, rows), True), GpuOptions(parallel_reductions=False)
        )
    ) == [None]


def test_subtracting_reductions_are_sums_of_negated_values():
    # acc - v1 - v2 ... is exactly acc + (-v1) + (-v2) ...: regrouped as a sum is.
    x, rows = TNode("x", (100, 500)), TNode("rows", (100,))
    assert forms(plans_of(row_reduction(x, rows, "sub"))) == forms(plans_of(row_reduction(x, rows)))
    assert forms(plans_of(row_reduction(x, rows, "sub"))) != [None]


def test_misaligned_rows_use_scalar_loads():
    x, rows = TNode("x", (300, 1027)), TNode("rows", (300,))
    assert forms(plans_of(row_reduction(x, rows))) == [(32, 1, 1, False)]


def test_full_reductions_between_other_statements_are_kernels_of_their_own():
    x, y, total = TNode("x", (5000,)), TNode("y", (5000,)), TNode("total", (1,))
    i = Iterator(name="i")
    copy = Accum(y, None, "neg", (x,), Projections((5000,), (i,), (i,), ((i,),)))
    code = full_reduction(x, total) + copy + full_reduction(y, total, "max", zero_first=False)
    plans = plans_of(code)
    assert [p.reduction is not None for p in plans] == [True, False, True]


def test_reduction_source_shuffles_and_loads_vectors():
    x, rows = TNode("x", (64, 4096)), TNode("rows", (64,))
    stmt = compile_to_ir(row_reduction(x, rows, "max"), True)
    generated = generate(stmt, "ocannl_rows")
    source = generated.source
    assert source.count('extern "C" __global__') == 1
    assert "__shfl_xor_sync(0xffffffffu, partial, offset, 32)" in source
    assert "reinterpret_cast<const ocannl_float4 *>" in source
    assert "ocannl_max_float(partial," in source and "atomic" not in source
    assert generated.launches[0].block == 256 and generated.launches[0].grid == 64


def test_recognizer_needs_the_accumulator_only_in_its_update():
    x, rows = TNode("x", (8, 100)), TNode("rows", (8,))
    (plan,) = plans_of(row_reduction(x, rows))
    shape = gpu_reductions.reduction_shape(plan.body)
    assert shape is not None and shape.op == "add" and shape.length == 100
    # The accumulator read in the value: acc := acc + acc * x[i, j] is not a reduction.
    acc = ir.Local(shape.acc.name, shape.acc.dtype)
    loop = shape.loops[0]
    bad_value = ir.Apply("mul", (acc, shape.value), acc.dtype)
    bad_loop = ir.For(
        loop.iterator,
        loop.extent,
        ir.SetLocal(acc.name, ir.Apply("add", (acc, bad_value), acc.dtype)),
    )
    assert gpu_reductions.reduction_shape([*shape.pre, bad_loop, *shape.post]) is None


def mean_then(x: TNode, mean: TNode, after_reads_mean: bool):
    """`mean = sum(x) / 1024` (the sum virtual: a local divided once it is done), then a scalar
    store (of 1, or of `2 * mean`)."""
    total = TNode("total", (1,), "float32", MemoryMode.VIRTUAL)
    its = tuple(Iterator(name=f"r{k}") for k in range(len(x.dims)))
    sum_all = Accum(
        total, "add", "identity", (x,), Projections(x.dims, its, (Fixed(0),), (its,)), True
    )
    o = Iterator(name="o")
    one = Projections((1,), (o,), (o,), ((o,),))
    divide = Accum(mean, None, Call("div", (Arg(0), Lit(1024.0))), (total,), one)
    flag = TNode("flag", (1,))
    after = (
        Accum(flag, None, Call("mul", (Arg(0), Lit(2.0))), (total,), one)
        if after_reads_mean
        else Fetch(flag, Constant(1.0))
    )
    return seq([sum_all, divide, after]), flag


def test_a_mean_to_one_value_is_a_team_reduction():
    # An MLP's loss: the sum's local divided into a (1,) buffer, then the loss gradient's fill.
    x, mean = TNode("x", (4, 2560)), TNode("mean", (1,))
    code, _ = mean_then(x, mean, after_reads_mean=False)
    assert forms(plans_of(code)) == [(256, 1, 4, False), None]
    # A later store reading the sum too: both stores follow the one team reduction.
    code, _ = mean_then(x, mean, after_reads_mean=True)
    assert forms(plans_of(code)) == [(256, 1, 4, False)]


@pytest.mark.parametrize("after_reads_mean", [False, True])
def test_a_mean_to_one_value_matches_numpy(run, after_reads_mean):
    rng = np.random.default_rng(5)
    x, mean = TNode("x", (4, 2560)), TNode("mean", (1,))
    x.set_host(integers(rng, (4, 2560)))
    code, flag = mean_then(x, mean, after_reads_mean)
    run(code)
    total = x.host().sum()  # exact: small integers
    assert mean.host()[0] == np.float32(total / 1024)
    assert flag.host()[0] == (2 * total if after_reads_mean else 1)


# ---- values ------------------------------------------------------------------------------


def integers(rng, shape, dtype=np.float32) -> np.ndarray:
    return rng.integers(-8, 9, size=shape).astype(dtype)


@pytest.mark.parametrize("n", [16, 1000, 4099, 100_003, (1 << 18) + 5])
def test_full_sum_is_exact_on_integers_and_rounds_like_numpy(run, n):
    rng = np.random.default_rng(n)
    x, total = TNode("x", (n,)), TNode("total", (1,))
    x.set_host(integers(rng, n))
    total.set_host(np.nan)
    code = full_reduction(x, total)
    ran = run(code)
    assert total.host()[0] == x.host().astype(np.float64).sum()
    values = rng.standard_normal(n).astype(np.float32)
    x.set_host(values)
    run(code)
    bound = depth(ran.plans, n) * np.finfo(np.float32).eps * np.abs(values).astype(np.float64).sum()
    assert abs(total.host()[0] - values.astype(np.float64).sum()) <= bound


@pytest.mark.parametrize(
    ("rows", "length"), [(300, 77), (7, 5000), (64, 4096), (33, 1027), (1, 50_000), (5, 16)]
)
def test_row_sums_match_numpy(run, rows, length):
    rng = np.random.default_rng(rows * length)
    x, out = TNode("x", (rows, length), "float64"), TNode("out", (rows,), "float64")
    values = rng.standard_normal((rows, length))
    x.set_host(values)
    out.set_host(np.full(rows, np.nan))
    ran = run(row_reduction(x, out))
    eps = np.finfo(np.float64).eps
    bound = depth(ran.plans, length) * eps * np.abs(values).sum(axis=1)
    assert (np.abs(out.host() - values.sum(axis=1)) <= bound).all()
    xi, outi = TNode("xi", (rows, length)), TNode("outi", (rows,))
    xi.set_host(integers(rng, (rows, length)))
    run(row_reduction(xi, outi))
    np.testing.assert_array_equal(outi.host(), xi.host().sum(axis=1))


@pytest.mark.parametrize(("length", "cols"), [(5000, 300), (100, 40), (2048, 33)])
def test_column_sums_match_numpy(run, length, cols):
    rng = np.random.default_rng(length + cols)
    x, out = TNode("x", (length, cols)), TNode("out", (cols,))
    x.set_host(integers(rng, (length, cols)))
    out.set_host(np.full(cols, np.nan, np.float32))
    ran = run(column_reduction(x, out))
    assert any(p.reduction is not None and p.reduction.across_cells for p in ran.plans)
    np.testing.assert_array_equal(out.host(), x.host().sum(axis=0))


@pytest.mark.parametrize("accum", ["max", "min", "mul"])
def test_max_min_product_and_nan_inf_propagate_as_numpy(run, accum):
    rng = np.random.default_rng(7)
    rows, length = 6, 3000
    values = rng.uniform(0.9, 1.1, size=(rows, length)).astype(np.float32)
    values[1, 1234] = np.nan
    values[2, 17] = np.inf
    values[3, 2999] = -np.inf
    values[4, 5], values[4, 2000] = np.inf, -np.inf
    x, out = TNode("x", (rows, length)), TNode("out", (rows,))
    x.set_host(values)
    run(row_reduction(x, out, accum))
    expected = REFERENCE[accum].reduce(values.astype(np.float64), axis=1)
    got = out.host()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(
        got[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)]
    )
    if accum == "mul":
        # Each of the length - 1 products rounds once, in whatever order: a relative error of
        # at most (length - 1) eps; a missed or repeated value would change it by about 5%.
        bound = length * np.finfo(np.float32).eps * np.abs(expected[finite])
        assert (np.abs(got[finite] - expected[finite]) <= bound).all()
    else:
        np.testing.assert_array_equal(got[finite], expected[finite])


def test_integer_sums_and_maxima_are_exact(run):
    rng = np.random.default_rng(3)
    values = rng.integers(-1000, 1000, size=(40_000,)).astype(np.int32)
    x, total, top = (
        TNode("x", (40_000,), "int32"),
        TNode("t", (1,), "int32"),
        TNode("m", (1,), "int32"),
    )
    x.set_host(values)
    run(full_reduction(x, total) + full_reduction(x, top, "max"))
    assert total.host()[0] == values.sum() and top.host()[0] == values.max()


def test_accumulating_into_existing_values_adds_the_old_value_once(run):
    rng = np.random.default_rng(11)
    x, out = TNode("x", (9, 700)), TNode("out", (9,))
    x.set_host(integers(rng, (9, 700)))
    start = integers(rng, 9)
    out.set_host(start)
    run(row_reduction(x, out, zero_first=False))
    np.testing.assert_array_equal(out.host(), start + x.host().sum(axis=1))
    y, total = TNode("y", (3, 50_000)), TNode("total", (1,))
    y.set_host(integers(rng, (3, 50_000)))
    total.set_host(5.0)
    run(full_reduction(y, total, zero_first=False))
    assert total.host()[0] == 5 + y.host().sum()


@pytest.mark.parametrize("rows, length", [(3, 50_257), (17, 1000), (1, 3)])
def test_subtracting_from_existing_values_matches_numpy(run, rows, length):
    # The loss gradient of a cross-entropy: `log_grad[row] -= sum of the row`.
    rng = np.random.default_rng(rows)
    x, out = TNode("x", (rows, length)), TNode("out", (rows,))
    x.set_host(integers(rng, (rows, length)))
    start = integers(rng, rows)
    out.set_host(start)
    run(row_reduction(x, out, "sub", zero_first=False))
    np.testing.assert_array_equal(out.host(), start - x.host().sum(axis=1))


def test_dot_product_and_matrix_vector_product(run):
    rng = np.random.default_rng(5)
    n, m = 10_000, 30
    a, b, dot = TNode("a", (n,)), TNode("b", (n,)), TNode("dot", (1,))
    mat, out = TNode("mat", (m, n)), TNode("out", (m,))
    for t in (a, b, mat):
        t.set_host(integers(rng, t.dims))
    i, j = Iterator(name="i"), Iterator(name="j")
    code = Accum(
        dot, "add", "mul", (a, b), Projections((n,), (i,), (Fixed(0),), ((i,), (i,))), True
    )
    code = code + Accum(
        out, "add", "mul", (mat, b), Projections((m, n), (i, j), (i,), ((i, j), (j,))), True
    )
    ran = run(code)
    assert all(p.reduction is not None for p in ran.plans)
    assert dot.host()[0] == a.host() @ b.host()
    np.testing.assert_array_equal(out.host(), mat.host() @ b.host())


def matrix_vector(rows: int, k: int, dtype: str, k_contiguous: bool):
    """`out[i] = sum over j of x[j] * w[i, j]` (`w` stored (rows, k)) or `x[j] * w[j, i]`
    (stored (k, rows)): one token's product with a weight matrix of `dtype`."""
    w = TNode("w", (rows, k) if k_contiguous else (k, rows), dtype)
    x, out = TNode("x", (k,)), TNode("out", (rows,))
    i, j = Iterator(name="i"), Iterator(name="j")
    wi = (i, j) if k_contiguous else (j, i)
    code = Accum(out, "add", "mul", (x, w), Projections((rows, k), (i, j), (i,), ((j,), wi)), True)
    return code, x, w, out


@pytest.mark.parametrize(
    "dtype, k_contiguous, form",
    [
        ("bfloat16", True, [(32, 1, 8, False)]),  # 16 bytes of weights a load
        ("float16", True, [(32, 1, 8, False)]),
        ("float32", True, [(32, 1, 4, False)]),
        # The weights' rows are the cells' neighbours (two passes: 1600 cells are few threads).
        ("bfloat16", False, [(8, 13, 1, True), None]),
    ],
)
def test_matrix_vector_products_read_the_matrix_wide_and_coalesced(dtype, k_contiguous, form):
    code, *_ = matrix_vector(1600, 1600, dtype, k_contiguous)
    assert forms(plans_of(code)) == form


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("k_contiguous", [True, False])
@pytest.mark.parametrize("rows, k", [(1, 16), (3, 1000), (17, 1608), (1001, 24)])
def test_matrix_vector_products_match_numpy(run, dtype, k_contiguous, rows, k):
    rng = np.random.default_rng(rows + k)
    code, x, w, out = matrix_vector(rows, k, dtype, k_contiguous)
    x.set_host(integers(rng, k))
    w.set_host(integers(rng, w.dims))  # small integers: exact in 16 bits and in any order
    run(code)
    weights = w.host().astype(np.float64)
    expected = (weights if k_contiguous else weights.T) @ x.host().astype(np.float64)
    np.testing.assert_array_equal(out.host(), expected.astype(np.float32))


def test_reduction_over_two_axes_with_a_hoisted_factor(run):
    """out[j] = sum over i, k of x[i, j, k] * w[i]: w[i] is hoisted between the reduction loops."""
    rng = np.random.default_rng(9)
    ni, nj, nk = 30, 5, 64
    x, w, out = TNode("x", (ni, nj, nk)), TNode("w", (ni,)), TNode("out", (nj,))
    x.set_host(integers(rng, x.dims))
    w.set_host(integers(rng, ni))
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((ni, nj, nk), (i, j, k), (j,), ((i, j, k), (i,)))
    ran = run(Accum(out, "add", "mul", (x, w), projections, True))
    assert ran.plans[0].reduction is not None and len(ran.plans[0].reduction.shape.loops) == 2
    np.testing.assert_array_equal(out.host(), np.einsum("ijk,i->j", x.host(), w.host()))


def test_results_are_deterministic(run):
    rng = np.random.default_rng(13)
    n = 200_001
    x, total = TNode("x", (n,)), TNode("total", (1,))
    x.set_host(rng.standard_normal(n).astype(np.float32) * 1e3)
    code = full_reduction(x, total)
    run(code, seed=1)
    first = total.host().copy()
    run(code, seed=2)  # the emulator runs threads in another order
    np.testing.assert_array_equal(total.host(), first)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 40),
    length=st.integers(16, 3000),
    accum=st.sampled_from(["add", "max", "min"]),
    seed=st.integers(0, 1000),
)
def test_row_reductions_of_drawn_shapes_match_numpy(run, rows, length, accum, seed):
    rng = np.random.default_rng(seed)
    x, out = TNode("x", (rows, length)), TNode("out", (rows,))
    x.set_host(integers(rng, (rows, length)))
    run(row_reduction(x, out, accum))
    np.testing.assert_array_equal(out.host(), REFERENCE[accum].reduce(x.host(), axis=1))


def test_reduction_kernels_compile_for_sm90_with_vector_loads_and_no_local_memory(tmp_path):
    from cuda_runners import nvcc_cubin, resources, sass

    x, total = TNode("x", (1 << 24,)), TNode("total", (1,))
    x2, rows = TNode("x", (8192, 4096)), TNode("rows", (8192,))
    x3, cols = TNode("x", (8192, 4096), "float64"), TNode("cols", (4096,), "float64")
    code = full_reduction(x, total) + row_reduction(x2, rows, "max") + column_reduction(x3, cols)
    generated = generate(compile_to_ir(code, True), "ocannl_r")
    cubin = nvcc_cubin(generated.source, tmp_path)
    usage = resources(cubin)
    assert len(usage) == 5 and all(u["LOCAL"] == 0 and u["STACK"] == 0 for u in usage.values())
    code_of = sass(cubin)
    # The row maxima (kernel 2) load 16 bytes at a time and combine with butterfly shuffles.
    assert "LDG.E.128" in code_of["ocannl_r_k2"] and "SHFL.BFLY" in code_of["ocannl_r_k2"]
    assert "LDG.E.128" in code_of["ocannl_r_k0"]


def test_16_bit_matrix_vector_kernels_load_16_bytes_of_weights(tmp_path):
    from cuda_runners import nvcc_cubin, resources, sass

    code, *_ = matrix_vector(1600, 1600, "bfloat16", True)
    other, *_ = matrix_vector(1600, 6400, "float16", True)
    generated = generate(compile_to_ir(code + other, True), "ocannl_r")
    cubin = nvcc_cubin(
        generated.source, tmp_path, headers="#include <cuda_fp16.h>\n#include <cuda_bf16.h>"
    )
    usage = resources(cubin)
    assert all(u["LOCAL"] == 0 and u["STACK"] == 0 for u in usage.values())
    code_of = sass(cubin)
    assert all("LDG.E.128" in code_of[name] for name in ("ocannl_r_k0", "ocannl_r_k1"))

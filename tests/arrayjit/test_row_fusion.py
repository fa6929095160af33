"""Row fusion (arrayjit.passes.row_fusion) and the row-fused CUDA kernel (schedule.gpu_rows):
which nests group, that the row values become locals, and values against numpy (float64) on the
C backend, on the CUDA kernels in the emulator and, where one is usable, on a GPU; through raw
assignments and through nn.softmax / log_softmax / layer_norm / rms_norm."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, runner

import ocannl_py as oc
from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Arg, Call
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Iterator, Projections
from arrayjit.lowering import compile_to_ir
from arrayjit.passes import row_fusion
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode, TNode
from ocannl_py import fusion, nn

#: (rows, row length): every odd size of both, and the long rows of a block per row.
SIZES = [(1, 1), (3, 17), (17, 3), (1000, 1), (1, 1000), (17, 1000), (3, 4096), (1000, 17)]
TOLERANCE = {"rtol": 2e-5, "atol": 2e-6}


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


@pytest.fixture(scope="module")
def c_context() -> Runtime:
    return Runtime("c")


def top_nests(stmt: ir.Stmt) -> list[ir.Stmt]:
    stmts = stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)
    return [s for s in stmts if isinstance(s, ir.For)]


# ---- raw assignments -----------------------------------------------------------------------


def rowwise(lhs: TNode, op, rhses: tuple[TNode, ...], per_row: tuple[bool, ...]) -> Accum:
    """`lhs[i, j] = op(...)`, each operand read at `[i, j]`, or at `[i]` where `per_row`."""
    i, j = Iterator(name="i"), Iterator(name="j")
    reads = tuple((i,) if row else (i, j) for row in per_row)
    return Accum(lhs, None, op, rhses, Projections(lhs.dims, (i, j), (i, j), reads))


def reduce_rows(lhs: TNode, accum: str, op, x: TNode) -> Accum:
    """`lhs[i] accum= op(x[i, j])` over j."""
    i, j = Iterator(name="i"), Iterator(name="j")
    return Accum(lhs, accum, op, (x,), Projections(x.dims, (i, j), (i,), ((i, j),)), True)


def raw_softmax(x: TNode, y: TNode) -> Accum:
    """`y = exp(x - max) / sum(exp(x - max))` over rows, the max, the shifted values and the sum
    private to the routine (VIRTUAL)."""
    rows, _ = x.dims
    top = TNode("max", (rows,), memory_mode=MemoryMode.VIRTUAL)
    e = TNode("e", x.dims, memory_mode=MemoryMode.VIRTUAL)
    total = TNode("sum", (rows,), memory_mode=MemoryMode.VIRTUAL)
    shifted_exp = Call("exp", (Call("sub", (Arg(0), Arg(1))),))
    return (
        reduce_rows(top, "max", "identity", x)
        + rowwise(e, shifted_exp, (x, top), (False, True))
        + reduce_rows(total, "add", "identity", e)
        + rowwise(y, "div", (e, total), (False, True))
    )


def softmax_reference(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_case(rows: int, length: int) -> tuple[TNode, TNode, np.ndarray, Accum]:
    x, y = TNode("x", (rows, length)), TNode("y", (rows, length))
    values = np.random.default_rng(rows * 7919 + length).normal(size=(rows, length)) * 4
    x.set_host(values.astype(np.float32))
    y.set_host(np.full((rows, length), np.nan))
    return x, y, x.host().copy(), raw_softmax(x, y)


def test_softmax_is_one_nest_with_its_row_values_in_locals():
    x, y, _, code = softmax_case(17, 1000)
    for innermost in (False, True):
        stmt = compile_to_ir(code, reductions_innermost=innermost)
        assert len(top_nests(stmt)) == 1
        assert ir.written_tnodes(stmt) == {y}
        assert {t.label for t in ir.read_tnodes(stmt)} == {"x"}


@pytest.mark.parametrize(("rows", "length"), SIZES)
def test_softmax_on_c_matches_numpy(c_context, rows, length):
    x, y, values, code = softmax_case(rows, length)
    c_context.compile(code).run()
    np.testing.assert_allclose(y.host(), softmax_reference(values), **TOLERANCE)


@pytest.mark.parametrize(("rows", "length"), SIZES)
def test_softmax_on_cuda_is_one_row_kernel_matching_numpy(run, rows, length):
    x, y, values, code = softmax_case(rows, length)
    ran = run(code)
    assert len(ran.plans) == 1 and ran.plans[0].rows is not None
    team = ran.plans[0].rows.team
    assert team == 256 if length > 1024 else 4 <= team <= 32  # a block per long row, else a warp
    np.testing.assert_allclose(y.host(), softmax_reference(values), **TOLERANCE)


def test_generated_cuda_source_of_softmax_holds_one_kernel():
    _, _, _, code = softmax_case(8192, 4096)
    generated = generate(compile_to_ir(code, reductions_innermost=True), "ocannl_softmax")
    assert len(generated.launches) == 1 and not generated.scratch
    assert generated.source.count("__global__") == 1
    # A block per row: block reductions through shared memory, a barrier between stages.
    assert generated.launches[0].block == 256 and generated.launches[0].grid == 8192
    assert "__shfl_xor_sync" in generated.source and "__syncthreads();" in generated.source
    # x is read by all three stages: each member keeps its 16 values of the row in registers,
    # loaded once, 16 bytes at a time.
    rows = generated.plans[0].rows
    assert (rows.per_thread, rows.vector, len(rows.cached)) == (16, 4, 1)
    assert generated.source.count("reinterpret_cast<const ocannl_float4 *>") == 4


def test_row_kernels_compile_for_sm90_without_local_memory(tmp_path):
    from cuda_runners import nvcc_cubin, resources

    code = softmax_case(8192, 4096)[3]
    x2, y2 = TNode("x2", (3000, 200), "float64"), TNode("y2", (3000, 200), "float64")
    code = code + raw_softmax(x2, y2)
    generated = generate(compile_to_ir(code, True), "ocannl_rows")
    assert len(generated.launches) == 2
    usage = resources(nvcc_cubin(generated.source, tmp_path))
    assert len(usage) == 2 and all(u["LOCAL"] == 0 and u["STACK"] == 0 for u in usage.values())


def test_stored_intermediate_and_backward_shape(run, c_context):
    """A stored pointwise stage read by a later reduction at other cells of the row (a barrier
    between them), and the shape of softmax's backward: gx = y * (g - sum(g * y))."""
    rows, length = 17, 300
    rng = np.random.default_rng(5)
    y, g, gx = TNode("y", (rows, length)), TNode("g", (rows, length)), TNode("gx", (rows, length))
    gy = TNode("gy", (rows, length))  # stored: HOST, so read from memory by the next stage
    dot = TNode("dot", (rows,), memory_mode=MemoryMode.LOCAL)
    code = (
        rowwise(gy, "mul", (g, y), (False, False))
        + reduce_rows(dot, "add", "identity", gy)
        + rowwise(gx, Call("mul", (Arg(0), Call("sub", (Arg(1), Arg(2))))), (y, g, dot),
                  (False, False, True))
    )  # fmt: skip
    stmt = compile_to_ir(code, reductions_innermost=True)
    assert len(top_nests(stmt)) == 1 and ir.written_tnodes(stmt) == {gy, gx}
    # Small integers: every product and sum is exact, so any value read too early shows.
    for execute in (run, lambda c: c_context.compile(c).run()):
        yv, gv = rng.integers(-8, 9, (rows, length)), rng.integers(-8, 9, (rows, length))
        y.set_host(yv), g.set_host(gv)
        gx.set_host(np.full((rows, length), np.nan))
        execute(code)
        np.testing.assert_array_equal(gx.host(), yv * (gv - (gv * yv).sum(axis=1, keepdims=True)))


def stored_softmax_case(rows: int, length: int) -> tuple[TNode, TNode, np.ndarray, Accum]:
    """(max, y, x's values, code): `softmax_case` with the row's max and sum stored (as a gradient routine keeps them for its
    backward): the team's first member stores each, the others read it back after a barrier."""
    x, y = TNode("x", (rows, length)), TNode("y", (rows, length))
    top, total = TNode("top", (rows,)), TNode("total", (rows,))
    e = TNode("e", x.dims, memory_mode=MemoryMode.VIRTUAL)
    values = np.random.default_rng(rows * 31 + length).normal(size=(rows, length)) * 4
    x.set_host(values.astype(np.float32))
    y.set_host(np.full((rows, length), np.nan))
    shifted_exp = Call("exp", (Call("sub", (Arg(0), Arg(1))),))
    code = (
        reduce_rows(top, "max", "identity", x)
        + rowwise(e, shifted_exp, (x, top), (False, True))
        + reduce_rows(total, "add", "identity", e)
        + rowwise(y, "div", (e, total), (False, True))
    )
    return top, y, x.host().copy(), code


#: Rows fewer than a block's teams (1, 3), short rows whose last chunk one lane holds (5, 17, 33),
#: a warp per row (1000), a block per row (4096).
STORED_SIZES = [(1, 5), (3, 5), (3, 17), (17, 17), (3, 33), (17, 1000), (3, 4096), (1000, 3)]


@pytest.mark.parametrize(("rows", "length"), STORED_SIZES)
def test_row_values_stored_by_one_member_and_read_by_the_others(run, rows, length):
    """Regression (H100, gpu3's kernels): the buffers holding the row's max and sum were
    `__restrict__` parameters, so NVCC read them before the first lane had stored them (wrong
    values and NaN gradients for short rows); the emulator now fails such a kernel."""
    top, y, values, code = stored_softmax_case(rows, length)
    ran = run(code)
    assert len(ran.plans) == 1 and ran.plans[0].rows is not None
    assert "__restrict__ top" not in ran.source and "__restrict__ total" not in ran.source
    np.testing.assert_array_equal(top.host(), values.max(axis=1))
    np.testing.assert_allclose(y.host(), softmax_reference(values), **TOLERANCE)


# ---- what does not group ---------------------------------------------------------------------


def test_a_product_and_its_consumer_stay_apart():
    """The product's operand is shared between rows: a matrix product, not a row reduction."""
    a, b, c, d = (
        TNode("a", (64, 32)),
        TNode("b", (32, 48)),
        TNode("c", (64, 48)),
        TNode("d", (64, 48)),
    )
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    product = Accum(
        c,
        "add",
        "mul",
        (a, b),
        Projections((64, 48, 32), (i, j, k), (i, j), ((i, k), (k, j))),
        True,
    )
    code = product + rowwise(d, "relu", (c,), (False,))
    for innermost in (False, True):
        nests = top_nests(compile_to_ir(code, reductions_innermost=innermost))
        assert not any({c, d} <= ir.written_tnodes(nest) for nest in nests)


def test_a_vector_common_to_all_rows_groups_and_products_do_not():
    """`s[i] = sum_j x[i, j] + bias[j]` reads the bias along every row: it groups with its
    reader. `t[j] = sum_k v[k] * w[k, j]` walks a column of w, and a matrix-vector product is
    left to the product schedules: neither groups."""
    x, bias, y = TNode("x", (6, 40)), TNode("bias", (40,)), TNode("y", (6, 40))
    s = TNode("s", (6,), memory_mode=MemoryMode.VIRTUAL)
    i, j = Iterator(name="i"), Iterator(name="j")
    with_bias = Projections((6, 40), (i, j), (i,), ((i, j), (j,)))
    code = Accum(s, "add", "add", (x, bias), with_bias, True) + rowwise(
        y, "sub", (x, s), (False, True)
    )
    stmt = compile_to_ir(code, True)
    assert len(top_nests(stmt)) == 1 and ir.written_tnodes(stmt) == {y}
    rng = np.random.default_rng(3)
    x.set_host(rng.integers(-8, 9, (6, 40))), bias.set_host(rng.integers(-8, 9, 40))
    Runtime("c").compile(code).run()
    expected = x.host() - (x.host() + bias.host()).sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(y.host(), expected)

    v, w, out = TNode("v", (64,)), TNode("w", (64, 48)), TNode("out", (48,))
    t = TNode("t", (48,), memory_mode=MemoryMode.VIRTUAL)
    k = Iterator(name="k")
    column = Accum(
        t, "add", "mul", (v, w), Projections((64, 48), (k, j), (j,), ((k,), (k, j))), True
    )
    relu = Accum(out, None, "relu", (t,), Projections((48,), (j,), (j,), ((j,),)))
    assert len(top_nests(compile_to_ir(column + relu, True))) == 2
    # The same product over rows of w (`t[j] = sum_k w[j, k] * v[k]`): a matrix-vector product.
    w2 = TNode("w2", (48, 64))
    rows = Accum(
        t, "add", "mul", (w2, v), Projections((48, 64), (j, k), (j,), ((j, k), (k,))), True
    )
    assert len(top_nests(compile_to_ir(rows + relu, True))) == 2


def test_a_reader_of_other_rows_stays_apart():
    """The reader's rows do not line up with the reduction's (it reads the sums across)."""
    x, out = TNode("x", (8, 5)), TNode("out", (8, 8))
    sums = TNode("sums", (8,), memory_mode=MemoryMode.VIRTUAL)
    i, j = Iterator(name="i"), Iterator(name="j")
    across = Accum(out, None, "neg", (sums,), Projections((8, 8), (i, j), (i, j), ((j,),)))
    code = reduce_rows(sums, "add", "identity", x) + across
    assert len(top_nests(compile_to_ir(code, True))) == 2


def test_unrelated_nests_and_few_long_rows_stay_apart():
    x, y, s = TNode("x", (4, 6)), TNode("y", (4, 6)), TNode("s", (4,))
    code = reduce_rows(s, "add", "identity", x) + rowwise(y, "exp", (x,), (False,))
    assert len(top_nests(compile_to_ir(code, True))) == 2  # y does not read s
    rows, length = 3, row_fusion.MAX_ROW_LENGTH * 2
    _, _, _, long_rows = softmax_case(rows, length)
    assert len(top_nests(compile_to_ir(long_rows, True))) == 3  # max, sum, divide


# ---- through nn ------------------------------------------------------------------------------


def nn_case(kind: str, rows: int, length: int):
    """The tensor of `kind` over `rows` x `length` random values, and its float64 reference."""
    v = np.random.default_rng(rows + 31 * length).normal(size=(rows, length)).astype(np.float32)
    x = oc.term("x", batch_dims=[rows], output_dims=[length])
    x.set_value(v)
    w = np.random.default_rng(1).normal(size=length).astype(np.float32)
    b = np.random.default_rng(2).normal(size=length).astype(np.float32)
    vv = v.astype(np.float64)
    if kind == "softmax":
        return nn.softmax(x), softmax_reference(v), ()
    if kind == "log_softmax":
        z = vv - vv.max(axis=1, keepdims=True)
        return nn.log_softmax(x), z - np.log(np.exp(z).sum(axis=1, keepdims=True)), ()
    if kind == "layer_norm":
        y = nn.layer_norm(x, "ln")
        mean = vv.mean(axis=1, keepdims=True)
        var = ((vv - mean) ** 2).mean(axis=1, keepdims=True)
        return (
            y,
            (vv - mean) / np.sqrt(var + 1e-5) * w + b,
            ((y.params["ln.w"], w), (y.params["ln.b"], b)),
        )
    y = nn.rms_norm(x, "rms")
    ref = vv / np.sqrt((vv * vv).mean(axis=1, keepdims=True) + 1e-6) * w
    return y, ref, ((y.params["rms.w"], w),)


KINDS = ["softmax", "log_softmax", "layer_norm", "rms_norm"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rows", "length"), [(1, 1), (3, 17), (1000, 3), (17, 1000), (3, 4096)])
def test_nn_rows_on_c_are_one_nest_matching_numpy(kind, rows, length):
    y, expected, params = nn_case(kind, rows, length)
    for p, values in params:
        p.set_value(values)
    routine = oc.Context("c").compile(y.forward)
    assert len(top_nests(routine.executable.ir)) == 1
    routine.run()
    np.testing.assert_allclose(y.value.reshape(rows, length), expected, **TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rows", "length"), [(3, 17), (1000, 3), (17, 1000), (3, 4096)])
def test_nn_rows_on_cuda_are_one_kernel_matching_numpy(run, kind, rows, length):
    y, expected, params = nn_case(kind, rows, length)
    for p, values in params:
        p.set_value(values)
    code = y.forward
    lowered = code.lower(fusion.private_values(code, fusion.fused(code, set())))
    ran = run(lowered)
    assert len(ran.plans) == 1 and ran.plans[0].rows is not None
    np.testing.assert_allclose(y.value_node.host().reshape(rows, length), expected, **TOLERANCE)


def test_on_c_a_row_loop_whose_stages_store_and_read_a_row_runs_on_threads():
    """The stored pointwise stage writes `gy[i, j]` and the next stage reads `gy[i, d]`: rows
    still touch disjoint cells, so the row loop gets the CPU schedule's threads."""
    from arrayjit.lowering import lower, optimize
    from arrayjit.schedule.cpu_target import CpuTarget

    rows, length = 64, 4096
    y, g, gx = TNode("y", (rows, length)), TNode("g", (rows, length)), TNode("gx", (rows, length))
    gy = TNode("gy", (rows, length))
    dot = TNode("dot", (rows,), memory_mode=MemoryMode.VIRTUAL)
    code = (
        rowwise(gy, "mul", (g, y), (False, False))
        + reduce_rows(dot, "add", "identity", gy)
        + rowwise(gx, "sub", (gy, dot), (False, True))
    )
    (nest,) = top_nests(optimize(lower(code), CpuTarget(threads=2)))
    assert nest.threads == 2 and ir.written_tnodes(nest) == {gy, gx}

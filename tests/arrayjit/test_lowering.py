"""Lowering and the passes: virtual inlining, simplification, hoisting, the debug log, the
printers, and `Fetch`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from arrayjit import assignments as asg
from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Constant, Fetch, RangeOfShape, Values
from arrayjit.indexing import Affine, Fixed, Iterator, Projections, identity_projections
from arrayjit.lowering import PASSES, compile_to_ir
from arrayjit.tnode import MemoryMode, TNode

N = 8


def pointwise(lhs: TNode, op: str, *rhses: TNode) -> Accum:
    return Accum(lhs, None, op, rhses, identity_projections(lhs.dims, len(rhses)))


def virtual(label: str, dims=(N,), dtype="float32") -> TNode:
    return TNode(label, dims, dtype, MemoryMode.VIRTUAL)


def top_level(stmt: ir.Stmt) -> tuple[ir.Stmt, ...]:
    return stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)


def loop_nests(stmt: ir.Stmt) -> list[ir.For]:
    return [s for s in top_level(stmt) if isinstance(s, ir.For)]


def source_of(routine) -> str:
    return Path(routine.source_path).read_text()


# ---- virtual inlining ----------------------------------------------------------------------


def c_name(routine, tnode) -> str:
    """The name of a buffer in generated C: its label and its position among the buffers."""
    return f"{tnode.label}_{list(routine.compiled.tnodes).index(tnode)}"


def broadcast_product(x: TNode, v: TNode, y: TNode, axis: int) -> Accum:
    """y[b, d] = x[b, d] * v[b or d] (`axis` of y that v follows), loops b then d."""
    b, d = Iterator(name="b"), Iterator(name="d")
    p = Projections(y.dims, (b, d), (b, d), ((b, d), ((b, d)[axis],)))
    return Accum(y, None, "mul", (x, v), p)


@pytest.mark.parametrize(
    ("op", "axis", "inlined"),
    [("exp", 1, False), ("relu", 1, True), ("exp", 0, True)],
)
def test_costly_virtual_read_again_and_again_is_materialized(c_context, op, axis, inlined):
    """exp(s)[d] read in `for b: for d:` would be computed once per b: it is stored first;
    a cheap relu is inlined, and so is exp(s)[b], which hoisting lifts out of the d loop."""
    rows, cols = 5, 7
    rng = np.random.default_rng(5)
    x, y = TNode("x", (rows, cols)), TNode("y", (rows, cols))
    s = TNode("s", ((rows, cols)[axis],))
    v = virtual("v", s.dims)
    xs, ss = rng.normal(size=x.dims).astype(np.float32), rng.normal(size=s.dims).astype(np.float32)
    x.set_host(xs), s.set_host(ss)
    routine = c_context.compile(pointwise(v, op, s) + broadcast_product(x, v, y, axis))
    assert (v in ir.written_tnodes(routine.ir)) is not inlined
    scale = np.exp(ss) if op == "exp" else np.maximum(ss, 0)
    routine.run()
    expected = xs * (scale[None, :] if axis == 1 else scale[:, None])
    np.testing.assert_allclose(y.host(), expected, rtol=1e-6)


def test_virtual_chain_is_one_loop_nest_without_intermediate_buffers(context):
    x, y = TNode("x", (N,)), TNode("y", (N,))
    exp_x, times_x = virtual("exp_x"), virtual("times_x")
    code = (
        pointwise(exp_x, "exp", x)
        + pointwise(times_x, "mul", exp_x, x)
        + pointwise(y, "relu", times_x)
    )
    routine = context.compile(code)
    assert len(loop_nests(routine.ir)) == 1
    assert isinstance(routine.ir, ir.For)
    source = source_of(routine)
    for intermediate in (exp_x, times_x):
        assert intermediate.label not in source
        assert intermediate not in routine.compiled.tnodes
    assert c_name(routine, x) in source and c_name(routine, y) in source
    X = np.linspace(-2, 2, N, dtype=np.float32)
    x.set_host(X)
    routine.run()
    np.testing.assert_allclose(y.host(), np.maximum(np.exp(X) * X, 0), rtol=4e-7)


@pytest.mark.parametrize("readers", [1, 2, 4])
def test_residual_chain_read_by_several_statements_is_stored(context, readers):
    """`x1 = x0 + a0`, `x2 = x1 + a1`, ... (a residual stream), each read by `readers`
    statements. Read once, the chain is inlined whole; read by four, each sum is stored (that
    moves fewer values than loading both operands in each reader); read by two, the inlined
    chain grows until a sum would load four buffers in each reader (x3 = x0 + a0 + a1 + a2),
    which is stored, and the chain starts again from it. Inlined whole, the last sums would add
    every earlier layer's output again in each reader."""
    layers = 5
    rng = np.random.default_rng(readers)
    x0 = TNode("x0", (N,))
    adds = [TNode(f"a{k}", (N,)) for k in range(layers)]
    outs = [[TNode(f"y{k}_{r}", (N,)) for r in range(readers - 1)] for k in range(layers)]
    xs = [virtual(f"x{k + 1}") for k in range(layers - 1)]
    last = TNode(f"x{layers}", (N,))
    chain = [x0, *xs, last]
    code = None
    for k in range(layers):
        step = pointwise(chain[k + 1], "add", chain[k], adds[k])
        for r, y in enumerate(outs[k]):
            step = step + pointwise(y, "mul" if r % 2 else "sub", chain[k + 1], adds[k])
        code = step if code is None else code + step
    routine = context.compile(code)
    stored = [x for x in xs if x in ir.written_tnodes(routine.ir)]
    assert stored == {1: [], 2: [xs[2]], 4: xs}[readers]
    values = [rng.normal(size=N).astype(np.float32) for _ in range(layers + 1)]
    x0.set_host(values[0])
    for a, value in zip(adds, values[1:], strict=True):
        a.set_host(value)
    routine.run()
    total = values[0].astype(np.float64)
    for k in range(layers):
        total = total + values[k + 1]
        for r, y in enumerate(outs[k]):
            expected = total * values[k + 1] if r % 2 else total - values[k + 1]
            np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last.host(), total, rtol=1e-5, atol=1e-5)


def test_virtual_defined_by_a_reduction_is_materialized(context):
    # The reader's loops (j, then i) are not the reduction's rows: row fusion cannot make the
    # sums locals of a row (see test_row_fusion.py for a reader over the same rows).
    x, y = TNode("x", (N, 3)), TNode("y", (2, N))
    row_sum = virtual("row_sum")
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    reduce_rows = Projections((N, 3), (i, k), (i,), ((i, k),))
    read_across = Projections((2, N), (j, i), (j, i), ((i,),))
    code = Accum(row_sum, "add", "identity", (x,), reduce_rows, True) + Accum(
        y, None, "neg", (row_sum,), read_across
    )
    routine = context.compile(code)
    assert c_name(routine, row_sum) in source_of(routine)
    assert len(loop_nests(routine.ir)) == 2
    X = np.arange(3 * N, dtype=np.float32).reshape(N, 3)
    x.set_host(X)
    routine.run()
    np.testing.assert_array_equal(y.host(), np.broadcast_to(-X.sum(axis=1), (2, N)))


def test_virtual_whose_source_is_overwritten_before_a_later_read_is_materialized(context):
    x, other, y = TNode("x", (N,)), TNode("other", (N,)), TNode("y", (N,))
    exp_x = virtual("exp_x")
    code = (
        pointwise(exp_x, "exp", x)
        + pointwise(x, "neg", other)  # x changes here; exp_x must hold the old exp(x)
        + pointwise(y, "add", exp_x, x)
    )
    routine = context.compile(code)
    assert c_name(routine, exp_x) in source_of(routine)
    X, other_values = np.linspace(-1, 1, N, dtype=np.float32), np.arange(N, dtype=np.float32)
    x.set_host(X), other.set_host(other_values)
    routine.run()
    np.testing.assert_allclose(y.host(), np.exp(X) - other_values, rtol=4e-7)


@pytest.mark.parametrize("read", ["first_cell", "reversed"])
def test_virtual_read_by_the_statement_that_overwrites_its_source(context, read):
    """`x[i] := v[0]` with `v := -x`: inlined, it would read the x it is writing."""
    x, v = TNode("x", (N,)), virtual("v")
    i = Iterator(name="i")
    index = Fixed(0) if read == "first_cell" else Affine(((-1, i),), N - 1)
    code = pointwise(v, "neg", x) + Accum(
        x, None, "identity", (v,), Projections((N,), (i,), (i,), ((index,),))
    )
    routine = context.compile(code)
    X = np.arange(1, N + 1, dtype=np.float32)
    x.set_host(X)
    routine.run()
    expected = np.full(N, -X[0]) if read == "first_cell" else -X[::-1]
    np.testing.assert_array_equal(x.host(), expected)


# ---- simplification and hoisting -----------------------------------------------------------


def test_simplification_removes_identities_and_folds_constants(context):
    x, y = TNode("x", (N,)), TNode("y", (N,))
    one, zero, two, three, five = (virtual(n) for n in ("one", "zero", "two", "three", "five"))
    times_one, plus_zero = virtual("times_one"), virtual("plus_zero")
    code = (
        Fetch(one, Constant(1.0))
        + Fetch(zero, Constant(0.0))
        + Fetch(two, Constant(2.0))
        + Fetch(three, Constant(3.0))
        + pointwise(five, "add", two, three)  # folds to 5.0
        + pointwise(times_one, "mul", x, one)  # x * 1 -> x
        + pointwise(plus_zero, "add", times_one, zero)  # x + 0 -> x
        + pointwise(y, "mul", plus_zero, five)
    )
    routine = context.compile(code)
    text = ir.to_string(routine.ir)
    assert text == f"for i0 < {N} parallel:\n  {y.name}[i0] := ({x.name}[i0] * 5.0)"
    X = np.arange(N, dtype=np.float32)
    x.set_host(X)
    routine.run()
    np.testing.assert_array_equal(y.host(), X * 5)


def test_matmul_hoists_the_a_load_out_of_the_innermost_loop():
    m = k = n = 4
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    code = Accum(
        c, "add", "mul", (a, b), Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j))), True
    )
    stmt = compile_to_ir(code)
    inner = stmt
    while not (isinstance(inner, ir.For) and inner.iterator == j):
        inner = inner.stmts[-1] if isinstance(inner, ir.Block) else inner.body
    reads = {e.tnode for e in ir.stmt_exprs(inner) if isinstance(e, ir.Get)}
    assert a not in reads and b in reads and c in reads
    hoisted = [
        s for s in top_level(stmt)[-1].body.body.stmts if isinstance(s, ir.DeclLocal)
    ]  # for i: for k: [local h := a[i, k]; for j: ...]
    assert [d.init for d in hoisted] == [ir.Get(a, (i, r))]
    assert f":= {a.name}[i, k]\n    for j < {n} parallel:" in ir.to_string(stmt)


# ---- the debug log and the printers --------------------------------------------------------


def test_debug_logs_the_ir_after_each_pass(monkeypatch, caplog):
    x, y = TNode("x", (N,)), TNode("y", (N,))
    monkeypatch.setenv("ARRAYJIT_DEBUG", "1")
    with caplog.at_level(logging.DEBUG, logger="arrayjit"):
        compile_to_ir(pointwise(y, "exp", x))
    steps = ["lowering", *(name for name, _ in PASSES)]
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("after ")]
    assert [m.split(":")[0] for m in messages] == [f"after {s}" for s in steps]
    assert all(f"{y.name}[i0] := exp({x.name}[i0])" in m for m in messages)


def test_no_debug_log_without_the_variable(monkeypatch, caplog):
    monkeypatch.setenv("ARRAYJIT_DEBUG", "0")
    with caplog.at_level(logging.DEBUG, logger="arrayjit"):
        compile_to_ir(pointwise(TNode("y", (N,)), "exp", TNode("x", (N,))))
    assert not [r for r in caplog.records if r.getMessage().startswith("after ")]


def test_printers_show_assignments_and_loops():
    a, b, c, bias = TNode("a", (2, 3)), TNode("b", (3, 4)), TNode("c", (2, 4)), TNode("bias", (4,))
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    code = (
        asg.Comment("matmul plus bias")
        + Accum(
            c,
            "add",
            "mul",
            (a, b),
            Projections((2, 4, 3), (i, j, k), (i, j), ((i, k), (k, j))),
            True,
        )
        + Accum(c, "add", "identity", (bias,), Projections((2, 4), (i, j), (i, j), ((j,),)))
        + Fetch(a, Constant(0.5))
        + Fetch(b, RangeOfShape())
        + Fetch(bias, Values(np.zeros(4)))
    )
    lines = asg.to_string(code).splitlines()
    assert lines == [
        "# matmul plus bias",
        f"{c.name}[i, j] =:+ {a.name}[i, k] * {b.name}[k, j]    for i<2, j<4, k<3",
        f"{c.name}[i, j] =+ {bias.name}[j]    for i<2, j<4",
        f"{a.name} := 0.5",
        f"{b.name} := range_of_shape",
        f"{bias.name} := values[4]",
    ]
    assert str(code) == asg.to_string(code)
    loops = ir.to_string(compile_to_ir(code))
    assert loops.startswith("# matmul plus bias\n")
    assert "for i < 2 parallel:\n  for k < 3:\n" in loops
    assert f"{c.name}[i, j] := ({c.name}[i, j] + {bias.name}[j])" in loops
    assert f"{b.name}[i0, i1] := (4*i0 + i1)" in loops


# ---- Fetch ---------------------------------------------------------------------------------


def test_fetch_constant_range_and_values(context):
    filled, ranged = TNode("filled", (2, 3), "float64"), TNode("ranged", (3, 1, 4), "int32")
    loaded = TNode("loaded", (2, 2))
    values = np.array([[1.5, -2.0], [np.inf, 7.0]])
    code = (
        Fetch(filled, Constant(-0.25))
        + Fetch(ranged, RangeOfShape())
        + Fetch(loaded, Values(values))
    )
    routine = context.compile(code)
    routine.run()
    np.testing.assert_array_equal(filled.host(), np.full((2, 3), -0.25))
    np.testing.assert_array_equal(ranged.host(), np.arange(12).reshape(3, 1, 4))
    np.testing.assert_array_equal(loaded.host(), values.astype(np.float32))
    loaded.set_host(np.zeros((2, 2)))
    routine.run()  # a fetch refills its buffer every run
    np.testing.assert_array_equal(loaded.host(), values.astype(np.float32))


def test_fetch_values_of_another_shape_but_same_size_is_reshaped(context):
    loaded = TNode("loaded", (2, 3), "float64")
    context.compile(Fetch(loaded, Values(np.arange(6.0)))).run()
    np.testing.assert_array_equal(loaded.host(), np.arange(6.0).reshape(2, 3))

"""The zero-fill pass (arrayjit/passes/zero_fill.py): a fill with zeros followed by a writer of
every cell that reads the buffer only at the cell it writes is folded into that writer; values
against numpy on the C backend (and the CUDA emulator where available), and the cases it must
leave alone."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, runner
from hypothesis import given, settings
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Constant, Fetch, seq
from arrayjit.indexing import Fixed, Iterator, Projections
from arrayjit.lowering import compile_to_ir
from arrayjit.passes import zero_fill
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode

KINDS = ["c", *(k for k in ("emulator", "gpu") if k in RUNNERS)]


def pointwise(out: TNode, x: TNode, accum: str | None = "add", op: str = "identity") -> Accum:
    """`out[i, j] accum= op(x[i, j])`."""
    i, j = Iterator(name="i"), Iterator(name="j")
    return Accum(out, accum, op, (x,), Projections(out.dims, (i, j), (i, j), ((i, j),)))


def product(out: TNode, a: TNode, b: TNode) -> Accum:
    """`out[i, j] += a[i, k] * b[k, j]` (zero_first off: adds to what `out` holds)."""
    m, k = a.dims
    _, n = b.dims
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j)))
    return Accum(out, "add", "mul", (a, b), projections)


def fills(stmt: ir.Stmt, tnode: TNode) -> int:
    """How many nests of `stmt` store the constant 0 into `tnode`."""
    return sum(
        1
        for s in ir.walk(stmt)
        if isinstance(s, ir.Set) and s.tnode is tnode and s.value == ir.Const(0.0, tnode.dtype)
    )


def reads(stmt: ir.Stmt, tnode: TNode) -> bool:
    return tnode in ir.read_tnodes(stmt)


def run(kind: str, code) -> None:
    if kind == "c":
        Runtime("c").compile(code).run()
    else:
        runner(kind)(code)


@pytest.mark.parametrize("gpu", [False, True])
def test_a_fill_then_an_accumulation_becomes_one_store(gpu):
    x, out = TNode("x", (3, 17)), TNode("out", (3, 17))
    stmt = compile_to_ir(seq([Fetch(out, Constant(0.0)), pointwise(out, x)]), gpu)
    assert fills(stmt, out) == 0
    assert not reads(stmt, out)


def test_a_product_into_zeros_starts_from_zero():
    # GPU nests (a thread per cell, the reduction innermost); the C backend's product schedule
    # clears its own zeros (arrayjit/passes/matmul_blocking.py).
    a, b, out = TNode("a", (5, 7)), TNode("b", (7, 3)), TNode("out", (5, 3))
    stmt = compile_to_ir(seq([Fetch(out, Constant(0.0)), product(out, a, b)]), True)
    assert fills(stmt, out) == 0
    assert not reads(stmt, out)


def test_fills_left_alone():
    x, out, other = TNode("x", (4, 6)), TNode("out", (4, 6)), TNode("other", (4, 6))
    # Read by someone else between the fill and the writer: the zeros are used.
    code = seq([Fetch(out, Constant(0.0)), pointwise(other, out, None), pointwise(out, x)])
    assert fills(compile_to_ir(code), out) == 1
    # The writer writes only part of the buffer (a 4 x 3 corner).
    part = TNode("part", (4, 3))
    i, j = Iterator(name="i"), Iterator(name="j")
    corner = Accum(out, "add", "identity", (part,), Projections((4, 3), (i, j), (i, j), ((i, j),)))
    assert fills(compile_to_ir(seq([Fetch(out, Constant(0.0)), corner])), out) == 1
    # A fill with another value stays.
    stmt = compile_to_ir(seq([Fetch(out, Constant(1.0)), pointwise(out, x)]))
    assert reads(stmt, out)
    # Nothing writes the zeros afterwards: they are the buffer's values.
    assert fills(compile_to_ir(Fetch(out, Constant(0.0))), out) == 1


def test_a_read_of_another_cell_keeps_the_fill():
    # out[i, j] = out[i, j] + out[i, 0] reads cells other than the one written.
    out = TNode("out", (3, 4))
    i, j = Iterator(name="i"), Iterator(name="j")
    fill = ir.For(i, 3, ir.For(j, 4, ir.Set(out, (i, j), ir.Const(0.0, out.dtype))))
    i2, j2 = Iterator(name="i2"), Iterator(name="j2")
    value = ir.Apply("add", (ir.Get(out, (i2, j2)), ir.Get(out, (i2, Fixed(0)))), out.dtype)
    writer = ir.For(i2, 3, ir.For(j2, 4, ir.Set(out, (i2, j2), value)))
    stmt = zero_fill.run(ir.block([fill, writer]))
    assert fills(stmt, out) == 1 and stmt == ir.block([fill, writer])


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=8, deadline=None)
@given(
    rows=st.sampled_from([1, 3, 17]),
    cols=st.sampled_from([1, 3, 17, 1000]),
    depth=st.sampled_from([1, 3, 17]),
    seed=st.integers(0, 2**16),
)
def test_values_equal_numpy(kind, rows, cols, depth, seed):
    rng = np.random.default_rng(seed)
    x, out = TNode("x", (rows, cols)), TNode("out", (rows, cols))
    a, b, prod = TNode("a", (rows, depth)), TNode("b", (depth, cols)), TNode("prod", (rows, cols))
    for t in (x, a, b):
        t.set_host(rng.standard_normal(t.dims).astype(np.float32))
    for t in (out, prod):
        t.set_host(np.full(t.dims, np.nan, np.float32))  # the fill must overwrite these
    code = seq(
        [
            Fetch(out, Constant(0.0)),
            pointwise(out, x, op="neg"),
            pointwise(out, x),  # a second accumulation reads the first's values
            Fetch(prod, Constant(0.0)),
            product(prod, a, b),
        ]
    )
    run(kind, code)
    np.testing.assert_array_equal(out.host(), -x.host() + x.host())
    expected = a.host().astype(np.float64) @ b.host().astype(np.float64)
    np.testing.assert_allclose(prod.host(), expected, rtol=1e-5, atol=1e-5)

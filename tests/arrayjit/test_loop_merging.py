"""Loop merging (`arrayjit.passes.loop_merging`, GPU pipeline only): which nests merge and which
do not, that a merged index keeps every row-major offset, and that merged products take the
tiled matmul kernel with values equal to numpy's on odd sizes (CUDA emulator, and a GPU where
one is usable)."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, runner
from hypothesis import given, settings
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum
from arrayjit.dtypes import float32 as FLOAT32
from arrayjit.dtypes import int32 as INT32
from arrayjit.indexing import Fixed, Iterator, Projections, affine, as_affine
from arrayjit.lowering import compile_to_ir
from arrayjit.passes import loop_merging
from arrayjit.passes.loop_merging import _merge_index
from arrayjit.schedule.gpu_kernels import plan_kernels
from arrayjit.tnode import TNode


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


def loops(s: ir.Stmt) -> list[tuple[int, bool]]:
    """(extent, parallel) of each loop of a nest, outermost first."""
    return [(x.extent, x.parallel) for x in ir.walk(s) if isinstance(x, ir.For)]


def nest(its_extents, body, parallel=True):
    for it, n in reversed(its_extents):
        body = ir.For(it, n, body, parallel=parallel)
    return body


def projection(b, t, h, d, c):
    """`y[b, t, h, d] = sum_c x[b, t, c] * w[h, d, c]` (a q/k/v projection)."""
    x, w, y = TNode("x", (b, t, c)), TNode("w", (h, d, c)), TNode("y", (b, t, h, d))
    ib, it, ih, id_, ic = (Iterator(name=n) for n in ("b", "t", "h", "d", "c"))
    p = Projections(
        (b, t, h, d, c), (ib, it, ih, id_, ic), (ib, it, ih, id_), ((ib, it, ic), (ih, id_, ic))
    )
    return Accum(y, "add", "mul", (x, w), p, True), x, w, y


def weight_gradient(b, t, o, c):
    """`dw[o, c] += sum_{b, t} dy[b, t, o] * x[b, t, c]`: two reduction loops."""
    dy, x, dw = TNode("dy", (b, t, o)), TNode("x", (b, t, c)), TNode("dw", (o, c))
    ib, it, io, ic = (Iterator(name=n) for n in ("b", "t", "o", "c"))
    p = Projections((b, t, o, c), (ib, it, io, ic), (io, ic), ((ib, it, io), (ib, it, ic)))
    return Accum(dw, "add", "mul", (dy, x), p, False), dy, x, dw


def reduced(y: TNode, i: Iterator, j: Iterator, term) -> ir.Stmt:
    """`for i < 3: for j < 5: acc := 0; for k < 2: acc += term(k); y[i, j] := acc`."""
    k, acc = Iterator(name="k"), ir.Local("acc", FLOAT32)
    update = ir.SetLocal("acc", ir.Apply("add", (acc, term(k)), FLOAT32))
    cell = ir.block(
        [
            ir.DeclLocal("acc", FLOAT32, ir.Const(0.0, FLOAT32)),
            ir.For(k, 2, update),
            ir.Set(y, (i, j), acc),
        ]
    )
    return nest([(i, 3), (j, 5)], cell)


# ---- which nests merge --------------------------------------------------------------------


def test_a_projection_becomes_a_plain_product():
    code, *_ = projection(8, 256, 12, 64, 768)
    stmt = compile_to_ir(code, reductions_innermost=True)
    assert loops(stmt) == [(2048, True), (768, True), (768, False)]
    (plan,) = plan_kernels(stmt)
    assert plan.matmul is not None and plan.matmul.extents == (1, 2048, 768, 768)


def test_weight_gradient_sums_over_one_merged_loop():
    code, *_ = weight_gradient(8, 256, 3072, 768)
    stmt = compile_to_ir(code, reductions_innermost=True)
    assert loops(stmt) == [(3072, True), (768, True), (2048, False)]
    (plan,) = plan_kernels(stmt)
    assert plan.matmul is not None and plan.matmul.extents == (1, 3072, 768, 2048)


def test_only_the_gpu_pipeline_merges():
    code, *_ = projection(2, 3, 4, 5, 6)
    assert loops(compile_to_ir(code)) == [(2, True), (3, True), (4, True), (5, True), (6, False)]


def test_strides_that_do_not_compose_keep_the_loops():
    # y[i, j] = sum_k x[j, i, k]: in x, i moves by 2 and j by 6, not 5 * 6.
    x, y = TNode("x", (5, 3, 2)), TNode("y", (3, 5))
    i, j = Iterator(name="i"), Iterator(name="j")
    stmt = reduced(y, i, j, lambda k: ir.Get(x, (j, i, k)))
    assert loop_merging.run(stmt) == stmt


def test_loops_of_different_kinds_stay_apart():
    x, acc = TNode("x", (4, 6)), ir.Local("acc", FLOAT32)
    i, k = Iterator(name="i"), Iterator(name="k")
    update = ir.SetLocal("acc", ir.Apply("add", (acc, ir.Get(x, (i, k))), FLOAT32))
    stmt = ir.For(i, 4, ir.For(k, 6, update), parallel=True)
    assert loop_merging.run(stmt) == stmt


def test_a_reduction_cell_merges_its_grid_loops():
    x, y = TNode("x", (3, 5, 2)), TNode("y", (3, 5))
    i, j = Iterator(name="i"), Iterator(name="j")
    merged = loop_merging.run(reduced(y, i, j, lambda k: ir.Get(x, (i, j, k))))
    assert loops(merged) == [(15, True), (2, False)]


def test_a_pointwise_nest_keeps_its_grid_loops():
    """Its grid is flattened onto the threads anyway."""
    x, y = TNode("x", (3, 5)), TNode("y", (3, 5))
    i, j = Iterator(name="i"), Iterator(name="j")
    stmt = nest([(i, 3), (j, 5)], ir.Set(y, (i, j), ir.Get(x, (i, j))))
    assert loop_merging.run(stmt) == stmt


@pytest.mark.parametrize("where", ["value", "mask", "guard", "gather"])
def test_an_iterator_used_outside_an_affine_index_keeps_the_loops(where):
    """Used in a value, a causal mask's comparison, a guard or a gather index, an iterator keeps
    its loop, although every affine access would allow the merge."""
    x, y = TNode("x", (3, 5, 2)), TNode("y", (3, 5))
    i, j = Iterator(name="i"), Iterator(name="j")

    def term(k: Iterator) -> ir.Expr:
        read = ir.Get(x, (i, j, k))
        if where == "value":
            return ir.Apply("add", (read, ir.IndexValue(i, FLOAT32)), FLOAT32)
        if where == "mask":
            below = ir.Apply("lt", (ir.IndexValue(j, FLOAT32), ir.IndexValue(i, FLOAT32)), FLOAT32)
            return ir.Apply("mul", (read, below), FLOAT32)
        ids, errors = TNode("ids", (3, 5), INT32), TNode("errors", (4,), INT32)
        table = TNode("table", (9, 2))
        return ir.Get(table, (ir.Dynamic(ir.Get(ids, (i, j)), 9, errors), k))

    if where == "guard":
        stmt = nest([(i, 3), (j, 5)], ir.If((ir.InRange(affine((1, j), offset=1), 5),), reduced(
            y, i, j, lambda k: ir.Get(x, (i, j, k))).body.body))  # fmt: skip
    else:
        stmt = reduced(y, i, j, term)
    assert any(isinstance(s, ir.For) and s.extent == 5 for s in ir.walk(stmt))
    assert loop_merging.run(stmt) == stmt


def test_a_gather_whose_index_does_not_move_with_the_loops_still_merges():
    y = TNode("y", (3, 5))
    ids, errors = TNode("ids", (1,), INT32), TNode("errors", (4,), INT32)
    table = TNode("table", (9, 3, 5, 2))
    i, j = Iterator(name="i"), Iterator(name="j")
    row = ir.Dynamic(ir.Get(ids, (Fixed(0),)), 9, errors)
    merged = loop_merging.run(reduced(y, i, j, lambda k: ir.Get(table, (row, i, j, k))))
    assert loops(merged) == [(15, True), (2, False)]


def test_three_reduction_loops_merge_into_one_in_order():
    """`acc += x[a, b, c]` over three sequential loops: one loop of 24, offsets 0..23 in order."""
    x, out = TNode("x", (2, 3, 4)), TNode("out", (1,))
    a, b, c = (Iterator(name=n) for n in "abc")
    acc = ir.Local("acc", FLOAT32)
    update = ir.SetLocal("acc", ir.Apply("add", (acc, ir.Get(x, (a, b, c))), FLOAT32))
    stmt = ir.block(
        [
            ir.DeclLocal("acc", FLOAT32, ir.Const(0.0, FLOAT32)),
            nest([(a, 2), (b, 3), (c, 4)], update, parallel=False),
            ir.Set(out, (Fixed(0),), acc),
        ]
    )
    merged = loop_merging.run(stmt)
    assert loops(merged) == [(24, False)]
    (read,) = [e for e in ir.stmt_exprs(merged) if isinstance(e, ir.Get)]
    (m,) = ir.bound_iterators(merged)
    assert ir.split_offset(x.dims, read.index)[0] == m


# ---- a merged index keeps its offset --------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_merged_index_has_the_same_row_major_offset(data):
    """For any buffer and any access where the outer iterator's coefficient is `B` times the
    inner's, the rewritten index at `m = B*o + i` gives the original offset at `(o, i)`."""
    dims = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    o, i, other = Iterator(name="o"), Iterator(name="i"), Iterator(name="z")
    extent_i = data.draw(st.integers(1, 4))
    index = tuple(
        affine(
            *((data.draw(st.integers(-2, 2)), it) for it in (o, i, other)),
            offset=data.draw(st.integers(0, 3)),
        )
        for _ in dims
    )
    flat = dict((it, c) for c, it in as_affine(ir.split_offset(dims, index)[0])[0])
    # Make the access compatible: move the outer iterator's coefficient onto its axis as needed.
    if flat.get(o, 0) != extent_i * flat.get(i, 0):
        strides = [int(np.prod(dims[k + 1 :])) for k in range(len(dims))]
        need = extent_i * flat.get(i, 0) - flat.get(o, 0)
        axis = len(dims) - 1
        terms, offset = as_affine(index[axis])
        index = (*index[:axis], affine(*terms, (need // strides[axis], o), offset=offset))
    flat = dict((it, c) for c, it in as_affine(ir.split_offset(dims, index)[0])[0])
    m = Iterator(name="m")
    merged = _merge_index(dims, index, o, i, m)

    def offset_at(idx, values):
        terms, offset = as_affine(ir.split_offset(dims, idx)[0])
        return offset + sum(c * values[it] for c, it in terms)

    for vo in range(3):
        for vi in range(extent_i):
            values = {o: vo, i: vi, other: 2, m: extent_i * vo + vi}
            assert offset_at(merged, values) == offset_at(index, values)
    assert {it for _, it in as_affine(ir.split_offset(dims, merged)[0])[0]} <= {m, other}


# ---- values: merged products on the tiled kernel --------------------------------------------


@pytest.mark.parametrize(("b", "t", "h", "d", "c"), [(3, 17, 3, 17, 5), (1, 40, 1, 33, 1)])
def test_projection_values(run, b, t, h, d, c):
    rng = np.random.default_rng(b + t + c)
    code, x, w, y = projection(b, t, h, d, c)
    xv = rng.integers(-4, 5, x.dims).astype(np.float32)
    wv = rng.integers(-4, 5, w.dims).astype(np.float32)
    x.set_host(xv)
    w.set_host(wv)
    y.set_host(np.full(y.dims, np.nan, np.float32))
    ran = run(code)
    assert ran.plans[0].matmul is not None
    np.testing.assert_array_equal(y.host(), np.einsum("btc,hdc->bthd", xv, wv))


@pytest.mark.parametrize(("b", "t", "o", "c"), [(3, 17, 33, 35), (2, 1, 130, 47)])
def test_weight_gradient_values(run, b, t, o, c):
    rng = np.random.default_rng(o + c)
    code, dy, x, dw = weight_gradient(b, t, o, c)
    dyv = rng.integers(-4, 5, dy.dims).astype(np.float32)
    xv = rng.integers(-4, 5, x.dims).astype(np.float32)
    start = rng.integers(-4, 5, dw.dims).astype(np.float32)
    dy.set_host(dyv)
    x.set_host(xv)
    dw.set_host(start)
    ran = run(code)
    assert ran.plans[0].matmul is not None
    np.testing.assert_array_equal(dw.host(), start + np.einsum("bto,btc->oc", dyv, xv))

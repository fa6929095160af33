"""Products inside loops (CPU schedule): outer loops folded into the product's rows, columns or
depth where memory allows (a linear layer over a batch, the heads of a projection), and a batch
of products split over threads, one product per thread. Values against numpy.einsum in float64
on sizes of no block's multiple."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum
from arrayjit.indexing import Iterator, Projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import TNode

# No shrinking: each example compiles a routine, and shrinking one takes minutes.
SETTINGS = settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate])
ODD = [1, 2, 3, 5, 17, 33]


@functools.cache
def context(threads: int) -> Runtime:
    """A C context whose schedule packs every product and threads any work."""
    ctx = Runtime("c")
    ctx.backend.target = CpuTarget(
        threads=threads, matmul_min_volume=1, parallel_min_work=1, vectorize_min_extent=16
    )
    return ctx


def einsum_code(spec: str, sizes: dict[str, int], zero_first: bool = True, seed: int = 0):
    """`spec` ("btk,nk->btn") as `out (=:+ | =+) x * y` over float64 buffers of random values,
    the buffers, and numpy's value of it."""
    inputs, out_axes = spec.split("->")
    x_axes, y_axes = inputs.split(",")
    letters = list(dict.fromkeys(out_axes + x_axes + y_axes))
    its = {a: Iterator(name=a) for a in letters}
    rng = np.random.default_rng(seed)
    x = TNode("x", tuple(sizes[a] for a in x_axes), "float64")
    y = TNode("y", tuple(sizes[a] for a in y_axes), "float64")
    out = TNode("out", tuple(sizes[a] for a in out_axes), "float64")
    X, Y, Z = (rng.normal(size=t.dims) for t in (x, y, out))
    x.set_host(X), y.set_host(Y), out.set_host(Z)
    projections = Projections(
        tuple(sizes[a] for a in letters),
        tuple(its[a] for a in letters),
        tuple(its[a] for a in out_axes),
        (tuple(its[a] for a in x_axes), tuple(its[a] for a in y_axes)),
    )
    code = Accum(out, "add", "mul", (x, y), projections, zero_first)
    expected = np.einsum(spec, X, Y) + (0 if zero_first else Z)
    magnitude = np.einsum(spec, np.abs(X), np.abs(Y)) + np.abs(Z)
    depth = int(np.prod([sizes[a] for a in letters if a not in out_axes]))
    bound = (depth + 2) * np.finfo(np.float64).eps * magnitude
    return code, out, expected, bound, its


def matmuls(stmt: ir.Stmt) -> list[ir.Matmul]:
    return [s for s in ir.walk(stmt) if isinstance(s, ir.Matmul)]


def loops_around(stmt: ir.Stmt) -> list[ir.For]:
    """The loops with a product inside."""
    return [s for s in ir.walk(stmt) if isinstance(s, ir.For) and matmuls(s.body)]


def check(routine, out, expected, bound) -> None:
    routine.run()
    assert (np.abs(out.host() - expected) <= bound).all()


@given(
    st.sampled_from(ODD), st.sampled_from(ODD), st.sampled_from(ODD), st.sampled_from(ODD),
    st.booleans(), st.sampled_from([1, 2, 3]),
)  # fmt: skip
@SETTINGS
def test_linear_layer_over_a_batch_is_one_product(b, t, k, n, zero_first, threads):
    """`out[b, t, n] = sum_k x[b, t, k] * w[n, k]`: the batch joins the rows, no loop around."""
    sizes = {"b": b, "t": t, "k": k, "n": n}
    code, out, expected, bound, its = einsum_code("btk,nk->btn", sizes, zero_first, b + t + k)
    routine = context(threads).compile(code)
    (product,) = matmuls(routine.ir)
    assert not loops_around(routine.ir)
    assert product.extents == (b * t, n, k) or product.extents == (n, b * t, k)
    check(routine, out, expected, bound)


@pytest.mark.parametrize("threads", [1, 2])
def test_heads_join_the_columns_and_the_batch_the_rows(threads):
    """A query projection, `q[b, t, h, d] = sum_e x[b, t, e] * w[h, d, e]`: one product of
    (b t) x (h d) x e."""
    sizes = {"b": 3, "t": 17, "e": 33, "h": 5, "d": 7}
    code, out, expected, bound, its = einsum_code("bte,hde->bthd", sizes)
    routine = context(threads).compile(code)
    (product,) = matmuls(routine.ir)
    assert not loops_around(routine.ir)
    assert product.extents == (3 * 17, 5 * 7, 33)
    check(routine, out, expected, bound)


@pytest.mark.parametrize("zero_first", [True, False])
def test_heads_join_the_depth(zero_first):
    """An attention output projection, `out[b, t, e] = sum_{h, d} x[b, t, h, d] * w[e, h, d]`:
    the reduction over heads joins the product's (no loop around, no clearing first)."""
    sizes = {"b": 2, "t": 13, "e": 17, "h": 3, "d": 5}
    code, out, expected, bound, its = einsum_code("bthd,ehd->bte", sizes, zero_first)
    routine = context(2).compile(code)
    (product,) = matmuls(routine.ir)
    assert not loops_around(routine.ir)
    assert product.extents == (2 * 13, 17, 3 * 5)
    assert product.accumulate == (not zero_first)
    check(routine, out, expected, bound)


def test_batch_apart_from_the_rows_stays_a_loop():
    """`x[t, b, k]`: the batch's stride is not the rows' times their count, so the product
    runs once per batch index."""
    sizes = {"b": 3, "t": 5, "k": 17, "n": 33}
    code, out, expected, bound, its = einsum_code("tbk,nk->btn", sizes)
    routine = context(1).compile(code)
    (product,) = matmuls(routine.ir)
    assert [loop.extent for loop in loops_around(routine.ir)] == [3]
    check(routine, out, expected, bound)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("spec", ["bshd,bthd->bhst", "bhst,bthd->bshd"])
def test_batch_of_products_on_threads(spec, threads):
    """Attention's products (scores and the weighted sum of values), a product per batch and
    head: the batch loop runs on the threads, each product on one thread; the bits do not
    depend on the thread count."""
    sizes = {"b": 7, "h": 3, "s": 17, "t": 33, "d": 5}
    code, out, expected, bound, its = einsum_code(spec, sizes)
    routine = context(threads).compile(code)
    around = loops_around(routine.ir)
    assert around[0].extent == 7 and around[0].threads == threads
    assert all(p.blocking.batch_threads == threads for p in matmuls(routine.ir))
    assert all(p.blocking.threads == 1 for p in matmuls(routine.ir))
    check(routine, out, expected, bound)
    threaded = out.host().copy()
    code, out, _, _, _ = einsum_code(spec, sizes)
    context(1).compile(code).run()
    np.testing.assert_array_equal(out.host(), threaded)


def test_small_batch_splits_each_product_instead():
    """Fewer products than two per thread: each product splits over the threads itself."""
    sizes = {"b": 3, "h": 1, "s": 40, "t": 33, "d": 17}
    code, out, expected, bound, its = einsum_code("bshd,bthd->bhst", sizes)
    routine = context(2).compile(code)
    assert all(loop.threads == 1 for loop in loops_around(routine.ir))
    assert all(p.blocking.batch_threads == 1 for p in matmuls(routine.ir))
    check(routine, out, expected, bound)

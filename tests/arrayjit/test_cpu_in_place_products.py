"""Products of few rows whose operands are both contiguous along k read them in place (CPU
schedule: no packing; one text of a few tokens through a linear layer). Values against numpy in
float64 on sizes of no tile's multiple (tiles of 4 rows x 3 columns, vectors of 2 to 16 lanes),
with the error bound of a sum of k terms; the bits do not depend on the thread count."""

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
from arrayjit.schedule.cpu_matmul import IN_PLACE_MAX_ROWS
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import TNode

# No shrinking: each example compiles a routine.
SETTINGS = settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.generate])
ROWS = [1, 2, 3, 4, 5, 6, 7, 10, 11, 17, IN_PLACE_MAX_ROWS]
SIZES = [1, 2, 3, 5, 7, 17, 33, 1000]


@functools.cache
def context(threads: int) -> Runtime:
    """A C context whose schedule takes every product and threads any work."""
    ctx = Runtime("c")
    ctx.backend.target = CpuTarget(threads=threads, matmul_min_volume=1, parallel_min_work=1)
    return ctx


def sum_bound(terms: int, magnitudes: np.ndarray, dtype) -> np.ndarray:
    """The rounding error bound of a sum of `terms` terms of these total magnitudes."""
    return (terms + 2) * np.finfo(dtype).eps * magnitudes + np.finfo(dtype).tiny


def product_code(a, b, c, b_layout, zero_first):
    """`c[i, j] (=:+ | =+) a[i, k] * b[b_layout]` over i, j, k."""
    (m, n), k = c.dims, a.dims[1]
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    names = {"j": j, "k": r}
    projections = Projections(
        (m, n, k), (i, j, r), (i, j), ((i, r), tuple(names[x] for x in b_layout))
    )
    return Accum(c, "add", "mul", (a, b), projections, zero_first)


def matmuls(stmt: ir.Stmt) -> list[ir.Matmul]:
    return [s for s in ir.walk(stmt) if isinstance(s, ir.Matmul)]


def run_product(m, n, k, dtype, threads, zero_first=True, b_layout="jk", seed=0):
    """`c[i, j] (=:+ | =+) a[i, k] * b[b_layout]`: the routine, c's value, numpy's and the
    bound of the difference."""
    rng = np.random.default_rng(seed)
    dims = {"j": n, "k": k}
    a, c = TNode("a", (m, k), dtype), TNode("c", (m, n), dtype)
    b = TNode("b", tuple(dims[x] for x in b_layout), dtype)
    A, B, C = (rng.normal(size=t.dims).astype(dtype) for t in (a, b, c))
    a.set_host(A), b.set_host(B), c.set_host(C)
    routine = context(threads).compile(product_code(a, b, c, b_layout, zero_first))
    routine.run()
    A64 = A.astype(np.float64)
    B64 = (B.T if b_layout == "jk" else B).astype(np.float64)
    expected = A64 @ B64 + (0 if zero_first else C)
    magnitude = np.abs(A64) @ np.abs(B64) + (0 if zero_first else np.abs(C))
    return routine, c.host().copy(), expected, sum_bound(k, magnitude, dtype)


@given(
    st.sampled_from(ROWS),
    st.sampled_from(SIZES),
    st.sampled_from(SIZES),
    st.booleans(),
    st.sampled_from(["float32", "float64"]),
    st.sampled_from([1, 2, 3]),
    st.integers(0, 2**32 - 1),
)
@SETTINGS
def test_few_rows_read_in_place(m, n, k, zero_first, dtype, threads, seed):
    routine, got, expected, bound = run_product(m, n, k, dtype, threads, zero_first, seed=seed)
    (product,) = matmuls(routine.ir)
    assert product.blocking.in_place
    assert (np.abs(got - expected) <= bound).all()


@pytest.mark.parametrize(("m", "n", "k"), [(10, 1536, 384), (16, 384, 1536), (3, 1001, 17)])
def test_linear_layer_shapes_with_the_default_thresholds(m, n, k):
    """MiniLM's linear layers for one short text (default thresholds and thread count)."""
    ctx = Runtime("c")
    rng = np.random.default_rng(m)
    a, w, c = TNode("a", (m, k)), TNode("w", (n, k)), TNode("c", (m, n))
    A, W = rng.normal(size=a.dims).astype(np.float32), rng.normal(size=w.dims).astype(np.float32)
    a.set_host(A), w.set_host(W)
    routine = ctx.compile(product_code(a, w, c, "jk", True))
    (product,) = matmuls(routine.ir)
    assert product.blocking.in_place
    routine.run()
    A64, W64 = A.astype(np.float64), W.astype(np.float64)
    bound = sum_bound(k, np.abs(A64) @ np.abs(W64).T, np.float32)
    assert (np.abs(c.host() - A64 @ W64.T) <= bound).all()


@pytest.mark.parametrize(("m", "b_layout"), [(IN_PLACE_MAX_ROWS + 1, "jk"), (3, "kj")])
def test_more_rows_or_columns_contiguous_are_packed(m, b_layout):
    """Past the row limit, or with `b` contiguous along n, the product packs its operands."""
    routine, got, expected, bound = run_product(m, 37, 19, "float32", 2, b_layout=b_layout)
    (product,) = matmuls(routine.ir)
    assert not product.blocking.in_place
    assert (np.abs(got - expected) <= bound).all()


def test_bits_do_not_depend_on_the_thread_count():
    results = [run_product(13, 301, 203, "float32", threads, seed=4) for threads in (1, 2, 3)]
    assert [matmuls(r[0].ir)[0].blocking.threads for r in results] == [1, 2, 3]
    for _, got, _, _ in results[1:]:
        np.testing.assert_array_equal(got, results[0][1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_in_place_with_sixteen_byte_vectors(monkeypatch, tmp_path, dtype):
    """The in-place tile on machines without AVX (`-march=x86-64`: SSE2, 4 or 2 lanes)."""
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ARRAYJIT_CFLAGS", "-march=x86-64 -mtune=generic")
    ctx = Runtime("c")
    ctx.backend.target = CpuTarget(threads=2, matmul_min_volume=1, parallel_min_work=1)
    rng = np.random.default_rng(17)
    m, k, n = 7, 37, 19
    a, b, c = TNode("a", (m, k), dtype), TNode("b", (n, k), dtype), TNode("c", (m, n), dtype)
    A, B = rng.normal(size=a.dims).astype(dtype), rng.normal(size=b.dims).astype(dtype)
    a.set_host(A), b.set_host(B)
    routine = ctx.compile(product_code(a, b, c, "jk", True))
    (product,) = matmuls(routine.ir)
    assert product.blocking.in_place
    routine.run()
    A64, B64 = A.astype(np.float64), B.T.astype(np.float64)
    bound = sum_bound(k, np.abs(A64) @ np.abs(B64), dtype)
    assert (np.abs(c.host() - A64 @ B64) <= bound).all()


@pytest.mark.parametrize("zero_first", [True, False])
def test_in_place_into_a_transposed_result(zero_first):
    """`c[j, i] (=:+ | =+) a[i, k] * w[j, k]`: the result's rows are the product's columns."""
    m, n, k = 7, 11, 29
    rng = np.random.default_rng(3)
    a, w, c = TNode("a", (m, k)), TNode("w", (n, k)), TNode("c", (n, m))
    A, W, C = (rng.normal(size=t.dims).astype(np.float32) for t in (a, w, c))
    a.set_host(A), w.set_host(W), c.set_host(C)
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((m, n, k), (i, j, r), (j, i), ((i, r), (j, r)))
    routine = context(2).compile(Accum(c, "add", "mul", (a, w), projections, zero_first))
    (product,) = matmuls(routine.ir)
    assert product.blocking.in_place
    routine.run()
    A64, W64 = A.astype(np.float64), W.astype(np.float64)
    expected = W64 @ A64.T + (0 if zero_first else C)
    magnitude = np.abs(W64) @ np.abs(A64).T + (0 if zero_first else np.abs(C))
    assert (np.abs(c.host() - expected) <= sum_bound(k, magnitude, np.float32)).all()

"""The C backend's CPU schedule: packed matrix products, vectorized reductions, threads.

Every schedule is checked for values against numpy on odd sizes (1, 3, 17, 1000 and sizes that
are not multiples of any block size), with its thresholds lowered so that small cases take the
scheduled path, and with an assertion that they did (a test of the plain loops would pass
without the schedule). Sums in another order than the sequential one are compared with the
error bound of a sum of n terms: n * eps * (sum of the terms' magnitudes), from the reduction
length, never an ad hoc tolerance.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Constant, Fetch
from arrayjit.indexing import Fixed, Iterator, Projections, identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.schedule.cpu_target import CpuTarget, thread_count
from arrayjit.tnode import MemoryMode, TNode

# Every example compiles a routine: keep the counts small.
SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
#: Sizes of no block's multiple (micro-tiles of 6 or 12 rows, 8 to 32 columns, 256-deep slices).
ODD_SIZES = [1, 2, 3, 5, 13, 17, 33, 100, 257]


@functools.cache
def context(threads: int = 2, **thresholds: int) -> Runtime:
    """A C context whose schedule takes every product and loop it can (unless `thresholds`
    says otherwise), on `threads` threads."""
    ctx = Runtime("c")
    everything = {"matmul_min_volume": 1, "parallel_min_work": 1, "vectorize_min_extent": 16}
    ctx.backend.target = CpuTarget(threads=threads, **{**everything, **thresholds})
    return ctx


def matmuls(stmt: ir.Stmt) -> list[ir.Matmul]:
    return [s for s in ir.walk(stmt) if isinstance(s, ir.Matmul)]


def loops(stmt: ir.Stmt) -> list[ir.For]:
    return [s for s in ir.walk(stmt) if isinstance(s, ir.For)]


def sum_bound(terms: int, magnitudes: np.ndarray, dtype) -> np.ndarray:
    """The rounding error bound of a sum of `terms` terms of these total magnitudes."""
    return (terms + 2) * np.finfo(dtype).eps * magnitudes + np.finfo(dtype).tiny


def product_code(a, b, c, a_index, b_index, zero_first):
    """`c[i, j] (=:+ | =+) a[a_index] * b[b_index]` over i, j, k."""
    (m, n), k = c.dims, a.dims[a_index.index("k")]
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    names = {"i": i, "j": j, "k": r}
    projections = Projections(
        (m, n, k),
        (i, j, r),
        (i, j),
        (tuple(names[x] for x in a_index), tuple(names[x] for x in b_index)),
    )
    return Accum(c, "add", "mul", (a, b), projections, zero_first)


# ---- packed matrix products ----------------------------------------------------------------


@given(
    st.sampled_from(ODD_SIZES),
    st.sampled_from(ODD_SIZES),
    st.sampled_from(ODD_SIZES),
    st.sampled_from(["ik", "ki"]),
    st.sampled_from(["kj", "jk"]),
    st.booleans(),
    st.sampled_from(["float32", "float64"]),
    st.sampled_from([1, 2, 3]),
    st.integers(0, 2**32 - 1),
)
@SETTINGS
def test_packed_matmul_matches_numpy(m, k, n, a_layout, b_layout, zero_first, dtype, threads, seed):
    """Any layout of either operand (what the projections say), both accumulate modes."""
    rng = np.random.default_rng(seed)
    dims = {"i": m, "j": n, "k": k}
    a = TNode("a", tuple(dims[x] for x in a_layout), dtype)
    b = TNode("b", tuple(dims[x] for x in b_layout), dtype)
    c = TNode("c", (m, n), dtype)
    A, B, C = (rng.normal(size=t.dims).astype(dtype) for t in (a, b, c))
    a.set_host(A), b.set_host(B), c.set_host(C)
    routine = context(threads).compile(product_code(a, b, c, a_layout, b_layout, zero_first))
    assert len(matmuls(routine.ir)) == 1
    routine.run()
    A64 = (A if a_layout == "ik" else A.T).astype(np.float64)
    B64 = (B if b_layout == "kj" else B.T).astype(np.float64)
    expected = A64 @ B64 + (0 if zero_first else C)
    magnitude = np.abs(A64) @ np.abs(B64) + (0 if zero_first else np.abs(C))
    assert (np.abs(c.host() - expected) <= sum_bound(k, magnitude, dtype)).all()


@pytest.mark.parametrize(("m", "k", "n"), [(1000, 1000, 1000), (145, 515, 263), (1, 1000, 3)])
def test_large_and_ragged_products_with_the_default_schedule(m, k, n):
    """Several k slices, row blocks and column blocks, ragged at every level; default
    thresholds and thread count."""
    rng = np.random.default_rng(m + k + n)
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    A, B = rng.normal(size=a.dims).astype(np.float32), rng.normal(size=b.dims).astype(np.float32)
    a.set_host(A), b.set_host(B)
    routine = Runtime("c").compile(product_code(a, b, c, "ik", "kj", True))
    assert len(matmuls(routine.ir)) == (1 if m * n * k >= CpuTarget().matmul_min_volume else 0)
    routine.run()
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    bound = sum_bound(k, np.abs(A64) @ np.abs(B64), np.float32)
    assert (np.abs(c.host() - A64 @ B64) <= bound).all()


def test_accumulating_product_adds_on_each_run():
    """`c =+ a * b` run twice adds the product twice."""
    rng = np.random.default_rng(5)
    a, b, c = TNode("a", (17, 33)), TNode("b", (33, 13)), TNode("c", (17, 13))
    A, B, C = (rng.normal(size=t.dims).astype(np.float32) for t in (a, b, c))
    a.set_host(A), b.set_host(B), c.set_host(C)
    routine = context().compile(product_code(a, b, c, "ik", "kj", False))
    assert matmuls(routine.ir)[0].accumulate
    routine.run()
    routine.run()
    product = A.astype(np.float64) @ B.astype(np.float64)
    magnitude = 2 * np.abs(A).astype(np.float64) @ np.abs(B) + np.abs(C)
    assert (np.abs(c.host() - (C + 2 * product)) <= sum_bound(2 * 33, magnitude, np.float32)).all()


@pytest.mark.parametrize("threads", [1, 3])
def test_batched_product_into_a_transposed_result(threads):
    """`out[j, s, i] = sum_k x[s, i, k] * w[s, k, j]`: the batch `s` a loop around the product;
    the result's contiguous axis is `i`, which then plays the product's column role."""
    rng = np.random.default_rng(6)
    batch, m, k, n = 3, 19, 40, 7
    x, w = TNode("x", (batch, m, k), "float64"), TNode("w", (batch, k, n), "float64")
    out = TNode("out", (n, batch, m), "float64")
    X, W = rng.normal(size=x.dims), rng.normal(size=w.dims)
    x.set_host(X), w.set_host(W)
    s, i, j, r = (Iterator(name=name) for name in "sijk")
    projections = Projections((batch, m, n, k), (s, i, j, r), (j, s, i), ((s, i, r), (s, r, j)))
    routine = context(threads).compile(Accum(out, "add", "mul", (x, w), projections, True))
    (product,) = matmuls(routine.ir)
    assert (product.n, product.m) == (i, j)
    routine.run()
    expected = np.einsum("sik,skj->jsi", X, W)
    bound = sum_bound(k, np.einsum("sik,skj->jsi", np.abs(X), np.abs(W)), np.float64)
    assert (np.abs(out.host() - expected) <= bound).all()


@pytest.mark.parametrize("zero_first", [True, False])
def test_second_reduction_runs_around_the_product(zero_first):
    """`c[i, j] = sum_{k, l} a[i, k, l] * b[l, k, j]`: one reduction is the product's, the other
    a loop around it (after clearing `c` when the result overwrites)."""
    rng = np.random.default_rng(7)
    m, k, depth, n = 13, 17, 3, 20
    a, b = TNode("a", (m, k, depth), "float64"), TNode("b", (depth, k, n), "float64")
    c = TNode("c", (m, n), "float64")
    A, B, C = (rng.normal(size=t.dims) for t in (a, b, c))
    a.set_host(A), b.set_host(B), c.set_host(C)
    i, j, r, q = (Iterator(name=name) for name in "ijkl")
    projections = Projections((m, n, k, depth), (i, j, r, q), (i, j), ((i, r, q), (q, r, j)))
    routine = context().compile(Accum(c, "add", "mul", (a, b), projections, zero_first))
    assert len(matmuls(routine.ir)) == 1
    routine.run()
    expected = np.einsum("ikl,lkj->ij", A, B) + (0 if zero_first else C)
    bound = sum_bound(
        k * depth, np.einsum("ikl,lkj->ij", np.abs(A), np.abs(B)) + np.abs(C), np.float64
    )
    assert (np.abs(c.host() - expected) <= bound).all()


@pytest.mark.parametrize("read_between", [False, True])
def test_product_into_cleared_buffer_overwrites(read_between):
    """Zeros, then products adding into them (a gradient cleared at the start of a step): the
    first product overwrites instead, unless something reads the zeros in between; the second
    adds."""
    rng = np.random.default_rng(12)
    m, k, n = 20, 30, 40
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    other, copy = TNode("other", (m, n)), TNode("copy", (m, n))
    A, B = rng.normal(size=a.dims).astype(np.float32), rng.normal(size=b.dims).astype(np.float32)
    a.set_host(A), b.set_host(B), c.set_host(np.full(c.dims, 7.0))
    between = (c if read_between else other,)
    code = (
        Fetch(c, Constant(0.0))
        + Accum(copy, None, "identity", between, identity_projections((m, n), 1))
        + product_code(a, b, c, "ik", "kj", False)
        + product_code(a, b, c, "ik", "kj", False)
    )
    routine = context().compile(code)
    assert [p.accumulate for p in matmuls(routine.ir)] == [read_between, True]
    routine.run()
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    bound = sum_bound(2 * k, 2 * np.abs(A64) @ np.abs(B64), np.float32)
    assert (np.abs(c.host() - 2 * A64 @ B64) <= bound).all()
    np.testing.assert_array_equal(copy.host(), 0 if read_between else other.host())


def test_operand_expression_is_computed_into_scratch_first():
    """A virtual operand (`relu(x + bias)`, inlined) is stored once, then packed."""
    rng = np.random.default_rng(8)
    m, k, n = 33, 17, 5
    x, bias, w = TNode("x", (m, k)), TNode("bias", (k,)), TNode("w", (k, n))
    hidden = TNode("hidden", (m, k), memory_mode=MemoryMode.VIRTUAL)
    out = TNode("out", (m, n))
    X, bias_values, W = (rng.normal(size=t.dims).astype(np.float32) for t in (x, bias, w))
    x.set_host(X), bias.set_host(bias_values), w.set_host(W)
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    code = (
        Accum(hidden, None, "add", (x, bias), Projections((m, k), (i, r), (i, r), ((i, r), (r,))))
        + Accum(hidden, None, "relu", (hidden,), identity_projections((m, k), 1))
        + Accum(
            out,
            "add",
            "mul",
            (hidden, w),
            Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j))),
            True,
        )
    )
    routine = context().compile(code)
    assert len(matmuls(routine.ir)) == 1
    routine.run()
    H = np.maximum(X + bias_values, 0).astype(np.float64)
    bound = sum_bound(k, np.abs(H) @ np.abs(W.astype(np.float64)), np.float32)
    assert (np.abs(out.host() - H @ W) <= bound).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_product_with_sixteen_byte_vectors(monkeypatch, tmp_path, dtype):
    """The register tile of machines without AVX (`-march=x86-64`: SSE2, 16-byte vectors), on
    this machine: transposed operands, ragged panels, both dtypes."""
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ARRAYJIT_CFLAGS", "-march=x86-64 -mtune=generic")
    ctx = Runtime("c")
    ctx.backend.target = CpuTarget(threads=2, matmul_min_volume=1)
    rng = np.random.default_rng(13)
    m, k, n = 23, 37, 19
    a, b, c = TNode("a", (k, m), dtype), TNode("b", (n, k), dtype), TNode("c", (m, n), dtype)
    A, B = rng.normal(size=a.dims).astype(dtype), rng.normal(size=b.dims).astype(dtype)
    a.set_host(A), b.set_host(B)
    routine = ctx.compile(product_code(a, b, c, "ki", "jk", True))
    assert len(matmuls(routine.ir)) == 1
    routine.run()
    A64, B64 = A.T.astype(np.float64), B.T.astype(np.float64)
    bound = sum_bound(k, np.abs(A64) @ np.abs(B64), dtype)
    assert (np.abs(c.host() - A64 @ B64) <= bound).all()


def test_small_products_keep_plain_loops():
    """Below `matmul_min_volume` a contraction stays a loop nest (packing would not pay)."""
    a, b, c = TNode("a", (4, 6)), TNode("b", (6, 5)), TNode("c", (4, 5))
    routine = Runtime("c").compile(product_code(a, b, c, "ik", "kj", True))
    assert not matmuls(routine.ir)


# ---- threads -------------------------------------------------------------------------------


def test_results_do_not_depend_on_the_thread_count():
    """Products and parallel loops (2-D, and 1-D cut into chunks): bit-identical results for 1,
    2 and 3 threads."""
    rng = np.random.default_rng(9)
    m, k, n = 100, 300, 37
    A, B = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    length = 100_003  # a 1-D loop: vector and scalar math must fall on the same elements
    values = np.linspace(-20, 20, length, dtype=np.float32)
    results = []
    for threads in (1, 2, 3):
        a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
        y, x, z = TNode("y", (m, n)), TNode("x", (length,)), TNode("z", (length,))
        a.set_host(A), b.set_host(B), x.set_host(values)
        code = (
            product_code(a, b, c, "ik", "kj", True)
            + Accum(y, None, "exp", (c,), identity_projections((m, n), 1))
            + Accum(z, None, "tanh", (x,), identity_projections((length,), 1))
        )
        routine = context(threads).compile(code)
        assert len(matmuls(routine.ir)) == 1 and matmuls(routine.ir)[0].blocking.threads == threads
        threaded = [loop for loop in loops(routine.ir) if loop.threads > 1]
        assert len(threaded) == (0 if threads == 1 else 2)
        routine.run()
        results.append((c.host().copy(), y.host().copy(), z.host().copy()))
    for result in results[1:]:
        for values_now, values_first in zip(result, results[0], strict=True):
            np.testing.assert_array_equal(values_now, values_first)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("accum", ["add", "max", "sub"])
def test_full_reduction_split_over_threads(threads, accum):
    """A sum (max, difference) of everything: one chunk per thread, combined in thread order;
    the same on every run, and within the bound of the sum."""
    rng = np.random.default_rng(10)
    length = 100_003
    x, out = TNode("x", (length,), "float32"), TNode("out", (1,), "float32")
    X = rng.normal(size=length).astype(np.float32)
    x.set_host(X)
    out.set_host(np.array([0.5], np.float32))
    i = Iterator(name="i")
    code = Accum(out, accum, "identity", (x,), Projections((length,), (i,), (Fixed(0),), ((i,),)))
    routine = context(threads).compile(code)
    assert [loop.threads for loop in loops(routine.ir) if loop.threads > 1] == [threads]
    routine.run()
    first = out.host().copy()
    out.set_host(np.array([0.5], np.float32))
    routine.run()
    np.testing.assert_array_equal(out.host(), first)
    X64 = X.astype(np.float64)
    expected = {"add": 0.5 + X64.sum(), "sub": 0.5 - X64.sum(), "max": max(0.5, X64.max())}[accum]
    bound = sum_bound(length, np.abs(X64).sum() + 0.5, np.float32) if accum != "max" else 0
    assert abs(first[0] - expected) <= bound


def test_small_loops_stay_on_one_thread():
    x, y = TNode("x", (100,)), TNode("y", (100,))
    routine = Runtime("c").compile(Accum(y, None, "exp", (x,), identity_projections((100,), 1)))
    assert all(loop.threads == 1 for loop in loops(routine.ir))


def test_one_dimensional_loop_is_cut_into_chunks_per_thread():
    """A 1-D loop: one fixed-length chunk per thread (a `parallel for` of 3 iterations), each
    chunk vectorized on its own, then the tail."""
    n = (1 << 16) + 5
    x, y = TNode("x", (n,)), TNode("y", (n,))
    routine = context(3).compile(Accum(y, None, "exp", (x,), identity_projections((n,), 1)))
    source = Path(routine.source_path).read_text()
    assert "#pragma omp parallel for num_threads(3) schedule(static)" in source
    assert source.count("#pragma omp simd") == 2  # the chunk and the tail
    X = np.linspace(-5, 5, n, dtype=np.float32)
    x.set_host(X)
    routine.run()
    np.testing.assert_allclose(y.host(), np.exp(X), rtol=4 * np.finfo(np.float32).eps)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")
def test_forked_child_runs_parallel_code():
    """GNU OpenMP hangs in a child forked after it started threads: the child runs the same
    routines (and routines compiled there) on one thread, with the same results."""
    n = 1 << 16
    x, y, z = TNode("x", (n,)), TNode("y", (n,)), TNode("z", (n,))
    x.set_host(np.linspace(-3, 3, n, dtype=np.float32))
    ctx = context(2)
    routine = ctx.compile(Accum(y, None, "exp", (x,), identity_projections((n,), 1)))
    routine.run()
    expected = y.host().copy()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        status = 1
        try:
            signal.alarm(60)
            y.set_host(np.zeros(n))
            routine.run()
            later = ctx.compile(Accum(z, None, "tanh", (x,), identity_projections((n,), 1)))
            later.run()
            close = np.allclose(z.host(), np.tanh(x.host()), rtol=4e-7, atol=0)
            same = np.array_equal(y.host(), expected) and close
            os.write(write, b"ok" if same else b"wrong")
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 16) == b"ok" and status == 0


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("ARRAYJIT_NUM_THREADS", "3")
    assert CpuTarget.from_environment().threads == 3
    monkeypatch.delenv("ARRAYJIT_NUM_THREADS")
    assert thread_count() == len(os.sched_getaffinity(0))
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("ARRAYJIT_NUM_THREADS", bad)
        with pytest.raises(
            ValueError, match=f"ARRAYJIT_NUM_THREADS must be a positive integer, got '{bad}'"
        ):
            thread_count()


# ---- vectorized reductions -------------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 17, 1000])
@pytest.mark.parametrize("accum", ["add", "max", "min", "mul"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_reductions(length, accum, dtype):
    """`out[i] = reduce_k x[i, k]`: vectorized (a reduction clause) from 16 terms on, in four
    parts side by side from 64, sequential below 16; NaN propagates through max and min."""
    rng = np.random.default_rng(length)
    rows = 5
    x, out = TNode("x", (rows, length), dtype), TNode("out", (rows,), dtype)
    values = (
        rng.uniform(0.5, 1.5, (rows, length)) if accum == "mul" else rng.normal(size=(rows, length))
    )
    values = values.astype(dtype)
    if accum in ("max", "min"):
        values[2, length // 2] = np.nan
    x.set_host(values)
    i, r = Iterator(name="i"), Iterator(name="r")
    projections = Projections((rows, length), (i, r), (i,), ((i, r),))
    routine = context(1).compile(Accum(out, accum, "identity", (x,), projections, True))
    marked = [loop for loop in loops(routine.ir) if loop.reductions]
    assert bool(marked) == (length >= 16)
    # Long rows are summed as 4 parts side by side, each with its own accumulator.
    assert [len(loop.reductions) for loop in marked] == ([4] if length >= 64 else [1] * len(marked))
    routine.run()
    v64 = values.astype(np.float64)
    if accum in ("max", "min"):
        expected = getattr(np, accum)(v64, axis=1)
        np.testing.assert_array_equal(np.isnan(out.host()), np.isnan(expected))
        np.testing.assert_array_equal(
            out.host()[~np.isnan(expected)], expected[~np.isnan(expected)]
        )
    elif accum == "add":
        bound = sum_bound(length, np.abs(v64).sum(axis=1), dtype)
        assert (np.abs(out.host() - v64.sum(axis=1)) <= bound).all()
    else:
        expected = np.prod(v64, axis=1)
        assert (np.abs(out.host() - expected) <= sum_bound(length, np.abs(expected), dtype)).all()


@given(
    st.sampled_from([1, 3, 17, 100]),
    st.sampled_from([1, 3, 17, 63, 64, 65, 1000, 4099]),
    st.booleans(),
    st.sampled_from(["add", "max", "min", "sub"]),
    st.sampled_from([1, 2, 3]),
    st.integers(0, 2**32 - 1),
)
@SETTINGS
def test_reductions_over_drawn_shapes(rows, length, full, accum, threads, seed):
    """Row reductions (`out[i] = reduce_k x[i, k]`) and full ones (`out[0] = reduce x`), into
    existing values, on any thread count: within the bound of the sum, NaN-exact for max/min."""
    rng = np.random.default_rng(seed)
    x = TNode("x", (rows, length))
    out = TNode("out", (1,) if full else (rows,))
    X = rng.normal(size=x.dims).astype(np.float32)
    start = rng.normal(size=out.dims).astype(np.float32)
    x.set_host(X), out.set_host(start)
    i, r = Iterator(name="i"), Iterator(name="r")
    lhs = (Fixed(0),) if full else (i,)
    projections = Projections((rows, length), (i, r), lhs, ((i, r),))
    context(threads, parallel_min_work=1).compile(
        Accum(out, accum, "identity", (x,), projections, False)
    ).run()
    X64 = X.astype(np.float64)
    axis = None if full else 1
    reduced = {
        "add": X64.sum(axis),
        "sub": -X64.sum(axis),
        "max": X64.max(axis),
        "min": X64.min(axis),
    }
    combine = {"add": np.add, "sub": np.add, "max": np.maximum, "min": np.minimum}[accum]
    expected = combine(start.astype(np.float64), reduced[accum])
    if accum in ("max", "min"):
        np.testing.assert_array_equal(out.host(), expected.astype(np.float32))
    else:
        terms = rows * length if full else length
        magnitude = np.abs(X64).sum(axis) + np.abs(start)
        assert (np.abs(out.host() - expected) <= sum_bound(terms, magnitude, np.float32)).all()


def test_reduction_clause_in_the_source():
    x, out = TNode("x", (4, 64)), TNode("out", (4,))
    i, r = Iterator(name="i"), Iterator(name="r")
    projections = Projections((4, 64), (i, r), (i,), ((i, r),))
    source = Path(
        context(1).compile(Accum(out, "max", "identity", (x,), projections, True)).source_path
    )
    assert "#pragma omp simd reduction(ocannl_max_float : acc" in source.read_text()
    assert "#pragma omp declare reduction(ocannl_max_float : float" in source.read_text()


# ---- the compiler's features -----------------------------------------------------------------


def test_compiler_without_openmp(monkeypatch, tmp_path):
    """A compiler refusing `-fopenmp*` builds the same source without threads or simd pragmas
    (after a probe, remembered: the next build runs the compiler once)."""
    real = shutil.which("cc") or shutil.which("gcc")
    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "no-openmp-cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$1" in --version) exec ' + real + " --version ;; esac\n"
        f'echo "$@" >> {calls}\n'
        'for arg in "$@"; do case "$arg" in -fopenmp*) echo "unknown option $arg" >&2; exit 1 ;; esac; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ARRAYJIT_CC", str(wrapper))
    ctx = Runtime("c")
    ctx.backend.target = replace(context().backend.target)
    rng = np.random.default_rng(11)
    a, b, c = TNode("a", (30, 40)), TNode("b", (40, 20)), TNode("c", (30, 20))
    A, B = rng.normal(size=a.dims).astype(np.float32), rng.normal(size=b.dims).astype(np.float32)
    a.set_host(A), b.set_host(B)
    ctx.compile(product_code(a, b, c, "ik", "kj", True)).run()
    bound = sum_bound(40, np.abs(A).astype(np.float64) @ np.abs(B), np.float32)
    assert (np.abs(c.host() - A.astype(np.float64) @ B) <= bound).all()
    assert list((tmp_path / "cache").glob("cc-features-*.json"))
    before = len(calls.read_text().splitlines())
    x, total = TNode("x", (50,)), TNode("total", (1,))
    x.set_host(np.arange(50, dtype=np.float32))
    i = Iterator(name="i")
    ctx.compile(
        Accum(total, "add", "identity", (x,), Projections((50,), (i,), (Fixed(0),), ((i,),)), True)
    ).run()
    assert total.host()[0] == sum(range(50))
    assert len(calls.read_text().splitlines()) == before + 1


# ---- vector math ------------------------------------------------------------------------------

#: The error allowed to the vectorized math functions, in ulp of the exact result (glibc
#: documents up to 4 ulp for libmvec; measured here: at most 3.7, logf).
TRANSCENDENTAL_ULPS = 4


def sweep(dtype: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """Random bit patterns (every exponent: denormals, huge values, infinities, NaN) and edges."""
    bits = {"float32": np.uint32, "float64": np.uint64}[dtype]
    info = np.finfo(dtype)
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny, -info.tiny, info.smallest_subnormal]
    edges += [info.max, -info.max, 1.0, -1.0, 0.5, 88.72, -103.9, 709.78, -745.1, 1e30, -1e30]
    random = rng.integers(0, np.iinfo(bits).max, count, dtype=bits, endpoint=True).view(dtype)
    return np.concatenate([np.array(edges, dtype), random, rng.normal(0, 10, count).astype(dtype)])


def exact_values(name: str, args: list[np.ndarray], wide: type) -> np.ndarray:
    """`name` over `args` in `wide` precision. numpy has no erf: float64's comes from
    math.erf (within 1 ulp of float64, far below float32's ulp), long double's from mpmath."""
    if name != "erf":
        return getattr(np, {"pow": "power"}.get(name, name))(*(a.astype(wide) for a in args))
    if wide is np.float64:
        return np.vectorize(math.erf, otypes=[np.float64])(args[0].astype(np.float64))
    mpmath = pytest.importorskip("mpmath", reason="mpmath gives erf beyond float64's precision")
    mpmath.mp.prec = 80

    def erf(x: float) -> np.longdouble:
        if not math.isfinite(x):
            return np.longdouble(math.erf(x))
        return np.longdouble(mpmath.nstr(mpmath.erf(mpmath.mpf(x)), 30))

    return np.array([erf(float(x)) for x in args[0]], dtype=np.longdouble)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["exp", "log", "exp2", "log2", "sin", "cos", "tanh", "pow", "erf"])
def test_vector_math_over_the_whole_range(name, dtype):
    """The vectorized math functions (libmvec where present) over every exponent, against numpy
    computing in wider precision (float64 for float32, long double for float64) as the exact
    value: NaN and infinities at the same positions, finite values within the ulp tolerance."""
    from arrayjit.backends import cc
    from arrayjit.codegen.c_syntax import VECTOR_MATH, VECTOR_MATH_2_35

    rng = np.random.default_rng(sum(map(ord, name + dtype)))
    args = [sweep(dtype, 20_000, rng) for _ in range(VECTOR_MATH[name])]
    if len(args) == 2:
        args[1] = rng.permutation(args[1])
    n = len(args[0])
    xs = [TNode(f"x{k}", (n,), dtype) for k in range(len(args))]
    out = TNode("out", (n,), dtype)
    for tnode, values in zip(xs, args, strict=True):
        tnode.set_host(values)
    routine = context(1).compile(
        Accum(out, None, name, tuple(xs), identity_projections((n,), len(xs)))
    )
    assert all(loop.vectorize for loop in loops(routine.ir))
    found = cc.features()
    if found.vector_math and (name not in VECTOR_MATH_2_35 or found.vector_math_2_35):
        assert any(b"_ZGV" in library.read_bytes() for library in routine.compiled.libraries)
    routine.run()
    wide = np.float64 if dtype == "float32" else np.longdouble
    with np.errstate(all="ignore"):
        exact = exact_values(name, args, wide)
        expected = exact.astype(dtype)
    actual = out.host()
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), "NaN positions")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(actual[infinite], expected[infinite], "infinities")
    finite = np.isfinite(expected)
    diff = np.abs(actual[finite].astype(wide) - exact[finite])
    allowed = TRANSCENDENTAL_ULPS * np.spacing(np.abs(expected[finite])).astype(wide)
    bad = np.flatnonzero(diff > allowed)
    assert not bad.size, (
        f"{name}: {bad.size} values beyond {TRANSCENDENTAL_ULPS} ulp, e.g. "
        + ", ".join(
            f"{name}({', '.join(str(a[finite][b]) for a in args)}) = {actual[finite][b]}, numpy {expected[finite][b]}"
            for b in bad[:4]
        )
    )

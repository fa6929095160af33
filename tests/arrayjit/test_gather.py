"""Data-dependent indices (`Lookup` in projections, `Dynamic` in the loop IR): a gather of table
rows by int32 ids and the scatter-add into a table, on the C backend, on the CUDA emulator and
(where usable) on a GPU; ids outside the table are recorded by the generated code and reported
after the run, never used to read or write."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, nvcc_cubin, runner

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Arg
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Iterator, Lookup, Projections
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime import index_checks
from arrayjit.runtime.index_checks import IndexOutOfRange
from arrayjit.tnode import TNode

KINDS = ["c", *(k for k in ("emulator", "gpu") if k in RUNNERS)]


def gather(batch: int, vocab: int, dim: int, dtype: str = "float32"):
    """`out[b, d] = table[ids[b], d]`."""
    table, ids = TNode("table", (vocab, dim), dtype), TNode("ids", (batch,), "int32")
    out = TNode("out", (batch, dim), dtype)
    b, d = Iterator(name="b"), Iterator(name="d")
    projections = Projections((batch, dim), (b, d), (b, d), ((b,), (Lookup(0), d)))
    return Accum(out, None, Arg(1), (ids, table), projections), table, ids, out


def scatter_add(batch: int, vocab: int, dim: int, zero_first: bool = False):
    """`grad[ids[b], d] += g[b, d]`."""
    grad, ids, g = (
        TNode("grad", (vocab, dim)),
        TNode("ids", (batch,), "int32"),
        TNode("g", (batch, dim)),
    )
    b, d = Iterator(name="b"), Iterator(name="d")
    projections = Projections((batch, dim), (b, d), (Lookup(0), d), ((b,), (b, d)))
    code = Accum(grad, "add", Arg(1), (ids, g), projections, zero_first)
    return code, grad, ids, g


def run(kind: str, code, c_context):
    """Run `code` on `kind`; an index outside its axis raises, as `Executable.run` does."""
    if kind == "c":
        c_context.compile(code).run()
        return None
    ran = runner(kind)(code)
    index_checks.raise_errors(index_checks.checks_in(code))
    return ran


def test_projections_check_their_lookups():
    b, d = Iterator(name="b"), Iterator(name="d")
    with pytest.raises(ValueError, match="a lookup reads operand 3 of 2"):
        Projections((2, 3), (b, d), (b, d), ((b,), (Lookup(2), d)))
    with pytest.raises(ValueError, match="itself looked up"):
        Projections((2, 3), (b, d), (b, d), ((Lookup(1),), (Lookup(0), d)))
    table, fids, out = TNode("table", (4, 3)), TNode("fids", (2,)), TNode("out", (2, 3))
    projections = Projections((2, 3), (b, d), (b, d), ((b,), (Lookup(0), d)))
    with pytest.raises(TypeError, match="indices are read from 'fids'.*float32 values, not int32"):
        Accum(out, None, Arg(1), (fids, table), projections)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("batch", "vocab", "dim"), [(5, 7, 3), (1, 1, 1), (33, 1000, 17)])
def test_gather_picks_rows(kind, batch, vocab, dim, c_context):
    code, table, ids, out = gather(batch, vocab, dim)
    rng = np.random.default_rng(batch * vocab)
    values = rng.normal(size=(vocab, dim)).astype(np.float32)
    id_values = rng.integers(0, vocab, batch).astype(np.int32)
    table.set_host(values)
    ids.set_host(id_values)
    out.set_host(np.full((batch, dim), np.nan, np.float32))
    run(kind, code, c_context)
    np.testing.assert_array_equal(out.host(), values[id_values])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zero_first", [False, True])
def test_scatter_add_sums_repeated_ids_in_order(kind, zero_first, c_context):
    batch, vocab, dim = 40, 6, 5
    code, grad, ids, g = scatter_add(batch, vocab, dim, zero_first)
    rng = np.random.default_rng(3)
    id_values = rng.integers(0, vocab, batch).astype(np.int32)
    id_values[:10] = 2  # many updates of one row
    g_values = rng.normal(size=(batch, dim)).astype(np.float32)
    start = rng.normal(size=(vocab, dim)).astype(np.float32)
    ids.set_host(id_values)
    g.set_host(g_values)
    grad.set_host(start)
    run(kind, code, c_context)
    # In the order of the ids, in float32: the generated code adds one id after another.
    expected = np.zeros_like(start) if zero_first else start.copy()
    for b in range(batch):
        expected[id_values[b]] += g_values[b]
    np.testing.assert_array_equal(grad.host(), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [7, -1, -(2**31)])
def test_ids_outside_the_table_are_reported_not_used(kind, bad, c_context):
    code, table, ids, out = gather(4, 7, 3)
    table.set_host(np.arange(21, dtype=np.float32).reshape(7, 3))
    ids.set_host(np.array([1, bad, 6, 0], np.int32))
    with pytest.raises(
        IndexOutOfRange, match=rf"index {bad} read from 'ids' \(at ids\[1\]\) is outside \[0, 7\)"
    ):
        run(kind, code, c_context)
    # Nothing outside the table was read: the bad cell holds row 0.
    np.testing.assert_array_equal(out.host()[1], [0, 1, 2])
    ids.set_host(np.array([1, 2, 6, 0], np.int32))
    run(kind, code, c_context)
    np.testing.assert_array_equal(out.host()[:, 0], [3, 6, 18, 0])


def test_scatter_write_outside_is_reported(c_context):
    code, grad, ids, g = scatter_add(3, 4, 2)
    ids.set_host(np.array([0, 4, 1], np.int32))
    g.set_host(np.ones((3, 2), np.float32))
    grad.set_host(np.zeros((4, 2), np.float32))
    with pytest.raises(IndexOutOfRange, match="index 4 read from 'ids'.*axis 0 of 'grad'"):
        c_context.compile(code).run()


def test_scatter_is_parallel_only_across_the_row(c_context):
    """Two ids may pick one row: the loop over ids must not be parallel (no race), the loop
    along the row may be."""
    code, *_ = scatter_add(8, 4, 16)
    stmt = compile_to_ir(code, reductions_innermost=True)
    loops = {
        loop.iterator.name: loop.parallel for loop in ir.walk(stmt) if isinstance(loop, ir.For)
    }
    assert loops.get("b") is False
    assert loops.get("d") is True


@pytest.mark.parametrize("make", [gather, scatter_add], ids=["gather", "scatter"])
def test_cuda_source_compiles_with_nvcc(make, tmp_path):
    code = make(64, 1000, 96)[0]
    source = generate(compile_to_ir(code, True), "ocannl_gather").source
    assert "ocannl_index(" in source and "atomicCAS" in source
    nvcc_cubin(source, tmp_path)


def test_cpu_schedule_threads_and_vectorizes_only_across_the_row():
    """With every threshold at its least, the CPU schedule may thread and vectorize the loop
    along a row (distinct cells), never the loop over ids of a scatter (two ids, one row)."""
    from arrayjit.runtime.runtime import Runtime
    from arrayjit.schedule.cpu_target import CpuTarget

    runtime = Runtime("c")
    runtime.backend.target = CpuTarget(
        threads=2, matmul_min_volume=1, parallel_min_work=1, vectorize_min_extent=1
    )
    batch, vocab, dim = 300, 50, 64
    rng = np.random.default_rng(8)
    id_values = rng.integers(0, vocab, batch).astype(np.int32)
    code, grad, ids, g = scatter_add(batch, vocab, dim, zero_first=True)
    ids.set_host(id_values)
    g_values = rng.normal(size=(batch, dim)).astype(np.float32)
    g.set_host(g_values)
    routine = runtime.compile(code)
    loops = {x.iterator.name: x for x in ir.walk(routine.ir) if isinstance(x, ir.For)}
    assert loops["b"].threads == 1 and not loops["b"].vectorize
    assert loops["d"].threads > 1 or loops["d"].vectorize
    routine.run()
    expected = np.zeros((vocab, dim), np.float32)
    for b in range(batch):
        expected[id_values[b]] += g_values[b]
    np.testing.assert_array_equal(grad.host(), expected)
    code, table, ids, out = gather(batch, vocab, dim)
    table.set_host(rng.normal(size=(vocab, dim)).astype(np.float32))
    ids.set_host(id_values)
    runtime.compile(code).run()
    np.testing.assert_array_equal(out.host(), table.host()[id_values])


@pytest.mark.parametrize("backend", ["c", "cuda"])
def test_deferred_checks_raise_at_the_next_run_or_synchronize(backend):
    from arrayjit.runtime.runtime import Runtime, cuda_usable

    if backend == "cuda" and not cuda_usable():
        pytest.skip("no usable GPU here")
    runtime = Runtime(backend)
    runtime.defer_index_checks = True
    code, table, ids, out = gather(4, 7, 3)
    table.set_host(np.arange(21, dtype=np.float32).reshape(7, 3))
    ids.set_host(np.array([1, 9, 6, 0], np.int32))
    routine = runtime.compile(code)
    routine.run()  # queued: the check is read later
    with pytest.raises(IndexOutOfRange, match=r"index 9 read from 'ids'"):
        routine.run()  # reads the previous run's check first
    routine.run()  # the failed run's check was read: this one is pending
    with pytest.raises(IndexOutOfRange, match=r"index 9 read from 'ids'"):
        runtime.synchronize()
    runtime.synchronize()  # nothing pending any more
    ids.set_host(np.array([1, 2, 6, 0], np.int32))
    routine.run()
    runtime.synchronize()
    np.testing.assert_array_equal(out.host()[:, 0], [3, 6, 18, 0])

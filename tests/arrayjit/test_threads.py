"""Routines and compiles from several Python threads (issue 14). ctypes releases the GIL while a
routine runs, and a routine's scratch buffers are its own: two threads running the same routine
at once gave wrong values (12 of 300 trials), and two threads compiling on one runtime crashed in
the printer. Runs of one routine are serialized by a lock of its own; compiles on one runtime
by the runtime's lock (docs/reliability.md)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import ocannl_py as oc
from arrayjit.assignments import Accum, Fetch, RangeOfShape
from arrayjit.indexing import Iterator, Projections, identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode, TNode
from ocannl_py import Context

TRIALS = 300


def column_sums_doubled(m: int = 2000, n: int = 256):
    """y = 2 * (the sums of a's columns), through a scratch buffer s that every run zeroes, then
    accumulates row by row (in memory), then reads."""
    a, y = TNode("a", (m, n), "float64"), TNode("y", (n,), "float64")
    s = TNode("s", (n,), "float64", MemoryMode.LOCAL)
    i, j = Iterator(name="i"), Iterator(name="j")
    sums = Accum(s, "add", "identity", (a,), Projections((m, n), (i, j), (j,), ((i, j),)), True)
    doubled = Accum(y, None, "add", (s, s), identity_projections((n,), 2))
    a.set_host(np.random.default_rng(0).normal(size=(m, n)))
    return sums + doubled, y, 2 * a.host().sum(0)


def test_one_routine_run_from_two_threads_at_once():
    code, y, expected = column_sums_doubled()
    routine = Runtime("c").compile(code, "threads")
    start = threading.Barrier(2)
    wrong: list[int] = []
    done = threading.Barrier(3)

    def runner() -> None:
        for _ in range(TRIALS):
            start.wait()
            routine.run()
            done.wait()

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for trial in range(TRIALS):
        done.wait()
        if not np.allclose(y.host(), expected, rtol=1e-12, atol=1e-12):
            wrong.append(trial)
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} of {TRIALS} trials gave wrong values"


@pytest.fixture
def frequent_switches():
    """Threads switch every microsecond (not every 5 ms), so that races show up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_threads_compiling_on_one_runtime(frequent_switches):
    """Three threads, fifteen routines each of six loop nests: all compile and compute."""
    runtime = Runtime("c")
    errors: list[BaseException] = []
    results: list[tuple[TNode, tuple[int, int]]] = []

    def compile_some(w: int) -> None:
        for n in range(15):
            try:
                code = None
                for q in range(6):
                    dims = (3 + n + q, 5 + w)
                    x, y = TNode(f"x{w}_{n}_{q}", dims), TNode(f"y{w}_{n}_{q}", dims)
                    nest = Fetch(x, RangeOfShape()) + Accum(
                        y, None, "exp", (x,), identity_projections(dims, 1)
                    )
                    code = nest if code is None else code + nest
                    results.append((y, dims))
                runtime.compile(code, f"w{w}n{n}").run()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=compile_some, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} of 45 compiles failed: {errors[0]!r}"
    for y, dims in results:
        with np.errstate(over="ignore"):  # float32: exp of the larger cells is infinity
            expected = np.exp(np.arange(np.prod(dims), dtype=np.float32).reshape(dims))
        np.testing.assert_allclose(y.host(), expected, rtol=1e-6)


def test_two_threads_compiling_tensors_on_one_context(frequent_switches):
    ctx = Context("c")
    errors: list[BaseException] = []
    values: dict[int, tuple[oc.Tensor, np.ndarray]] = {}

    def forward(n: int) -> None:
        try:
            data = np.arange(4.0 * (n + 2)).reshape(n + 2, 4) / 7
            x = oc.ndarray(data, output_dims=[n + 2, 4], label=f"x{n}")
            y = oc.einsum1("ij=>i", oc.exp(x) * 2.0)
            ctx.forward(y)
            values[n] = (y, 2 * np.exp(data).sum(1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=forward, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, repr(errors[0])
    for y, expected in values.values():
        np.testing.assert_allclose(y.value, expected, rtol=1e-5)

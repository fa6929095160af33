"""Pointwise kernels of the CUDA backend taking 4 (or 2) neighbouring cells per thread with
16-byte loads and stores: when they do (pure Python), their SASS (with nvcc), and their values
against numpy on the CPU emulator and, where one is usable, on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, nvcc_cubin, runner, sass

from arrayjit.assignments import Accum, Arg, Call, Constant, Fetch, Lit, RangeOfShape
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Affine, Iterator, Projections, identity_projections
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule.gpu_kernels import plan_kernels
from arrayjit.tnode import MemoryMode, TNode


def chain(n: int, dtype: str = "float32"):
    """y = relu(exp(x) * x + 1) with virtual intermediates: one kernel."""
    x, y = TNode("x", (n,), dtype), TNode("y", (n,), dtype)
    e, t, p = (TNode(s, (n,), dtype, MemoryMode.VIRTUAL) for s in "etp")
    p1, p2 = identity_projections((n,), 1), identity_projections((n,), 2)
    code = (
        Accum(e, None, "exp", (x,), p1)
        + Accum(t, None, "mul", (e, x), p2)
        + Accum(p, None, Call("add", (Arg(0), Lit(1.0))), (t,), p1)
        + Accum(y, None, "relu", (p,), p1)
    )
    return code, x, y


def bias_add(rows: int, cols: int):
    """y[i, j] = x[i, j] + b[j]."""
    x, b, y = TNode("x", (rows, cols)), TNode("b", (cols,)), TNode("y", (rows, cols))
    i, j = Iterator(name="i"), Iterator(name="j")
    projections = Projections((rows, cols), (i, j), (i, j), ((i, j), (j,)))
    return Accum(y, None, "add", (x, b), projections), x, b, y


def vectors(code) -> list[int]:
    return [p.vector for p in plan_kernels(compile_to_ir(code, reductions_innermost=True))]


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


def test_which_kernels_take_neighbouring_cells():
    assert vectors(chain(1 << 26)[0]) == [4]
    assert vectors(chain(1000, "float64")[0]) == [2]
    assert vectors(chain(1001)[0]) == [1]  # not a multiple of 4
    assert vectors(bias_add(64, 100)[0]) == [4]
    assert vectors(bias_add(64, 102)[0]) == [1]  # rows of 102 floats: not 16-byte aligned
    x, y = TNode("x", (40, 60)), TNode("y", (60, 40))
    i, j = Iterator(), Iterator()
    transpose = Accum(y, None, "identity", (x,), Projections((60, 40), (i, j), (i, j), ((j, i),)))
    assert vectors(transpose) == [1]
    shifted = Accum(
        TNode("z", (64,)),
        None,
        "identity",
        (TNode("w", (65,)),),
        Projections((64,), (i,), (i,), ((Affine(((1, i),), 1),),)),
    )
    assert vectors(shifted) == [1]  # starts one element past an aligned address
    w = TNode("w", (64,))
    in_place = Accum(w, None, "neg", (w,), identity_projections((64,), 1))
    assert vectors(in_place) == [1]  # reads what it writes


def test_chain_kernel_loads_and_stores_16_bytes(tmp_path):
    code, *_ = chain(1 << 26)
    source = generate(compile_to_ir(code, True), "ocannl_chain").source
    code_of = sass(nvcc_cubin(source, tmp_path))["ocannl_chain_k0"]
    assert "LDG.E.128" in code_of and "STG.E.128" in code_of


@pytest.mark.parametrize("n", [4096, 1001])
def test_chain_matches_numpy(run, n):
    code, x, y = chain(n)
    values = np.random.default_rng(n).standard_normal(n, dtype=np.float32)
    x.set_host(values)
    y.set_host(np.full(n, np.nan, np.float32))
    run(code)
    np.testing.assert_allclose(y.host(), np.maximum(np.exp(values) * values + 1, 0), rtol=1e-5)


def test_broadcast_add_and_float64_match_numpy(run):
    rng = np.random.default_rng(3)
    code, x, b, y = bias_add(37, 64)
    x.set_host(rng.standard_normal((37, 64)))
    b.set_host(rng.standard_normal(64))
    ran = run(code)
    assert [p.vector for p in ran.plans] == [4]
    np.testing.assert_array_equal(y.host(), x.host() + b.host())
    code, x, y = chain(998, "float64")
    values = rng.standard_normal(998)
    x.set_host(values)
    ran = run(code)
    assert [p.vector for p in ran.plans] == [2]
    np.testing.assert_allclose(y.host(), np.maximum(np.exp(values) * values + 1, 0), rtol=1e-13)


def test_index_values_and_constants_per_cell(run):
    """A range fetch stores each cell's own index; a constant fill stores the same value."""
    r, c = TNode("r", (12, 8)), TNode("c", (12, 8))
    ran = run(Fetch(r, RangeOfShape()) + Fetch(c, Constant(2.5)))
    assert [p.vector for p in ran.plans] == [4, 4]
    np.testing.assert_array_equal(r.host(), np.arange(96, dtype=np.float32).reshape(12, 8))
    np.testing.assert_array_equal(c.host(), np.full((12, 8), 2.5, np.float32))


def test_a_broadcast_of_a_value_just_computed_gets_a_grid(run):
    """`s = 2 + x[0]` (one thread), then `y[i, j] += s`: the nest reads `s` through a hoisted
    local declared after the one-thread statements; it is recomputed in the nest's own kernel,
    which gets a grid (it ran as one thread for a whole 2048 x 50257 gradient in GPT-2)."""
    from arrayjit.indexing import Fixed

    s, x, y = TNode("s", (1,)), TNode("x", (1,)), TNode("y", (37, 64))
    i, j = Iterator(name="i"), Iterator(name="j")
    scalar = Projections((), (), (Fixed(0),), ((Fixed(0),),))
    code = (
        Fetch(s, Constant(2.0))
        + Accum(s, "add", "identity", (x,), scalar)
        + Accum(y, "add", "identity", (s,), Projections((37, 64), (i, j), (i, j), ((Fixed(0),),)))
    )
    plans = plan_kernels(compile_to_ir(code, reductions_innermost=True))
    assert [p.cells for p in plans] == [1, 37 * 64]
    x.set_host(np.array([0.25], np.float32))
    start = np.random.default_rng(4).standard_normal((37, 64)).astype(np.float32)
    y.set_host(start)
    run(code)
    np.testing.assert_array_equal(y.host(), start + np.float32(2.25))

"""Contractions written directly as `Accum` with `Projections`, against `numpy.einsum`.

Hypothesis draws the iteration space (1-4 iterators of extent 1-5), which iterators each operand
uses (repeats make diagonals), fixed indices on extra axes, and the lhs's (transposed) subset; each
backend's result (C, and CUDA where a GPU is usable) must equal the einsum of the same subscripts. Fixed cases pin matmul, traces,
broadcasting, an affine index (a strided, dilated 1-D convolution) and the loop orders.
"""

from __future__ import annotations

import functools
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum
from arrayjit.indexing import Affine, Fixed, Iterator, Projections, affine
from arrayjit.lowering import loop_order
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode

# Every example compiles a routine (~50 ms of gcc): keep the counts small.
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@functools.cache
def context(backend: str) -> Runtime:
    """One context per backend, shared by the tests (hypothesis examples call it directly)."""
    return Runtime(backend)


def compile_and_run(code, backend: str = "c") -> ir.Stmt:
    routine = context(backend).compile(code)
    routine.run()
    return routine.ir


@st.composite
def contractions(draw):
    """(extents, rhs axes, lhs subscripts): each rhs axis is ('it', k) or ('fixed', dim, value)."""
    n_iterators = draw(st.integers(1, 4))
    extents = draw(st.lists(st.integers(1, 5), min_size=n_iterators, max_size=n_iterators))
    n_rhs = draw(st.integers(1, 2))
    iterator_ids = st.integers(0, n_iterators - 1)
    rhs_axes = []
    for _ in range(n_rhs):
        used = draw(st.lists(iterator_ids, min_size=0, max_size=3))
        axes: list[tuple] = [("it", k) for k in used]
        if draw(st.booleans()) and len(axes) < 3:
            dim = draw(st.integers(1, 3))
            position = draw(st.integers(0, len(axes)))
            axes.insert(position, ("fixed", dim, draw(st.integers(0, dim - 1))))
        rhs_axes.append(axes)
    used_by_rhs = {a[1] for axes in rhs_axes for a in axes if a[0] == "it"}
    # Every iterator is used somewhere; one the rhses do not use broadcasts along the lhs.
    lhs = draw(st.permutations(range(n_iterators)))
    lhs = [k for k in lhs if k not in used_by_rhs or draw(st.booleans())]
    return extents, rhs_axes, lhs


def einsum_reference(extents, rhs_axes, lhs, arrays) -> np.ndarray:
    letters = string.ascii_lowercase
    inputs, operands = [], []
    for axes, array in zip(rhs_axes, arrays, strict=True):
        fixed = tuple(a[2] if a[0] == "fixed" else slice(None) for a in axes)
        operands.append(array[fixed])
        inputs.append("".join(letters[a[1]] for a in axes if a[0] == "it"))
    present = [k for k in lhs if any(letters[k] in s for s in inputs)]
    result = np.einsum(",".join(inputs) + "->" + "".join(letters[k] for k in present), *operands)
    # An lhs iterator no operand uses: the result is the same along it.
    shape = [extents[k] if k in present else 1 for k in lhs]
    return np.broadcast_to(result.reshape(shape), [extents[k] for k in lhs])


@given(contractions(), st.booleans(), st.integers(0, 2**32 - 1))
@SETTINGS
def test_contraction_matches_einsum(backend, case, zero_first, seed):
    extents, rhs_axes, lhs = case
    rng = np.random.default_rng(seed)
    its = [Iterator(name=f"i{k}") for k in range(len(extents))]
    rhses, arrays, project_rhs = [], [], []
    for r, axes in enumerate(rhs_axes):
        dims = tuple(extents[a[1]] if a[0] == "it" else a[1] for a in axes)
        array = rng.normal(size=dims)
        tnode = TNode(f"rhs{r}", dims, "float64")
        tnode.set_host(array)
        rhses.append(tnode)
        arrays.append(array)
        project_rhs.append(tuple(its[a[1]] if a[0] == "it" else Fixed(a[2]) for a in axes))
    out = TNode("out", tuple(extents[k] for k in lhs), "float64")
    initial = rng.normal(size=out.dims)
    out.set_host(initial)
    projections = Projections(
        tuple(extents), tuple(its), tuple(its[k] for k in lhs), tuple(project_rhs)
    )
    op = "mul" if len(rhses) == 2 else "identity"
    compile_and_run(Accum(out, "add", op, tuple(rhses), projections, zero_first), backend)
    expected = einsum_reference(extents, rhs_axes, lhs, arrays)
    if not zero_first:
        expected = expected + initial
    np.testing.assert_allclose(out.host(), expected, rtol=1e-12, atol=1e-12)


def matmul_code(a: TNode, b: TNode, c: TNode, zero_first: bool = True, transposed_b=False):
    (m, k), n = a.dims, c.dims[1]
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    b_index = (j, r) if transposed_b else (r, j)
    projections = Projections((m, n, k), (i, j, r), (i, j), ((i, r), b_index))
    return Accum(c, "add", "mul", (a, b), projections, zero_first)


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**32 - 1))
@SETTINGS
def test_matmul_accumulates_into_existing_values(backend, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a, b, c = TNode("a", (m, k), "float64"), TNode("b", (k, n), "float64"), TNode("c", (m, n))
    A, B, C = rng.normal(size=(m, k)), rng.normal(size=(k, n)), rng.normal(size=(m, n))
    a.set_host(A), b.set_host(B), c.set_host(C)
    routine = context(backend).compile(matmul_code(a, b, c, zero_first=False))
    routine.run()
    np.testing.assert_allclose(c.host(), C.astype(np.float32) + A @ B, rtol=2e-6, atol=2e-6)
    routine.run()  # `=+` again: adds the product a second time
    np.testing.assert_allclose(c.host(), C.astype(np.float32) + 2 * A @ B, rtol=4e-6, atol=4e-6)


def test_batched_matmul_and_reduction_to_scalar(backend):
    rng = np.random.default_rng(0)
    batch, m, k, n = 3, 4, 5, 2
    a, b = TNode("a", (batch, m, k), "float64"), TNode("b", (batch, k, n), "float64")
    c, total = TNode("c", (batch, m, n), "float64"), TNode("total", (1,), "float64")
    A, B = rng.normal(size=a.dims), rng.normal(size=b.dims)
    a.set_host(A), b.set_host(B)
    s, i, j, r = (Iterator(name=x) for x in "sijk")
    batched = Projections((batch, m, n, k), (s, i, j, r), (s, i, j), ((s, i, r), (s, r, j)))
    everything = Projections((batch, m, k), (s, i, r), (Fixed(0),), ((s, i, r),))
    compile_and_run(
        Accum(c, "add", "mul", (a, b), batched, True)
        + Accum(total, "add", "identity", (a,), everything, True),
        backend,
    )
    np.testing.assert_allclose(c.host(), np.einsum("sik,skj->sij", A, B), rtol=1e-12)
    np.testing.assert_allclose(total.host()[0], A.sum(), rtol=1e-12)


def test_diagonal_trace_and_fixed_index(backend):
    rng = np.random.default_rng(1)
    n = 5
    x = TNode("x", (n, n), "float64")
    diagonal, trace = TNode("diagonal", (n,), "float64"), TNode("trace", (1,), "float64")
    first_column = TNode("first_column", (n,), "float64")
    X = rng.normal(size=(n, n))
    x.set_host(X)
    i = Iterator(name="i")
    along_diagonal = Projections((n,), (i,), (i,), ((i, i),))
    compile_and_run(
        Accum(diagonal, None, "identity", (x,), along_diagonal)
        + Accum(
            trace, "add", "identity", (x,), Projections((n,), (i,), (Fixed(0),), ((i, i),)), True
        )
        + Accum(
            first_column, None, "identity", (x,), Projections((n,), (i,), (i,), ((i, Fixed(0)),))
        ),
        backend,
    )
    np.testing.assert_array_equal(diagonal.host(), np.einsum("ii->i", X))
    np.testing.assert_allclose(trace.host()[0], np.trace(X), rtol=1e-12)
    np.testing.assert_array_equal(first_column.host(), X[:, 0])


def test_broadcast_bias_and_transpose(backend):
    rng = np.random.default_rng(2)
    m, n = 3, 4
    x, bias = TNode("x", (m, n), "float64"), TNode("bias", (n,), "float64")
    y, transposed = TNode("y", (m, n), "float64"), TNode("transposed", (n, m), "float64")
    X, bias_values = rng.normal(size=(m, n)), rng.normal(size=n)
    x.set_host(X), bias.set_host(bias_values)
    i, j = Iterator(name="i"), Iterator(name="j")
    compile_and_run(
        Accum(y, None, "add", (x, bias), Projections((m, n), (i, j), (i, j), ((i, j), (j,))))
        + Accum(transposed, None, "identity", (x,), Projections((m, n), (i, j), (j, i), ((i, j),))),
        backend,
    )
    np.testing.assert_array_equal(y.host(), X + bias_values)
    np.testing.assert_array_equal(transposed.host(), X.T)


@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 2),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
@SETTINGS
def test_affine_index_is_a_strided_convolution(
    backend, out_len, kernel, stride, dilation, zero_first, seed
):
    """`out[o] =:+ x[stride*o + dilation*k] * w[k]`, against a numpy loop."""
    rng = np.random.default_rng(seed)
    in_len = stride * (out_len - 1) + dilation * (kernel - 1) + 1
    x, w = TNode("x", (in_len,), "float64"), TNode("w", (kernel,), "float64")
    out = TNode("out", (out_len,), "float64")
    X, W, initial = rng.normal(size=in_len), rng.normal(size=kernel), rng.normal(size=out_len)
    x.set_host(X), w.set_host(W), out.set_host(initial)
    o, k = Iterator(name="o"), Iterator(name="k")
    window = affine((stride, o), (dilation, k))
    assert isinstance(window, Affine | Iterator)
    projections = Projections((out_len, kernel), (o, k), (o,), ((window,), (k,)))
    compile_and_run(Accum(out, "add", "mul", (x, w), projections, zero_first), backend)
    expected = np.array(
        [sum(X[stride * p + dilation * q] * W[q] for q in range(kernel)) for p in range(out_len)]
    )
    if not zero_first:
        expected += initial
    np.testing.assert_allclose(out.host(), expected, rtol=1e-12, atol=1e-12)


def test_affine_offset_and_negative_coefficient(backend):
    """`out[i] = x[n-1-i] + x[i+1]`: a reversal and a shift."""
    n = 6
    x, out = TNode("x", (n + 1,), "float64"), TNode("out", (n,), "float64")
    X = np.arange(n + 1, dtype=np.float64) ** 2
    x.set_host(X)
    i = Iterator(name="i")
    reversed_index, shifted = Affine(((-1, i),), n - 1), affine((1, i), offset=1)
    projections = Projections((n,), (i,), (i,), ((reversed_index,), (shifted,)))
    compile_and_run(Accum(out, None, "add", (x, x), projections), backend)
    np.testing.assert_array_equal(out.host(), X[n - 1 :: -1][:n] + X[1:])


# ---- loop orders ---------------------------------------------------------------------------


def loops_of(stmt: ir.Stmt) -> list[list[Iterator]]:
    """The iterators of each loop nest, outermost first (each nest followed to its first leaf)."""
    nests = []
    for s in stmt.stmts if isinstance(stmt, ir.Block) else (stmt,):
        its = []
        while isinstance(s, ir.For | ir.Block):
            if isinstance(s, ir.For):
                its.append(s.iterator)
                s = s.body
            else:
                s = next((x for x in s.stmts if isinstance(x, ir.For)), None)
        if its:
            nests.append(its)
    return nests


def has_register_accumulator(stmt: ir.Stmt) -> bool:
    return "local acc" in ir.to_string(stmt)


@pytest.mark.parametrize("transposed_b", [False, True], ids=["a@b", "a@b.T"])
def test_loop_order_and_values(transposed_b):
    """a@b: the lhs-contiguous j innermost (a row update); a@b.T: both operands walk k
    contiguously, so the reduction k goes innermost and accumulates in a register."""
    rng = np.random.default_rng(3)
    m, k, n = 4, 6, 5
    a = TNode("a", (m, k), "float64")
    b = TNode("b", (n, k) if transposed_b else (k, n), "float64")
    c = TNode("c", (m, n), "float64")
    A, B = rng.normal(size=a.dims), rng.normal(size=b.dims)
    a.set_host(A), b.set_host(B)
    code = matmul_code(a, b, c, transposed_b=transposed_b)
    i, j, r = code.projections.product_iterators
    order = loop_order(code.projections, c, (a, b))
    assert order == ([i, j, r] if transposed_b else [i, r, j])
    stmt = compile_and_run(code)
    assert loops_of(stmt)[-1] == order
    assert has_register_accumulator(stmt) == transposed_b
    np.testing.assert_allclose(c.host(), A @ (B.T if transposed_b else B), rtol=1e-12)


def test_loop_order_column_sum_keeps_contiguous_axis_innermost():
    """`out[j] =:+ x[i, j]`: j walks x and out contiguously, so the reduction i is outside it."""
    m, n = 7, 3
    x, out = TNode("x", (m, n), "float64"), TNode("out", (n,), "float64")
    X = np.arange(m * n, dtype=np.float64).reshape(m, n)
    x.set_host(X)
    i, j = Iterator(name="i"), Iterator(name="j")
    projections = Projections((m, n), (i, j), (j,), ((i, j),))
    assert loop_order(projections, out, (x,)) == [i, j]
    compile_and_run(Accum(out, "add", "identity", (x,), projections, True))
    np.testing.assert_array_equal(out.host(), X.sum(axis=0))

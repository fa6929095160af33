"""Projections against numpy: a tiny interpreter runs them, numpy.einsum is the reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrayjit.indexing import Fixed, Projections, as_affine
from ocannl_py.errors import ShapeError
from ocannl_py.shape import Compose, Einsum, Pointwise, Shape, Transpose, close, propagate
from ocannl_py.shape.projections import derive


def run(projections: Projections, lhs_dims, operands: list[np.ndarray]) -> np.ndarray:
    """lhs[p_lhs] += prod(rhs_k[p_k]) over the product space, from zeros."""
    lhs = np.zeros(lhs_dims)

    def at(index, env):
        return tuple(sum(c * env[it] for c, it in as_affine(i)[0]) + as_affine(i)[1] for i in index)

    for point in itertools.product(*(range(n) for n in projections.product_space)):
        env = dict(zip(projections.product_iterators, point, strict=True))
        value = 1.0
        for array, index in zip(operands, projections.project_rhs, strict=True):
            value *= array[at(index, env)]
        lhs[at(projections.project_lhs, env)] += value
    return lhs


def known(label, batch=(), inputs=(), output=()) -> Shape:
    return Shape(label, batch_dims=list(batch), input_dims=list(inputs), output_dims=list(output))


def solved(logic, operands: list[Shape], result: Shape | None = None):
    result = result or Shape("r")
    step = propagate(logic, result, operands)
    close([result])
    projections = derive(step)
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s.dims()) for s in operands]
    return result, projections, arrays, run(projections, result.dims(), arrays)


def test_matrix_multiplication_equals_numpy():
    result, p, (a, b), got = solved(
        Einsum("ab;bc=>ac"), [known("a", output=[2, 3]), known("b", output=[3, 4])]
    )
    np.testing.assert_allclose(got, np.einsum("ab,bc->ac", a, b))
    assert len(p.reduction_iterators) == 1


def test_compose_contracts_a_input_with_b_output():
    a = known("w", inputs=[3, 2], output=[4])
    b = known("x", batch=[5], output=[3, 2])
    result, p, (w, x), got = solved(Compose(), [a, b])
    assert result.dims() == (5, 4)
    # memory order: w is (output 4, input 3, 2); x is (batch 5, output 3, 2)
    np.testing.assert_allclose(got, np.einsum("ojk,bjk->bo", w, x))


def test_pointwise_broadcast_uses_fixed_zero():
    _, p, (a, b), got = solved(
        Pointwise(), [known("a", [2], [], [1, 3]), known("b", [], [], [4, 1])]
    )
    np.testing.assert_allclose(got, a * b)
    assert Fixed(0) in p.project_rhs[0] and Fixed(0) in p.project_rhs[1]


def test_transpose():
    _, _, (a,), got = solved(Transpose(), [known("a", [2], [3], [4, 5])])
    # a is (batch 2, output 4, 5, input 3); the result is (batch 2, output 3, input 4, 5)
    np.testing.assert_allclose(got, np.einsum("bxyi->bixy", a))


def test_diagonal_from_a_repeated_label():
    _, p, (a,), got = solved(Einsum("ii=>i"), [known("a", output=[3, 3])])
    np.testing.assert_allclose(got, np.diagonal(a))
    (it,) = p.product_iterators
    assert p.project_rhs == ((it, it),)


def test_diagonal_in_the_result():
    result, _, (a,), got = solved(Einsum("i=>ii"), [known("a", output=[3])])
    np.testing.assert_allclose(got, np.diag(a))


def test_reduce_everything_to_one_number():
    _, p, (a,), got = solved(Einsum("...|...->... => 0"), [known("a", [2], [3], [4])])
    np.testing.assert_allclose(got, [a.sum()])
    assert p.project_lhs == (Fixed(0),)


def test_fixed_index_reads_a_slice():
    _, _, (a,), got = solved(Einsum("2..v..|... => ..v.."), [known("a", [3, 4], [], [5])])
    np.testing.assert_allclose(got, a[2].sum(axis=-1))


def test_fixed_index_in_the_result_writes_one_slot():
    result, _, (a,), got = solved(Einsum("...|... => ...|...2"), [known("a", [2], [], [3])])
    expected = np.zeros((2, 3, 3))
    expected[:, :, 2] = a
    np.testing.assert_allclose(got, expected)


def test_batch_output_swap():
    _, _, (a,), got = solved(Einsum("ab|cd->ef => cf|ae->db"), [known("a", [2, 3], [4, 5], [6, 7])])
    # memory order: a is (a b e f c d); the result is (c f d b a e)
    np.testing.assert_allclose(got, np.einsum("abefcd->cfdbae", a))


def test_ellipsis_broadcasts_like_numpy():
    _, _, (a, b), got = solved(
        Einsum("...ab;...bc=>...ac"), [known("a", output=[5, 2, 3]), known("b", output=[1, 3, 4])]
    )
    np.testing.assert_allclose(got, np.einsum("...ab,...bc->...ac", a, b))


def test_einsum_over_all_kinds_of_rows():
    a = known("a", batch=[2], inputs=[3], output=[4])
    b = known("b", batch=[2], inputs=[4], output=[5])
    _, _, (x, y), got = solved(Einsum("b|i->o; b|o->p => b|i->p"), [a, b])
    # a: (b o i), b: (b p o); result (b p i)
    np.testing.assert_allclose(got, np.einsum("boi,bpo->bpi", x, y))


def test_unclosed_shapes_are_refused():
    step = propagate(Pointwise(), Shape("r"), [Shape("x")])
    with pytest.raises(ShapeError, match="not closed"):
        derive(step)


# ---------------------------------------------------------------------------------------------
# Random einsums: labels with dims, spread over batch / input / output rows


@st.composite
def einsum_cases(draw):
    names = "abcdef"
    n_labels = draw(st.integers(1, 4))
    dims = {c: draw(st.integers(1, 3)) for c in names[:n_labels]}
    n_operands = draw(st.integers(1, 2))
    operands = [
        draw(st.lists(st.sampled_from(list(dims)), min_size=0, max_size=3))
        for _ in range(n_operands)
    ]
    used = sorted({c for op in operands for c in op})
    result = draw(
        st.permutations(used).flatmap(lambda p: st.integers(0, len(p)).map(lambda k: p[:k]))
    )

    def split(axes):
        # cut the axes into batch | input -> output; numpy's layout is batch, output, input
        cut1 = draw(st.integers(0, len(axes)))
        cut2 = draw(st.integers(cut1, len(axes)))
        return axes[:cut1], axes[cut1:cut2], axes[cut2:]

    return dims, [split(op) for op in operands], split(list(result))


def spec_text(rows) -> str:
    batch, inputs, output = ("".join(r) for r in rows)
    return f"{batch}|{inputs}->{output}"


@settings(max_examples=150, deadline=None)
@given(einsum_cases())
def test_random_einsums_equal_numpy(case):
    dims, operand_rows, result_rows = case
    spec = ";".join(spec_text(r) for r in operand_rows) + "=>" + spec_text(result_rows)
    shapes = [
        known(f"t{k}", [dims[c] for c in b], [dims[c] for c in i], [dims[c] for c in o])
        for k, (b, i, o) in enumerate(operand_rows)
    ]
    result, projections, arrays, got = solved(Einsum(spec), shapes)
    memory = ["".join(b + o + i) for b, i, o in operand_rows]
    rb, ri, ro = result_rows
    expected = np.einsum(",".join(memory) + "->" + "".join(rb + ro + ri), *arrays)
    assert result.dims() == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_random_pointwise_broadcasts_equal_numpy(dims, ones):
    other = [1 if flag else d for d, flag in zip(dims, ones, strict=False)]
    _, _, (a, b), got = solved(Pointwise(), [known("a", output=dims), known("b", output=other)])
    np.testing.assert_allclose(got, a * b)

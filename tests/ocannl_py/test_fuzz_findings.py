"""Regression tests for the bugs the differential fuzzer (`python -m fuzz`) found, each reduced
to a few lines and checked against numpy or PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, cd, op, train
from ocannl_py.dsl.syntax import parse_op

SQUARE = np.arange(9.0).reshape(3, 3) - 3.0


def grads_of(loss: oc.Tensor, *params: oc.Tensor) -> list[np.ndarray]:
    Context("c").compile(train.grad_update(loss)).run()
    return [p.grad for p in params]


def amax(t, axis: int):
    """The max over `axis` of a numpy array or a torch tensor."""
    return t.amax(axis) if hasattr(t, "amax") else t.max(axis)


SAME_OPERANDS = [
    (lambda x: oc.einsum("ij;jk=>ik", x, x), lambda x: x @ x),
    (lambda x: oc.einsum("ki;kj=>ij", x, x), lambda x: x.T @ x),
    (lambda x: op('a +* "ij;jk=>ik" a', a=x), lambda x: x @ x),
    (lambda x: oc.outer_sum("ij;jk=>ik", x, x), lambda x: (x[:, :, None] + x[None]).sum(1)),
    (lambda x: oc.tropical("ij;jk=>ik", x, x), lambda x: amax(x[:, :, None] + x[None], 1)),
]
WEIGHTS = np.linspace(-1.0, 2.0, 9).reshape(3, 3)


def same_operand_gradient(build, input_dims: list[int], output_dims: list[int]):
    x = oc.param("x", value=SQUARE, input_dims=input_dims, output_dims=output_dims)
    y = build(x)
    w = oc.ndarray(WEIGHTS, input_dims=input_dims, output_dims=output_dims)
    (grad,) = grads_of(oc.einsum1("...|...->... => ", y * w), x)
    return y.value, grad


@pytest.mark.parametrize(("build", "reference"), SAME_OPERANDS)
def test_one_tensor_as_both_operands_of_an_einsum(build, reference):
    """Found by the fuzzer: the operation's code read both operands at the first one's index,
    so `einsum("ij;jk=>ik", x, x)` was not x @ x."""
    value, _ = same_operand_gradient(build, [], [3, 3])
    np.testing.assert_allclose(value, reference(SQUARE), rtol=1e-6)


@pytest.mark.parametrize(("build", "reference"), SAME_OPERANDS)
def test_one_tensor_as_both_operands_gradient(build, reference):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: gradient cross-check")
    _, grad = same_operand_gradient(build, [], [3, 3])
    leaf = torch.tensor(SQUARE, dtype=torch.float64, requires_grad=True)
    (reference(leaf) * torch.tensor(WEIGHTS)).sum().backward()
    np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-6)


def test_compose_of_a_tensor_with_itself():
    value, grad = same_operand_gradient(lambda x: x @ x, [3], [3])
    np.testing.assert_allclose(value, SQUARE @ SQUARE, rtol=1e-6)
    # d/dx sum(W * (x @ x)) = W @ x.T + x.T @ W
    np.testing.assert_allclose(grad, WEIGHTS @ SQUARE.T + SQUARE.T @ WEIGHTS, rtol=1e-6)


def test_cd_compose_of_a_tensor_with_itself():
    x = oc.param("x", value=SQUARE, input_dims=[3], output_dims=[3])
    c = oc.term("c", batch_dims=[], input_dims=[3], output_dims=[3])
    ctx = Context("c")
    ctx.initialize([x])
    ctx.compile(cd('c =:+ a * a ~logic:"@"', a=x, c=c)).run()
    np.testing.assert_allclose(c.value, SQUARE @ SQUARE)


# The fuzzer's values where sat01's gradient came out wrong (GCC 12.2, -O3, AVX).
TIES = np.array([3, 2, 0, -1, 0, 2, 1, -1, -2, 3, -1, 2, 0, 0, 0, 2, 0, 0, 3, -2, 3, 2, -2, 0, 2,
                 -1, 1, -2, 3, -1], dtype=float)  # fmt: skip


@pytest.mark.parametrize("dims", [(6, 5), (3, 2, 5), (5, 6), (30,)])
def test_sat01_gradient_on_a_nest(dims):
    """Found by the fuzzer: `where(c, 0, g)` printed as `c ? 0 : g[i]` was vectorized by GCC 12.2
    at -O3 with AVX into masked loads under the wrong mask: sat01's gradient was 0 at cells
    where it is 1. `where` is now a helper of values, evaluated eagerly."""
    x = oc.param("x", value=TIES.reshape(dims), output_dims=list(dims))
    (grad,) = grads_of(oc.einsum1("...|...->... => ", oc.sat01(x) * 2.0), x)
    expected = np.where((TIES < 0) | (TIES > 1), 0.0, 2.0).reshape(dims)
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("dims", [(6, 5), (16, 16), (7, 9), (100, 5)])
def test_where_reading_memory_in_one_branch(dims):
    """The same miscompilation through `oc.where` directly, against numpy."""
    rng = np.random.default_rng(1)
    c, a = rng.integers(-2, 3, dims).astype(float), rng.normal(size=dims)
    x, y = (
        oc.param("x", value=c, output_dims=list(dims)),
        oc.param("y", value=a, output_dims=list(dims)),
    )
    out = oc.where(oc.lt(x, 0.5), 0.0, y)
    Context("c").forward(out)
    np.testing.assert_array_equal(out.value, np.where(c < 0.5, 0.0, a.astype(np.float32)))


def test_axes_before_a_row_variable_on_a_computed_tensor():
    """`a... => ...` sums the first output axis: right on a leaf, and on `-x` (found by the
    fuzzer: shape inference prepended an axis of dim 1 for `a`; fixed by the solver's rework)."""
    values = np.arange(6.0).reshape(2, 3)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[2, 3])
    x.set_value(values)
    y = oc.einsum1("a... => ...", -x)
    Context("c").forward(y)
    np.testing.assert_array_equal(y.value, -values.sum(axis=0))


@pytest.mark.parametrize(
    "text",
    [
        "-" * 1000 + "x",
        "x + " * 1000 + "x",
        "relu(" * 1000 + "x" + ")" * 1000,
        "x **. " * 800 + "x",
    ],
)
def test_deep_nesting_is_a_clear_error(text):
    """Found by the parser fuzzer: deep expressions parsed, then the interpreter recursed past
    Python's stack (RecursionError). Now a SpecSyntaxError saying how deep is allowed."""
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[2])
    with pytest.raises(oc.SpecSyntaxError, match="nested deeper than 200"):
        op(text, x=x)
    with pytest.raises(oc.SpecSyntaxError, match="nested deeper than 200"):
        cd(f"y =: {text.replace('**.', '**')}", x=x, y=x)  # cd's power is `**`
    with pytest.raises(oc.SpecSyntaxError, match="nested deeper than 200"):
        parse_op(text)  # the parser itself, so that printing a parsed tree cannot recurse


def test_nesting_within_the_limit_still_works():
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[2])
    x.set_value([1.0, -2.0])
    y = op("-" * 150 + "x", x=x)
    Context("c").forward(y)
    np.testing.assert_array_equal(y.value, [1.0, -2.0])


def test_a_computed_scalar_keeps_its_shape():
    """`t5 = max(p, 3)` is a scalar; an unrelated `t5 + t2` (never computed) makes it 2 x 5,
    and the sum of `max(t5, t5)` becomes 10 copies of 3."""
    p = oc.param("p", 0.8, batch_dims=[], input_dims=[], output_dims=[])
    t2 = oc.term("t2", batch_dims=[], input_dims=[5], output_dims=[2])
    t5 = oc.max(p, 3.0)
    _unused = t5 + t2
    loss = oc.einsum1("...|...->... => ", oc.max(t5, t5))
    (grad,) = grads_of(loss, p)
    assert t5.value.shape == () and loss.item() == 3.0 and grad == 0.0


def test_axes_before_a_row_variable_in_a_result():
    """The same with `b...` in the result: a later einsum over it failed with a ShapeError
    ('0 axes () vs at least 1 (2,...)'); fixed by the solver's rework."""
    p = oc.param("p", np.ones((2, 2, 2)), batch_dims=[2, 2], input_dims=[], output_dims=[2])
    t = p * 2.0
    y = oc.tropical("...b|..._ ; b0 | ... -> ...d => ... -> b...", t, t)
    z = oc.einsum1("... | ...->..v0.. => ... | ", y)
    Context("c").forward(z)
    assert y.value.shape == (2,) and z.value.shape == ()


ROWS = np.random.default_rng(3).normal(size=(3, 2, 5))  # batch 3, output 2, input 5
# Tensors whose input row is `..r.., 5` until closing: the number's input row is open, and so
# are the rows of a parameter whose dims are inferred.
OPEN_ROWS = {
    "x - 2.0": (lambda x: x - 2.0, lambda v: v - 2.0),
    "x * q": (lambda x: x * oc.param("q", 0.5), lambda v: v * 0.5),
}


@pytest.mark.parametrize("open_row", sorted(OPEN_ROWS))
@pytest.mark.parametrize(
    ("spec", "numpy_spec", "numpy_operands"),
    [
        ("c|b..v..->a => c|b", "cab->cb", lambda v: [v]),
        ("2|b..v..->a => b", "ab->b", lambda v: [v[2]]),
        ("2|b..v..->a ; c|..v..b->a => b", "ab,cab->b", lambda v: [v[2], np.sin(v)]),
        ("c|..v..b->a ; 0|b..v..->a => c|b", "cab,ab->cb", lambda v: [v, np.sin(v)[0]]),
    ],
)
def test_an_axis_beside_a_row_variable_on_an_open_row(spec, numpy_spec, numpy_operands, open_row):
    """Found by the fuzzer (program 126441625310058): `x - 2.0` has the input row `..r.., 5`
    until closing; the spec's `b..v..` was equated with it as `b, .., 5`, two axes where one
    fits, so the einsum read 5 x 5 cells of a row of 5 (every value wrong). Whether such axes
    are one now waits until more is known; closing takes the most overlap the dims allow."""
    build, reference = OPEN_ROWS[open_row]
    x = oc.term("x", batch_dims=[3], input_dims=[5], output_dims=[2])
    x.set_value(ROWS)
    a = build(x)
    two = len(numpy_operands(ROWS)) == 2
    y = oc.einsum(spec, a, oc.sin(a)) if two else oc.einsum1(spec, a)
    Context("c").forward(y)
    assert a.shape.input == [5]
    expected = np.einsum(numpy_spec, *numpy_operands(reference(ROWS.astype(np.float32))))
    np.testing.assert_allclose(y.value, expected, rtol=1e-5)


def test_a_number_adds_no_axis_to_a_tensor_without_output_axes():
    """Found by the fuzzer (seed 4242): `p + 3.0` should have p's shape, as in numpy; an einsum
    giving it an empty output row failed ('output axes: 1 axes (1) vs 0 axes ()')."""
    values = np.arange(6.0).reshape(2, 3)
    p = oc.param("p", values, batch_dims=[2], input_dims=[3], output_dims=[])
    y = oc.einsum1("b|i-> => b|i->", p + 3.0)
    Context("c").forward(y)
    np.testing.assert_array_equal(y.value, values + 3.0)


# A number's input row takes no axes unless compose asks for some; it used to leave the rows of
# a pointwise result with it open (`-1.0 * x` had input `..r.., 3` for x's `3`), and an einsum with
# labels beside a row variable, or a larger tensor it was broadcast into, then gave the result
# axes of its own (fuzz programs 244080867567137, 119389401629207, 111232872622877). The family:
# tests/ocannl_py/test_computed_shapes.py.
X = np.arange(45.0).reshape(3, 5, 3) - 20.0  # batch 3, output 5, input 3
W3 = np.array([1.0, -2.0, 0.5])


def x_param() -> oc.Tensor:
    return oc.param("x", X, batch_dims=[3], input_dims=[3], output_dims=[5])


def test_fixed_indices_and_a_label_before_a_row_variable_on_a_number_operation():
    """Program 244080867567137: `einsum1("2|q,... -> 1 => q|", -1.0 * x)` paired `q` with a new
    axis of dim 1 instead of x's input axis: one value for the three of numpy."""
    x = x_param()
    y = oc.einsum1("2|q,... -> 1 => q|", -1.0 * x)
    w = oc.ndarray(W3, batch_dims=[3], input_dims=[], output_dims=[])
    (grad,) = grads_of(oc.einsum1("...|...->... => ", y * w), x)
    np.testing.assert_array_equal(y.value, -X[2, 1, :])
    expected = np.zeros_like(X)
    expected[2, 1, :] = -W3
    np.testing.assert_array_equal(grad, expected)


def test_a_label_before_a_row_variable_on_a_number_operation():
    """Program 119389401629207: `b... ` in an input row read `x / 2.0` at the wrong axis."""
    x = x_param()
    y = oc.einsum1("b|i...->o => b|i->o", x / 2.0)
    weights = np.linspace(-1.0, 1.0, 45).reshape(3, 5, 3)
    w = oc.ndarray(weights, batch_dims=[3], input_dims=[3], output_dims=[5])
    (grad,) = grads_of(oc.einsum1("...|...->... => ", y * w), x)
    np.testing.assert_array_equal(y.value, X / 2.0)
    np.testing.assert_allclose(grad, weights / 2.0, rtol=1e-6)


def test_labels_around_a_row_variable_on_a_number_operation():
    """Program 111232872622877: `a...b` on `p - 2.0` gave the result an input axis numpy does not
    have (and, in the whole program, gradients counted 4 times)."""
    p_value = np.array([[[-1.0, 0.0]], [[0.0, 0.5]], [[3.0, 1.0]]])  # output 3, input [1, 2]
    q_value = np.arange(20.0).reshape(2, 1, 2, 5)  # batch [2, 1], input [2, 5]
    p = oc.param("p", p_value, batch_dims=[], input_dims=[1, 2], output_dims=[3])
    q = oc.param("q", q_value, batch_dims=[2, 1], input_dims=[2, 5], output_dims=[])
    spec = "..v0..|a...b->...1; ba..v0..|c0... -> ... => ..v0..c | ... -> a..."
    y = oc.outer_sum(spec, p - 2.0, q)
    weights = np.array([[2.0], [-1.0]])
    w = oc.ndarray(weights, batch_dims=[2], input_dims=[], output_dims=[1])
    (p_grad, q_grad) = grads_of(oc.einsum1("...|...->... => ", y * w), p, q)
    # y[c, a] = sum over b of (p - 2)[1, a, b] + q[b, a, c, 0]
    expected = np.array(
        [[(p_value[1, 0, :] - 2.0).sum() + q_value[:, 0, c, 0].sum()] for c in (0, 1)]
    )
    np.testing.assert_array_equal(y.value, expected)
    expected_p = np.zeros_like(p_value)
    expected_p[1, 0, :] = weights.sum()
    np.testing.assert_array_equal(p_grad, expected_p)
    expected_q = np.zeros_like(q_value)
    expected_q[:, 0, :, 0] = weights[:, 0]
    np.testing.assert_array_equal(q_grad, expected_q)


def test_a_computed_tensor_keeps_its_shape_under_a_larger_consumer():
    """`t = max(p, 3.0)` broadcast into `t + z` of input [4, 3] took z's input axes (the greatest
    solution, meant for parameters), and a sum over `t` counted each cell 4 times."""
    p_value = np.array([[0.5, 4.0, -1.0]])  # output 1, input 3
    p = oc.param("p", p_value, batch_dims=[], input_dims=[3], output_dims=[1])
    z = oc.term("z", batch_dims=[], input_dims=[4, 3], output_dims=[1])
    z.set_value(np.ones((1, 4, 3)))
    t = oc.max(p, 3.0)
    u = oc.einsum1("|ij->o => |ij->o", t + z)
    loss = oc.einsum1("...|...->... => ", oc.max(t, t)) + oc.einsum1("...|...->... => ", u)
    (grad,) = grads_of(loss, p)
    np.testing.assert_array_equal(t.value, np.maximum(p_value, 3.0))
    assert loss.item() == np.maximum(p_value, 3.0).sum() * 5 + 12.0
    np.testing.assert_array_equal(grad, np.where(p_value > 3.0, 5.0, 0.0))


def test_a_tensor_computed_from_an_inferred_parameter_keeps_its_shape():
    """`p`'s input dims come from `p + z1` (input [3]); `exp(p) + z2` (input [4, 3]) gave
    `exp(p)` the input [4, 3], so a sum over it counted each cell 4 times."""
    p = oc.param("p", output_dims=[2])
    z1 = oc.term("z1", batch_dims=[], input_dims=[3], output_dims=[2])
    z2 = oc.term("z2", batch_dims=[], input_dims=[4, 3], output_dims=[2])
    z1.set_value(np.ones((2, 3)))
    z2.set_value(np.ones((2, 4, 3)))
    first = oc.einsum1("|i->o => |i->o", p + z1)
    h = oc.exp(p)
    u = oc.einsum1("|ji->o => |ji->o", h + z2)
    total = "...|...->... => "
    loss = oc.einsum1(total, first) + oc.einsum1(total, h) + oc.einsum1(total, u)
    (grad,) = grads_of(loss, p)
    pv = p.value.astype(np.float64)
    assert h.value.shape == pv.shape == (2, 3)
    expected = (pv + 1).sum() + np.exp(pv).sum() + 4 * (np.exp(pv) + 1).sum()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-6)
    np.testing.assert_allclose(grad, 1 + 5 * np.exp(pv), rtol=1e-6)

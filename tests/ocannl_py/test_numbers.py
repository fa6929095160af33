"""Numbers have one output axis of dim 1 that broadcasts, as in OCANNL (issue 8, item 2): the
seed's "feature, not a bug" of compose with a number, against numpy, values and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, cd, op, train
from ocannl_py.shape import Pointwise, Shape, close, propagate

RTOL = 1e-6


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


@pytest.fixture
def matrix():
    """`m` with output axes [2, 3] and input axes [4, 5]: value indexed [o1, o2, i1, i2]."""
    values = np.random.default_rng(7).normal(size=(2, 3, 4, 5))
    return values, oc.ndarray(values, output_dims=[2, 3], input_dims=[4, 5], label="m")


def computed(ctx: Context, t: oc.Tensor) -> np.ndarray:
    ctx.forward(t)
    return t.value


def test_a_number_has_one_output_axis_of_dim_1():
    n = oc.number(2.0)
    assert n.shape.output == [1] and n.shape.batch == []
    n.forward.lower()
    assert str(n.shape) == "0:1"


def test_compose_with_a_number_on_the_right_sums_the_input_axes(backend, matrix):
    values, m = matrix
    y = op("m * 2", m=m)
    np.testing.assert_allclose(computed(Context(backend), y), 2 * f32(values).sum(axis=(2, 3)),
                               rtol=RTOL)  # fmt: skip
    assert str(y.shape) == "0:2,1:3"


def test_compose_with_a_number_on_the_left_sums_the_output_axes(backend, matrix):
    values, m = matrix
    y = op("2 * m", m=m)
    # The result has m's input axes and the number's one output axis: indexed [1, i1, i2].
    expected = 2 * f32(values).sum(axis=(0, 1))[None]
    np.testing.assert_allclose(computed(Context(backend), y), expected, rtol=RTOL)
    assert str(y.shape) == "1:4,2:5->0:1"


def test_pointwise_with_a_number_scales(backend, matrix):
    values, m = matrix
    ctx = Context(backend)
    for text in ("2 *. m", "m *. 2"):
        y = op(text, m=m)
        np.testing.assert_allclose(computed(ctx, y), 2 * f32(values), rtol=RTOL)
        assert str(y.shape) == str(m.shape)


def test_ocannl_hello_world_has_shape_0_1(backend):
    y = op("2 *. {hey = 7.0}")
    assert computed(Context(backend), y).tolist() == [14.0]
    assert str(y.shape) == "0:1" and str(y.params["hey"].shape) == "0:1"


def test_gradients_through_compose_with_a_number(backend):
    w_val = np.arange(6.0).reshape(2, 3) - 2.0
    w = oc.param("w", w_val, output_dims=[2], input_dims=[3])
    weights = np.array([1.5, -0.5])
    loss = oc.einsum1("i => 0", op("w * 3", w=w) * oc.ndarray(weights, output_dims=[2]))
    Context(backend).compile(train.grad_update(loss)).run()
    # loss = sum_o weights[o] * 3 * sum_i w[o, i]: d loss / d w[o, i] = 3 * weights[o].
    np.testing.assert_allclose(w.grad, np.repeat(3 * weights[:, None], 3, axis=1), rtol=RTOL)
    np.testing.assert_allclose(loss.item(), 3 * (weights * w_val.sum(axis=1)).sum(), rtol=RTOL)


def test_a_number_broadcasts_into_a_tensor_with_no_axes(backend):
    p = oc.param("p", 2.0)
    q = oc.param("q", 3.0)
    loss = p * q  # neither has axes: nothing gives them any
    ctx = Context(backend)
    ctx.compile(train.grad_update(loss)).run()  # closes the shapes: no axes
    ctx.compile(train.sgd_update(loss, 0.5)).run()  # `p =- lr * p.grad`, lr of dim 1
    assert p.shape.output == [] and p.value.item() == 2.0 - 0.5 * 3.0
    lr = oc.number(0.25)
    ctx.compile(cd("p =- lr * p", p=p, lr=lr)).run()
    assert p.value.item() == 0.5 * 0.75


def test_only_axes_of_dim_1_broadcast_into_nothing():
    scalar = Shape("s", batch_dims=[], input_dims=[], output_dims=[])
    unknown_dim = Shape("u", batch_dims=[], input_dims=[])
    propagate(Pointwise(), scalar, [Shape("one", batch_dims=[1], output_dims=[1, 1])])
    with pytest.raises(oc.ShapeError, match="operand has at least 1 axes"):
        propagate(Pointwise(), scalar, [Shape("two", batch_dims=[], output_dims=[2])])
    result = Shape("r")
    propagate(Pointwise(), result, [unknown_dim, Shape("t", batch_dims=[], output_dims=[4])])
    propagate(Pointwise(), scalar, [unknown_dim])  # `u` can only have no axes
    close([result, scalar])
    assert unknown_dim.output == [] and result.output == [4]

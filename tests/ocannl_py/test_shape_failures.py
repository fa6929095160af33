"""No trace of failures: an operation that raises leaves the shapes as they were, and closing a
routine's shapes looks only at what the routine reaches (issue 8, item 8)."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, op
from ocannl_py.shape import Compose, Pointwise, Shape, close, propagate


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def term_x() -> tuple[oc.Tensor, np.ndarray]:
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    values = np.arange(6.0).reshape(2, 3) - 2.5
    x.set_value(values)
    return x, values


def linear_model(x: oc.Tensor) -> oc.Tensor:
    return op("{w; o=[4]} * x + {b; o=[4]}", x=x)


def check_linear_model(ctx: Context, x: oc.Tensor, values: np.ndarray) -> None:
    y = linear_model(x)
    ctx.forward(y)
    w, b = y.params["w"].value, y.params["b"].value
    assert str(y.shape) == "0:2|0:4"
    np.testing.assert_allclose(y.value, f32(values) @ f32(w).T + f32(b), rtol=1e-6, atol=1e-6)


def test_a_failed_operation_does_not_break_a_later_model_on_the_same_term(backend):
    x, values = term_x()
    with pytest.raises(oc.ShapeError, match="output axes: dims 3 vs 4"):
        oc.param("b", output_dims=[4]) + x
    assert str(x.shape) == "0:2|0:3"
    check_linear_model(Context(backend), x, values)


def test_an_abandoned_expression_does_not_break_a_later_model_on_the_same_term(backend):
    x, values = term_x()
    abandoned = op("{v} * x", x=x)  # `v`'s output dims are never determined
    check_linear_model(Context(backend), x, values)
    # Compiling the abandoned expression itself is still an error, naming its parameter.
    with pytest.raises(oc.ShapeError, match=r"output dims of parameter 'v'.*specify its dims"):
        abandoned.forward.lower()


def test_an_abandoned_expression_is_left_open_by_closing_another():
    x, _ = term_x()
    abandoned = op("{v} * x", x=x)
    linear_model(x).forward.lower()
    v = abandoned.params["v"]
    assert str(v.shape) == "...,0:3->..."  # its input dims come from `x`, its output dims are open
    used = op("v * x + {c; o=[5]}", v=v, x=x)  # a later use settles it
    used.forward.lower()
    assert str(v.shape) == "1:3->0:5"


def test_a_failed_operation_undoes_the_bindings_it_made():
    a = Shape("a", batch_dims=[2])  # input and output rows unknown
    b = Shape("b", batch_dims=[3], input_dims=[], output_dims=[5])
    before = (str(a), str(b))
    # The equation binds a's input row to [5] before the batch rows conflict.
    with pytest.raises(oc.ShapeError, match="batch axes: dims 3 vs 2"):
        propagate(Compose(), Shape("r"), [a, b])
    assert (str(a), str(b)) == before
    result = Shape("r2")
    propagate(Pointwise(), result, [a, Shape("c", batch_dims=[2], output_dims=[7])])
    close([result])
    assert str(a) == "0:2|0:7" and str(result) == "0:2|0:7"


def test_a_failed_close_leaves_the_shapes_open():
    x = Shape("x", batch_dims=[2], input_dims=[], output_dims=[3])
    w = Shape("w", batch_dims=[], is_param=True)
    result = Shape("r")
    propagate(Compose(), result, [w, x])
    before = (str(w), str(result))
    with pytest.raises(oc.ShapeError, match="parameter 'w'"):
        close([result])
    assert (str(w), str(result)) == before == ("...,0:3->...", "0:2|...")
    grown = Shape("grown")
    propagate(Pointwise(), grown, [result, Shape("t", batch_dims=[2], output_dims=[6])])
    close([grown])
    assert str(w) == "1:3->0:6"

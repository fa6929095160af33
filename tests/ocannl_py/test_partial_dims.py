"""Leaves with some rows given (issue 8, item 3): the rows not given are inferred, or settled by
the array given to `set_value` (they take no axes); an array that does not fit is a ShapeError
naming the tensor, the rows and both shapes."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, op

RTOL = 1e-6


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def test_set_value_settles_the_rows_not_given(backend):
    x = oc.term("x", batch_dims=[8], output_dims=[5])
    assert str(x.shape) == "0:8|...->0:5"
    values = np.random.default_rng(0).normal(size=(8, 5))
    x.set_value(values)
    assert str(x.shape) == "0:8|0:5" and x.shape.input == []
    y = op("{w; o = [3]} * x", x=x)
    ctx = Context(backend)
    ctx.forward(y)
    w = y.params["w"]
    assert str(w.shape) == "1:5->0:3"
    np.testing.assert_allclose(y.value, f32(values) @ f32(w.value).T, rtol=RTOL, atol=1e-6)


def test_a_model_built_first_is_settled_by_the_array_later(backend):
    x = oc.term("x", output_dims=[4])  # batch and input rows not given
    y = op("{w; o = [2]} * x + {b; o = [2]}", x=x)
    x.set_value(np.arange(4.0))
    Context(backend).forward(y)
    w, b = y.params["w"], y.params["b"]
    assert str(x.shape) == "0:4" and str(y.shape) == "0:2"
    np.testing.assert_allclose(y.value, f32(w.value) @ np.arange(4.0) + f32(b.value), rtol=RTOL)


@pytest.mark.parametrize("bad", [(8, 6), (8, 5, 2), (5, 8), (40,)])
def test_an_array_that_does_not_fit_names_the_tensor_the_rows_and_both_shapes(bad):
    x = oc.term("x", batch_dims=[8], output_dims=[5])
    with pytest.raises(oc.ShapeError) as info:
        x.set_value(np.zeros(bad))
    message = str(info.value)
    for fragment in ("'x'", "batch [8]", "output [5]", "input not given", "(8, 5)", str(bad)):
        assert fragment in message
    assert str(x.shape) == "0:8|...->0:5"  # left open


def test_a_known_shape_rejects_another_array_with_a_shape_error():
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    with pytest.raises(oc.ShapeError, match=r"batch \[2\], output \[3\], input \[\].*\(2, 3\)"):
        x.set_value(np.zeros((3, 2)))


def test_a_scalar_does_not_settle_unknown_rows():
    x = oc.term("x", output_dims=[3])
    with pytest.raises(oc.ShapeError, match="not known yet"):
        x.set_value(1.0)


def test_param_value_must_fit_the_given_dims():
    with pytest.raises(oc.ShapeError) as info:
        oc.param("w", np.ones((3, 4)), output_dims=[5])
    message = str(info.value)
    assert "param 'w'" in message and "output [5]" in message
    assert "(5, 4)" in message and "(3, 4)" in message
    w = oc.param("w", np.ones((3, 4)), output_dims=[3])  # the input row comes from the array
    assert str(w.shape) == "1:4->0:3"

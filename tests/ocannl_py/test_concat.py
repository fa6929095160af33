"""Concatenation (`oc.concat`, OCANNL's `^`) and `oc.stack`: values against numpy's
`concatenate`/`stack` and gradients (each operand gets its own range of the result's gradient),
along every axis kind, on every backend. The values are small integers: copies are exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from ocannl_py import Context, train
from ocannl_py.errors import ShapeError


def _param(label, values, batch=0, inputs=0):
    """A parameter of `values` whose first `batch` axes are batch axes and last `inputs` axes
    input axes (numpy layout: batch, output, input)."""
    dims = list(values.shape)
    return oc.param(
        label, value=values, batch_dims=dims[:batch],
        input_dims=dims[len(dims) - inputs :], output_dims=dims[batch : len(dims) - inputs],
    )  # fmt: skip


def _loss(t):
    weights = np.arange(t.value_node.size, dtype=np.float64).reshape(t.value_node.dims) % 7 - 3
    c = oc.ndarray(
        weights, batch_dims=t.shape.batch, input_dims=t.shape.input,
        output_dims=t.shape.output, label="c",
    )  # fmt: skip
    return oc.einsum1("...|...->... => 0", t * c), weights


def test_concat_two_along_the_first_output_axis(backend):
    """The API's form: `x` then `y` along their first output axis."""
    xv = np.arange(6.0).reshape(2, 3)
    yv = 10 + np.arange(9.0).reshape(3, 3)
    x, y = _param("x", xv), _param("y", yv)
    z = oc.concat("a, ...; b, ... => a^b, ...", x, y)
    assert z.shape.output == [5, 3]
    loss, weights = _loss(z)
    Context(backend).compile(train.grad_update(loss)).run()
    np.testing.assert_array_equal(z.value, np.concatenate([xv, yv]))
    np.testing.assert_array_equal(x.grad, weights[:2])
    np.testing.assert_array_equal(y.grad, weights[2:])


@pytest.mark.parametrize(
    ("spec", "shape", "batch", "inputs", "axis"),
    [
        ("...|a, c; ...|b, c; ...|d, c => ...|a^b^d, c", (2, 0, 3), 1, 0, 1),  # output
        ("a, ...|o; b, ...|o; d, ...|o => a^b^d, ...|o", (0, 2, 3), 2, 0, 0),  # batch
        ("x -> o; y -> o; w -> o => x^y^w -> o", (2, 0), 0, 1, 1),  # input (stored last)
    ],
)
def test_concat_three_along_each_kind(backend, spec, shape, batch, inputs, axis):
    rng = np.random.default_rng(axis + batch)
    shapes = []
    for n in (1, 2, 3):  # cells along the concatenated axis
        s = list(shape)
        s[axis] = n
        shapes.append(s)
    values = [rng.integers(-5, 6, s).astype(np.float64) for s in shapes]
    tensors = [_param(f"t{k}", v, batch, inputs) for k, v in enumerate(values)]
    z = oc.concat(spec, *tensors)
    loss, weights = _loss(z)
    Context(backend).compile(train.grad_update(loss)).run()
    np.testing.assert_array_equal(z.value, np.concatenate(values, axis=axis))
    for t, start, n in zip(tensors, (0, 1, 3), (1, 2, 3), strict=True):
        np.testing.assert_array_equal(t.grad, np.take(weights, range(start, start + n), axis))


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), width=st.integers(1, 3))
def test_random_concatenations_match_numpy(sizes, width):
    values = [np.arange(n * width, dtype=np.float64).reshape(n, width) + 100 * k
              for k, n in enumerate(sizes)]  # fmt: skip
    names = [f"p{k}" for k in range(len(sizes))]
    spec = "; ".join(f"{n}, w" for n in names) + f" => {'^'.join(names)}, w"
    z = oc.concat(spec, *(oc.ndarray(v, output_dims=list(v.shape)) for v in values))
    Context("c").forward(z)
    np.testing.assert_array_equal(z.value, np.concatenate(values))


@pytest.mark.parametrize("kind", ["output", "batch"])
def test_stack_makes_a_new_first_axis(backend, kind):
    rng = np.random.default_rng(4)
    values = [rng.integers(-5, 6, (2, 3)).astype(np.float64) for _ in range(3)]
    batch = 1 if kind == "batch" else 0
    tensors = [_param(f"s{k}", v, batch) for k, v in enumerate(values)]
    z = oc.stack(tensors, kind=kind)
    rows = z.shape.batch if kind == "batch" else z.shape.output
    assert rows[0] == 3
    loss, weights = _loss(z)
    Context(backend).compile(train.grad_update(loss)).run()
    np.testing.assert_array_equal(z.value, np.stack(values))
    for k, t in enumerate(tensors):
        np.testing.assert_array_equal(t.grad, weights[k])


def test_concat_of_mismatched_dims_names_the_tensors_and_axis():
    x = oc.term("x", output_dims=[2, 3])
    y = oc.term("y", output_dims=[4, 5])
    with pytest.raises(ShapeError) as info:
        oc.concat("a, c; b, c => a^b, c", x, y)
    message = str(info.value)
    assert "concatenation" in message and "'x'" in message and "'y'" in message
    assert "output axes" in message and "dims 5 vs 3" in message


def test_concat_parts_must_each_belong_to_one_operand():
    x = oc.term("x", output_dims=[2])
    with pytest.raises(ShapeError, match="part 2 is not"):
        oc.concat("a; b => a^c", x, x)
    with pytest.raises(ShapeError, match="exactly one `\\^` axis"):
        oc.concat("a; b => a, b", x, x)


def test_concat_infers_a_part_from_the_total():
    """A part whose dim nothing else gives takes what the total leaves."""
    x = oc.term("x", output_dims=[2])
    y = oc.param("y")
    z = oc.concat("a; b => a^b", x, y)
    total = z + oc.term("t", output_dims=[5])
    x.set_value(np.zeros(2))
    total.operands[1].set_value(np.zeros(5))
    Context("c").forward(total)
    assert y.shape.output == [3]


def test_carets_in_einsum_point_to_concat():
    x = oc.term("x", output_dims=[2])
    with pytest.raises(ShapeError, match="use oc.concat"):
        oc.einsum("a; b => a^b", x, x)


def test_an_operand_that_is_not_a_tensor_is_named():
    x = oc.term("x", output_dims=[2])
    with pytest.raises(TypeError, match="concat: operand 2 must be a Tensor or a number"):
        oc.concat("a; b => a^b", x, "y")
    with pytest.raises(TypeError, match="stack: operand 1 must be a Tensor or a number"):
        oc.stack(["x", x])

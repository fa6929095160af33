"""Where the axes of an einsum's result come from: labels of the operands, fixed indices, or the
result's given dims (issue 8, items 9 and 1)."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, cd, op
from ocannl_py.errors import SpecSyntaxError
from ocannl_py.shape import Einsum, Pointwise, Shape, close, propagate


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def matrices(rng: np.random.Generator):
    a_val, b_val = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    return (
        a_val,
        b_val,
        oc.ndarray(a_val, output_dims=[2, 3]),
        oc.ndarray(b_val, output_dims=[3, 4]),
    )


# ---- a result label must come from somewhere -------------------------------------------------


def test_a_result_label_in_no_operand_is_an_error_with_a_caret():
    _, _, a, b = matrices(np.random.default_rng(0))
    with pytest.raises(SpecSyntaxError) as info:
        oc.einsum("ij;jk=>il", a, b)
    message = str(info.value)
    assert "'l'" in message and "in no operand" in message
    assert message.endswith("  ij;jk=>il\n          ^")  # the caret is under `l`


def test_the_error_points_at_the_label_in_multichar_specs_and_in_the_op_dsl():
    _, _, a, b = matrices(np.random.default_rng(0))
    with pytest.raises(SpecSyntaxError) as info:
        oc.einsum("row, k; k, col => row, other", a, b)
    assert "'other'" in str(info.value) and info.value.column == 24
    with pytest.raises(SpecSyntaxError, match="'l' is in no operand"):
        op('a +* "ij;jk=>il" b', a=a, b=b)


def test_a_failed_label_check_leaves_no_trace():
    _, _, a, b = matrices(np.random.default_rng(0))
    before = (str(a.shape), str(b.shape))
    with pytest.raises(SpecSyntaxError):
        oc.einsum("ij;jk=>il", a, b)
    assert (str(a.shape), str(b.shape)) == before


def test_fixed_indices_and_operand_labels_are_fine():
    _, _, a, b = matrices(np.random.default_rng(0))
    oc.einsum("ij;jk=>i0k", a, b)
    assert str(oc.einsum("ij;jk=>ki", a, b).shape) == "0:4,1:2"


def test_a_result_label_given_by_the_result_dims(backend):
    # In an assignment to an existing tensor, its dims give the label's dim: here `c[i, l]` is
    # the sum over j and k of a[i, j] * b[j, k], for every l.
    rng = np.random.default_rng(1)
    a_val, b_val, a, b = matrices(rng)
    c = oc.term("c", batch_dims=[], input_dims=[], output_dims=[2, 5])
    ctx = Context(backend)
    ctx.compile(cd('c =:+ a * b ~logic:"ij;jk=>il"', a=a, b=b, c=c)).run()
    expected = np.repeat((f32(a_val) @ f32(b_val)).sum(axis=1, keepdims=True), 5, axis=1)
    np.testing.assert_allclose(c.value, expected, rtol=1e-5, atol=1e-6)


def test_a_result_label_of_an_existing_tensor_must_be_settled_by_closing():
    a = Shape("a", batch_dims=[], input_dims=[], output_dims=[2, 3])
    c = Shape("c")  # used before, its dims never given
    propagate(Pointwise(), Shape("use"), [c])
    propagate(Einsum("ij=>il"), c, [a])
    with pytest.raises(SpecSyntaxError, match="'l' is in no operand"):
        close([c])
    # Given by another use before closing, it is fine.
    d = Shape("d")
    propagate(Pointwise(), Shape("use"), [d])
    propagate(Einsum("ij=>il"), d, [a])
    total = Shape("total")
    propagate(Pointwise(), total, [d, Shape("t", batch_dims=[], input_dims=[], output_dims=[2, 6])])
    close([total])
    assert str(d) == "0:2,1:6"


# ---- a fixed index in a new result is an axis of dim exactly index + 1 -------------------------
# Each case used to unify the fixed-index axis with the axis it broadcasts against.


def term(label: str, batch: list[int], output: list[int]) -> oc.Tensor:
    return oc.term(label, batch_dims=batch, input_dims=[], output_dims=output)


def closed_shape(t: oc.Tensor) -> str:
    t.forward.lower()
    return str(t.shape)


def test_a_max_over_an_axis_keeps_it_with_dim_1_and_broadcasts():
    x = term("x", [2], [6])
    m = oc.einmax1("...|n => ...|0", x)
    assert closed_shape(x - m) == "0:2|0:6"
    assert str(m.shape) == "0:2|0:1"


def test_a_sum_over_a_row_variable_keeps_one_axis_of_dim_1():
    x = term("x", [2], [3, 4])
    mean = oc.einsum1("...|..d.. => ...|0", x)
    assert closed_shape(x - mean) == "0:2|0:3,1:4"
    assert str(mean.shape) == "0:2|0:1"


def test_a_total_reduction_broadcasts_against_anything():
    x = term("x", [2], [3])
    total = op('x ++ "...|...->... => 0"', x=x)
    assert closed_shape(x - total) == "0:2|0:3"
    assert str(total.shape) == "0:1"


def test_a_fixed_index_between_labels_makes_a_dim_1_axis():
    rng = np.random.default_rng(0)
    _, _, a, b = matrices(rng)
    y = oc.einsum("ij;jk=>i0k", a, b)
    assert str(y.shape) == "0:2,1:1,2:4"
    assert closed_shape(y + term("t", [], [2, 5, 4])) == "0:2,1:5,2:4"


def test_a_fixed_index_of_an_operand_needs_a_dim_above_it():
    x = Shape("x")  # dims inferred: reading index 2 needs at least 3
    result = Shape("r")
    propagate(Einsum("2 => 0"), result, [x])
    close([result])
    assert x.output == [3] and result.output == [1]


def test_a_fixed_index_into_an_existing_tensor_must_be_below_its_dim(backend):
    a_val = np.arange(1.0, 5.0)
    a = oc.ndarray(a_val, output_dims=[4])
    c = term("c", [], [3])
    ctx = Context(backend)
    ctx.compile(cd('c =:+ a ~logic:"i => 2"', a=a, c=c)).run()
    np.testing.assert_array_equal(c.value, [0.0, 0.0, a_val.sum()])
    with pytest.raises(oc.ShapeError, match=r"output axes: dim 3 is too small for fixed index 3"):
        cd('c =:+ a ~logic:"i => 3"', a=a, c=c)


# ---- a new result is what its operands make it, as in numpy ------------------------------------


def test_a_pointwise_result_keeps_the_dim_1_of_its_operands():
    z = term("z", [2, 1], [3])
    e = oc.exp(z)
    assert closed_shape(e * term("w", [2, 4], [3])) == "0:2,1:4|0:3"
    assert str(e.shape) == "0:2,1:1|0:3"


def test_a_pointwise_result_has_no_more_axes_than_its_operands():
    x = term("x", [3], [2])
    y = oc.relu(x)
    assert closed_shape(y + term("t", [5, 3], [2])) == "0:5,1:3|0:2"
    assert str(y.shape) == "0:3|0:2"


def test_a_row_variable_of_an_einsum_result_takes_exactly_the_operands_axes():
    x = term("x", [3], [2])
    y = oc.einsum1("...|i => ...|i", x)
    assert closed_shape(y + term("t", [5, 3], [2])) == "0:5,1:3|0:2"
    assert str(y.shape) == "0:3|0:2"


def test_a_result_still_takes_what_an_unknown_operand_gets():
    w = oc.param("w", input_dims=[], batch_dims=[])
    y = oc.relu(w)  # its dims wait on w's
    assert closed_shape(y + term("t", [], [4])) == "0:4"
    assert str(w.shape) == "0:4" and str(y.shape) == "0:4"

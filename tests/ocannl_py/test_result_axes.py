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

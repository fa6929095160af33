"""Dim labels (issue 8, item 10): given on leaves as (label, size) pairs, carried by shape
inference to the dims they determine; axes of equal size whose labels differ do not match."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, op
from ocannl_py.shape import Shape


def test_labelled_dims_are_printed_and_carried_to_inferred_dims():
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[("d", 4)])
    assert str(x.shape) == "0:2|0:d=4" and x.shape.output == [4]
    w = oc.param("w", output_dims=[("h", 3)])
    y = w @ x
    y.forward.lower()
    assert str(w.shape) == "1:d=4->0:h=3" and str(y.shape) == "0:2|0:h=3"


def test_a_label_mismatch_is_a_shape_error():
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[("d", 4)])
    y = oc.term("y", batch_dims=[], input_dims=[], output_dims=[("e", 4)])
    with pytest.raises(oc.ShapeError, match=r"output axes: axis labels 'e' vs 'd'"):
        x + y
    w = oc.param("w", input_dims=[("e", 4)], output_dims=[2])
    with pytest.raises(oc.ShapeError, match=r"axis labels 'e' vs 'd'"):
        w @ x
    with pytest.raises(oc.ShapeError, match=r"axis labels"):
        oc.einsum("i;i=>i", x, y)


def test_labels_do_not_stop_broadcasting_or_unlabelled_dims():
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[("d", 4)])
    one = oc.term("one", batch_dims=[], input_dims=[], output_dims=[("e", 1)])
    plain = oc.term("plain", batch_dims=[], input_dims=[], output_dims=[4])
    assert str((x + one).shape) == "0:d=4"
    assert str((plain + x).shape) == "0:4"  # the first operand's dim, unlabelled, comes first


def test_labelled_leaves_compute_as_unlabelled_ones(backend):
    values = np.arange(6.0).reshape(2, 3)
    x = oc.term("x", batch_dims=[("batch", 2)], input_dims=[], output_dims=[("d", 3)])
    x.set_value(values)
    y = op("x *. x + x", x=x)
    Context(backend).forward(y)
    np.testing.assert_allclose(y.value, values * values + values)


def test_bad_labelled_dims_are_rejected():
    with pytest.raises(ValueError, match=r"\(label, int\) pairs"):
        oc.term("x", output_dims=[("d", 0)])
    with pytest.raises(ValueError, match=r"\(label, int\) pairs"):
        oc.param("w", output_dims=[("", 3)])
    with pytest.raises(oc.ShapeError, match=r"\(label, int\) pairs"):
        Shape("s", output_dims=[(3, "d")])

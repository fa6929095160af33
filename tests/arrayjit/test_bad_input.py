"""Bad input gives a clear ValueError or TypeError that names what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from arrayjit.assignments import Accum, Fetch, Values
from arrayjit.dtypes import dtype_of
from arrayjit.indexing import Affine, Fixed, Iterator, Projections, identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode, TNode


def matmul_projections(m: int, n: int, k: int) -> Projections:
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    return Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j)))


# ---- tnodes ----------------------------------------------------------------------------------


def test_set_host_wrong_shape():
    x = TNode("weights", (2, 3))
    with pytest.raises(ValueError, match=r"'weights'.*shape \(2, 3\), got \(3, 2\)"):
        x.set_host(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"'weights'.*got \(6,\)"):
        x.set_host(np.zeros(6))


@pytest.mark.parametrize(
    "values", [np.array(["a", "b"]), ["1", "2"], np.zeros(2, complex), [None, None]]
)
def test_set_host_not_numbers(values):
    x = TNode("weights", (2,))
    with pytest.raises(TypeError, match=r"'weights'.*not numbers"):
        x.set_host(values)


def test_set_host_scalar_broadcasts_and_floats_cast():
    x = TNode("x", (2, 2), "int32")
    x.set_host(3)
    np.testing.assert_array_equal(x.host(), np.full((2, 2), 3, np.int32))
    x.set_host(np.array([[1.9, -1.9], [0, 2]]))
    assert x.host().dtype == np.int32


@pytest.mark.parametrize(
    ("dims", "error", "match"),
    [
        ((2, 0), ValueError, r"'t'.*every dim must be >= 1, got \(2, 0\)"),
        ((-1,), ValueError, r"'t'.*>= 1"),
        ((2.0, 3), TypeError, r"'t'.*dims must be ints"),
        ((True, 3), TypeError, r"'t'.*dims must be ints"),
        (("2",), TypeError, r"'t'.*dims must be ints"),
        (5, TypeError, r"'t'.*dims must be a sequence of ints, got 5"),
    ],
)
def test_bad_dims(dims, error, match):
    with pytest.raises(error, match=match):
        TNode("t", dims)


def test_numpy_int_dims_are_accepted():
    assert TNode("t", (np.int64(2), np.int32(3))).dims == (2, 3)


def test_bad_dtype_and_memory_mode():
    with pytest.raises(TypeError, match=r"unknown dtype 'float128'; expected one of"):
        TNode("t", (2,), "float128")
    with pytest.raises(TypeError, match=r"unsupported dtype complex128"):
        dtype_of(np.complex128)
    with pytest.raises(TypeError, match=r"'t'.*memory_mode must be a MemoryMode, got 'virtual'"):
        TNode("t", (2,), memory_mode="virtual")
    assert TNode("t", (2,), memory_mode=MemoryMode.VIRTUAL).memory_mode is MemoryMode.VIRTUAL


# ---- assignments -----------------------------------------------------------------------------


def test_unknown_op():
    x, y = TNode("x", (2,)), TNode("y", (2,))
    with pytest.raises(ValueError, match=r"unknown operation 'expp'; known: .*exp"):
        Accum(y, None, "expp", (x,), identity_projections((2,), 1))
    with pytest.raises(ValueError, match=r"unknown operation 'plus'"):
        Accum(y, "plus", "identity", (x,), identity_projections((2,), 1))


def test_wrong_arity():
    x, y = TNode("x", (2,)), TNode("y", (2,))
    with pytest.raises(ValueError, match=r"operation 'add' takes 2 operand\(s\), got 1"):
        Accum(y, None, "add", (x,), identity_projections((2,), 1))
    with pytest.raises(ValueError, match=r"operation 'exp' takes 1 operand\(s\), got 2"):
        Accum(y, None, "exp", (x, x), identity_projections((2,), 2))


def test_accumulate_op_without_neutral_element():
    x, y = TNode("x", (2,)), TNode("y", (2,))
    with pytest.raises(ValueError, match=r"'pow' cannot accumulate; use one of add"):
        Accum(y, "pow", "identity", (x,), identity_projections((2,), 1))
    with pytest.raises(ValueError, match=r"operation 'exp' takes 1 operand"):
        Accum(y, "exp", "identity", (x,), identity_projections((2,), 1))


def test_operands_must_be_tnodes_and_match_projections():
    x, y = TNode("x", (2,)), TNode("y", (2,))
    with pytest.raises(TypeError, match=r"lhs and rhses must be TNodes"):
        Accum(y, None, "identity", (np.zeros(2),), identity_projections((2,), 1))
    with pytest.raises(ValueError, match=r"Accum into 'y': 1 operands but projections for 2"):
        Accum(y, None, "identity", (x,), identity_projections((2,), 2))
    with pytest.raises(ValueError, match=r"'y'.*rhs1 has 2 axes but its projection gives 1"):
        Accum(y, None, "identity", (TNode("x2", (2, 2)),), identity_projections((2,), 1))


@pytest.mark.parametrize(
    ("a_dims", "match"),
    [
        ((4, 3), r"'c'.*rhs1 axis 0 has dim 4 but index i ranges over 0..4"),
        ((5, 2), r"'c'.*rhs1 axis 1 has dim 2 but index k ranges over 0..2"),
    ],
)
def test_projections_exceeding_dims(a_dims, match):
    a, b, c = TNode("a", a_dims), TNode("b", (3, 2)), TNode("c", (5, 2))
    with pytest.raises(ValueError, match=match):
        Accum(c, "add", "mul", (a, b), matmul_projections(5, 2, 3), True)


def test_fixed_and_affine_indices_out_of_range():
    x, y = TNode("x", (4,)), TNode("y", (3,))
    i = Iterator(name="i")
    with pytest.raises(
        ValueError, match=r"'y'.*rhs1 axis 0 has dim 4 but index 4 ranges over 4..4"
    ):
        Accum(y, None, "identity", (x,), Projections((3,), (i,), (i,), ((Fixed(4),),)))
    with pytest.raises(ValueError, match=r"'y'.*rhs1 axis 0 has dim 4 but index 2\*i \+ 1"):
        Accum(y, None, "identity", (x,), Projections((3,), (i,), (i,), ((Affine(((2, i),), 1),),)))
    with pytest.raises(ValueError, match=r"'y'.*lhs axis 0 has dim 3 but index -1\*i"):
        Accum(y, None, "identity", (x,), Projections((3,), (i,), (Affine(((-1, i),)),), ((i,),)))


def test_overwriting_with_a_reduction():
    a, b, c = TNode("a", (5, 3)), TNode("b", (3, 2)), TNode("c", (5, 2))
    with pytest.raises(ValueError, match=r"'c': overwriting \(=:\) while iterating over k.*=:\+"):
        Accum(c, None, "mul", (a, b), matmul_projections(5, 2, 3))


def test_zero_first_needs_an_accumulate_op():
    x, y = TNode("x", (2,)), TNode("y", (2,))
    with pytest.raises(ValueError, match=r"zero_first needs an accumulate op"):
        Accum(y, None, "identity", (x,), identity_projections((2,), 1), zero_first=True)


def test_bad_projections():
    i, j = Iterator(name="i"), Iterator(name="j")
    with pytest.raises(ValueError, match=r"2 extents for 1 iterators"):
        Projections((2, 3), (i,), (i,), ())
    with pytest.raises(ValueError, match=r"an iterator occurs twice"):
        Projections((2, 3), (i, i), (i,), ())
    with pytest.raises(ValueError, match=r"iteration extent must be a positive int: 0"):
        Projections((0,), (i,), (i,), ())
    with pytest.raises(ValueError, match=r"index j uses j, not in the product space"):
        Projections((2,), (i,), (j,), ())


def test_fetch_values_of_the_wrong_size():
    with pytest.raises(
        ValueError, match=r"Fetch into 'table': 5 values for 6 cells \(dims \(2, 3\)\)"
    ):
        Fetch(TNode("table", (2, 3)), Values(np.zeros(5)))


# ---- contexts --------------------------------------------------------------------------------


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; expected one of c, cuda"):
        Runtime("nope")
    with pytest.raises(TypeError, match=r"backend must be a name"):
        Runtime(3)


def test_compile_takes_assignment_code(c_context):
    with pytest.raises(TypeError, match=r"Runtime.compile takes assignment code, got str"):
        c_context.compile("y =: exp(x)")

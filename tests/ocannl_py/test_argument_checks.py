"""Public functions check the types of their arguments: a wrong type is a TypeError that names
the function, the argument and what was expected, never an AttributeError from deep inside."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import cd, op
from ocannl_py.operation import REGISTRY


@pytest.fixture
def t() -> oc.Tensor:
    return oc.term("t", batch_dims=[], input_dims=[], output_dims=[2])


CASES = [
    # (call, words the message must hold: the function, the argument, what was expected)
    (lambda t: op(None), ["op", "text", "string", "NoneType"]),
    (lambda t: op(3), ["op", "text", "string", "int"]),
    (lambda t: cd(5), ["cd", "text", "string", "int"]),
    (lambda t: cd(b"a =: b"), ["cd", "text", "string", "bytes"]),
    (lambda t: oc.number("3"), ["number", "value", "number", "str"]),
    (lambda t: oc.number(None), ["number", "value", "number", "NoneType"]),
    (lambda t: oc.number(t), ["number", "value", "number", "Tensor"]),
    (lambda t: oc.number(True), ["number", "value", "number", "bool"]),
    (lambda t: oc.number(1.0, label=3), ["number", "label", "string", "int"]),
    (lambda t: oc.param(3), ["param", "label", "string", "int"]),
    (lambda t: oc.param("w", value="x"), ["param", "value", "number", "str"]),
    (lambda t: oc.param("w", value=[1.0, None]), ["param", "value", "number"]),
    (lambda t: oc.param("w", output_dims=3.0), ["param", "output_dims", "int", "float"]),
    (lambda t: oc.param("w", input_dims=["3"]), ["param", "input_dims", "int", "'3'"]),
    (lambda t: oc.term(3), ["term", "label", "string", "int"]),
    (lambda t: oc.term("x", batch_dims=[2.5]), ["term", "batch_dims", "int", "2.5"]),
    (lambda t: oc.ndarray("abc"), ["ndarray", "values", "number", "str"]),
    (lambda t: oc.ndarray([1.0, 2.0], output_dims=2.0), ["ndarray", "output_dims", "int"]),
    (lambda t: oc.range("3"), ["range", "n", "int", "str"]),
    (lambda t: oc.range(3, label=7), ["range", "label", "string", "int"]),
    (lambda t: oc.range_of_shape(output_dims="a"), ["range_of_shape", "output_dims", "int"]),
    (lambda t: oc.einsum(3, t, t), ["einsum", "spec", "string", "int"]),
    (lambda t: oc.einsum1(None, t), ["einsum1", "spec", "string", "NoneType"]),
    (lambda t: oc.einmax1(["i=>"], t), ["einmax1", "spec", "string", "list"]),
    (lambda t: oc.tropical(b"i;i=>i", t, t), ["tropical", "spec", "string", "bytes"]),
    (lambda t: oc.outer_sum(3, t, t), ["outer_sum", "spec", "string", "int"]),
    (lambda t: oc.einsum("ab;bc=>ac", t, "x"), ["einsum", "'b'", "Tensor or a number", "str"]),
    (lambda t: oc.relu("x"), ["relu", "'a'", "Tensor or a number", "str"]),
    (lambda t: oc.relu(None), ["relu", "'a'", "Tensor or a number", "NoneType"]),
    (lambda t: oc.relu(np.ones(2)), ["relu", "'a'", "Tensor or a number", "ndarray"]),
    (lambda t: oc.relu(True), ["relu", "'a'", "Tensor or a number", "bool"]),
    (lambda t: oc.where(t, t, "s"), ["where", "'b'", "Tensor or a number", "str"]),
    (lambda t: oc.fma(t, [1.0], t), ["fma", "'b'", "Tensor or a number", "list"]),
    (lambda t: t + "x", ["add", "'b'", "Tensor or a number", "str"]),
    (lambda t: None - t, ["sub", "'a'", "Tensor or a number", "NoneType"]),
    (lambda t: t @ [1.0], ["compose", "'b'", "Tensor or a number", "list"]),
    (lambda t: t ** "2", ["pointpow", "'b'", "Tensor or a number", "str"]),
    (lambda t: oc.transpose("t"), ["transpose", "'a'", "Tensor or a number", "str"]),
    (lambda t: t.relu("extra"), ["relu"]),  # too many arguments: Python's own TypeError
    (lambda t: oc.einsum("ab;bc=>ac", t), ["einsum", "b"]),  # missing: Python's own TypeError
    (lambda t: t.set_value("x"), ["set_value", "'t'", "number", "str"]),
    (lambda t: t.set_value(None), ["set_value", "'t'", "number", "NoneType"]),
    (lambda t: t.set_value(t), ["set_value", "'t'", "number", "tensor 't'", ".value"]),
    (lambda t: t.set_value([1, "a"]), ["set_value", "'t'", "number"]),
    (lambda t: t.set_value(np.ones(2, complex)), ["set_value", "'t'", "number", "complex"]),
]


@pytest.mark.parametrize(("call", "words"), CASES)
def test_wrong_argument_type_is_a_type_error_naming_it(t, call, words):
    with pytest.raises(TypeError) as info:
        call(t)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_set_seed_rejects_bools_and_strings():
    with pytest.raises(ValueError, match="set_seed"):
        oc.set_seed(True)
    with pytest.raises((TypeError, ValueError), match="set_seed.*'1'"):
        oc.set_seed("1")


def test_every_registered_operation_rejects_a_string_operand(t):
    """Whatever operations are registered, a string where a tensor belongs is a TypeError
    naming the operation (one check for all, through `@public`)."""
    import inspect

    checked = 0
    for name, entry in REGISTRY.items():
        parameters = inspect.signature(entry.function).parameters
        operands = [p for p, v in parameters.items() if v.annotation == "Operand"]
        if not operands:
            continue
        args = {p: ("ab=>ab" if v.annotation == "str" else t) for p, v in parameters.items()
                if v.default is inspect.Parameter.empty}  # fmt: skip
        args[operands[-1]] = "not a tensor"
        with pytest.raises(TypeError, match=rf"{name}: argument '{operands[-1]}'"):
            entry.function(**args)
        checked += 1
    assert checked >= 30


def test_good_arguments_still_work(t):
    assert oc.number(np.float32(2.5)).label == "2.5"
    assert oc.number(3).label == "3"
    assert oc.param("w", value=np.ones((2, 2)), output_dims=(2,)).shape is not None
    assert oc.term("x", batch_dims=np.int64(2), output_dims=[np.int64(3)]) is not None
    assert oc.relu(np.float64(1.0)) is not None and (t + np.int32(1)) is not None
    t.set_value(np.array([1, 2], np.int64))
    t.set_value(True)  # numpy's bool is a number
    assert op("x + 1", x=t).operands[0] is t

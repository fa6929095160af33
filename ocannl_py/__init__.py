"""ocannl_py: a tensor compiler in the spirit of OCANNL.

Write models with the einsum-based `op` DSL or Python operators, let shape inference type them
(batch | input -> output axes), and compile forward and backward code with a `Context`.
"""

from ocannl_py import train
from ocannl_py.context import Context, Routine
from ocannl_py.dsl import cd, op
from ocannl_py.errors import CompileError, ShapeError, SpecSyntaxError
from ocannl_py.operation import (
    add,
    compose,
    cos,
    einmax1,
    einsum,
    einsum1,
    eq,
    exp,
    exp2,
    fma,
    identity,
    log,
    log2,
    lt,
    max,
    min,
    ndarray,
    ne,
    neg,
    not_,
    number,
    outer_sum,
    param,
    pointdiv,
    pointmul,
    pointpow,
    range,
    range_of_shape,
    recip,
    recip_sqrt,
    relu,
    relu_gate,
    sat01,
    set_seed,
    sin,
    sqrt,
    stop_gradient,
    sub,
    tanh,
    term,
    transpose,
    tropical,
    where,
)
from ocannl_py.tensor import Tensor

__all__ = [
    "CompileError", "Context", "Routine", "ShapeError", "SpecSyntaxError", "Tensor", "add", "cd",
    "compose", "cos", "einmax1", "einsum", "einsum1", "eq", "exp", "exp2", "fma", "identity",
    "log", "log2", "lt", "max", "min", "ndarray", "ne", "neg", "not_", "number", "op",
    "outer_sum", "param", "pointdiv", "pointmul", "pointpow", "range", "range_of_shape", "recip",
    "recip_sqrt", "relu", "relu_gate", "sat01", "set_seed", "sin", "sqrt", "stop_gradient", "sub",
    "tanh", "term", "train", "transpose", "tropical", "where",
]  # fmt: skip

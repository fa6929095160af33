"""The primitive operations: one table, each entry with its arity, its numpy reference and its
printed form in assignment code. How each is spelled in generated code lives with the printers
(`arrayjit/codegen/`), so another target reuses this table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from arrayjit.dtypes import DType


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    reference: Callable[..., np.ndarray]
    # Printed form in assignment code: an infix symbol for binary ops, else the name.
    symbol: str | None = None

    def apply(self, *operands: np.ndarray) -> np.ndarray:
        """The numpy reference, computed in the operands' dtype."""
        if len(operands) != self.arity:
            raise ValueError(f"op {self.name!r} takes {self.arity} operands, got {len(operands)}")
        with np.errstate(all="ignore"):
            out = self.reference(*operands)
        return np.asarray(out).astype(np.result_type(*operands), copy=False)


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64 (numpy has none; scipy is not a dependency)."""
    return np.vectorize(math.erf, otypes=[np.float64])(np.asarray(x, dtype=np.float64))


def _uniform(seed: np.ndarray, counter: np.ndarray) -> np.ndarray:
    from arrayjit.threefry import uniform_reference

    return uniform_reference(seed, counter, np.result_type(seed, counter))


OPS: dict[str, Op] = {}


def _register(*ops: Op) -> None:
    for o in ops:
        OPS[o.name] = o


_register(
    # Unary.
    Op("identity", 1, lambda x: x),
    Op("neg", 1, lambda x: -x, "-"),
    Op("relu", 1, lambda x: np.where(x > 0, x, 0)),
    Op("sat01", 1, lambda x: np.where(x < 0, 0, np.where(x > 1, 1, x))),
    Op("exp", 1, np.exp),
    Op("log", 1, np.log),
    Op("exp2", 1, np.exp2),
    Op("log2", 1, np.log2),
    Op("sin", 1, np.sin),
    Op("cos", 1, np.cos),
    Op("sqrt", 1, np.sqrt),
    Op("recip", 1, lambda x: 1 / x),
    Op("recip_sqrt", 1, lambda x: 1 / np.sqrt(x)),
    Op("tanh", 1, np.tanh),
    Op("erf", 1, _erf),
    Op("not", 1, lambda x: np.where(x == 0, 1, 0)),
    # Binary.
    Op("add", 2, np.add, "+"),
    Op("sub", 2, np.subtract, "-"),
    Op("mul", 2, np.multiply, "*"),
    Op("div", 2, np.divide, "/"),
    Op("pow", 2, np.power, "**"),
    Op("max", 2, np.maximum),
    Op("min", 2, np.minimum),
    Op("lt", 2, lambda a, b: np.where(a < b, 1, 0), "<"),
    Op("eq", 2, lambda a, b: np.where(a == b, 1, 0), "=="),
    Op("ne", 2, lambda a, b: np.where(a != b, 1, 0), "<>"),
    # relu's backward: pass the gradient `b` where the input `a` was positive.
    Op("relu_gate", 2, lambda a, b: np.where(a > 0, b, 0), "-?/"),
    # A uniform value in [0, 1) from Threefry-4x32 of (seed, counter): see arrayjit.threefry.
    Op("uniform_at", 2, lambda seed, counter: _uniform(seed, counter)),
    # Ternary.
    Op("where", 3, lambda c, a, b: np.where(c != 0, a, b)),
    Op("fma", 3, lambda a, b, c: a * b + c),
)


# Ops whose values are counter-based random bits (`arrayjit.threefry`).
RANDOM_OPS: set[str] = {"uniform_at"}


def get(name: str) -> Op:
    """The op named `name`, or a ValueError listing the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}") from None


def check_arity(name: str, arity: int) -> Op:
    op = get(name)
    if op.arity != arity:
        raise ValueError(f"operation {name!r} takes {op.arity} operand(s), got {arity}")
    return op


# Accumulating (`=+`, `=*`, max...) starts from the neutral element of the accumulate op.
NEUTRAL: dict[str, float] = {
    "add": 0.0,
    "sub": 0.0,
    "mul": 1.0,
    "div": 1.0,
    "max": -np.inf,
    "min": np.inf,
}


def neutral(accum: str, dtype: DType) -> float | int:
    if accum not in NEUTRAL:
        raise ValueError(f"{accum!r} cannot accumulate; use one of {', '.join(NEUTRAL)}")
    value = NEUTRAL[accum]
    if not dtype.is_float and np.isinf(value):
        info = np.iinfo(dtype.numpy)
        return int(info.min if value < 0 else info.max)
    return int(value) if not dtype.is_float else value

"""The primitive operations: one table, each entry with its numpy reference and its C expression.

C expressions are templates: `{0}`, `{1}`, `{2}` are the operands, `{m}` the libm suffix of the
dtype (`f` for float) and `{t}` the C type. Operations whose operand would be repeated in a plain
expression call a helper from `C_PRELUDE`, so an inlined operand is evaluated once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from arrayjit.dtypes import DType


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    reference: Callable[..., np.ndarray]
    c_template: str
    # Printed form in assignment code: an infix symbol for binary ops, else the name.
    symbol: str | None = None

    def c_expr(self, dtype: DType, *operands: str) -> str:
        if len(operands) != self.arity:
            raise ValueError(f"op {self.name!r} takes {self.arity} operands, got {len(operands)}")
        if "{m}" in self.c_template and dtype.math_suffix is None:
            raise TypeError(f"op {self.name!r} is not defined for {dtype}")
        return self.c_template.format(*operands, m=dtype.math_suffix or "", t=dtype.c_name)

    def apply(self, *operands: np.ndarray) -> np.ndarray:
        """The numpy reference, computed in the operands' dtype."""
        if len(operands) != self.arity:
            raise ValueError(f"op {self.name!r} takes {self.arity} operands, got {len(operands)}")
        with np.errstate(all="ignore"):
            out = self.reference(*operands)
        return np.asarray(out).astype(np.result_type(*operands), copy=False)


def _uniform(seed: np.ndarray, counter: np.ndarray) -> np.ndarray:
    from arrayjit.threefry import uniform_reference

    return uniform_reference(seed, counter, np.result_type(seed, counter))


OPS: dict[str, Op] = {}


def _register(*ops: Op) -> None:
    for o in ops:
        OPS[o.name] = o


_register(
    # Unary.
    Op("identity", 1, lambda x: x, "({0})"),
    Op("neg", 1, lambda x: -x, "(-{0})", "-"),
    Op("relu", 1, lambda x: np.where(x > 0, x, 0), "ocannl_relu_{t}({0})"),
    Op("sat01", 1, lambda x: np.where(x < 0, 0, np.where(x > 1, 1, x)), "ocannl_sat01_{t}({0})"),
    Op("exp", 1, np.exp, "exp{m}({0})"),
    Op("log", 1, np.log, "log{m}({0})"),
    Op("exp2", 1, np.exp2, "exp2{m}({0})"),
    Op("log2", 1, np.log2, "log2{m}({0})"),
    Op("sin", 1, np.sin, "sin{m}({0})"),
    Op("cos", 1, np.cos, "cos{m}({0})"),
    Op("sqrt", 1, np.sqrt, "sqrt{m}({0})"),
    Op("recip", 1, lambda x: 1 / x, "(({t})1 / ({0}))"),
    Op("recip_sqrt", 1, lambda x: 1 / np.sqrt(x), "(({t})1 / sqrt{m}({0}))"),
    Op("tanh", 1, np.tanh, "tanh{m}({0})"),
    Op("not", 1, lambda x: np.where(x == 0, 1, 0), "(({t})(({0}) == 0))"),
    # Binary.
    Op("add", 2, np.add, "({0} + {1})", "+"),
    Op("sub", 2, np.subtract, "({0} - {1})", "-"),
    Op("mul", 2, np.multiply, "({0} * {1})", "*"),
    Op("div", 2, np.divide, "({0} / {1})", "/"),
    Op("pow", 2, np.power, "pow{m}({0}, {1})", "**"),
    Op("max", 2, np.maximum, "ocannl_max_{t}({0}, {1})"),
    Op("min", 2, np.minimum, "ocannl_min_{t}({0}, {1})"),
    Op("lt", 2, lambda a, b: np.where(a < b, 1, 0), "(({t})(({0}) < ({1})))", "<"),
    Op("eq", 2, lambda a, b: np.where(a == b, 1, 0), "(({t})(({0}) == ({1})))", "=="),
    Op("ne", 2, lambda a, b: np.where(a != b, 1, 0), "(({t})(({0}) != ({1})))", "<>"),
    # relu's backward: pass the gradient `b` where the input `a` was positive.
    Op("relu_gate", 2, lambda a, b: np.where(a > 0, b, 0), "ocannl_relu_gate_{t}({0}, {1})", "-?/"),
    # A uniform value in [0, 1) from Threefry-4x32 of (seed, counter): see arrayjit.threefry.
    Op(
        "uniform_at",
        2,
        lambda seed, counter: _uniform(seed, counter),
        "ocannl_uniform_{t}({0}, {1})",
    ),
    # Ternary.
    Op("where", 3, lambda c, a, b: np.where(c != 0, a, b), "(({0}) != 0 ? ({1}) : ({2}))"),
    Op("fma", 3, lambda a, b, c: a * b + c, "fma{m}({0}, {1}, {2})"),
)


# Ops whose C code needs the counter-based generator of `arrayjit.threefry`.
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


def c_prelude(dtypes: list[DType], qualifier: str) -> str:
    """Helper functions used by the C templates, for each dtype. `qualifier` is `static inline`
    for C and `__device__ __forceinline__` (or similar) for CUDA."""
    lines: list[str] = []
    for d in dtypes:
        t = d.c_name
        q = f"{qualifier} {t}"
        lines += [
            f"{q} ocannl_relu_{t}({t} x) {{ return x > 0 ? x : ({t})0; }}",
            f"{q} ocannl_sat01_{t}({t} x) {{ return x < 0 ? ({t})0 : (x > 1 ? ({t})1 : x); }}",
            f"{q} ocannl_relu_gate_{t}({t} a, {t} b) {{ return a > 0 ? b : ({t})0; }}",
            # numpy's maximum/minimum propagate NaN; fmax/fmin would drop it.
            f"{q} ocannl_max_{t}({t} a, {t} b) {{ return (a != a || a > b) ? a : b; }}",
            f"{q} ocannl_min_{t}({t} a, {t} b) {{ return (a != a || a < b) ? a : b; }}",
        ]
    return "\n".join(lines) + "\n"

"""Activation functions, each one pointwise operation with its derivative written out."""

from __future__ import annotations

from ocannl_py.nn import dims
from ocannl_py.operation import Operand, unary
from ocannl_py.tensor import Tensor

# sqrt(2 / pi) and the cubic coefficient of GPT-2's tanh approximation of GELU.
_C = 0.7978845608028654
_A = 0.044715
# 1 / sqrt(2) and 1 / sqrt(2 pi), for the exact (erf) GELU.
_RSQRT2 = 0.7071067811865476
_RSQRT_2PI = 0.3989422804014327


def _pointwise(label: str, x: Operand, forward: str, backward: str) -> Tensor:
    """A unary operation whose result has exactly the shape of its operand."""
    y = unary(label, x, forward, backward)
    return dims.same_shape(y, y.operands[0])


def gelu(x: Operand, exact: bool = False) -> Tensor:
    """GELU: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (GPT-2's), or with `exact=True`
    `0.5 x (1 + erf(x / sqrt(2)))` (BERT's), as torch's `gelu(approximate="tanh"|"none")`."""
    if exact:
        return _pointwise(
            "gelu", x,
            f"v =: 0.5 * v1 * (1 + erf(v1 * {_RSQRT2}))",
            f"g1 =+ g * (0.5 * (1 + erf(v1 * {_RSQRT2})) + v1 * {_RSQRT_2PI} * exp(-0.5 * v1 * v1))",
        )  # fmt: skip
    # With t = tanh(u), u = c (x + a x^3): d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2).
    inner = f"{_C} * (v1 + {_A} * v1 * v1 * v1)"
    return _pointwise(
        "gelu_tanh", x,
        f"v =: 0.5 * v1 * (1 + tanh({inner}))",
        f"g1 =+ g * (0.5 * (1 + tanh({inner})) + 0.5 * v1 * (1 - tanh({inner}) * tanh({inner}))"
        f" * {_C} * (1 + {3 * _A} * v1 * v1))",
    )  # fmt: skip


def silu(x: Operand) -> Tensor:
    """SiLU (swish): `x * sigmoid(x)`; its derivative is `s (1 + x (1 - s))`, s = sigmoid(x)."""
    return _pointwise(
        "silu", x,
        "v =: v1 / (1 + exp(-v1))",
        "g1 =+ g * (1 + v1 * (1 - 1 / (1 + exp(-v1)))) / (1 + exp(-v1))",
    )  # fmt: skip

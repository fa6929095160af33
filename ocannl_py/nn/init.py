"""PyTorch's initialisations, as `oc.param(init=...)` arguments. Bounds are functions, called
once shapes are solved, so a parameter whose dims are inferred still gets the right range."""

from __future__ import annotations

import math
from collections.abc import MutableMapping

from ocannl_py import operation as ops
from ocannl_py.nn import dims
from ocannl_py.tensor import Tensor

#: Parameters shared between builds of a model, by label (e.g. `t.params` of an earlier build).
Params = MutableMapping[str, Tensor] | None


def parameter(params: Params, label: str, value=None, **kwargs) -> Tensor:
    """`params[label]` when it is there (a parameter shared with another build), else a new
    `oc.param(label, value, **kwargs)`, added to `params` when a dict is given."""
    if params is not None and label in params:
        shared = params[label]
        if not isinstance(shared, Tensor) or not shared.is_param:
            raise TypeError(f"params[{label!r}] must be a parameter, got {shared!r}")
        return shared
    created = ops.param(label, value, **kwargs)
    if params is not None:
        params[label] = created
    return created


def fan_in(weight: Tensor) -> int:
    """The product of a weight's input dims (1 when it has none)."""
    return dims.count((weight, "input"))()


def linear_bias(weight: Tensor) -> tuple[str, object]:
    """`nn.Linear`'s bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan-in. (The
    weight's own default, kaiming_uniform with a = sqrt(5), is the same range: `oc.param`'s
    default.)"""
    return ("uniform", lambda: 1.0 / math.sqrt(fan_in(weight)))


def xavier_uniform(fan_in_: object, fan_out: object) -> tuple[str, object]:
    """`nn.init.xavier_uniform_`: U(-b, b) with b = sqrt(6 / (fan_in + fan_out)); each fan is an
    int or a function giving it once shapes are solved."""

    def bound() -> float:
        total = sum(f() if callable(f) else f for f in (fan_in_, fan_out))
        return math.sqrt(6.0 / total)

    return ("uniform", bound)

"""The op DSL (OCANNL's %op) in a string: `op(text, **names)` gives the syntax trees of
`dsl.syntax` their meaning, building tensors through `operation`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ocannl_py import operation as ops
from ocannl_py.dsl import syntax as syn
from ocannl_py.errors import SpecSyntaxError
from ocannl_py.tensor import Tensor

__all__ = ["op"]


def _registered(name: str):
    """Operators and functions are the registered operations (`operation.REGISTRY`)."""
    return ops.REGISTRY[name].function


# The memory order of axes: batch, then output, then input.
_KIND_ORDER = {"batch": 0, "output": 1, "input": 2}


def _literal(lit: syn.Literal) -> Tensor:
    order = sorted(range(len(lit.kinds)), key=lambda k: _KIND_ORDER[lit.kinds[k]])
    values = np.transpose(lit.values, order)
    dims = {kind: [] for kind in _KIND_ORDER}
    for k in order:
        dims[lit.kinds[k]].append(lit.values.shape[k])
    return ops.ndarray(values, batch_dims=dims["batch"], input_dims=dims["input"],
                       output_dims=dims["output"])  # fmt: skip


class _Interpreter:
    def __init__(self, text: str, names: dict[str, Any]) -> None:
        self.text = text
        self.names = names
        self.params: dict[str, Tensor] = {}

    def error(self, message: str, pos: tuple[int, int]) -> SpecSyntaxError:
        return SpecSyntaxError(f"op DSL: {message}", self.text, *pos)

    def name(self, name: str, pos) -> Any:
        if name not in self.names and name in self.params:
            return self.params[name]  # an inline parameter defined earlier in the text
        if name not in self.names:
            bound = ", ".join(sorted(self.names)) or "none"
            raise self.error(
                f"unbound name {name!r}: pass it as a keyword argument (bound: {bound})", pos
            )
        return self.names[name]

    def dims(self, dims, pos) -> list[int] | None:
        if dims is None:
            return None
        out = []
        for d in dims:
            value = self.name(d, pos) if isinstance(d, str) else d
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise self.error(f"dim {d!r} must be an int, got {value!r}", pos)
            out.append(int(value))
        return out

    def param(self, p: syn.Param) -> Tensor:
        if p.name in self.params:
            if p.init is not None or p.output or p.input or p.batch:
                raise self.error(f"inline parameter {p.name!r} is defined twice", p.pos)
            return self.params[p.name]
        init = p.init
        dims = {
            "batch": self.dims(p.batch, p.pos),
            "input": self.dims(p.input, p.pos),
            "output": self.dims(p.output, p.pos),
        }
        if isinstance(init, syn.Literal):
            if "batch" in init.kinds:
                raise self.error(
                    f"inline parameter {p.name!r}: a parameter has no batch axes", p.pos
                )
            order = sorted(range(len(init.kinds)), key=lambda k: _KIND_ORDER[init.kinds[k]])
            literal_dims = {"batch": [], "input": [], "output": []}
            for k in order:
                literal_dims[init.kinds[k]].append(init.values.shape[k])
            for kind, given in dims.items():
                if given is None:
                    dims[kind] = literal_dims[kind]
                elif given != literal_dims[kind]:
                    raise self.error(
                        f"inline parameter {p.name!r}: {kind} dims {given} do not match its "
                        f"initial value's {literal_dims[kind]}",
                        p.pos,
                    )
            init = np.transpose(init.values, order)
        t = ops.param(
            p.name, init, batch_dims=dims["batch"], input_dims=dims["input"],
            output_dims=dims["output"],
        )  # fmt: skip
        self.params[p.name] = t
        return t

    def eval(self, e: syn.OpExpr) -> Tensor | float:
        match e:
            case syn.Number(value):
                return ops.inline_number(value)
            case syn.Name(name):
                value = self.name(name, e.pos)
                if isinstance(value, Tensor):
                    return value
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return ops.inline_number(float(value))
                raise self.error(
                    f"{name!r} must be a Tensor or a number, got {type(value).__name__}", e.pos
                )
            case syn.Literal():
                return _literal(e)
            case syn.Param():
                return self.param(e)
            case syn.Neg(operand):
                return ops.neg(self.eval(operand))
            case syn.Binary(op, left, right):
                return _registered(syn.OP_BINARY_OPERATORS[op])(self.eval(left), self.eval(right))
            case syn.EinsumExpr(op, spec, left, right):
                return _registered(syn.OP_EINSUM_OPERATORS[op])(
                    spec, self.eval(left), self.eval(right)
                )
            case syn.Einsum1Expr(op, spec, operand):
                return _registered(syn.OP_EINSUM1_OPERATORS[op])(spec, self.eval(operand))
            case syn.FunctionCall(name, args):
                if name not in ops.DSL_FUNCTIONS:
                    known = ", ".join(sorted(ops.DSL_FUNCTIONS))
                    raise self.error(f"unknown function {name!r}; known: {known}", e.pos)
                try:
                    return ops.DSL_FUNCTIONS[name](*(self.eval(a) for a in args))
                except TypeError as exc:
                    raise self.error(f"{name}: {exc}", e.pos) from None
        raise TypeError(f"unknown op DSL node {e!r}")


def op(text: str, **names: Any) -> Tensor:
    """A tensor from OCANNL's %op syntax; tensors and numbers are bound by keyword.

    >>> import ocannl_py as oc
    >>> y = oc.op("({hey = 7.0} * [2;3]) + [4;5;6]")
    >>> sorted(y.params)
    ['hey']
    """
    if not isinstance(text, str):
        raise TypeError(f"op: argument 'text' must be a string of op DSL, got {ops.describe(text)}")
    return _Interpreter(text, names).eval(syn.parse_op(text))

"""Simplification: constant folding and algebraic identities (`x*1`, `x+0`, `identity(x)`)."""

from __future__ import annotations

import numpy as np

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.dtypes import DType


def _is_const(e: ir.Expr, value: float) -> bool:
    return isinstance(e, ir.Const) and e.value == value


def cast_value(value: float, target: DType) -> float | int:
    """A constant converted as generated code converts it: to an int toward zero, saturated,
    NaN to 0 (`ocannl_float_to_int`); to a float type rounded to nearest."""
    if target.is_float:
        return np.asarray(value).astype(target.numpy).item()
    if value != value:
        return 0
    info = np.iinfo(target.numpy)
    return int(min(max(value, info.min), info.max))


def simplify_expr(e: ir.Expr) -> ir.Expr:
    if isinstance(e, ir.Cast):
        # Constants fold into the computing types; a 16-bit store of one stays a conversion.
        if isinstance(e.value, ir.Const) and not e.dtype.storage_only:
            return ir.Const(cast_value(e.value.value, e.dtype), e.dtype)
        return e
    if not isinstance(e, ir.Apply):
        return e
    args = e.args
    if all(isinstance(a, ir.Const) for a in args):
        folded = ops.get(e.op).apply(*(np.asarray(a.value, e.dtype.numpy) for a in args))
        return ir.Const(folded.item(), e.dtype)
    if e.op == "identity":
        return args[0]
    if e.op == "mul":
        if _is_const(args[1], 1):
            return args[0]
        if _is_const(args[0], 1):
            return args[1]
    if e.op == "add":
        if _is_const(args[1], 0):
            return args[0]
        if _is_const(args[0], 0):
            return args[1]
    if e.op == "sub":
        if _is_const(args[1], 0):
            return args[0]
        if _is_const(args[0], 0):
            return ir.Apply("neg", (args[1],), e.dtype)
    if e.op == "div" and _is_const(args[1], 1):
        return args[0]
    if e.op == "neg" and isinstance(args[0], ir.Apply) and args[0].op == "neg":
        return args[0].args[0]
    return e


def run(stmt: ir.Stmt) -> ir.Stmt:
    return ir.map_stmt_exprs(stmt, simplify_expr)

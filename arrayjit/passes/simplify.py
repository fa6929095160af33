"""Simplification: constant folding and algebraic identities (`x*1`, `x+0`, `identity(x)`)."""

from __future__ import annotations

import numpy as np

from arrayjit import loop_ir as ir
from arrayjit import ops


def _is_const(e: ir.Expr, value: float) -> bool:
    return isinstance(e, ir.Const) and e.value == value


def simplify_expr(e: ir.Expr) -> ir.Expr:
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

"""Loop-invariant hoisting: a load or computation inside a loop that does not depend on the loop
is computed once, into a local declared just before the loop."""

from __future__ import annotations

import itertools
from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, iterators_of
from arrayjit.tnode import TNode

_names = itertools.count(1)


def _variant(
    e: ir.Expr, bound: set[Iterator], written: set[TNode], locals_: set[str], memo: dict
) -> bool:
    """Whether `e` may change between iterations of a loop that binds `bound` (its iterator and
    those of the loops inside it), writes `written` and assigns `locals_`."""
    key = id(e)
    if key in memo:
        return memo[key]
    if isinstance(e, ir.Get):
        result = (
            e.tnode in written
            or any(it in bound for i in e.index for it in ir.index_iterators(i))
            or any(_variant(v, bound, written, locals_, memo) for v in ir.dynamic_values(e.index))
        )
    elif isinstance(e, ir.Cast):
        result = _variant(e.value, bound, written, locals_, memo)
    elif isinstance(e, ir.IndexValue):
        result = any(it in bound for it in iterators_of(e.index))
    elif isinstance(e, ir.Local):
        result = e.name in locals_
    elif isinstance(e, ir.Const):
        result = False
    else:
        result = any([_variant(a, bound, written, locals_, memo) for a in e.args])
    memo[key] = result
    return result


def _hoist_loop(loop: ir.For) -> ir.Stmt:
    written = ir.written_tnodes(loop.body)
    bound = ir.bound_iterators(loop)
    locals_ = ir.declared_locals(loop.body) | ir.assigned_locals(loop.body)
    memo: dict = {}
    hoisted: dict[ir.Expr, str] = {}
    decls: list[ir.Stmt] = []

    def visit(e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.Const | ir.Local | ir.IndexValue):
            return e
        if not _variant(e, bound, written, locals_, memo):
            dtype = ir.expr_dtype(e)
            if e not in hoisted:
                hoisted[e] = f"h{next(_names)}"
                decls.append(ir.DeclLocal(hoisted[e], dtype, e))
            return ir.Local(hoisted[e], dtype)
        if isinstance(e, ir.Apply):
            return ir.Apply(e.op, tuple(visit(a) for a in e.args), e.dtype)
        if isinstance(e, ir.Cast):
            return ir.Cast(visit(e.value), e.dtype)
        if isinstance(e, ir.Get) and ir.is_dynamic(e.index):
            # The index read inside a gather may not depend on this loop.
            index = tuple(
                replace(i, value=visit(i.value)) if isinstance(i, ir.Dynamic) else i
                for i in e.index
            )
            return ir.Get(e.tnode, index)
        return e

    body = ir.map_root_exprs(loop.body, visit)
    if not decls:
        return loop
    return ir.block([*decls, ir.For(loop.iterator, loop.extent, body, loop.parallel)])


def run(stmt: ir.Stmt) -> ir.Stmt:
    """Hoist innermost loops first, so an invariant moves out as far as it can."""
    return ir.map_stmt(stmt, lambda s: _hoist_loop(s) if isinstance(s, ir.For) else s)

"""Loop-invariant hoisting: a load or computation inside a loop that does not depend on the loop
is computed once, into a local declared just before the loop."""

from __future__ import annotations

import itertools

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, iterators_of
from arrayjit.tnode import TNode

_names = itertools.count(1)


def _locals_assigned(s: ir.Stmt) -> set[str]:
    if isinstance(s, ir.For):
        return _locals_assigned(s.body)
    if isinstance(s, ir.Block):
        return set().union(*(_locals_assigned(x) for x in s.stmts)) if s.stmts else set()
    if isinstance(s, ir.DeclLocal | ir.SetLocal):
        return {s.name}
    return set()


def _bound_iterators(s: ir.Stmt) -> set[Iterator]:
    if isinstance(s, ir.For):
        return {s.iterator} | _bound_iterators(s.body)
    if isinstance(s, ir.Block):
        return set().union(*(_bound_iterators(x) for x in s.stmts)) if s.stmts else set()
    return set()


def _variant(
    e: ir.Expr, bound: set[Iterator], written: set[TNode], locals_: set[str], memo: dict
) -> bool:
    """Whether `e` may change between iterations of a loop that binds `bound` (its iterator and
    those of the loops inside it), writes `written` and assigns `locals_`."""
    key = id(e)
    if key in memo:
        return memo[key]
    if isinstance(e, ir.Get):
        result = e.tnode in written or any(it in bound for i in e.index for it in iterators_of(i))
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
    bound = _bound_iterators(loop)
    locals_ = _locals_assigned(loop.body)
    memo: dict = {}
    hoisted: dict[ir.Expr, str] = {}
    decls: list[ir.Stmt] = []

    def visit(e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.Const | ir.Local | ir.IndexValue):
            return e
        if not _variant(e, bound, written, locals_, memo):
            dtype = e.dtype if isinstance(e, ir.Apply) else e.tnode.dtype
            if e not in hoisted:
                hoisted[e] = f"h{next(_names)}"
                decls.append(ir.DeclLocal(hoisted[e], dtype, e))
            return ir.Local(hoisted[e], dtype)
        if isinstance(e, ir.Apply):
            return ir.Apply(e.op, tuple(visit(a) for a in e.args), e.dtype)
        return e

    body = _map_top_exprs(loop.body, visit)
    if not decls:
        return loop
    return ir.block([*decls, ir.For(loop.iterator, loop.extent, body, loop.parallel)])


def _map_top_exprs(s: ir.Stmt, f) -> ir.Stmt:
    """Apply `f` to the root expression of each statement (f recurses itself)."""
    if isinstance(s, ir.For):
        return ir.For(s.iterator, s.extent, _map_top_exprs(s.body, f), s.parallel)
    if isinstance(s, ir.Block):
        return ir.Block(tuple(_map_top_exprs(x, f) for x in s.stmts))
    if isinstance(s, ir.Set):
        return ir.Set(s.tnode, s.index, f(s.value))
    if isinstance(s, ir.DeclLocal):
        return ir.DeclLocal(s.name, s.dtype, f(s.init))
    if isinstance(s, ir.SetLocal):
        return ir.SetLocal(s.name, f(s.value))
    return s


def run(stmt: ir.Stmt) -> ir.Stmt:
    """Hoist innermost loops first, so an invariant moves out as far as it can."""
    if isinstance(stmt, ir.Block):
        return ir.block([run(s) for s in stmt.stmts])
    if isinstance(stmt, ir.For):
        inner = ir.For(stmt.iterator, stmt.extent, run(stmt.body), stmt.parallel)
        return _hoist_loop(inner)
    return stmt

"""Virtual-node inlining: a VIRTUAL buffer defined by one pointwise loop nest is never stored;
its defining expression is substituted where it is read.

A definition is inlinable when it is a perfect loop nest around a single `Set` whose index uses
each loop iterator once over the whole buffer. It is materialized instead (kept as a loop nest,
in a scratch buffer) when the buffer is written elsewhere, when a source of its expression is
overwritten before a later read, or when its expression calls an expensive function (`exp`,
`log`...) and a pointwise nest would compute it again and again: inside a loop whose iterator the
read's index does not use, around a loop whose iterator it uses (hoisting cannot lift it out of
that loop; `rstd[b]` read in `for d: for b:`, or `exp(s)[d]` in `for b: for d:`); or when a
product reads it so (a matrix product's operand) and other statements read it too, unless it
is a plain read (see `_recomputed`); or when
it reads several buffers of its own size and several statements read it: inlined, each of them
would load all of those (see `_cheaper_stored`; a residual stream `x + a` read by a layer norm's
stages and the next residual sum, which inlined down a deep model would sum every layer's output
again in each reader).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from arrayjit import loop_ir as ir
from arrayjit.indexing import Fixed, Index, Iterator, iterators_of, substitute
from arrayjit.schedule.cpu_loops import EXPENSIVE
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")


@dataclass(frozen=True)
class Definition:
    axes: tuple[Index, ...]  # the Set's index: iterators, or Fixed(0) on size-1 axes
    expr: ir.Expr
    stmt: ir.Stmt  # the (already substituted) defining nest, to materialize it if needed
    sources: frozenset[TNode]
    #: Whether the expression calls an expensive function (computing it again costs).
    costly: bool


def _as_definition(stmt: ir.Stmt) -> tuple[TNode, tuple[Index, ...], ir.Expr] | None:
    loops: dict[Iterator, int] = {}
    while isinstance(stmt, ir.For):
        loops[stmt.iterator] = stmt.extent
        stmt = stmt.body
    if not isinstance(stmt, ir.Set) or stmt.tnode.memory_mode is not MemoryMode.VIRTUAL:
        return None
    seen: set[Iterator] = set()
    for dim, idx in zip(stmt.tnode.dims, stmt.index, strict=True):
        if isinstance(idx, Fixed) and dim == 1:
            continue
        if not isinstance(idx, Iterator) or idx in seen or loops.get(idx) != dim:
            return None
        seen.add(idx)
    if seen != set(loops) or stmt.tnode in ir.read_tnodes(stmt):
        return None
    return stmt.tnode, stmt.index, stmt.value


def _inline(defs: dict[TNode, Definition]):
    def rewrite(e: ir.Expr) -> ir.Expr:
        if not isinstance(e, ir.Get) or e.tnode not in defs:
            return e
        d = defs[e.tnode]
        env = {ax: idx for ax, idx in zip(d.axes, e.index, strict=True) if isinstance(ax, Iterator)}

        def reindex(x: ir.Expr) -> ir.Expr:
            if isinstance(x, ir.Get):
                # A dynamic index's value was reindexed already (map_expr visits it first).
                index = tuple(
                    i if isinstance(i, ir.Dynamic) else substitute(i, env) for i in x.index
                )
                return ir.Get(x.tnode, index)
            if isinstance(x, ir.IndexValue):
                return ir.IndexValue(substitute(x.index, env), x.dtype)
            return x

        return ir.map_expr(d.expr, reindex)

    return rewrite


def _accumulates(s: ir.Stmt) -> bool:
    """Whether `s` reduces (into a local, or into a buffer it reads at the cell it writes)."""
    for x in ir.walk(s):
        if isinstance(x, ir.SetLocal):
            return True
        if isinstance(x, ir.Set) and any(
            isinstance(e, ir.Get) and e.tnode is x.tnode and e.index == x.index
            for e in ir.walk_expr(x.value)
        ):
            return True
    return False


def _broadcast_reads(s: ir.Stmt, defs: dict[TNode, Definition]) -> set[TNode]:
    """The definitions that `s` reads inside a loop its index does not use, around a loop its
    index uses: inlined, they would be computed once per iteration of that loop."""
    found: set[TNode] = set()
    for x, loops in ir.walk_in_loops(s):
        for root in ir.root_exprs(x):
            for e in ir.walk_expr(root):
                if not (isinstance(e, ir.Get) and e.tnode in defs) or e.tnode in found:
                    continue
                used = {it for idx in e.index for it in iterators_of(idx)}
                depth = max((k for k, loop in enumerate(loops) if loop.iterator in used), default=0)
                if any(loop.iterator not in used and loop.extent > 1 for loop in loops[:depth]):
                    found.add(e.tnode)
    return found


def _recomputed(s: ir.Stmt, defs: dict[TNode, Definition], readers: dict[TNode, int]):
    """The definitions `s` would compute again and again (see `_broadcast_reads`) where that
    costs more than storing them: costly ones (`exp`) in a pointwise nest; in a product (a
    reduction reading them so: a matrix product's operand), any that computes something and
    that other statements read too. A product's schedule computes an operand expression once
    per tile or packing, but a stored operand is copied to its tiles asynchronously (CUDA's
    cp.async) and in vectors, which an expression is not: a layer norm's output inlined into
    the weight gradients of the three projections made each 3.5x slower on an H100. Read by the
    product alone, it is inlined (no pass over memory to store it)."""
    if not defs:
        return set()
    if not _accumulates(s):
        return {v for v in _broadcast_reads(s, defs) if defs[v].costly}
    return {
        v
        for v in _broadcast_reads(s, defs)
        if readers.get(v, 0) > 1 and not isinstance(_uncast(defs[v].expr), ir.Get | ir.Const)
    }


def _uncast(e: ir.Expr) -> ir.Expr:
    while isinstance(e, ir.Cast):
        e = e.value
    return e


def _reads(s: ir.Stmt) -> dict[TNode, int]:
    """How many reads of each buffer the text of `s` holds."""
    counts: dict[TNode, int] = {}
    for x in ir.walk(s):
        for root in ir.root_exprs(x):
            for e in ir.walk_expr(root):
                if isinstance(e, ir.Get):
                    counts[e.tnode] = counts.get(e.tnode, 0) + 1
    return counts


def _cheaper_stored(v: TNode, expr: ir.Expr, readers: int) -> bool:
    """Whether storing `v` once moves fewer values than inlining `expr` into its `readers`
    reads: with `loads` distinct reads of buffers at least as large as `v` (smaller ones, a bias
    or a row statistic, stay in caches), inlining loads `readers * loads` values where storing
    loads `loads`, writes one and reads it `readers` times."""
    loads = {e for e in ir.walk_expr(expr) if isinstance(e, ir.Get) and e.tnode.size >= v.size}
    return (readers - 1) * (len(loads) - 1) > 2


def run(stmt: ir.Stmt) -> ir.Stmt:
    top = list(stmt.stmts) if isinstance(stmt, ir.Block) else [stmt]
    virtual_writes: dict[TNode, int] = {}
    last_read: dict[TNode, int] = {}
    reads: dict[TNode, int] = {}  # reads in the statements' text
    readers: dict[TNode, int] = {}  # statements reading
    for pos, s in enumerate(top):
        for t in ir.written_tnodes(s):
            virtual_writes[t] = virtual_writes.get(t, 0) + 1
        for t, n in _reads(s).items():
            last_read[t] = pos
            reads[t] = reads.get(t, 0) + n
            readers[t] = readers.get(t, 0) + 1

    for t in last_read:
        if t.memory_mode is MemoryMode.VIRTUAL and t not in virtual_writes:
            raise ValueError(
                f"virtual buffer {t.label!r} is read but never computed in this code: include "
                "the code that computes it"
            )
    defs: dict[TNode, Definition] = {}
    out: list[ir.Stmt] = []
    for pos, s in enumerate(top):
        # A source about to be overwritten: materialize the definitions read from here on, before
        # inlining, so that `s` itself reads the stored values and not its own partial writes.
        written = ir.written_tnodes(s)
        for v, d in list(defs.items()):
            if d.sources & written:
                del defs[v]
                if last_read.get(v, -1) >= pos:
                    log.info(
                        "virtual %s materialized: a source is overwritten before a read", v.label
                    )
                    out.append(d.stmt)
        for v in _recomputed(s, defs, readers):
            log.info("virtual %s materialized: inlined, it would be computed again", v.label)
            out.append(defs.pop(v).stmt)
        s = ir.map_stmt_exprs(s, _inline(defs)) if defs else s
        found = _as_definition(s)
        if found is not None and virtual_writes[found[0]] == 1:
            v, axes, expr = found
            if _cheaper_stored(v, expr, reads.get(v, 0)):
                log.info(
                    "virtual %s materialized: cheaper stored than loaded by each reader", v.label
                )
                out.append(s)
                continue
            sources = frozenset(e.tnode for e in ir.walk_expr(expr) if isinstance(e, ir.Get))
            costly = any(isinstance(e, ir.Apply) and e.op in EXPENSIVE for e in ir.walk_expr(expr))
            defs[v] = Definition(axes, expr, s, sources, costly)
            continue
        for t in written:
            if t.memory_mode is MemoryMode.VIRTUAL:
                log.info("virtual %s materialized: not a single pointwise definition", t.label)
        out.append(s)
    return ir.block(out)

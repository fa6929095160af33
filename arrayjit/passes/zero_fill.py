"""Zero fills folded into the next writer: a nest that fills a buffer with zeros, followed (with
nothing touching the buffer in between) by a nest that writes every cell of it once and reads it
only at the cell it is about to write, reads zeros there. Those reads become the constant 0 (which
simplification then folds: `0 + v` is `v`), and the fill, whose zeros nothing reads any more, is
dropped.

Backpropagation zeroes every gradient and then accumulates into it (`g =+ ...`): the first
accumulation into each gradient is such a writer, so the pass saves a pass over memory (on a GPU
a kernel) per gradient, and the product computing a weight's gradient starts from 0 instead of
reading the zeros. The stored values are the same, except that a cell whose first value is -0.0
keeps it where `0.0 + -0.0` gave +0.0 (equal values).
"""

from __future__ import annotations

from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Fixed, Iterator
from arrayjit.tnode import TNode


def run(stmt: ir.Stmt) -> ir.Stmt:
    stmts = _top_level(stmt)
    changed = False
    for at, s in enumerate(stmts):
        target = _zero_fill(s)
        if target is None:
            continue
        later = next((k for k in range(at + 1, len(stmts)) if target in _touched(stmts[k])), None)
        if later is None:
            continue
        folded = _fold(stmts[later], target)
        if folded is not None:
            stmts[at] = ir.Comment(f"zeros of {target.label} folded into their first writer")
            stmts[later] = folded
            changed = True
    return ir.block(stmts) if changed else stmt


def _top_level(stmt: ir.Stmt) -> list[ir.Stmt]:
    if isinstance(stmt, ir.Block):
        return [t for s in stmt.stmts for t in _top_level(s)]
    return [stmt]


def _touched(s: ir.Stmt) -> set[TNode]:
    return ir.read_tnodes(s) | ir.written_tnodes(s)


def _loops(s: ir.Stmt) -> tuple[dict[Iterator, int], ir.Stmt]:
    """The directly nested loops at the top of `s` (iterator -> extent) and what they hold."""
    loops: dict[Iterator, int] = {}
    while isinstance(s, ir.For):
        loops[s.iterator] = s.extent
        s = s.body
    return loops, s


def _zero_fill(s: ir.Stmt) -> TNode | None:
    """The buffer `s` fills with zeros, every cell of it, or None."""
    loops, body = _loops(s)
    if (
        isinstance(body, ir.Set)
        and body.value == ir.Const(0.0, body.tnode.dtype)
        and _covers(body.tnode, body.index, loops)
    ):
        return body.tnode
    return None


def _covers(tnode: TNode, index: tuple, extents: dict[Iterator, int]) -> bool:
    """Whether `index`, over iterators of `extents`, reaches every cell of `tnode` once."""
    seen: set[Iterator] = set()
    for dim, idx in zip(tnode.dims, index, strict=True):
        if isinstance(idx, Fixed) and idx.value == 0 and dim == 1:
            continue
        if not isinstance(idx, Iterator) or idx in seen or extents.get(idx) != dim:
            return False
        seen.add(idx)
    return len(seen) == len(extents)


def _fold(s: ir.Stmt, target: TNode) -> ir.Stmt | None:
    """`s` with its reads of `target` made 0, if `s` writes every cell of `target` once and
    reads it only at that cell before writing it; else None."""
    loops, body = _loops(s)
    cell = list(body.stmts) if isinstance(body, ir.Block) else [body]
    writes = [k for k, t in enumerate(cell) if target in ir.written_tnodes(t)]
    if len(writes) != 1:
        return None
    store = cell[writes[0]]
    if not (isinstance(store, ir.Set) and store.tnode is target):
        return None
    if not _covers(target, store.index, loops):
        return None
    if any(target in ir.read_tnodes(t) for t in cell[writes[0] + 1 :]):
        return None  # read after the write: not the zeros
    reads = [
        e
        for t in cell[: writes[0] + 1]
        for e in ir.stmt_exprs(t)
        if isinstance(e, ir.Get) and e.tnode is target
    ]
    if any(get.index != store.index for get in reads):
        return None
    zero = ir.Const(0.0, target.dtype)

    def clear(e: ir.Expr) -> ir.Expr:
        return zero if isinstance(e, ir.Get) and e.tnode is target else e

    new_cell = [ir.map_stmt_exprs(t, clear) for t in cell[: writes[0] + 1]]
    new_body = ir.block([*new_cell, *cell[writes[0] + 1 :]])
    return _rewrap(s, new_body)


def _rewrap(s: ir.Stmt, body: ir.Stmt) -> ir.Stmt:
    """`s`'s loops around `body`."""
    return replace(s, body=_rewrap(s.body, body)) if isinstance(s, ir.For) else body

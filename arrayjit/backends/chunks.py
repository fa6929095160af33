"""Chunks: a routine split into pieces that are printed, compiled and cached separately.

A chunk is one top-level loop nest of the optimized IR (with the hoisted locals declared before
it), so the compiler works on many small functions instead of one that grows with the model, and
the layers of a model, identical code over different buffers, print to identical chunk functions
that compile once. A chunk takes its buffers as parameters, in the order they first appear in it.
A local declared at top level stays in one chunk with every statement that reads or assigns it.
"""

from __future__ import annotations

from dataclasses import dataclass

from arrayjit import loop_ir as ir
from arrayjit.tnode import TNode


@dataclass(frozen=True, eq=False)
class Chunk:
    stmt: ir.Stmt
    #: Its buffers, in order of first appearance: the parameters of its function.
    tnodes: tuple[TNode, ...]


def _locals_used(s: ir.Stmt) -> set[str]:
    read = {e.name for e in ir.stmt_exprs(s) if isinstance(e, ir.Local)}
    return read | ir.assigned_locals(s)


def split(stmt: ir.Stmt) -> list[Chunk]:
    """The chunks of a routine, in execution order. Comments are left out."""
    top = [
        s
        for s in (stmt.stmts if isinstance(stmt, ir.Block) else (stmt,))
        if not isinstance(s, ir.Comment)
    ]
    # The last top-level statement that uses each local declared at top level.
    last_use: dict[str, int] = {}
    declared_at: dict[str, int] = {}
    for pos, s in enumerate(top):
        if isinstance(s, ir.DeclLocal):
            declared_at[s.name] = pos
        for name in _locals_used(s):
            if name in declared_at:
                last_use[name] = pos
    chunks = []
    start = 0
    while start < len(top):
        end = start
        pos = start
        while pos <= end:
            s = top[pos]
            if isinstance(s, ir.DeclLocal):
                end = max(end, last_use.get(s.name, pos))
            pos += 1
        body = ir.block(top[start : end + 1])
        chunks.append(Chunk(body, tuple(ir.tnodes_in(body))))
        start = end + 1
    return chunks

"""Fusion at the user level: which tensors a routine computes without storing them.

An intermediate of a routine is a tensor whose values the routine computes and then uses to
compute another tensor of the same routine. Unless something outside the routine can read it,
it gets a value buffer private to the routine, VIRTUAL: arrayjit's virtual inlining then
computes it inside the loops that read it (a chain of pointwise operations, a bias and its
activation become one loop), or in a scratch buffer when it cannot be inlined (a reduction).

Stored, and readable with `t.value` after the routine runs, are: the tensors nothing else in the
routine uses (its results: `t` in `ctx.forward(t)`, the loss of a training step), parameters,
optimizer state, gradients, tensors the user holds when the routine is compiled (a variable, a
list, an attribute: any reference besides the graph's own, see `_held`), tensors marked with
`t.keep()`, tensors another routine of the same `Context` reads, tensors of generated code
(random initialisation), tensors the routine reads before it writes them (values carried
from run to run), and the tables, ids and results of gathers (`oc.embed`).
"""

from __future__ import annotations

import sys
from collections.abc import Set
from typing import TYPE_CHECKING

from arrayjit.tnode import MemoryMode, TNode
from ocannl_py import shape
from ocannl_py.code import Assign, Code, Fill, Raw

if TYPE_CHECKING:
    from ocannl_py.tensor import Tensor

_generation = 0


def generation() -> int:
    """A counter that changes whenever a tensor becomes kept; a routine compiled at another
    generation checks whether it still may fuse what it fused."""
    return _generation


def changed() -> None:
    global _generation
    _generation += 1


def fused(code: Code, read_elsewhere: Set[int]) -> list[Tensor]:
    """The intermediates of `code` (see the module's docstring) that nothing outside it reads;
    `read_elsewhere` holds the ids of tensors other routines read."""
    written = code.written()
    computed = [t for t in code.tensors() if t.id in written]
    consumed = {o.id for t in computed for o in t.operands}
    clean = _written_first(code)
    # A gather or scatter (`oc.embed`) indexes by data: its tensors stay stored.
    looked_up = {
        t.id
        for stmt in code.statements
        if isinstance(stmt, Assign) and stmt.lookup is not None
        for t in (stmt.lhs.tensor, *(r.tensor for r in stmt.rhses))
    }
    candidates = [
        t
        for t in computed
        if t.id in consumed
        and t.id in clean
        and t.id not in looked_up
        and t.id not in read_elsewhere
        and t.memory_mode is MemoryMode.HOST
        and not (t.is_param or t.init_code or t.kept)
    ]
    del computed
    held = _held(candidates)
    return [t for t in candidates if t.id not in held]


def _held(candidates: list[Tensor]) -> set[int]:
    """Ids of the tensors referenced from outside the graph: the references to a tensor that
    its graph holds (operand tuples, code slots) are counted in `graph_refs`, so any others
    (beyond `candidates` itself, the loop variable and `getrefcount`'s argument here) belong to
    the user, or to something that may read it. Where reference counts are not exact (not
    CPython), every candidate is held."""
    if not hasattr(sys, "getrefcount") or sys.implementation.name != "cpython":
        return {t.id for t in candidates}
    return {t.id for t in candidates if sys.getrefcount(t) - 3 > t.graph_refs}


def values_read(code: Code) -> list[Tensor]:
    """The tensors whose values `code` reads but never writes (a gradient written does not
    count): another routine computes them, so they must be stored there."""
    read: dict[int, Tensor] = {}
    written: set[int] = set()
    for stmt in code.statements:
        if isinstance(stmt, Raw):
            written.update(t.id for t in stmt.tensors)
            continue
        if isinstance(stmt, Assign):
            read.update((r.tensor.id, r.tensor) for r in stmt.rhses if not r.grad)
        if not stmt.lhs.grad:
            written.add(stmt.lhs.tensor.id)
    return [t for i, t in read.items() if i not in written]


def private_values(code: Code, tensors: list[Tensor]) -> dict[int, TNode]:
    """Tensor id -> a virtual value buffer of one routine, in place of the tensor's own, for
    `tensors` of `code` (whose shapes are closed together first)."""
    shape.close([t.shape for t in code.tensors()])
    nodes = {}
    for t in tensors:
        own = t.value_node
        nodes[t.id] = TNode(t.label, own.dims, own.dtype, MemoryMode.VIRTUAL)
    return nodes


def _written_first(code: Code) -> set[int]:
    """Ids of the tensors whose values `code` overwrites (`=:`, a fill) before any read of them,
    outside generated code."""
    seen: set[int] = set()
    clean: set[int] = set()
    for stmt in code.statements:
        if isinstance(stmt, Raw):
            seen.update(t.id for t in stmt.tensors)
            continue
        if isinstance(stmt, Assign):
            seen.update(r.tensor.id for r in stmt.rhses if not r.grad)
        if stmt.lhs.grad or stmt.lhs.tensor.id in seen:
            continue
        seen.add(stmt.lhs.tensor.id)
        overwrites = isinstance(stmt, Fill) or stmt.accum is None or stmt.zero_first
        if overwrites:
            clean.add(stmt.lhs.tensor.id)
    return clean

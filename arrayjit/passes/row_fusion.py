"""Row fusion: consecutive loop nests over the same rows, each later one reading what the earlier
ones computed only at its own row, become one nest whose body runs the row's stages in order.

Softmax over rows lowers to three nests (the row's max, the sum of `exp(x - max)`, the divide),
layer norm to three or four; each is its own pass over memory, and on a GPU its own kernel. A
*row* is one iteration of the outermost parallel loops the nests share (same extents, in the same
order). A nest is a *stage* when, below those loops, it is either

- a reduction to the row (`acc := init; for ...: acc := op(acc, term); out[row] := acc`) whose
  terms read the row's own data or data common to all rows (a bias along the row): a read that
  moves with the reduction and with some row loops but not all is a matrix product's operand
  (`b[k, j]` under rows `i, j`), and the nest is not a stage; nor is a matrix-vector product
  (the row times values common to every row, `w[i, j] * x[j]`, left to the product schedules),
  nor a reduction whose row is not contiguous in memory along its innermost loop (a column); or
- pointwise over the row (parallel loops around one store, nothing accumulated).

A group is a run of stages, each after the first reading something an earlier one writes, with
at least one reduction, where every buffer that two stages touch (and one writes) is accessed at
the row on the same axes: so rows touch disjoint cells, and running row by row keeps every
dependence of running nest by nest. A value of one row (the max, the sum) that nothing outside
the group reads, in a buffer private to the routine (VIRTUAL or LOCAL), becomes a local of the
row: a register, never memory.

The grouped nest is chosen from the loop nest alone (not from op names): softmax, log-softmax,
layer norm, RMS norm and their backward passes where they have this shape. Backends see an
ordinary nest; the CUDA backend runs it as one kernel with a team of threads per row
(`arrayjit.schedule.gpu_rows`), the C backend as one loop over rows with the stages inside.
Long rows of few rows are left alone: one team per row would leave most of a GPU idle.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

from arrayjit import loop_ir as ir
from arrayjit.indexing import Fixed, Iterator, as_affine
from arrayjit.schedule.gpu_reductions import reduction_shape
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")

#: Rows longer than this (values per row of a stage) are fused only when there are many rows.
MAX_ROW_LENGTH = 16384
MANY_ROWS = 1024

_names = itertools.count(1)


@dataclass
class _Nest:
    """A top-level nest: its outermost parallel loops and what runs inside them."""

    stmt: ir.Stmt
    loops: list[ir.For]

    def body(self, depth: int) -> ir.Stmt:
        return self.loops[depth - 1].body

    def extents(self) -> list[int]:
        return [loop.extent for loop in self.loops]


def _nest(s: ir.Stmt) -> _Nest | None:
    loops: list[ir.For] = []
    node = s
    while isinstance(node, ir.For) and node.parallel:
        loops.append(node)
        node = node.body
    return _Nest(s, loops) if loops else None


def _items(s: ir.Stmt) -> list[ir.Stmt]:
    stmts = s.stmts if isinstance(s, ir.Block) else (s,)
    return [x for x in stmts if not isinstance(x, ir.Comment)]


def _stage_kind(body: ir.Stmt, rows: list[Iterator]) -> str | None:
    """ "reduction", "pointwise" or None (not a stage) for what runs per row."""
    if any(isinstance(x, ir.Matmul | ir.If) for x in ir.walk(body)):
        return None
    shape = reduction_shape(_items(body))
    if shape is not None:
        moving = {loop.iterator for loop in shape.loops}
        for e in ir.walk_expr(shape.value):
            if not isinstance(e, ir.Get):
                continue
            its = {it for i in e.index for it in ir.index_iterators(i)}
            if its & moving and its & set(rows) and not set(rows) <= its:
                return None  # shared by some rows and not others: a product's operand
            if its & set(rows) and shape.innermost in its and _stride(e, shape.innermost) != 1:
                return None  # the row is not contiguous (a column): left to other forms
        if _matrix_vector(shape.value, moving, set(rows)):
            return None
        return "reduction"
    node = body
    while isinstance(node, ir.For) and node.parallel:
        node = node.body
    if isinstance(node, ir.Set):
        return "pointwise"
    return None


def _moving_reads(e: ir.Expr, moving: set[Iterator]) -> list[set[Iterator]]:
    """The iterators of each read in `e` that moves with the reduction."""
    found = []
    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            its = {it for i in x.index for it in ir.index_iterators(i)}
            if its & moving:
                found.append(its)
    return found


def _matrix_vector(value: ir.Expr, moving: set[Iterator], rows: set[Iterator]) -> bool:
    """Whether the term multiplies the row by values common to every row (`w[i, j] * x[j]`):
    a matrix-vector product, left to the product schedules."""
    for e in ir.walk_expr(value):
        if not (isinstance(e, ir.Apply) and e.op == "mul"):
            continue
        reads = [_moving_reads(a, moving) for a in e.args]
        common = any(r and not any(its & rows for its in r) for r in reads)
        own = any(any(its & rows for its in r) for r in reads)
        if common and own:
            return True
    return False


def _stride(get: ir.Get, it: Iterator) -> int | None:
    """The stride of `it` in `get`'s row-major offset (None where a dynamic index uses it)."""
    if any(isinstance(i, ir.Dynamic) and it in ir.index_iterators(i) for i in get.index):
        return None
    offset, _ = ir.split_offset(get.tnode.dims, get.index)
    terms, _ = as_affine(offset)
    return sum(c for c, term in terms if term == it)


def _row_length(body: ir.Stmt) -> int:
    """Values one row of the stage goes through (the extents of its loops)."""
    loops = [x for x in ir.walk(body) if isinstance(x, ir.For)]
    return math.prod(loop.extent for loop in loops) if loops else 1


def _accesses(s: ir.Stmt) -> list[tuple[TNode, tuple[ir.AxisIndex, ...]]]:
    out = []
    for x in ir.walk(s):
        if isinstance(x, ir.Set):
            out.append((x.tnode, x.index))
        for root in ir.root_exprs(x):
            out += [(e.tnode, e.index) for e in ir.walk_expr(root) if isinstance(e, ir.Get)]
    return out


def _row_axes(index: tuple[ir.AxisIndex, ...], rows: list[Iterator]) -> tuple[int, ...] | None:
    """The axis of each row iterator in `index` (where it is the whole index), or None."""
    axes = []
    for it in rows:
        found = [k for k, i in enumerate(index) if i == it]
        if len(found) != 1:
            return None
        axes.append(found[0])
    return tuple(axes)


def _separated(bodies: list[ir.Stmt], rows: list[Iterator]) -> bool:
    """Whether every buffer that two of `bodies` touch, one writing it, is accessed at the row
    on the same axes everywhere (rows touch disjoint cells of it)."""
    written = [ir.written_tnodes(b) for b in bodies]
    touched = [{t for t, _ in _accesses(b)} for b in bodies]
    shared = {
        t
        for k, w in enumerate(written)
        for t in w
        if any(t in touched[j] for j in range(len(bodies)) if j != k)
    }
    for t in shared:
        axes = {_row_axes(index, rows) for b in bodies for u, index in _accesses(b) if u is t}
        if len(axes) != 1 or None in axes:
            return False
    return True


@dataclass
class _Group:
    rows: list[ir.For]  # the row loops (the first member's)
    bodies: list[ir.Stmt]  # each member's body below the row loops, its iterators renamed
    kinds: list[str]
    members: list[ir.Stmt]

    @property
    def iterators(self) -> list[Iterator]:
        return [loop.iterator for loop in self.rows]


def _member(group: _Group | None, nest: _Nest) -> _Group | None:
    """`group` with `nest` added (a new group of one when `group` is None), or None."""
    if group is None:
        depth = len(nest.loops)
        while depth:
            rows = [loop.iterator for loop in nest.loops[:depth]]
            kind = _stage_kind(nest.body(depth), rows)
            if kind is not None:
                return _Group(nest.loops[:depth], [nest.body(depth)], [kind], [nest.stmt])
            depth -= 1
        return None
    extents = nest.extents()
    depth = 0
    while depth < min(len(extents), len(group.rows)) and extents[depth] == group.rows[depth].extent:
        depth += 1
    while depth:
        rows = group.iterators[:depth]
        env = {loop.iterator: it for loop, it in zip(nest.loops, rows, strict=False)}
        body = ir.substitute_iterators(nest.body(depth), env)
        # The earlier members' bodies below `depth` row loops: the rest become their loops.
        earlier = [_below(group, k, depth) for k in range(len(group.bodies))]
        kinds = [_stage_kind(b, rows) for b in earlier]
        kind = _stage_kind(body, rows)
        written = set().union(*(ir.written_tnodes(b) for b in earlier))
        if (
            kind is not None
            and None not in kinds
            and ir.read_tnodes(body) & written
            and _separated([*earlier, body], rows)
        ):
            return _Group(
                group.rows[:depth], [*earlier, body], [*kinds, kind], [*group.members, nest.stmt]
            )
        depth -= 1
    return None


def _below(group: _Group, k: int, depth: int) -> ir.Stmt:
    """Member `k`'s body below its first `depth` row loops."""
    body = group.bodies[k]
    for loop in reversed(group.rows[depth:]):
        body = ir.For(loop.iterator, loop.extent, body, parallel=True)
    return body


def _worth_it(group: _Group) -> bool:
    if len(group.bodies) < 2 or "reduction" not in group.kinds:
        return False
    rows = math.prod(loop.extent for loop in group.rows)
    length = max(_row_length(b) for b in group.bodies)
    return length <= MAX_ROW_LENGTH or rows >= MANY_ROWS


def _fused(group: _Group, elsewhere: set[TNode]) -> ir.Stmt:
    """The group as one nest, with the row values nothing else reads made locals."""
    body = ir.block(group.bodies)
    rows = group.iterators
    for t in _row_values(body, rows, elsewhere):
        body = _localized(body, t, f"row{next(_names)}")
    for loop in reversed(group.rows):
        body = ir.For(loop.iterator, loop.extent, body, parallel=True)
    return body


def _row_values(body: ir.Stmt, rows: list[Iterator], elsewhere: set[TNode]) -> list[TNode]:
    """Private buffers of one value per row, stored once at the row level of `body` and read
    only inside it, at the row."""
    top = _items(body)
    found = []
    for s in top:
        if not isinstance(s, ir.Set):
            continue
        t = s.tnode
        if (
            t in elsewhere
            or t.memory_mode not in (MemoryMode.VIRTUAL, MemoryMode.LOCAL)
            or t.dtype.storage_only
            or _row_axes(s.index, rows) is None
            or t.size != _cells(s.index, t, rows)
        ):
            continue
        before = ir.Block(tuple(top[: top.index(s)]))
        stores = [x for x in ir.walk(body) if isinstance(x, ir.Set) and x.tnode is t]
        if (
            len(stores) == 1
            and t not in ir.read_tnodes(before) | ir.read_tnodes(s)
            and all(index == s.index for u, index in _accesses(body) if u is t)
        ):
            found.append(t)
    return found


def _cells(index: tuple[ir.AxisIndex, ...], t: TNode, rows: list[Iterator]) -> int:
    """The cells of `t` the rows cover through `index` (0 unless the other axes are fixed at 0
    of size-1 axes, so that the rows cover the whole buffer)."""
    axes = _row_axes(index, rows)
    for k, (i, dim) in enumerate(zip(index, t.dims, strict=True)):
        if k not in axes and not (isinstance(i, Fixed) and i.value == 0 and dim == 1):
            return 0
    return math.prod(t.dims[k] for k in axes)


def _localized(body: ir.Stmt, t: TNode, name: str) -> ir.Stmt:
    dtype = t.dtype

    def expr(e: ir.Expr) -> ir.Expr:
        return ir.Local(name, dtype) if isinstance(e, ir.Get) and e.tnode is t else e

    def stmt(s: ir.Stmt) -> ir.Stmt:
        if isinstance(s, ir.Set) and s.tnode is t:
            return ir.DeclLocal(name, dtype, s.value)
        return s

    return ir.map_stmt(ir.map_stmt_exprs(body, expr), stmt)


def run(stmt: ir.Stmt) -> ir.Stmt:
    top = list(stmt.stmts) if isinstance(stmt, ir.Block) else [stmt]
    out: list[ir.Stmt] = []
    k = 0
    while k < len(top):
        nest = _nest(top[k])
        group = _member(None, nest) if nest is not None else None
        end = k + 1
        while group is not None and end < len(top):
            if isinstance(top[end], ir.Comment):
                end += 1
                continue
            following = _nest(top[end])
            grown = _member(group, following) if following is not None else None
            if grown is None:
                break
            group = grown
            end += 1
        while end > k + 1 and isinstance(top[end - 1], ir.Comment):
            end -= 1
        if group is None or not _worth_it(group):
            out.append(top[k])
            k += 1
            continue
        elsewhere = {
            t
            for j, s in enumerate(top)
            if not k <= j < end
            for t in (*ir.written_tnodes(s), *ir.read_tnodes(s))
        }
        log.info("row fusion: %d nests over the same rows as one", len(group.bodies))
        out.append(_fused(group, elsewhere))
        k = end
    return ir.block(out)

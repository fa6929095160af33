"""How loop nests run on a GPU: which top-level statements become which kernels, which loops go
onto the grid, and which nests get the shared-memory tiled matrix-product kernel.

Each top-level loop nest of a routine becomes one kernel. The outermost run of parallel loops of
a nest is flattened onto the grid; the loops inside it (reductions, with their register
accumulator) stay inside the thread. A nest shaped like a matrix product (`acc = acc op f(x[.., i,
k], y[.., k, j])` over an innermost reduction `k`, under parallel `i, j`) gets the tiled kernel.
Statements that are not parallel loops run in a kernel of one thread. Hoisted locals that several
kernels read are recomputed at the start of each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, iterators_of

log = logging.getLogger("arrayjit")

THREADS = 256
#: The grid-stride loop caps the grid at this many blocks.
MAX_BLOCKS = 1 << 20
TILE = 128  # rows and columns of the output tile of one block of the tiled kernel
TILE_K = 8  # reduction steps per shared-memory tile
SUB = 8  # rows (and columns) of the output computed by one thread: TILE / 16


@dataclass
class MatmulShape:
    """A nest `acc = acc op f(x, y)` over reduction `k`, with x free of `j` and y free of `i`."""

    batch: list[ir.For]
    row: ir.For
    col: ir.For
    reduction: ir.For
    acc: ir.DeclLocal
    update: ir.Apply  # op(Local acc, combine(x, y))
    x: ir.Expr
    y: ir.Expr
    store: ir.Set


@dataclass
class KernelPlan:
    """One kernel: the loops flattened onto the grid (none: one thread), the statements each
    thread runs, and the hoisted locals it recomputes first."""

    grid: list[ir.For]
    body: list[ir.Stmt]
    prologue: list[ir.DeclLocal] = field(default_factory=list)
    matmul: MatmulShape | None = None

    @property
    def cells(self) -> int:
        return math.prod(loop.extent for loop in self.grid)


def _top_level(stmt: ir.Stmt) -> list[ir.Stmt]:
    stmts = stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)
    return [s for s in stmts if not isinstance(s, ir.Comment)]


def _read_locals(stmts: Sequence[ir.Stmt]) -> set[str]:
    """The locals that `stmts` read or assign."""
    block = ir.Block(tuple(stmts))
    return ir.read_locals(block) | ir.assigned_locals(block)


def _grid_run(loop: ir.For, mutated: set[str]) -> tuple[list[ir.For], list[ir.Stmt]]:
    """The outermost run of parallel loops of a nest, and what each grid cell runs. A hoisted
    local between two parallel loops moves into the thread (it depends on outer loops only)."""
    loops: list[ir.For] = []
    decls: list[ir.Stmt] = []
    node = loop
    while True:
        loops.append(node)
        body = node.body
        if isinstance(body, ir.For) and body.parallel:
            node = body
            continue
        items = _top_level(body)
        if (
            len(items) > 1
            and isinstance(items[-1], ir.For)
            and items[-1].parallel
            and all(isinstance(s, ir.DeclLocal) and s.name not in mutated for s in items[:-1])
        ):
            decls.extend(items[:-1])
            node = items[-1]
            continue
        return loops, [*decls, *items]


def plan_kernels(stmt: ir.Stmt) -> list[KernelPlan]:
    """Split a routine into kernels: see the module docstring."""
    mutated = ir.assigned_locals(stmt)
    # Locals declared once at top level, never reassigned: recomputed by each kernel reading them.
    shared: dict[str, ir.DeclLocal] = {}
    # Each plan with the shared locals valid where it starts.
    plans: list[tuple[KernelPlan, dict[str, ir.DeclLocal]]] = []
    serial: list[ir.Stmt] = []

    for s in _top_level(stmt):
        if (
            isinstance(s, ir.DeclLocal)
            and s.name not in mutated
            and _read_locals([s]) <= set(shared)
        ):
            shared[s.name] = s
            if serial:
                serial.append(s)  # later statements of the same one-thread kernel read it here
            continue
        if isinstance(s, ir.For) and s.parallel and not (_read_locals([s]) & _declared_in(serial)):
            serial = []
            grid, body = _grid_run(s, mutated)
            plans.append((KernelPlan(grid, body), dict(shared)))
        else:
            if not serial:
                plans.append((KernelPlan([], serial), dict(shared)))
            serial.append(s)
        # A shared local whose buffers this statement writes would be stale in later kernels.
        written = ir.written_tnodes(s)
        for name, decl in list(shared.items()):
            if ir.read_tnodes(decl) & written:
                del shared[name]

    for plan, available in plans:
        needed = _read_locals(plan.body) - _declared_in(plan.body)
        closure = _closure(needed, available)
        if closure is None:
            log.debug("a local crosses kernels: the routine runs as one thread")
            return [KernelPlan([], _top_level(stmt))]
        plan.prologue = [d for d in available.values() if d.name in closure]
        plan.matmul = _matmul_shape(plan)
    return [plan for plan, _ in plans]


def _declared_in(stmts: list[ir.Stmt]) -> set[str]:
    return ir.declared_locals(ir.Block(tuple(stmts)))


def _closure(names: set[str], shared: dict[str, ir.DeclLocal]) -> set[str] | None:
    """`names` and the shared locals their definitions read; None if one is not shared."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        if name not in shared:
            return None
        out.add(name)
        todo.extend(_read_locals([shared[name]]))
    return out


def _expr_iterators(e: ir.Expr) -> set[Iterator]:
    out: set[Iterator] = set()
    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            out.update(it for idx in x.index for it in iterators_of(idx))
        elif isinstance(x, ir.IndexValue):
            out.update(iterators_of(x.index))
    return out


def _has_local(e: ir.Expr) -> bool:
    return any(isinstance(x, ir.Local) for x in ir.walk_expr(e))


def _matmul_shape(plan: KernelPlan) -> MatmulShape | None:
    """Recognize the nest that the tiled kernel computes; None for anything else."""
    if len(plan.grid) < 2 or plan.prologue or len(plan.body) != 3:
        return None
    decl, loop, store = plan.body
    if not (
        isinstance(decl, ir.DeclLocal)
        and isinstance(loop, ir.For)
        and not loop.parallel
        and isinstance(loop.body, ir.SetLocal)
        and loop.body.name == decl.name
        and isinstance(store, ir.Set)
        and store.value == ir.Local(decl.name, decl.dtype)
        and decl.dtype.is_float
        and not _has_local(decl.init)
    ):
        return None
    update = loop.body.value
    if not (
        isinstance(update, ir.Apply)
        and len(update.args) == 2
        and update.args[0] == ir.Local(decl.name, decl.dtype)
        and isinstance(update.args[1], ir.Apply)
        and len(update.args[1].args) == 2
    ):
        return None
    *batch, row, col = plan.grid
    first, second = update.args[1].args
    k = loop.iterator
    outer = {b.iterator for b in batch}
    if _has_local(first) or _has_local(second):
        return None
    first_its, second_its = _expr_iterators(first), _expr_iterators(second)
    if first_its <= outer | {row.iterator, k} and second_its <= outer | {k, col.iterator}:
        x, y = first, second
    elif second_its <= outer | {row.iterator, k} and first_its <= outer | {k, col.iterator}:
        x, y = second, first
    else:
        return None
    if row.extent < 32 or col.extent < 32 or math.prod(b.extent for b in batch) > 65535:
        return None
    if math.ceil(row.extent / TILE) > 65535:
        return None
    return MatmulShape(batch, row, col, loop, decl, update, x, y, store)

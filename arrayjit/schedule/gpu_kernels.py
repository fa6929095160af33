"""How loop nests run on a GPU: which top-level statements become which kernels, and which kernel
form each gets.

Each top-level loop nest of a routine becomes one kernel (two for a reduction split in two
passes). The outermost run of parallel loops of a nest is the kernel's grid of result cells. What
runs per cell picks the form:

- a matrix product (`acc = acc op f(x[.., i, k], y[.., k, j])` over an innermost reduction `k`,
  under parallel `i, j`): the tiled kernel of `arrayjit.schedule.gpu_matmul`;
- a row of stages, reductions and pointwise loops (`arrayjit.passes.row_fusion` groups them):
  a team of threads per row running the stages in order (`arrayjit.schedule.gpu_rows`);
- a reduction over many values (`acc = acc op value` with op add, mul, max or min), per cell or
  over the whole space: a team of threads per cell (`arrayjit.schedule.gpu_reductions`);
- anything else with a grid: one thread per cell (a grid-stride loop over the flattened grid).

Statements that are not parallel loops run in a kernel of one thread. Hoisted locals that several
kernels read are recomputed at the start of each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from arrayjit import loop_ir as ir
from arrayjit.schedule import gpu_matmul, gpu_pointwise, gpu_reductions, gpu_rows
from arrayjit.schedule.kernel_plan import MAX_BLOCKS, THREADS, GpuOptions, KernelPlan

__all__ = ["MAX_BLOCKS", "THREADS", "GpuOptions", "KernelPlan", "plan_kernels"]

log = logging.getLogger("arrayjit")


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


def _reduction_unit(stmts: list[ir.Stmt], start: int, mutated: set[str]) -> int:
    """The length of the top-level reduction starting at `stmts[start]`, 0 if none: `local acc
    := init; (invariant locals); for ...: acc := op(acc, ...); x[..] := acc`, as lowering writes a
    reduction to one cell."""
    first = stmts[start]
    if not (isinstance(first, ir.DeclLocal) and first.name in mutated):
        return 0
    k = start + 1
    while k < len(stmts) and isinstance(stmts[k], ir.DeclLocal) and stmts[k].name not in mutated:
        k += 1
    if k + 1 >= len(stmts):
        return 0
    loop = stmts[k]
    if not (
        isinstance(loop, ir.For) and not loop.parallel and first.name in ir.assigned_locals(loop)
    ):
        return 0
    # Locals computed from the result (a mean: `h := acc / n`), then its store.
    results = {first.name}
    k += 1
    while k < len(stmts) and isinstance(stmts[k], ir.DeclLocal) and stmts[k].name not in mutated:
        if not ir.read_locals(stmts[k]) & results:
            return 0
        results.add(stmts[k].name)
        k += 1
    if k >= len(stmts) or not gpu_reductions.one_store(stmts[k]):
        return 0
    if not ir.read_locals(stmts[k]) & results:
        return 0
    if _read_locals(stmts[k + 1 :]) & results:
        return 0  # read by a later kernel, which could not recompute them
    return k + 1 - start


def plan_kernels(stmt: ir.Stmt, options: GpuOptions | None = None) -> list[KernelPlan]:
    """Split a routine into kernels and pick each one's form: see the module docstring."""
    options = options or GpuOptions()
    mutated = ir.assigned_locals(stmt)
    # Locals declared once at top level, never reassigned: recomputed by each kernel reading them.
    shared: dict[str, ir.DeclLocal] = {}
    # Each plan with the shared locals valid where it starts.
    plans: list[tuple[KernelPlan, dict[str, ir.DeclLocal]]] = []
    serial: list[ir.Stmt] = []

    def add_shared(s: ir.Stmt) -> bool:
        if (
            isinstance(s, ir.DeclLocal)
            and s.name not in mutated
            and _read_locals([s]) <= set(shared)
        ):
            shared[s.name] = s
            return True
        return False

    def private(serial: list[ir.Stmt]) -> set[str]:
        # The locals of a one-thread kernel that a later kernel cannot recompute (a shared local
        # declared there, e.g. a hoisted read of a value it has just written, can be).
        return _declared_in(serial) - set(shared)

    def invalidate(s: ir.Stmt) -> None:
        # A shared local whose buffers this statement writes would be stale in later kernels.
        written = ir.written_tnodes(s)
        for name, decl in list(shared.items()):
            if ir.read_tnodes(decl) & written:
                del shared[name]

    stmts = _top_level(stmt)
    k = 0
    while k < len(stmts):
        s = stmts[k]
        unit = _reduction_unit(stmts, k, mutated) if options.parallel_reductions else 0
        if unit and not (_read_locals(stmts[k : k + unit]) & private(serial)):
            # A reduction to one value is a kernel of its own, so it can get a team of threads.
            serial = []
            body = stmts[k : k + unit]
            plans.append((KernelPlan([], body), dict(shared)))
            for x in body:
                add_shared(x)
                invalidate(x)
            k += unit
            continue
        k += 1
        if add_shared(s):
            if serial:
                serial.append(s)  # later statements of the same one-thread kernel read it here
            continue
        if isinstance(s, ir.For) and s.parallel and not (_read_locals([s]) & private(serial)):
            serial = []
            grid, body = _grid_run(s, mutated)
            plans.append((KernelPlan(grid, body), dict(shared)))
        else:
            if not serial:
                plans.append((KernelPlan([], serial), dict(shared)))
            serial.append(s)
        invalidate(s)

    for plan, available in plans:
        needed = _read_locals(plan.body) - _declared_in(plan.body)
        closure = _closure(needed, available)
        if closure is None:
            log.debug("a local crosses kernels: the routine runs as one thread")
            return [KernelPlan([], _top_level(stmt))]
        plan.prologue = [d for d in available.values() if d.name in closure]
    return [form for plan, _ in plans for form in _choose_form(plan, options)]


def _choose_form(plan: KernelPlan, options: GpuOptions) -> list[KernelPlan]:
    """The kernels for `plan`: itself with its form set, or a reduction's two passes."""
    if options.tile_matmul:
        plan.matmul = gpu_matmul.plan_matmul(plan, options)
        if plan.matmul is not None:
            return [plan]
    if options.parallel_reductions:
        plan.rows = gpu_rows.plan_rows(plan)
        if plan.rows is not None:
            return [plan]
    plans = gpu_reductions.plan_reduction(plan) if options.parallel_reductions else [plan]
    for p in plans:
        p.vector = gpu_pointwise.vector_width(p)
    return plans


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

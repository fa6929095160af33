"""Row-fused kernels on a GPU: a team of threads per row runs the row's stages in order.

A kernel whose cell body is what row fusion (`arrayjit.passes.row_fusion`) writes,

    (row locals); [reduction | pointwise | store | row local]...

runs with a team of threads per grid cell (a row): a warp or less for short rows, the whole
block for rows longer than `BLOCK_TEAM_LENGTH`. A *reduction* stage (`acc := init; for ...:
acc := op(acc, term); (stores or locals reading acc)`) has each member fold a strided slice of
the row's terms, the team combine its partial results (warp shuffles, then shared memory across
warps) so that every member holds the total, in the same order on every run; a *pointwise* stage
(parallel loops around stores) has each member take every team-th cell of the row. Row locals
(the max, the sum) live in every member's registers; a store of one value per row is made by the
team's first member. A barrier separates stages, so a stage reads what earlier stages of its row
stored in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from arrayjit import loop_ir as ir
from arrayjit.schedule.gpu_reductions import REDUCIBLE, ReductionShape, reduction_shape
from arrayjit.schedule.kernel_plan import THREADS, KernelPlan

#: Rows longer than this (values of a stage per row) get the whole block as their team.
BLOCK_TEAM_LENGTH = 1024


@dataclass
class PointwiseStage:
    """Parallel loops (flattened: `cells` per row) around `body` (stores and locals); `decls`:
    locals between the loops, recomputed for each cell."""

    loops: list[ir.For]
    decls: list[ir.DeclLocal]
    body: list[ir.Stmt]

    @property
    def cells(self) -> int:
        return math.prod(loop.extent for loop in self.loops)


@dataclass
class RowPlan:
    #: Each stage: a row local (`ir.DeclLocal`, every member), a store of the row (`ir.Set`, the
    #: first member), a `ReductionShape` or a `PointwiseStage`.
    stages: list[ir.DeclLocal | ir.Set | ReductionShape | PointwiseStage] = field(
        default_factory=list
    )
    #: Threads per row.
    team: int = 32

    @property
    def length(self) -> int:
        return max(_length(s) for s in self.stages)


def _length(stage) -> int:
    if isinstance(stage, ReductionShape):
        return stage.length
    if isinstance(stage, PointwiseStage):
        return stage.cells
    return 1


def _items(stmt: ir.Stmt) -> list[ir.Stmt]:
    stmts = stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)
    return [s for s in stmts if not isinstance(s, ir.Comment)]


def _pointwise(loop: ir.For) -> PointwiseStage | None:
    loops: list[ir.For] = []
    decls: list[ir.DeclLocal] = []
    node: ir.Stmt = loop
    while True:
        loops.append(node)
        items = _items(node.body)
        *between, last = items
        if (
            isinstance(last, ir.For)
            and last.parallel
            and all(isinstance(d, ir.DeclLocal) for d in between)
        ):
            decls.extend(between)
            node = last
            continue
        if all(isinstance(s, ir.Set | ir.DeclLocal) for s in items):
            return PointwiseStage(loops, decls, items)
        return None


def _stages(body: list[ir.Stmt]) -> list | None:
    """The stages of a row body, or None if it is not one."""
    body = [s for s in body if not isinstance(s, ir.Comment)]
    mutated = ir.assigned_locals(ir.Block(tuple(body)))
    stages: list = []
    k = 0
    while k < len(body):
        s = body[k]
        if isinstance(s, ir.DeclLocal) and s.name in mutated:
            end = k + 1
            while end < len(body) and isinstance(body[end], ir.DeclLocal):
                end += 1
            if end == len(body) or not isinstance(body[end], ir.For):
                return None
            end += 1
            while (
                end < len(body)
                and isinstance(body[end], ir.Set | ir.DeclLocal)
                and s.name in ir.read_locals(body[end])
            ):
                end += 1
            shape = reduction_shape(body[k:end])
            if shape is None or shape.acc is not s or shape.op not in REDUCIBLE:
                return None
            if any(d.name in mutated for d in shape.pre if d is not s):
                return None
            stages.append(shape)
            k = end
            continue
        if isinstance(s, ir.DeclLocal | ir.Set):
            if isinstance(s, ir.DeclLocal) or not (ir.read_locals(s) & mutated):
                stages.append(s)
                k += 1
                continue
            return None
        if isinstance(s, ir.For) and s.parallel:
            stage = _pointwise(s)
            if stage is None or ir.assigned_locals(s):
                return None
            stages.append(stage)
            k += 1
            continue
        return None
    return stages


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def plan_rows(plan: KernelPlan) -> RowPlan | None:
    """The row form of `plan` when its cell body is a row of stages with a reduction, or None."""
    if not plan.grid:
        return None
    stages = _stages(plan.body)
    if stages is None or not any(isinstance(s, ReductionShape) for s in stages):
        return None
    if sum(isinstance(s, ReductionShape | PointwiseStage) for s in stages) < 2:
        return None  # a lone reduction: the team-reduction form (which may split it) fits
    rows = RowPlan(stages)
    length = rows.length
    if length > BLOCK_TEAM_LENGTH:
        rows.team = THREADS
    else:
        rows.team = min(32, max(4, _pow2_at_least(math.ceil(length / 4))))
    return rows

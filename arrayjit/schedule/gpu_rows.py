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

*Register form*: when every stage walks the row with one loop of the same length and a read
(`x[row, j]`, not written by the kernel) recurs in several stages, each member holds its values
of the row in registers (`per_thread` of them, at most `MAX_PER_THREAD`): the first stage reading
it loads them, `vector` at a time (16 bytes) where the reads are contiguous and aligned, later
stages read the registers. Softmax and layer norm then read their input from memory once. Member
`lane` takes, in chunk `c`, the values `c * team * vector + lane * vector + u` (u < vector) in
every stage, so each member reads back what it loaded itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, substitute
from arrayjit.schedule.gpu_reductions import (
    REDUCIBLE,
    ReductionShape,
    reduction_shape,
    vector_load,
)
from arrayjit.schedule.kernel_plan import THREADS, KernelPlan

#: Rows longer than this (values of a stage per row) get the whole block as their team.
BLOCK_TEAM_LENGTH = 1024
#: Values of a row one member may hold in registers per cached read.
MAX_PER_THREAD = 32
#: The iterator the reads of different stages are compared with (each stage's renamed to it).
ROW = Iterator(name="q")


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
    #: The register form: values of the row per member (0: each stage strides over the row).
    per_thread: int = 0
    #: Values per load of a cached read in the register form.
    vector: int = 1
    #: The register form's cached reads (with `ROW` for the stage's iterator): the name of their
    #: registers and the stage that loads them.
    cached: dict[ir.Get, tuple[str, int]] = field(default_factory=dict)

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


def stage_loop(stage) -> ir.For | None:
    """The one loop of a reduction or pointwise stage, or None."""
    loops = stage.loops if isinstance(stage, ReductionShape | PointwiseStage) else []
    return loops[0] if len(loops) == 1 else None


def canonical(get: ir.Get, it: Iterator) -> ir.Get | None:
    """`get` with `it` renamed `ROW` (None for a read at a dynamic index)."""
    if ir.is_dynamic(get.index):
        return None
    return ir.Get(get.tnode, tuple(substitute(i, {it: ROW}) for i in get.index))


def stage_exprs(stage) -> list[ir.Expr]:
    """The expressions a reduction or pointwise stage evaluates for each value of its row."""
    if isinstance(stage, ReductionShape):
        roots = [stage.value, *(d.init for d in stage.inner)]
    else:
        roots = [r for s in [*stage.decls, *stage.body] for r in ir.root_exprs(s)]
    return [e for root in roots for e in ir.walk_expr(root)]


def _stored(stages: list) -> set:
    out = set()
    for stage in stages:
        if isinstance(stage, ir.Set):
            out.add(stage.tnode)
        elif isinstance(stage, ReductionShape):
            out |= {s.tnode for s in stage.post if isinstance(s, ir.Set)}
        elif isinstance(stage, PointwiseStage):
            out |= ir.written_tnodes(ir.Block(tuple(stage.body)))
    return out


def _register_form(rows: RowPlan) -> None:
    """Set the register form of `rows` where it applies (see the module docstring)."""
    walking = [
        (n, s) for n, s in enumerate(rows.stages) if isinstance(s, ReductionShape | PointwiseStage)
    ]
    loops = [stage_loop(s) for _, s in walking]
    if None in loops or len({loop.extent for loop in loops}) != 1:
        return
    length = loops[0].extent
    stored = _stored(rows.stages)
    uses: dict[ir.Get, list[int]] = {}
    for (n, stage), loop in zip(walking, loops, strict=True):
        for e in stage_exprs(stage):
            if not isinstance(e, ir.Get) or e.tnode in stored:
                continue
            if loop.iterator not in {it for i in e.index for it in ir.index_iterators(i)}:
                continue
            key = canonical(e, loop.iterator)
            if key is not None and n not in uses.setdefault(key, []):
                uses[key].append(n)
    cached = [key for key, stages in uses.items() if len(stages) > 1]
    if not cached:
        return
    sizes = {key.tnode.dtype.itemsize for key in cached}
    vector = 16 // sizes.pop() if len(sizes) == 1 and sizes <= {4, 8} else 1
    if vector > 1 and (length % vector or not all(vector_load(k, ROW, vector) for k in cached)):
        vector = 1
    per_thread = math.ceil(length / (rows.team * vector)) * vector
    if per_thread > MAX_PER_THREAD:
        return
    rows.per_thread, rows.vector = per_thread, vector
    rows.cached = {key: (f"cache{k}", uses[key][0]) for k, key in enumerate(cached)}


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
    _register_form(rows)
    return rows

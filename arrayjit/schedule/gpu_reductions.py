"""Reductions over many values on a GPU: a team of threads per result cell.

A kernel whose cell body is what lowering writes for a reduction,

    (locals); local acc := init; for r1: [(locals); for r2: ...] acc := op(acc, value); out[..] := acc

with op add, mul, max or min, reduces R = r1 * r2 * ... values for each of the G cells of its grid
(G = 1 without one). One thread per cell is slow when R is large and G small; instead a *team*
of threads takes each cell: each member folds a strided slice of the values in order, then the
team combines its partial results (warp shuffles, or shared memory across warps) and its first
member stores `op(init, total)`. Where the teams alone would be too few threads for the GPU, each
cell's values are cut into `parts` slices, reduced by separate teams into a scratch buffer of
partial results, and a second kernel combines each cell's partials (itself a reduction, planned
the same way). The order of the combination depends only on the plan, so results are
deterministic; they equal the sequential order's up to rounding (NaN and infinities propagate as
in numpy: `max`/`min` keep NaN).

Two layouts: when the reduction walks memory contiguously (a row sum), a team is a group of
neighbouring threads reading neighbouring values, `vector` at a time where the buffers allow
16-byte loads; when the cells are the contiguous side (a column sum), neighbouring threads take
neighbouring cells and a team's members sit in different warps (`across_cells`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, as_affine
from arrayjit.schedule.kernel_plan import THREADS, KernelPlan
from arrayjit.tnode import MemoryMode, TNode

#: Accumulations that can be regrouped (associative and commutative up to rounding).
REDUCIBLE = ("add", "mul", "max", "min")
#: Enough threads in flight to fill a large GPU (132 multiprocessors of 2048 threads).
TARGET_THREADS = 1 << 18
#: Reductions shorter than this stay one thread per cell.
MIN_TEAM_LENGTH = 16
#: Longer reductions get a whole block per cell (shorter ones a warp or less).
BLOCK_TEAM_LENGTH = 2048
#: Values each thread folds before cutting a cell's reduction into parts pays off.
MIN_VALUES_PER_THREAD = 64
MAX_PARTS = 1024
#: Threads of a team in the across-cells layout (a block then covers THREADS / 8 cells).
ACROSS_TEAM = 8


@dataclass
class ReductionShape:
    """The pieces of a reduction nest: see the module docstring."""

    pre: list[ir.DeclLocal]  # the cell's locals before the loops, `acc` among them
    acc: ir.DeclLocal
    loops: list[ir.For]  # the reduction loops, outermost first
    inner: list[ir.DeclLocal]  # locals between reduction loops: recomputed for each value
    op: str
    value: ir.Expr
    post: list[ir.Stmt]  # after the loops: the store(s) reading `acc`

    @property
    def length(self) -> int:
        return math.prod(loop.extent for loop in self.loops)

    @property
    def innermost(self) -> Iterator:
        return self.loops[-1].iterator


@dataclass
class ReductionPlan:
    shape: ReductionShape
    #: Threads per (cell, part).
    team: int
    #: Neighbouring threads take neighbouring cells (team members in different warps).
    across_cells: bool
    #: Slices of each cell's values; more than one: this kernel writes `partials`.
    parts: int
    #: Values per load along the innermost reduction loop (16-byte vector loads).
    vector: int
    #: `[*grid, parts]` partial results, when `parts > 1`.
    partials: TNode | None = None

    @property
    def vectorized(self) -> dict[ir.Get, int]:
        """The reads loaded `vector` values at a time, each with its number."""
        if self.vector == 1:
            return {}
        reads = [e for e in ir.walk_expr(self.shape.value) if isinstance(e, ir.Get)]
        loads = [e for e in reads if vector_load(e, self.shape.innermost, self.vector)]
        return {get: k for k, get in enumerate(dict.fromkeys(loads))}


def _items(stmt: ir.Stmt) -> list[ir.Stmt]:
    stmts = stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)
    return [s for s in stmts if not isinstance(s, ir.Comment)]


def reduction_shape(body: list[ir.Stmt]) -> ReductionShape | None:
    """Recognize a cell body as a reduction; None for anything else."""
    body = [s for s in body if not isinstance(s, ir.Comment)]
    at = next((k for k, s in enumerate(body) if isinstance(s, ir.For)), None)
    if at is None:
        return None
    pre, loop, post = body[:at], body[at], body[at + 1 :]
    if not all(isinstance(s, ir.DeclLocal) for s in pre):
        return None
    if not all(isinstance(s, ir.DeclLocal) or one_store(s) for s in post):
        return None
    loops: list[ir.For] = []
    inner: list[ir.DeclLocal] = []
    node: ir.Stmt = loop
    while isinstance(node, ir.For) and not node.parallel:
        loops.append(node)
        *decls, node = _items(node.body)
        if not all(isinstance(d, ir.DeclLocal) for d in decls):
            return None
        inner.extend(decls)
    if not isinstance(node, ir.SetLocal):
        return None
    acc = next((d for d in pre if d.name == node.name), None)
    update = node.value
    if acc is None or not (
        isinstance(update, ir.Apply)
        and update.op in (*REDUCIBLE, "sub")
        and len(update.args) == 2
        and update.args[0] == ir.Local(acc.name, acc.dtype)
        and update.dtype == acc.dtype
    ):
        return None
    op, value = update.op, update.args[1]
    if op == "sub":  # `acc - v` is exactly `acc + (-v)`: a sum of negated values
        op, value = "add", ir.Apply("neg", (value,), acc.dtype)
    readers = [*(d for d in pre if d is not acc), *inner]
    if any(acc.name in ir.read_locals(d) for d in readers):
        return None
    if any(isinstance(e, ir.Local) and e.name == acc.name for e in ir.walk_expr(value)):
        return None
    return ReductionShape(pre, acc, loops, inner, op, value, post)


def one_store(s: ir.Stmt) -> bool:
    """Whether `s` stores one cell: a `Set`, or one inside loops of extent 1 (a result of one
    cell in a buffer of dims (1,))."""
    while isinstance(s, ir.For) and s.extent == 1:
        s = s.body
    return isinstance(s, ir.Set)


def _coefficient(get: ir.Get, it: Iterator) -> tuple[int | None, list[int], int]:
    """The stride of `it` in `get`'s row-major offset (None: a dynamic index that depends on
    `it`), the other strides (dynamic indices' included) and the constant."""
    affine, dynamic = ir.split_offset(get.tnode.dims, get.index)
    terms, offset = as_affine(affine)
    own = sum(c for c, term in terms if term == it)
    others = [c for c, term in terms if term != it]
    for stride, d in dynamic:
        if it in ir.index_iterators(d):
            return None, others, offset
        others.append(stride)
    return own, others, offset


def vector_load(get: ir.Get, it: Iterator, vector: int) -> bool:
    """Whether `vector` consecutive values of `it` (from a multiple of `vector`) are one aligned
    vector of `get`'s buffer."""
    own, others, offset = _coefficient(get, it)
    return (
        own == 1
        and get.tnode.dtype.itemsize * vector <= 16
        and all(c % vector == 0 for c in others)
        and offset % vector == 0
    )


def _vector_width(shape: ReductionShape) -> int:
    """16 bytes' worth of values of the largest buffer read along the innermost loop, when it
    can load them at once (a matrix-vector product's 16-bit weights: 8 a load; the vector, too
    wide to load 8 float32 values at once, is read one value at a time)."""
    reads = [e for e in ir.walk_expr(shape.value) if isinstance(e, ir.Get)]
    along = [get for get in reads if _coefficient(get, shape.innermost)[0] == 1]
    if not along:
        return 1
    largest = max(along, key=lambda get: get.tnode.size)
    if largest.tnode.dtype.itemsize not in (2, 4, 8):
        return 1
    vector = 16 // largest.tnode.dtype.itemsize
    while vector > 1 and (
        shape.loops[-1].extent % vector or not vector_load(largest, shape.innermost, vector)
    ):
        vector //= 2
    return vector


def _across_cells(plan: KernelPlan, shape: ReductionShape) -> bool:
    """Whether the reads are contiguous along the cells rather than along the reduction: those
    of the largest buffer moving with the reduction decide (a product of a vector and a matrix
    whose rows are the cells' neighbours reads the matrix across cells, however many small
    vectors are read along the reduction)."""
    if not plan.grid:
        return False
    cell = plan.grid[-1].iterator
    moving = []
    for get in (e for e in ir.walk_expr(shape.value) if isinstance(e, ir.Get)):
        own, _, _ = _coefficient(get, shape.innermost)
        if own == 0 or own is None:
            continue
        moving.append((get.tnode.size, abs(own) == 1, _coefficient(get, cell)[0] in (1, -1)))
    if not moving:
        return False
    largest = max(size for size, _, _ in moving)
    along_reduction = sum(a for size, a, _ in moving if size == largest)
    along_cells = sum(c for size, _, c in moving if size == largest)
    return along_cells > along_reduction


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def plan_reduction(plan: KernelPlan) -> list[KernelPlan]:
    """`plan` with a team form when it is a long reduction (two kernels when split in parts), or
    `[plan]` unchanged."""
    shape = reduction_shape(plan.body)
    if shape is None or shape.length < MIN_TEAM_LENGTH:
        return [plan]
    cells, length = plan.cells, shape.length
    across = _across_cells(plan, shape)
    if across and cells >= TARGET_THREADS // 2:
        return [plan]  # one thread per cell already reads neighbouring values together
    vector = 1 if across else _vector_width(shape)
    if across:
        team = ACROSS_TEAM
    elif cells == 1 or length > BLOCK_TEAM_LENGTH:
        team = THREADS
    else:
        team = min(32, max(4, _pow2_at_least(math.ceil(length / (4 * vector)))))
    parts = 1
    if cells * team < TARGET_THREADS // 4 and length > team * vector * MIN_VALUES_PER_THREAD:
        parts = min(
            MAX_PARTS,
            math.ceil(TARGET_THREADS / (cells * team)),
            math.ceil(length / (team * vector * 16)),
        )
    if parts == 1:
        plan.reduction = ReductionPlan(shape, team, across, 1, vector)
        return [plan]
    acc = shape.acc
    dims = (*(loop.extent for loop in plan.grid), parts)
    # A fixed label: buffer names in the source must not depend on process-wide counters.
    partials = TNode("partials", dims, acc.dtype, MemoryMode.LOCAL)
    first = KernelPlan(
        plan.grid,
        plan.body,
        plan.prologue,
        reduction=ReductionPlan(shape, team, across, parts, vector, partials),
        scratch=[partials],
    )
    part = Iterator(name="part")
    index = (*(loop.iterator for loop in plan.grid), part)
    combine = ir.Apply(
        shape.op, (ir.Local(acc.name, acc.dtype), ir.Get(partials, index)), acc.dtype
    )
    finish_body = [*shape.pre, ir.For(part, parts, ir.SetLocal(acc.name, combine)), *shape.post]
    finish = KernelPlan(plan.grid, finish_body, plan.prologue, scratch=[partials])
    return [first, *plan_reduction(finish)]

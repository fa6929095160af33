"""The row-fused kernel (see `arrayjit.schedule.gpu_rows`).

The loop over rows advances a whole block at a time, so every thread reaches every shuffle and
barrier; a team whose row is past the end takes row 0's indices for its row locals, and neither
reads the row's values nor stores anything. Names the kernel declares itself are plain words
(see `cuda_reductions`).
"""

from __future__ import annotations

import math

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.codegen.c_syntax import INT32_MAX
from arrayjit.codegen.cuda_device import Launch, letters
from arrayjit.schedule.gpu_reductions import ReductionShape
from arrayjit.schedule.gpu_rows import PointwiseStage
from arrayjit.schedule.kernel_plan import MAX_BLOCKS, THREADS, KernelPlan
from arrayjit.tnode import TNode


def rows_kernel(syntax, plan: KernelPlan, name: str, tnodes: list[TNode]):
    rows_plan = plan.rows
    team = rows_plan.team
    if team > 32 and team != THREADS:
        raise ValueError(f"a team of {team} threads must be a warp or less, or the whole block")
    teams = THREADS // team
    rows = plan.cells
    blocks = min(math.ceil(rows / teams), MAX_BLOCKS)
    unit_t = "long long" if rows + blocks * teams > INT32_MAX else "int"
    longest = rows_plan.length
    q_t = "long long" if longest + team > INT32_MAX else "int"
    # A barrier of the team: the block's when the team is the block, else the warp's (a team of
    # a warp or less never waits on other warps).
    barrier = "__syncthreads();" if team > 32 else "__syncwarp();"

    lines = [syntax.head(name, tnodes)]
    for decl in plan.prologue:
        lines += syntax.stmt(decl, 1)
    if team > 32:
        dtypes = {s.acc.dtype for s in rows_plan.stages if isinstance(s, ReductionShape)}
        for dtype in sorted(dtypes, key=lambda d: d.name):
            lines.append(f"  __shared__ {dtype.c_name} ocannl_red_{dtype.c_name}[{THREADS // 32}];")
    lines += [
        f"  const int team = threadIdx.x / {team}, lane = threadIdx.x % {team};",
        f"  for ({unit_t} base = ({unit_t})blockIdx.x * {teams}; base < {rows};"
        f" base += ({unit_t})gridDim.x * {teams}) {{",
        f"    const bool active = base + team < {rows};",
        f"    const {unit_t} unit = active ? base + team : 0;",
    ]
    lines += syntax.unflatten(plan.grid, "unit", 2)
    last = len(rows_plan.stages) - 1
    for n, stage in enumerate(rows_plan.stages):
        # After a stage that stores, a barrier: later stages may read what it stored.
        stored = [f"    {barrier}"] if n < last else []
        if isinstance(stage, ir.DeclLocal):
            lines += syntax.stmt(stage, 2)
        elif isinstance(stage, ir.Set):
            lines += ["    if (active && lane == 0) {", *syntax.stmt(stage, 3), "    }", *stored]
        elif isinstance(stage, ReductionShape):
            lines += _reduction(syntax, stage, team, q_t, letters(n))
            if any(isinstance(s, ir.Set) for s in stage.post):
                lines += stored
        else:
            lines += _pointwise(syntax, stage, team, q_t) + stored
    lines += ["  }", "}"]
    return "\n".join(lines), Launch(name, blocks, THREADS)


def _reduction(syntax, shape: ReductionShape, team: int, q_t: str, tag: str) -> list[str]:
    """Lines of one reduction stage: every member ends up holding the row's total in `acc`."""
    dtype = shape.acc.dtype
    t = dtype.c_name
    neutral = syntax.literal(ops.neutral(shape.op, dtype), dtype)
    partial = f"partial{tag}"

    def fold(a: str, b: str) -> str:
        return syntax.apply(shape.op, dtype, a, b)

    def shuffle(width: int) -> list[str]:
        # A butterfly: every lane ends with the same value (each step combines two equal
        # subtotals in either order, and the ops are commutative).
        return [
            "    #pragma unroll",
            f"    for (int offset = {width // 2}; offset > 0; offset /= 2)",
            f"      {partial} = {fold(partial, f'__shfl_xor_sync(0xffffffffu, {partial}, offset, {width})')};",
        ]

    lines = [line for decl in shape.pre for line in syntax.stmt(decl, 2)]
    lines += [
        f"    {t} {partial} = {neutral};",
        "    if (active) {",
        "      #pragma unroll 4",
        f"      for ({q_t} q = lane; q < {shape.length}; q += {team}) {{",
    ]
    lines += syntax.unflatten(shape.loops, "q", 4)
    for decl in shape.inner:
        lines += syntax.stmt(decl, 4)
    lines += [f"        {partial} = {fold(partial, syntax.expr(shape.value))};", "      }", "    }"]
    if team <= 32:
        if team > 1:
            lines += shuffle(team)
    else:
        red = f"ocannl_red_{t}"
        lines += shuffle(32)
        lines += [
            f"    if (threadIdx.x % 32 == 0) {red}[threadIdx.x / 32] = {partial};",
            "    __syncthreads();",
            f"    {partial} = {red}[0];",
            f"    for (int warp = 1; warp < {THREADS // 32}; ++warp)",
            f"      {partial} = {fold(partial, f'{red}[warp]')};",
            "    __syncthreads();  // before the next reduction reuses it",
        ]
    acc = syntax.local(shape.acc.name)
    lines.append(f"    {acc} = {fold(acc, partial)};")
    for s in shape.post:
        if isinstance(s, ir.Set):
            lines += ["    if (active && lane == 0) {", *syntax.stmt(s, 3), "    }"]
        else:
            lines += syntax.stmt(s, 2)
    return lines


def _pointwise(syntax, stage: PointwiseStage, team: int, q_t: str) -> list[str]:
    """Lines of one pointwise stage: member `lane` takes cells lane, lane + team, ..."""
    lines = [
        "    if (active) {",
        f"      for ({q_t} q = lane; q < {stage.cells}; q += {team}) {{",
    ]
    lines += syntax.unflatten(stage.loops, "q", 4)
    for s in [*stage.decls, *stage.body]:
        lines += syntax.stmt(s, 4)
    return [*lines, "      }", "    }"]

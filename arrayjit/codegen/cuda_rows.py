"""The row-fused kernel (see `arrayjit.schedule.gpu_rows`).

The loop over rows advances a whole block at a time, so every thread reaches every shuffle and
barrier; a team whose row is past the end takes row 0's indices, and neither reads the row's
values nor stores anything: its row locals that read what the kernel writes are zero (reading
them would race with row 0's team). Names the kernel declares itself are plain words (see
`cuda_reductions`).

Threads of a row pass values to one another through the buffers the kernel writes (a row value
stored by the team's first member, a stage's stores read at other cells by a later stage), with a
barrier between: those buffers are parameters without `__restrict__`. With it, NVCC may move a
read of such a buffer above the barrier and above another lane's store (it did: the lanes of a
softmax gradient's row read the row's maximum before the first lane had stored it, giving wrong
values and NaN on an H100); the emulator holds `__restrict__` parameters to that contract.
"""

from __future__ import annotations

import math

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.codegen.c_syntax import INT32_MAX, index_type
from arrayjit.codegen.cuda_device import COMPONENTS, Launch, letters, vector_type
from arrayjit.schedule.gpu_reductions import ReductionShape, vector_load
from arrayjit.schedule.gpu_rows import (
    ROW,
    PointwiseStage,
    RowPlan,
    canonical,
    stage_exprs,
    stage_loop,
)
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

    written = ir.written_tnodes(ir.Block(tuple(plan.body)))
    lines = [syntax.head(name, tnodes, shared=written)]
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
    for key, (cache, _) in rows_plan.cached.items():
        names = ", ".join(f"{cache}_{k}" for k in range(rows_plan.per_thread))
        lines.append(f"    {syntax.type_name(key.tnode.dtype)} {names};")
    last = len(rows_plan.stages) - 1
    for n, stage in enumerate(rows_plan.stages):
        # After a stage that stores, a barrier: later stages may read what it stored.
        stored = [f"    {barrier}"] if n < last else []
        if isinstance(stage, ir.DeclLocal):
            lines += _row_local(syntax, stage, written)
        elif isinstance(stage, ir.Set):
            lines += ["    if (active && lane == 0) {", *syntax.stmt(stage, 3), "    }", *stored]
        elif isinstance(stage, ReductionShape):
            lines += _reduction(syntax, stage, rows_plan, q_t, n, written)
            if any(isinstance(s, ir.Set) for s in stage.post):
                lines += stored
        elif rows_plan.per_thread:
            lines += _in_registers(syntax, rows_plan, n, q_t, None)
            lines += stored
        else:
            lines += _pointwise(syntax, stage, team, q_t) + stored
    lines += ["  }", "}"]
    return "\n".join(lines), Launch(name, blocks, THREADS)


def _in_registers(syntax, rows: RowPlan, n: int, q_t: str, per_value) -> list[str]:
    """Lines running stage `n` over the member's values of the row in the register form: its
    cached reads loaded into their registers (if it is the first to read them) or read from
    them, `per_value()` giving the lines of one value (None for a pointwise stage: its cells,
    each store contiguous along the row made `vector` values at a time)."""
    stage = rows.stages[n]
    loop = stage_loop(stage)
    it, length = loop.iterator, loop.extent
    team, vector = rows.team, rows.vector
    reads = {}
    for e in stage_exprs(stage):
        if isinstance(e, ir.Get) and canonical(e, it) in rows.cached:
            reads[e] = rows.cached[canonical(e, it)][0]
    loads = {cache: get for get, cache in reads.items() if rows.cached[canonical(get, it)][1] == n}
    name, kind = syntax.iterator(it), index_type(length)
    stores: dict[ir.Set, str] = {}
    if per_value is None:
        read = ir.read_tnodes(ir.Block(tuple(stage.body)))
        wide = [
            x
            for x in stage.body
            if isinstance(x, ir.Set)
            and x.tnode not in read
            and vector > 1
            and x.tnode.dtype.itemsize * vector == 16
            and (key := canonical(ir.Get(x.tnode, x.index), it)) is not None
            and vector_load(key, ROW, vector)
        ]
        stores = {x: f"store{letters(k)}" for k, x in enumerate(wide)}

        def per_value(u: int) -> list[str]:
            out = []
            for x in [*stage.decls, *stage.body]:
                if x in stores:
                    out.append(f"          {stores[x]}.{COMPONENTS[u]} = {syntax.expr(x.value)};")
                else:
                    out += syntax.stmt(x, 5)
            return out

    lines = []
    for chunk in range(rows.per_thread // vector):
        start = (
            f"{chunk * team * vector} + lane * {vector}" if vector > 1 else f"{chunk * team} + lane"
        )
        lines += [
            "    {",
            f"      const {q_t} q = {start};",
            f"      if (active && q < {length}) {{",
            f"        const {kind} {name} = ({kind})(q);",
        ]
        first = chunk * vector
        for x, store in stores.items():
            lines.append(f"        {vector_type(x.tnode.dtype.c_name, vector)} {store};")
        for k, (cache, get) in enumerate(loads.items()):
            if vector == 1:
                lines.append(f"        {cache}_{first} = {syntax.expr(get)};")
                continue
            vt = vector_type(get.tnode.dtype.c_name, vector)
            address = f"&{syntax.buffer(get.tnode)}[{syntax.offset(get.tnode, get.index)}]"
            load = f"load{letters(k)}"
            lines.append(f"        const {vt} {load} = *reinterpret_cast<const {vt} *>({address});")
            lines += [
                f"        {cache}_{first + u} = {load}.{COMPONENTS[u]};" for u in range(vector)
            ]
        for u in range(vector):
            if u:
                syntax.renamed[it] = f"({name} + {u})"
            syntax.substituted = {get: f"{cache}_{first + u}" for get, cache in reads.items()}
            lines += ["        {", *per_value(u), "        }"]
        syntax.renamed.pop(it, None)
        syntax.substituted = {}
        for x, store in stores.items():
            vt = vector_type(x.tnode.dtype.c_name, vector)
            address = f"&{syntax.buffer(x.tnode)}[{syntax.offset(x.tnode, x.index)}]"
            lines.append(f"        *reinterpret_cast<{vt} *>({address}) = {store};")
        lines += ["      }", "    }"]
    return lines


def _row_local(syntax, decl: ir.DeclLocal, written: set[TNode]) -> list[str]:
    """A row local every member declares; one reading a buffer the kernel writes is zero in a
    team past the last row (whose indices are row 0's)."""
    if not ir.read_tnodes(decl) & written:
        return syntax.stmt(decl, 2)
    zero = syntax.literal(0, decl.dtype)
    value = f"active ? {syntax.expr(decl.init)} : {zero}"
    return [f"    {syntax.type_name(decl.dtype)} {syntax.local(decl.name)} = {value};"]


def _reduction(
    syntax, shape: ReductionShape, rows: RowPlan, q_t: str, n: int, written: set[TNode]
) -> list[str]:
    """Lines of one reduction stage: every member ends up holding the row's total in `acc`."""
    team = rows.team
    dtype = shape.acc.dtype
    t = dtype.c_name
    neutral = syntax.literal(ops.neutral(shape.op, dtype), dtype)
    partial = f"partial{letters(n)}"

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

    def per_value(u: int) -> list[str]:
        decls = [line for decl in shape.inner for line in syntax.stmt(decl, 5)]
        return [*decls, f"          {partial} = {fold(partial, syntax.expr(shape.value))};"]

    lines = [line for decl in shape.pre for line in _row_local(syntax, decl, written)]
    lines.append(f"    {t} {partial} = {neutral};")
    if rows.per_thread:
        lines += _in_registers(syntax, rows, n, q_t, per_value)
    else:
        lines += [
            "    if (active) {",
            "      #pragma unroll 4",
            f"      for ({q_t} q = lane; q < {shape.length}; q += {team}) {{",
        ]
        lines += syntax.unflatten(shape.loops, "q", 4)
        for decl in shape.inner:
            lines += syntax.stmt(decl, 4)
        lines += [
            f"        {partial} = {fold(partial, syntax.expr(shape.value))};",
            "      }",
            "    }",
        ]
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
            lines += _row_local(syntax, s, written)
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

"""The team-reduction kernel (see `arrayjit.schedule.gpu_reductions`).

The loop over units (a cell, or one part of a cell's values) advances a whole block at a time, so
every thread reaches the shuffles and barriers; a team whose unit is past the end folds nothing
and stores nothing. Names the kernel declares itself are plain words, which the printer's names
(letters then digits) and buffer names (ending in `_<digits>`) never are.
"""

from __future__ import annotations

import math

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.codegen.c_syntax import INT32_MAX
from arrayjit.codegen.cuda_device import COMPONENTS, Launch, letters, vector_type
from arrayjit.schedule.kernel_plan import MAX_BLOCKS, THREADS, KernelPlan
from arrayjit.tnode import TNode


def _load_name(n: int) -> str:
    return f"load{letters(n)}"


def _load_type(tnode: TNode, vector: int) -> str:
    """The type of one load of `vector` values of `tnode`: a vector type of its own, or for
    16-bit values integers of the same bytes (their halves read back as 16-bit values)."""
    if tnode.dtype.itemsize != 2:
        return vector_type(tnode.dtype.c_name, vector)
    return {2: "int", 4: "ocannl_int2", 8: "ocannl_int4"}[vector]


def _component(syntax, tnode: TNode, load: str, u: int) -> str:
    """Value `u` of a load of `tnode`'s values."""
    if tnode.dtype.itemsize != 2:
        return f"{load}.{COMPONENTS[u]}"
    return f"reinterpret_cast<const {syntax.type_name(tnode.dtype)} *>(&{load})[{u}]"


def reduction_kernel(syntax, plan: KernelPlan, name: str, tnodes: list[TNode]):
    red = plan.reduction
    shape = red.shape
    dtype = shape.acc.dtype
    t = dtype.c_name
    team, parts, vector = red.team, red.parts, red.vector
    if team > 32 and team != THREADS and not red.across_cells:
        raise ValueError(f"a team of {team} threads must be a warp or less, or the whole block")
    teams = THREADS // team
    cells, units = plan.cells, plan.cells * parts
    blocks = min(math.ceil(units / teams), MAX_BLOCKS)
    vectors = shape.length // vector
    unit_t = "long long" if units + blocks * teams > INT32_MAX else "int"
    q_t = "long long" if vectors + parts * team > INT32_MAX else "int"
    neutral = syntax.literal(ops.neutral(shape.op, dtype), dtype)

    def fold(a: str, b: str) -> str:
        return syntax.apply(shape.op, dtype, a, b)

    def shuffle(offset_from: int, width: int) -> list[str]:
        return [
            "    #pragma unroll",
            f"    for (int offset = {offset_from}; offset > 0; offset /= 2)",
            f"      partial = {fold('partial', f'__shfl_xor_sync(0xffffffffu, partial, offset, {width})')};",
        ]

    # A cell the team's first member stores after the others read it (`out[row] += ...`): its
    # buffer is passed without `__restrict__` (see `cuda_syntax.CudaSyntax.params`).
    body = ir.Block((*plan.prologue, *plan.body))
    lines = [syntax.head(name, tnodes, shared=ir.written_tnodes(body) & ir.read_tnodes(body))]
    for decl in plan.prologue:
        lines += syntax.stmt(decl, 1)
    if red.across_cells:
        lines += [
            f"  __shared__ {t} ocannl_red[{team}][{teams}];",
            f"  const int team = threadIdx.x % {teams}, lane = threadIdx.x / {teams};",
        ]
    else:
        if team > 32:
            lines.append(f"  __shared__ {t} ocannl_red[{THREADS // 32}];")
        lines.append(f"  const int team = threadIdx.x / {team}, lane = threadIdx.x % {team};")
    lines += [
        f"  for ({unit_t} base = ({unit_t})blockIdx.x * {teams}; base < {units};"
        f" base += ({unit_t})gridDim.x * {teams}) {{",
        f"    const bool active = base + team < {units};",
        f"    const {unit_t} unit = active ? base + team : 0;",
    ]
    cell, part = "unit", "0"
    if parts > 1:
        cell, part = "cell", "part"
        if red.across_cells:  # neighbouring teams take neighbouring cells
            lines.append(f"    const {unit_t} cell = unit % {cells};")
            lines.append(f"    const int part = (int)(unit / {cells});")
        else:
            lines.append(f"    const {unit_t} cell = unit / {parts};")
            lines.append(f"    const int part = (int)(unit % {parts});")
    if plan.grid:
        lines += syntax.unflatten(plan.grid, cell, 2)
    for decl in shape.pre:
        if parts == 1 or decl is not shape.acc:
            lines += syntax.stmt(decl, 2)

    # Each member folds values q = part * team + lane, + parts * team, ... in order.
    start = f"({q_t}){part} * {team} + lane" if parts > 1 else "lane"
    lines += [
        f"    {t} partial = {neutral};",
        "    if (active) {",
        "      #pragma unroll 4",
        f"      for ({q_t} q = {start}; q < {vectors}; q += {parts * team}) {{",
    ]
    lines += syntax.unflatten(shape.loops, f"q * {vector}" if vector > 1 else "q", 4)
    for decl in shape.inner:
        lines += syntax.stmt(decl, 4)
    loads = red.vectorized
    for get, n in loads.items():
        vt = _load_type(get.tnode, vector)
        address = f"&{syntax.buffer(get.tnode)}[{syntax.offset(get.tnode, get.index)}]"
        lines.append(
            f"        const {vt} {_load_name(n)} = *reinterpret_cast<const {vt} *>({address});"
        )
    innermost = shape.innermost
    first = syntax.iterator(innermost)
    for u in range(vector):
        if u:
            syntax.renamed[innermost] = f"({first} + {u})"
        syntax.substituted = {
            get: _component(syntax, get.tnode, _load_name(n), u) for get, n in loads.items()
        }
        lines.append(f"        partial = {fold('partial', syntax.expr(shape.value))};")
    syntax.renamed.pop(innermost, None)
    syntax.substituted = {}
    lines += ["      }", "    }"]

    # The team's partial results meet in its first member (lane 0).
    barrier = red.across_cells or team > 32
    if red.across_cells:
        lines += [
            "    ocannl_red[lane][team] = partial;",
            "    __syncthreads();",
            "    if (lane == 0)",
            f"      for (int other = 1; other < {team}; ++other)",
            f"        partial = {fold('partial', 'ocannl_red[other][team]')};",
        ]
    elif team <= 32:
        if team > 1:
            lines += shuffle(team // 2, team)
    else:
        warps = THREADS // 32
        lines += shuffle(16, 32)
        lines += [
            "    if (threadIdx.x % 32 == 0) ocannl_red[threadIdx.x / 32] = partial;",
            "    __syncthreads();",
            "    if (threadIdx.x < 32) {",
            f"      partial = threadIdx.x < {warps} ? ocannl_red[threadIdx.x] : {neutral};",
            *("  " + line for line in shuffle(warps // 2, 32)),
            "    }",
        ]
    lines.append("    if (active && lane == 0) {")
    if parts > 1:
        lines.append(f"      {syntax.buffer(red.partials)}[{cell} * {parts} + part] = partial;")
    else:
        acc = syntax.local(shape.acc.name)
        lines.append(f"      {acc} = {fold(acc, 'partial')};")
        for s in shape.post:
            lines += syntax.stmt(s, 3)
    lines.append("    }")
    if barrier:
        lines.append("    __syncthreads();  // before the next unit reuses ocannl_red")
    lines += ["  }", "}"]
    return "\n".join(lines), Launch(name, blocks, THREADS)

"""The tiled matrix-product kernels (see `arrayjit.schedule.gpu_matmul`)."""

from __future__ import annotations

import math

from arrayjit import loop_ir as ir
from arrayjit.codegen.cuda_device import Launch
from arrayjit.indexing import Iterator, as_affine
from arrayjit.schedule.gpu_matmul import SUB, TILE, TILE_K
from arrayjit.schedule.kernel_plan import THREADS, KernelPlan
from arrayjit.tnode import TNode


def matmul_kernel(syntax, plan: KernelPlan, name: str, tnodes: list[TNode]):
    """A block computes a TILE x TILE output tile from TILE_K-deep tiles of x and y staged
    in shared memory; a thread keeps SUB x SUB accumulators in registers (rows ty + 16 r,
    columns tx + 16 c, so shared reads are conflict-free and stores coalesce). Each
    accumulator sums over k in order, as the one-thread-per-cell kernel does."""
    m = plan.matmul
    t = m.acc.dtype.c_name
    rows, cols, depth = m.row.extent, m.col.extent, m.reduction.extent
    i, j, k = m.row.iterator, m.col.iterator, m.reduction.iterator
    batch = math.prod(b.extent for b in m.batch)
    pad = TILE + 4  # padding makes the transposed tile stores conflict-free
    lines = [
        syntax.head(name, tnodes),
        f"  __shared__ {t} tile_x[{TILE_K}][{pad}];",
        f"  __shared__ {t} tile_y[{TILE_K}][{pad}];",
        "  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;",
        f"  const int row0 = blockIdx.y * {TILE}, col0 = blockIdx.x * {TILE};",
    ]
    if m.batch:
        lines += syntax.unflatten(m.batch, "blockIdx.z", 1)
    acc = syntax.local(m.acc.name)
    syntax.renamed = {i: "row", j: "col"}
    lines += [
        f"  {t} {acc}[{SUB}][{SUB}];",
        f"  #pragma unroll\n  for (int r = 0; r < {SUB}; ++r) {{",
        f"    #pragma unroll\n    for (int c = 0; c < {SUB}; ++c) {{",
        "      const int row = row0 + ty + 16 * r, col = col0 + tx + 16 * c;",
        f"      {acc}[r][c] = (row < {rows} && col < {cols}) ? {syntax.expr(m.acc.init)} : ({t})0;",
        "    }",
        "  }",
        f"  for (int k0 = 0; k0 < {depth}; k0 += {TILE_K}) {{",
    ]
    lines += _load_tile(syntax, "tile_x", m.x, i, k, rows, depth, "row0")
    lines += _load_tile(syntax, "tile_y", m.y, j, k, cols, depth, "col0")
    syntax.renamed = {}
    combine = m.update.args[1]
    operands = ["xs[r]", "ys[c]"] if combine.args[0] is m.x else ["ys[c]", "xs[r]"]
    product = syntax.apply(combine.op, combine.dtype, *operands)
    step = syntax.apply(m.update.op, m.update.dtype, f"{acc}[r][c]", product)
    body = [
        f"{t} xs[{SUB}], ys[{SUB}];",
        "#pragma unroll",
        f"for (int r = 0; r < {SUB}; ++r) xs[r] = tile_x[kk][ty + 16 * r];",
        "#pragma unroll",
        f"for (int c = 0; c < {SUB}; ++c) ys[c] = tile_y[kk][tx + 16 * c];",
        "#pragma unroll",
        f"for (int r = 0; r < {SUB}; ++r)",
        "  #pragma unroll",
        f"  for (int c = 0; c < {SUB}; ++c) {acc}[r][c] = {step};",
    ]
    body = ["        " + line for line in body]
    lines += [
        "    __syncthreads();",
        f"    if (k0 + {TILE_K} <= {depth}) {{",
        "      #pragma unroll",
        f"      for (int kk = 0; kk < {TILE_K}; ++kk) {{",
        *body,
        "      }",
        "    } else {",
        f"      for (int kk = 0; kk < {depth} - k0; ++kk) {{",
        *body,
        "      }",
        "    }",
        "    __syncthreads();",
        "  }",
    ]
    syntax.renamed = {i: "row", j: "col"}
    target = f"{syntax.buffer(m.store.tnode)}[{syntax.offset(m.store.tnode, m.store.index)}]"
    syntax.renamed = {}
    lines += [
        f"  #pragma unroll\n  for (int r = 0; r < {SUB}; ++r) {{",
        f"    #pragma unroll\n    for (int c = 0; c < {SUB}; ++c) {{",
        "      const int row = row0 + ty + 16 * r, col = col0 + tx + 16 * c;",
        f"      if (row < {rows} && col < {cols}) {target} = {acc}[r][c];",
        "    }",
        "  }",
        "}",
    ]
    grid = (math.ceil(cols / TILE), math.ceil(rows / TILE), batch)
    return "\n".join(lines), Launch(name, grid, THREADS)


def _load_tile(syntax, tile, value, side, k, extent, depth, origin):
    """Threads fill `tile[kk][s]` with `value` at (side = origin + s, k = k0 + kk); the index
    with the smaller memory stride varies fastest across threads, so loads coalesce."""
    k_fast = _stride(value, k) < _stride(value, side)
    if k_fast:
        s, kk = f"l / {TILE_K}", f"l % {TILE_K}"
    else:
        s, kk = f"l % {TILE}", f"l / {TILE}"
    syntax.renamed = {**syntax.renamed, side: "ts", k: "tk"}
    t = (value.tnode.dtype if isinstance(value, ir.Get) else value.dtype).c_name
    lines = [
        f"    for (int l = threadIdx.x; l < {TILE * TILE_K}; l += {THREADS}) {{",
        f"      const int s = {s}, kk = {kk};",
        f"      const int ts = {origin} + s, tk = k0 + kk;",
        f"      {tile}[kk][s] = (ts < {extent} && tk < {depth}) ? {syntax.expr(value)} : ({t})0;",
        "    }",
    ]
    syntax.renamed = {key: v for key, v in syntax.renamed.items() if key not in (side, k)}
    return lines


def _stride(e: ir.Expr, it: Iterator) -> int:
    """The memory stride of `it` in the first buffer read by `e` (large when absent)."""
    from arrayjit.lowering import row_major_offset

    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            terms, _ = as_affine(row_major_offset(x.tnode.dims, x.index))
            return next((abs(c) for c, term in terms if term == it), 1 << 62)
    return 1 << 62

"""The CUDA C++ printer: the shared C printer with device helpers, one kernel per `KernelPlan`
(a grid-stride loop over the flattened grid loops), and the shared-memory tiled matrix product."""

from __future__ import annotations

import math

from arrayjit import loop_ir as ir
from arrayjit.codegen.c_syntax import INT32_MAX, CSyntax, index_type
from arrayjit.indexing import Iterator, as_affine
from arrayjit.schedule.gpu_kernels import (
    MAX_BLOCKS,
    SUB,
    THREADS,
    TILE,
    TILE_K,
    KernelPlan,
    MatmulShape,
)
from arrayjit.tnode import TNode

#: NVRTC has no libc headers: the few names the C templates use.
PRELUDE = """\
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
"""


class CudaSyntax(CSyntax):
    """The shared C printer, with device helper functions and iterators that can be renamed to
    expressions (for the tiled kernel's tile-relative indices)."""

    function_qualifier = "__device__ __forceinline__"

    def begin(self, tnodes: list[TNode]) -> None:
        super().begin(tnodes)
        self.renamed: dict[Iterator, str] = {}

    def iterator(self, it) -> str:
        return self.renamed.get(it) or super().iterator(it)

    def params(self, tnodes: list[TNode]) -> str:
        return ", ".join(f"{t.dtype.c_name} *__restrict__ {self.buffer(t)}" for t in tnodes)

    def kernel(self, plan: KernelPlan, name: str, tnodes: list[TNode]) -> tuple[str, int, int]:
        """The source of one kernel, its grid size and its block size."""
        if plan.matmul is not None:
            return self.tiled_matmul(plan.matmul, name, tnodes)
        head = f'extern "C" __global__ void __launch_bounds__({THREADS}) {name}({self.params(tnodes)}) {{'
        lines = [head]
        for decl in plan.prologue:
            lines += self.stmt(decl, 1)
        if not plan.grid:
            lines += [line for s in plan.body for line in self.stmt(s, 1)]
            return "\n".join([*lines, "}"]), 1, 1
        cells = plan.cells
        blocks = min(math.ceil(cells / THREADS), MAX_BLOCKS)
        wide = cells + blocks * THREADS > INT32_MAX
        index = "long long" if wide else "int"
        cast = "(long long)" if wide else ""
        lines.append(
            f"  for ({index} cell = {cast}blockIdx.x * blockDim.x + threadIdx.x; cell < {cells};"
            f" cell += {cast}blockDim.x * gridDim.x) {{"
        )
        lines += self.unflatten(plan.grid, "cell", 2)
        lines += [line for s in plan.body for line in self.stmt(s, 2)]
        lines += ["  }", "}"]
        return "\n".join(lines), blocks, THREADS

    def unflatten(self, loops: list[ir.For], linear: str, indent: int) -> list[str]:
        """Declare each loop's iterator from a linear index, the last loop varying fastest."""
        pad = "  " * indent
        lines = []
        for k, loop in enumerate(loops):
            inner = math.prod(x.extent for x in loops[k + 1 :])
            value = f"{linear} / {inner}" if inner > 1 else linear
            if k > 0:
                value = f"({value}) % {loop.extent}" if inner > 1 else f"{value} % {loop.extent}"
            kind = index_type(loop.extent)
            lines.append(f"{pad}const {kind} {self.iterator(loop.iterator)} = ({kind})({value});")
        return lines

    def tiled_matmul(self, m: MatmulShape, name: str, tnodes: list[TNode]) -> tuple[str, int, int]:
        """A block computes a TILE x TILE output tile from TILE_K-deep tiles of x and y staged
        in shared memory; a thread keeps SUB x SUB accumulators in registers (rows ty + 16 r,
        columns tx + 16 c, so shared reads are conflict-free and stores coalesce). Each
        accumulator sums over k in order, as the one-thread-per-cell kernel does."""
        t = m.acc.dtype.c_name
        rows, cols, depth = m.row.extent, m.col.extent, m.reduction.extent
        i, j, k = m.row.iterator, m.col.iterator, m.reduction.iterator
        batch = math.prod(b.extent for b in m.batch)
        pad = TILE + 4  # padding makes the transposed tile stores conflict-free
        # Tile origins and positions run up to a tile past the extents.
        pos = index_type(max(rows, cols, depth) + TILE)
        lines = [
            f'extern "C" __global__ void __launch_bounds__({THREADS}) {name}({self.params(tnodes)}) {{',
            f"  __shared__ {t} tile_x[{TILE_K}][{pad}];",
            f"  __shared__ {t} tile_y[{TILE_K}][{pad}];",
            "  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;",
            f"  const {pos} row0 = ({pos})blockIdx.y * {TILE}, col0 = ({pos})blockIdx.x * {TILE};",
        ]
        if m.batch:
            lines += self.unflatten(m.batch, "blockIdx.z", 1)
        acc = self.local(m.acc.name)
        self.renamed = {i: "row", j: "col"}
        lines += [
            f"  {t} {acc}[{SUB}][{SUB}];",
            f"  #pragma unroll\n  for (int r = 0; r < {SUB}; ++r) {{",
            f"    #pragma unroll\n    for (int c = 0; c < {SUB}; ++c) {{",
            f"      const {pos} row = row0 + ty + 16 * r, col = col0 + tx + 16 * c;",
            f"      {acc}[r][c] = (row < {rows} && col < {cols}) ? {self.expr(m.acc.init)} : ({t})0;",
            "    }",
            "  }",
            f"  for ({pos} k0 = 0; k0 < {depth}; k0 += {TILE_K}) {{",
        ]
        lines += self._load_tile("tile_x", m.x, i, k, rows, depth, "row0", pos)
        lines += self._load_tile("tile_y", m.y, j, k, cols, depth, "col0", pos)
        self.renamed = {}
        combine = m.update.args[1]
        operands = ["xs[r]", "ys[c]"] if combine.args[0] is m.x else ["ys[c]", "xs[r]"]
        product = self.apply(combine.op, combine.dtype, *operands)
        step = self.apply(m.update.op, m.update.dtype, f"{acc}[r][c]", product)
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
        self.renamed = {i: "row", j: "col"}
        target = f"{self.buffer(m.store.tnode)}[{self.offset(m.store.tnode, m.store.index)}]"
        self.renamed = {}
        lines += [
            f"  #pragma unroll\n  for (int r = 0; r < {SUB}; ++r) {{",
            f"    #pragma unroll\n    for (int c = 0; c < {SUB}; ++c) {{",
            f"      const {pos} row = row0 + ty + 16 * r, col = col0 + tx + 16 * c;",
            f"      if (row < {rows} && col < {cols}) {target} = {acc}[r][c];",
            "    }",
            "  }",
            "}",
        ]
        grid = (math.ceil(cols / TILE), math.ceil(rows / TILE), batch)
        return "\n".join(lines), grid, THREADS

    def _load_tile(
        self,
        tile: str,
        value: ir.Expr,
        side: Iterator,
        k: Iterator,
        extent: int,
        depth: int,
        origin: str,
        pos: str,
    ) -> list[str]:
        """Threads fill `tile[kk][s]` with `value` at (side = origin + s, k = k0 + kk); the index
        with the smaller memory stride varies fastest across threads, so loads coalesce."""
        k_fast = _stride(value, k) < _stride(value, side)
        if k_fast:
            s, kk = f"l / {TILE_K}", f"l % {TILE_K}"
        else:
            s, kk = f"l % {TILE}", f"l / {TILE}"
        self.renamed = {**self.renamed, side: "ts", k: "tk"}
        t = (value.tnode.dtype if isinstance(value, ir.Get) else value.dtype).c_name
        lines = [
            f"    for (int l = threadIdx.x; l < {TILE * TILE_K}; l += {THREADS}) {{",
            f"      const int s = {s}, kk = {kk};",
            f"      const {pos} ts = {origin} + s, tk = k0 + kk;",
            f"      {tile}[kk][s] = (ts < {extent} && tk < {depth}) ? {self.expr(value)} : ({t})0;",
            "    }",
        ]
        self.renamed = {key: v for key, v in self.renamed.items() if key not in (side, k)}
        return lines


def _stride(e: ir.Expr, it: Iterator) -> int:
    """The memory stride of `it` in the first buffer read by `e` (large when absent)."""
    from arrayjit.lowering import row_major_offset

    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            terms, _ = as_affine(row_major_offset(x.tnode.dims, x.index))
            return next((abs(c) for c, term in terms if term == it), 1 << 62)
    return 1 << 62


def kernel_source(
    syntax: CudaSyntax, plans: list[KernelPlan], tnodes: list[TNode], function: str, stmt: ir.Stmt
) -> tuple[str, list[tuple[str, object, int]]]:
    """The whole .cu source and, per kernel, (name, grid, block)."""
    dtypes = sorted({t.dtype for t in tnodes}, key=lambda d: d.name)
    syntax.begin(tnodes)
    parts = [PRELUDE, syntax.prelude(dtypes, ir.ops_used(stmt))]
    launches = []
    for n, plan in enumerate(plans):
        name = f"{function}_k{n}"
        text, grid, block = syntax.kernel(plan, name, tnodes)
        parts.append(text)
        launches.append((name, grid, block))
    return "\n".join(parts) + "\n", launches

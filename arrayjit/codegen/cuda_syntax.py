"""The CUDA C++ printer: the shared C printer with device helpers, and one kernel per
`KernelPlan`: a grid-stride loop over the flattened grid loops (one thread per cell), a single
thread, or one of the forms printed by `cuda_reductions`, `cuda_rows` and `cuda_matmul`."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from arrayjit import loop_ir as ir
from arrayjit.codegen import cuda_matmul, cuda_reductions, cuda_rows, cuda_wgmma
from arrayjit.codegen.c_syntax import INT32_MAX, CSyntax, index_type
from arrayjit.codegen.cuda_device import (
    ASYNC_COPY_HELPERS,
    COMPONENTS,
    MMA_HELPERS,
    PRELUDE,
    VECTOR_TYPES,
    WGMMA_HELPERS,
    Launch,
    letters,
    vector_type,
    wgmma_function,
)
from arrayjit.indexing import Iterator
from arrayjit.schedule import gpu_pointwise
from arrayjit.schedule.gpu_kernels import MAX_BLOCKS, THREADS, GpuOptions, KernelPlan, plan_kernels
from arrayjit.schedule.gpu_wgmma import TensorMapSpec
from arrayjit.tnode import TNode


class CudaSyntax(CSyntax):
    """The shared C printer, with device helper functions, iterators that can be renamed to
    expressions (tile-relative indices, vector components) and reads that can be replaced by
    names (values already loaded)."""

    function_qualifier = "__device__ __forceinline__"
    openmp = False
    #: 16-bit floats are CUDA's own types (NVRTC ships these headers); their conversions round
    #: to nearest even.
    conversions = "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n"
    #: Threads that find indices outside their axis race to record theirs: one wins, whole.
    index_check = """\
OCANNL_FN int64_t ocannl_index(int64_t i, int64_t bound, int32_t *errors, int32_t site) {
  if (i >= 0 && i < bound) return i;
  if (atomicCAS(errors, 0, -1) == 0) { errors[1] = (int32_t)i; __threadfence(); errors[0] = site; }
  return 0;
}
"""
    _TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}
    _WIDEN = {"float16": "__half2float", "bfloat16": "__bfloat162float"}
    _NARROW = {"float16": "__float2half_rn", "bfloat16": "__float2bfloat16_rn"}

    def type_name(self, dtype) -> str:
        return self._TYPES.get(dtype.name, dtype.c_name)

    def widen(self, dtype, text: str) -> str:
        return f"{self._WIDEN[dtype.name]}({text})"

    def narrow(self, dtype, text: str) -> str:
        return f"{self._NARROW[dtype.name]}({text})"

    def begin(self, tnodes: list[TNode], placeholders: bool = False) -> None:
        super().begin(tnodes, placeholders)
        self.renamed: dict[Iterator, str] = {}
        self.substituted: dict[ir.Expr, str] = {}

    def iterator(self, it) -> str:
        return self.renamed.get(it) or super().iterator(it)

    def expr(self, e: ir.Expr) -> str:
        if self.substituted and e in self.substituted:
            return self.substituted[e]
        return super().expr(e)

    def params(self, tnodes: list[TNode], shared: Collection[TNode] = ()) -> str:
        """The buffer parameters; those in `shared` (through which the kernel's threads pass
        values to one another) without `__restrict__`, which would let the compiler move their
        reads across barriers."""
        return ", ".join(
            f"{self.type_name(t.dtype)} *{'' if t in shared else '__restrict__ '}{self.buffer(t)}"
            for t in tnodes
        )

    def head(
        self,
        name: str,
        tnodes: list[TNode],
        threads: int = THREADS,
        blocks: int = 0,
        shared: Collection[TNode] = (),
    ) -> str:
        """A kernel's first line; `blocks`: resident blocks per multiprocessor to keep registers
        for (the compiler caps each thread's registers accordingly); `shared`: see `params`."""
        bounds = f"{threads}, {blocks}" if blocks else f"{threads}"
        return (
            f'extern "C" __global__ void __launch_bounds__({bounds}) {name}'
            f"({self.params(tnodes, shared)}) {{"
        )

    def kernel(self, plan: KernelPlan, name: str, tnodes: list[TNode]) -> tuple[str, Launch]:
        """The source of one kernel and its launch."""
        if plan.matmul is not None and plan.matmul.wgmma is not None:
            return cuda_wgmma.wgmma_kernel(self, plan, name, tnodes)
        if plan.matmul is not None:
            return cuda_matmul.matmul_kernel(self, plan, name, tnodes)
        if plan.reduction is not None:
            return cuda_reductions.reduction_kernel(self, plan, name, tnodes)
        if plan.rows is not None:
            return cuda_rows.rows_kernel(self, plan, name, tnodes)
        lines = [self.head(name, tnodes)]
        for decl in plan.prologue:
            lines += self.stmt(decl, 1)
        if not plan.grid:
            lines += [line for s in plan.body for line in self.stmt(s, 1)]
            return "\n".join([*lines, "}"]), Launch(name, 1, 1)
        if plan.vector > 1:
            return self.vector_kernel(plan, name, lines)
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
        return "\n".join(lines), Launch(name, blocks, THREADS)

    def vector_kernel(self, plan: KernelPlan, name: str, lines: list[str]) -> tuple[str, Launch]:
        """One thread per `plan.vector` neighbouring cells along the innermost grid loop: each
        moving read loaded once as a vector, the cells computed in turn (each in a scope of its
        own, for its locals), each stored buffer written as one vector."""
        vector = plan.vector
        groups = plan.cells // vector
        blocks = min(math.ceil(groups / THREADS), MAX_BLOCKS)
        wide = plan.cells + blocks * THREADS * vector > INT32_MAX
        index = "long long" if wide else "int"
        cast = "(long long)" if wide else ""
        lines.append(
            f"  for ({index} group = {cast}blockIdx.x * blockDim.x + threadIdx.x; group < {groups};"
            f" group += {cast}blockDim.x * gridDim.x) {{"
        )
        lines.append(f"    const {index} cell = group * {vector};")
        lines += self.unflatten(plan.grid, "cell", 2)
        loads = {get: f"load{letters(n)}" for n, get in enumerate(gpu_pointwise.moving_reads(plan))}
        _, sets = gpu_pointwise.accesses(plan)
        stores = {(s.tnode, s.index): f"store{letters(n)}" for n, s in enumerate(sets)}
        for get, load in loads.items():
            vt = vector_type(get.tnode.dtype.c_name, vector)
            address = f"&{self.buffer(get.tnode)}[{self.offset(get.tnode, get.index)}]"
            lines.append(f"    const {vt} {load} = *reinterpret_cast<const {vt} *>({address});")
        for (tnode, _), store in stores.items():
            lines.append(f"    {vector_type(tnode.dtype.c_name, vector)} {store};")
        innermost = plan.grid[-1].iterator
        first = self.iterator(innermost)
        for u in range(vector):
            if u:
                self.renamed[innermost] = f"({first} + {u})"
            self.substituted = {get: f"{load}.{COMPONENTS[u]}" for get, load in loads.items()}
            lines.append("    {")
            for s in plan.body:
                if isinstance(s, ir.Set):
                    store = stores[(s.tnode, s.index)]
                    lines.append(f"      {store}.{COMPONENTS[u]} = {self.expr(s.value)};")
                else:
                    lines += self.stmt(s, 3)
            lines.append("    }")
        self.renamed.pop(innermost, None)
        self.substituted = {}
        for (tnode, index_), store in stores.items():
            vt = vector_type(tnode.dtype.c_name, vector)
            address = f"&{self.buffer(tnode)}[{self.offset(tnode, index_)}]"
            lines.append(f"    *reinterpret_cast<{vt} *>({address}) = {store};")
        lines += ["  }", "}"]
        return "\n".join(lines), Launch(name, blocks, THREADS)

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


def kernel_source(
    syntax: CudaSyntax, plans: list[KernelPlan], tnodes: list[TNode], function: str, stmt: ir.Stmt
) -> tuple[str, list[tuple[str, object, int]]]:
    """The whole .cu source and, per kernel, (name, grid, block)."""
    source, launches = _print(syntax, plans, tnodes, function, stmt)
    return source, [(launch.name, launch.grid, launch.block) for launch in launches]


def _print(
    syntax: CudaSyntax, plans: list[KernelPlan], tnodes: list[TNode], function: str, stmt: ir.Stmt
) -> tuple[str, list[Launch]]:
    dtypes = sorted({t.dtype for t in tnodes}, key=lambda d: d.name)
    syntax.begin(tnodes)
    checks = bool(ir.index_checks(stmt))
    parts = [PRELUDE, VECTOR_TYPES, syntax.prelude(dtypes, ir.ops_used(stmt), checks)]
    matmuls = [plan.matmul for plan in plans if plan.matmul is not None]
    if matmuls:
        parts.append(ASYNC_COPY_HELPERS)
    if any(m.config.tensor_cores for m in matmuls):
        parts.append(MMA_HELPERS)
    wgmmas = sorted({(m.config.tensor_cores, m.config.block_cols) for m in matmuls if m.wgmma})
    if wgmmas:
        parts.append(WGMMA_HELPERS)
        parts += [wgmma_function(kind, n) for kind, n in wgmmas]
    texts, launches = [], []
    for n, plan in enumerate(plans):
        text, launch = syntax.kernel(plan, f"{function}_k{n}", tnodes)
        texts.append(text)
        launches.append(launch)
    return "\n".join([*parts, *texts]) + "\n", launches


@dataclass
class Generated:
    """A routine's kernels: the plans, the buffers they take (the IR's, then scratch buffers the
    plans added), the source and the launches, one per plan. `tensor_maps`: the scratch buffers
    that must hold a TMA tensor map (written by the backend, which knows the addresses);
    `arch_suffix`: "a" when the source needs the architecture-specific target (sm_90a)."""

    stmt: ir.Stmt
    plans: list[KernelPlan]
    tnodes: list[TNode]
    scratch: list[TNode]
    source: str
    launches: list[Launch]
    tensor_maps: dict[TNode, TensorMapSpec] = field(default_factory=dict)
    arch_suffix: str = ""


def generate(stmt: ir.Stmt, function: str, options: GpuOptions | None = None) -> Generated:
    """Plan the kernels of `stmt` and print them."""
    plans = plan_kernels(stmt, options)
    scratch = list(dict.fromkeys(t for plan in plans for t in plan.scratch))
    tnodes = [*ir.tnodes_in(stmt), *scratch]
    source, launches = _print(CudaSyntax(), plans, tnodes, function, stmt)
    tensor_maps = {}
    for plan in plans:
        if plan.matmul is not None and plan.matmul.wgmma is not None:
            w = plan.matmul.wgmma
            tensor_maps.update(zip(w.maps, (w.a.spec, w.b.spec), strict=True))
    suffix = "a" if tensor_maps else ""
    return Generated(stmt, plans, tnodes, scratch, source, launches, tensor_maps, suffix)

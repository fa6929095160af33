"""The CUDA backend: loop IR printed as CUDA C++ kernels, compiled by NVRTC into a cubin for the
device's own architecture, launched with cuda.core.

Kernels. Each top-level loop nest of the routine becomes one kernel, launched in order on one
stream. The outermost run of parallel loops of a nest is flattened onto the grid (a grid-stride
loop over one linear index, the innermost loop fastest so neighbouring threads touch neighbouring
cells); the loops inside it (reductions, with their register accumulator) stay inside the thread.
A nest shaped like a matrix product (`acc = acc op f(x[.., i, k], y[.., k, j])` over an innermost
reduction `k`, under parallel `i, j`) gets a shared-memory tiled kernel instead. Statements that
are not parallel loops run in a kernel of one thread. Hoisted locals that several kernels read are
recomputed at the start of each.

Memory. Buffers of HOST and DEVICE tnodes live on the device between routines, allocated from the
device's memory pool; scratch buffers of LOCAL and VIRTUAL tnodes belong to one routine. Host
values go up on a copy stream through pinned staging buffers whenever `tnode.host_version` moved;
compute waits on an event for them. A routine that writes a buffer leaves a callback in
`tnode.fetch_from_device`, so `tnode.host()` copies the values back only when read, only when
stale.

cuda-python is imported inside functions only: without it (or without a GPU or driver),
`cuda_available()` is False and `CudaBackend()` raises a RuntimeError that says why.
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arrayjit import cache, ops
from arrayjit import loop_ir as ir
from arrayjit.backends.base import Backend, Compiled
from arrayjit.codegen.c_syntax import INT32_MAX, CSyntax
from arrayjit.errors import CompileError
from arrayjit.indexing import Iterator, as_affine, iterators_of
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")

THREADS = 256
#: The grid-stride loop caps the grid at this many blocks.
MAX_BLOCKS = 1 << 20
#: NVRTC options (besides the architecture); part of the cache key.
NVRTC_OPTIONS = {"std": "c++17"}

#: NVRTC has no libc headers: the few names the C templates use.
PRELUDE = """\
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
"""

# ---- availability ------------------------------------------------------------------------


@functools.cache
def unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can. Never raises."""
    try:
        import cuda.core  # noqa: F401
        from cuda.bindings import driver
    except Exception as exc:  # ImportError, or a broken install
        return f"cuda-python (the packages cuda-core and cuda-bindings) cannot be imported: {exc}"
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return f"the NVIDIA driver cannot be initialized ({err.name}): no GPU or driver here"
        err, count = driver.cuDeviceGetCount()
        if err != driver.CUresult.CUDA_SUCCESS or count == 0:
            return "the NVIDIA driver sees no CUDA device"
    except Exception as exc:  # libcuda missing or unloadable
        return f"the NVIDIA driver cannot be used: {exc}"
    return None


def cuda_available() -> bool:
    """Whether a CUDA device, its driver and cuda-python are all usable here."""
    return unavailable_reason() is None


# ---- kernels: which statements go where --------------------------------------------------


@dataclass
class MatmulShape:
    """A nest `acc = acc op f(x, y)` over reduction `k`, with x free of `j` and y free of `i`."""

    batch: list[ir.For]
    row: ir.For
    col: ir.For
    reduction: ir.For
    acc: ir.DeclLocal
    update: ir.Apply  # op(Local acc, combine(x, y))
    x: ir.Expr
    y: ir.Expr
    store: ir.Set


@dataclass
class KernelPlan:
    """One kernel: the loops flattened onto the grid (none: one thread), the statements each
    thread runs, and the hoisted locals it recomputes first."""

    grid: list[ir.For]
    body: list[ir.Stmt]
    prologue: list[ir.DeclLocal] = field(default_factory=list)
    matmul: MatmulShape | None = None

    @property
    def cells(self) -> int:
        return math.prod(loop.extent for loop in self.grid)


def _top_level(stmt: ir.Stmt) -> list[ir.Stmt]:
    stmts = stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)
    return [s for s in stmts if not isinstance(s, ir.Comment)]


def _mutated_locals(stmt: ir.Stmt) -> set[str]:
    if isinstance(stmt, ir.For):
        return _mutated_locals(stmt.body)
    if isinstance(stmt, ir.Block):
        return set().union(*(_mutated_locals(s) for s in stmt.stmts)) if stmt.stmts else set()
    return {stmt.name} if isinstance(stmt, ir.SetLocal) else set()


def _declared_locals(stmt: ir.Stmt) -> set[str]:
    if isinstance(stmt, ir.For):
        return _declared_locals(stmt.body)
    if isinstance(stmt, ir.Block):
        return set().union(*(_declared_locals(s) for s in stmt.stmts)) if stmt.stmts else set()
    return {stmt.name} if isinstance(stmt, ir.DeclLocal) else set()


def _read_locals(stmts: Sequence[ir.Stmt]) -> set[str]:
    """The locals that `stmts` read or assign."""
    block = ir.Block(tuple(stmts))
    read = {e.name for e in ir.stmt_exprs(block) if isinstance(e, ir.Local)}
    return read | _mutated_locals(block)


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


def plan_kernels(stmt: ir.Stmt) -> list[KernelPlan]:
    """Split a routine into kernels: see the module docstring."""
    mutated = _mutated_locals(stmt)
    # Locals declared once at top level, never reassigned: recomputed by each kernel reading them.
    shared: dict[str, ir.DeclLocal] = {}
    # Each plan with the shared locals valid where it starts.
    plans: list[tuple[KernelPlan, dict[str, ir.DeclLocal]]] = []
    serial: list[ir.Stmt] = []

    for s in _top_level(stmt):
        if (
            isinstance(s, ir.DeclLocal)
            and s.name not in mutated
            and _read_locals([s]) <= set(shared)
        ):
            shared[s.name] = s
            if serial:
                serial.append(s)  # later statements of the same one-thread kernel read it here
            continue
        if (
            isinstance(s, ir.For)
            and s.parallel
            and not (_read_locals([s]) & _declared_locals_of(serial))
        ):
            serial = []
            grid, body = _grid_run(s, mutated)
            plans.append((KernelPlan(grid, body), dict(shared)))
        else:
            if not serial:
                plans.append((KernelPlan([], serial), dict(shared)))
            serial.append(s)
        # A shared local whose buffers this statement writes would be stale in later kernels.
        written = ir.written_tnodes(s)
        for name, decl in list(shared.items()):
            if ir.read_tnodes(decl) & written:
                del shared[name]

    for plan, available in plans:
        needed = _read_locals(plan.body) - _declared_locals_of(plan.body)
        closure = _closure(needed, available)
        if closure is None:
            log.debug("a local crosses kernels: the routine runs as one thread")
            return [KernelPlan([], _top_level(stmt))]
        plan.prologue = [d for d in available.values() if d.name in closure]
        plan.matmul = _matmul_shape(plan)
    return [plan for plan, _ in plans]


def _declared_locals_of(stmts: list[ir.Stmt]) -> set[str]:
    return _declared_locals(ir.Block(tuple(stmts)))


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


def _expr_iterators(e: ir.Expr) -> set[Iterator]:
    out: set[Iterator] = set()
    for x in ir.walk_exprs(e):
        if isinstance(x, ir.Get):
            out.update(it for idx in x.index for it in iterators_of(idx))
        elif isinstance(x, ir.IndexValue):
            out.update(iterators_of(x.index))
    return out


def _has_local(e: ir.Expr) -> bool:
    return any(isinstance(x, ir.Local) for x in ir.walk_exprs(e))


def _matmul_shape(plan: KernelPlan) -> MatmulShape | None:
    """Recognize the nest that the tiled kernel computes; None for anything else."""
    if len(plan.grid) < 2 or plan.prologue or len(plan.body) != 3:
        return None
    decl, loop, store = plan.body
    if not (
        isinstance(decl, ir.DeclLocal)
        and isinstance(loop, ir.For)
        and not loop.parallel
        and isinstance(loop.body, ir.SetLocal)
        and loop.body.name == decl.name
        and isinstance(store, ir.Set)
        and store.value == ir.Local(decl.name, decl.dtype)
        and decl.dtype.is_float
        and not _has_local(decl.init)
    ):
        return None
    update = loop.body.value
    if not (
        isinstance(update, ir.Apply)
        and len(update.args) == 2
        and update.args[0] == ir.Local(decl.name, decl.dtype)
        and isinstance(update.args[1], ir.Apply)
        and len(update.args[1].args) == 2
    ):
        return None
    *batch, row, col = plan.grid
    first, second = update.args[1].args
    k = loop.iterator
    outer = {b.iterator for b in batch}
    if _has_local(first) or _has_local(second):
        return None
    first_its, second_its = _expr_iterators(first), _expr_iterators(second)
    if first_its <= outer | {row.iterator, k} and second_its <= outer | {k, col.iterator}:
        x, y = first, second
    elif second_its <= outer | {row.iterator, k} and first_its <= outer | {k, col.iterator}:
        x, y = second, first
    else:
        return None
    if row.extent < 32 or col.extent < 32 or math.prod(b.extent for b in batch) > 65535:
        return None
    if math.ceil(row.extent / TILE) > 65535:
        return None
    return MatmulShape(batch, row, col, loop, decl, update, x, y, store)


# ---- printing ----------------------------------------------------------------------------

TILE = 128  # rows and columns of the output tile of one block of the tiled kernel
TILE_K = 8  # reduction steps per shared-memory tile
SUB = 8  # rows (and columns) of the output computed by one thread: TILE / 16


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
            lines.append(f"{pad}const int {self.iterator(loop.iterator)} = (int)({value});")
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
        lines = [
            f'extern "C" __global__ void __launch_bounds__({THREADS}) {name}({self.params(tnodes)}) {{',
            f"  __shared__ {t} tile_x[{TILE_K}][{pad}];",
            f"  __shared__ {t} tile_y[{TILE_K}][{pad}];",
            "  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;",
            f"  const int row0 = blockIdx.y * {TILE}, col0 = blockIdx.x * {TILE};",
        ]
        if m.batch:
            lines += self.unflatten(m.batch, "blockIdx.z", 1)
        acc = self.local(m.acc.name)
        self.renamed = {i: "row", j: "col"}
        lines += [
            f"  {t} {acc}[{SUB}][{SUB}];",
            f"  #pragma unroll\n  for (int r = 0; r < {SUB}; ++r) {{",
            f"    #pragma unroll\n    for (int c = 0; c < {SUB}; ++c) {{",
            "      const int row = row0 + ty + 16 * r, col = col0 + tx + 16 * c;",
            f"      {acc}[r][c] = (row < {rows} && col < {cols}) ? {self.expr(m.acc.init)} : ({t})0;",
            "    }",
            "  }",
            f"  for (int k0 = 0; k0 < {depth}; k0 += {TILE_K}) {{",
        ]
        lines += self._load_tile("tile_x", m.x, i, k, rows, depth, "row0")
        lines += self._load_tile("tile_y", m.y, j, k, cols, depth, "col0")
        self.renamed = {}
        combine = m.update.args[1]
        operands = ["xs[r]", "ys[c]"] if combine.args[0] is m.x else ["ys[c]", "xs[r]"]
        product = ops.get(combine.op).c_expr(combine.dtype, *operands)
        step = ops.get(m.update.op).c_expr(m.update.dtype, f"{acc}[r][c]", product)
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
            "      const int row = row0 + ty + 16 * r, col = col0 + tx + 16 * c;",
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
            f"      const int ts = {origin} + s, tk = k0 + kk;",
            f"      {tile}[kk][s] = (ts < {extent} && tk < {depth}) ? {self.expr(value)} : ({t})0;",
            "    }",
        ]
        self.renamed = {key: v for key, v in self.renamed.items() if key not in (side, k)}
        return lines


def _stride(e: ir.Expr, it: Iterator) -> int:
    """The memory stride of `it` in the first buffer read by `e` (large when absent)."""
    from arrayjit.lowering import row_major_offset

    for x in ir.walk_exprs(e):
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


# ---- NVRTC and the cubin cache -----------------------------------------------------------


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"nvrtcVersion failed: {err.name}")
    return f"{major}.{minor}"


def _nvrtc_compile(source: str, arch: str, source_path: Path) -> bytes:
    """Compile `source` to a cubin for `sm_<arch>`; CompileError with NVRTC's log on failure."""
    from cuda.core import Program, ProgramOptions

    options = ProgramOptions(arch=f"sm_{arch}", name=source_path.name, **NVRTC_OPTIONS)
    logs = io.StringIO()
    try:
        program = Program(source, "c++", options)
        code = program.compile("cubin", logs=logs)
    except Exception as exc:
        message = logs.getvalue() or str(exc)
        raise CompileError(
            "NVRTC failed to compile the generated CUDA code",
            str(source_path),
            message.replace("\x00", "").strip(),
        ) from None
    return bytes(code.code)


def build_cubin(source: str, arch: str) -> Path:
    """The cubin for `source`, from the cache or freshly compiled by NVRTC."""
    key = cache.key(source, repr(sorted(NVRTC_OPTIONS.items())), nvrtc_version(), arch)

    def build(source_path: Path, output: Path) -> None:
        start = time.perf_counter()
        output.write_bytes(_nvrtc_compile(source, arch, source_path))
        log.debug("NVRTC compiled %s in %.1f ms", source_path, 1e3 * (time.perf_counter() - start))

    return cache.artifact(key, ".cubin", source, ".cu", build)


# ---- device memory -----------------------------------------------------------------------


class DeviceCopy:
    """The device buffer of one HOST or DEVICE tnode in one backend, with a pinned staging buffer
    for its transfers (allocated on first use)."""

    def __init__(self, backend: CudaBackend, tnode: TNode) -> None:
        self.backend = backend
        self.tnode = weakref.ref(tnode)
        self.dims, self.dtype = tnode.dims, tnode.dtype.numpy
        self.nbytes = tnode.size * tnode.dtype.itemsize
        self.buffer = backend.allocate(self.nbytes)
        # Matches C, where a buffer nobody wrote reads as zeros.
        self.buffer.fill(0, stream=backend.stream)
        # The host version the device holds; None: not uploaded yet.
        self.uploaded_version: int | None = None if tnode.has_host else tnode.host_version
        self.written = None  # event after the last routine that wrote the buffer
        self.staging = None
        self.staging_array: np.ndarray | None = None
        self.staging_free = None  # event after the last copy through the staging buffer

    def _staging(self) -> np.ndarray:
        if self.staging is None:
            self.staging = self.backend.pinned.allocate(self.nbytes)
            raw = (ctypes.c_byte * self.nbytes).from_address(int(self.staging.handle))
            self.staging_array = np.frombuffer(raw, self.dtype).reshape(self.dims)
        elif self.staging_free is not None:
            self.staging_free.sync()
        return self.staging_array

    def upload(self, tnode: TNode) -> None:
        """Copy the host values up, asynchronously on the copy stream."""
        copy_stream = self.backend.copy_stream
        np.copyto(self._staging(), tnode.host())
        self.buffer.copy_from(self.staging, stream=copy_stream)
        self.staging_free = copy_stream.record()
        self.uploaded_version = tnode.host_version

    def fetch(self) -> None:
        """`tnode.fetch_from_device`: copy the device values into the host array."""
        tnode = self.tnode()
        if tnode is None:
            return
        if tnode.fetch_from_device == self.fetch:
            tnode.fetch_from_device = None  # before host(), which would call it again
        staging = self._staging()
        copy_stream = self.backend.copy_stream
        if self.written is not None:
            copy_stream.wait(self.written)
        self.buffer.copy_to(self.staging, stream=copy_stream)
        self.staging_free = copy_stream.record()
        self.staging_free.sync()
        np.copyto(tnode.host(), staging)
        # New host values: other devices holding an older copy must upload again.
        tnode.host_version += 1
        self.uploaded_version = tnode.host_version


# ---- compiled routines and the backend ---------------------------------------------------


class CudaCompiled(Compiled):
    def __init__(
        self,
        backend: CudaBackend,
        plans: list[KernelPlan],
        kernels: list,
        tnodes: list[TNode],
        arguments: list,
        persistent: list[TNode],
        written: list[TNode],
        source_path: str,
    ) -> None:
        self.backend = backend
        self.plans = plans
        self.kernels = kernels  # (kernel, launch config)
        self.tnodes = tnodes
        self.arguments = arguments  # device buffers, in the order of `tnodes`
        self.persistent = persistent
        self.written = written
        self.source_path = source_path

    def run(self) -> None:
        from cuda.core import launch

        backend = self.backend
        backend.upload_stale(self.persistent)
        for kernel, config in self.kernels:
            launch(backend.stream, config, kernel, *self.arguments)
        backend.mark_written(self.written)


class CudaBackend(Backend):
    name = "cuda"
    reductions_innermost = True

    def __init__(self, device_id: int = 0) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f'Context("cuda") cannot run here: {reason}. Use Context("c").')
        from cuda.core import Device, LegacyPinnedMemoryResource

        self.device = Device(device_id)
        self.device.set_current()
        self.arch = self.device.arch
        self.syntax = CudaSyntax()
        #: Matrix-product nests get the shared-memory tiled kernel (else one thread per cell).
        self.tile_matmul = True
        self.stream = self.device.create_stream()
        self.copy_stream = self.device.create_stream()
        self.pool = self.device.memory_resource
        self.pinned = LegacyPinnedMemoryResource()
        self.copies: weakref.WeakKeyDictionary[TNode, DeviceCopy] = weakref.WeakKeyDictionary()

    def allocate(self, nbytes: int):
        return self.pool.allocate(nbytes, stream=self.stream)

    def device_copy(self, tnode: TNode) -> DeviceCopy:
        copy = self.copies.get(tnode)
        if copy is None:
            copy = self.copies[tnode] = DeviceCopy(self, tnode)
        return copy

    def upload_stale(self, tnodes: list[TNode]) -> None:
        """Upload the tnodes whose host values the device does not hold; compute waits for them."""
        stale = []
        for t in tnodes:
            copy = self.copies[t]
            fetch = t.fetch_from_device
            if fetch is not None and getattr(fetch, "__self__", None) is not copy:
                t.host()  # another device holds the newest values: bring them here through the host
                stale.append(t)
            elif copy.uploaded_version != t.host_version:
                stale.append(t)
        if not stale:
            return
        # Uploads overwrite buffers that earlier work on the compute stream may still read.
        self.copy_stream.wait(self.stream.record())
        for t in stale:
            self.copies[t].upload(t)
        self.stream.wait(self.copy_stream.record())

    def mark_written(self, tnodes: list[TNode]) -> None:
        if not tnodes:
            return
        done = self.stream.record()
        for t in tnodes:
            copy = self.copies[t]
            copy.written = done
            t.fetch_from_device = copy.fetch

    def compile(self, stmt: ir.Stmt, name: str) -> CudaCompiled:
        from cuda.core import LaunchConfig, ObjectCode

        tnodes = ir.tnodes_in(stmt)
        function = "ocannl_" + "".join(c if c.isalnum() else "_" for c in name)[:60]
        plans = plan_kernels(stmt)
        if not self.tile_matmul:
            for plan in plans:
                plan.matmul = None
        source, launches = kernel_source(self.syntax, plans, tnodes, function, stmt)
        cubin = build_cubin(source, self.arch)
        try:
            module = ObjectCode.from_cubin(cubin.read_bytes())
            kernels = [
                (module.get_kernel(kernel), LaunchConfig(grid=grid, block=block))
                for kernel, grid, block in launches
            ]
        except Exception as exc:
            raise CompileError(
                f"cannot load {cubin}: {exc}", str(cubin.with_suffix(".cu"))
            ) from None
        persistent = [t for t in tnodes if t.memory_mode in (MemoryMode.HOST, MemoryMode.DEVICE)]
        scratch = {
            t: self.allocate(t.size * t.dtype.itemsize) for t in tnodes if t not in persistent
        }
        for buffer in scratch.values():
            buffer.fill(0, stream=self.stream)
        arguments = [scratch[t] if t in scratch else self.device_copy(t).buffer for t in tnodes]
        written = [t for t in ir.written_tnodes(stmt) if t in set(persistent)]
        written.sort(key=lambda t: t.id)
        return CudaCompiled(
            self,
            plans,
            kernels,
            tnodes,
            arguments,
            persistent,
            written,
            str(cubin.with_suffix(".cu")),
        )

    def synchronize(self) -> None:
        self.stream.sync()

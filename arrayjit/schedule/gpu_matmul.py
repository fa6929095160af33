"""Matrix-product nests on a GPU: recognizing them and choosing the tiled kernel's configuration.

A nest `acc = acc op f(x, y)` over an innermost reduction `k`, under parallel loops `..., i, j`,
with `x` free of `j` and `y` free of `i`, is a (generalized) matrix product: the tiled kernels of
`arrayjit.codegen.cuda_matmul` compute it block by block. A block stages `depth`-deep tiles of x
and y in shared memory, `stages` tiles ahead (asynchronous copies where the operand is a plain
read, so loads overlap the arithmetic), and either each thread keeps an 8 x 8 patch of the
output in registers (any ops, the k order of the sequential loop) or, for fp32 `+`/`*` products
when TF32 is allowed, warps multiply 16 x 8 x 8 fragments on the tensor cores.

Each operand tile is filled one of four ways (`OperandLoad.mode`): `async16`, 16-byte copies
along the output axis (the operand is contiguous and aligned along it) or, for tensor cores,
along k; `async`, one element per copy (any other plain read, transposed into the tile);
`compute`, the operand's expression evaluated by the threads (a fused computation on the
operand); `raw`, the 16-bit values of a plain read copied by the threads as bits (16-bit operands
that are not aligned for 16-byte copies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, iterators_of
from arrayjit.schedule import gpu_wgmma
from arrayjit.schedule.kernel_plan import GpuOptions, KernelPlan

#: Shared memory a block may have (227 KB on sm_90; kernels over 48 KB opt in at load time).
MAX_SHARED_BYTES = 227 * 1024


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes of the tiled kernel. `tensor_cores`: None (an 8 x `thread_cols` patch per
    thread, warps of 64 x 4 `thread_cols`), "tf32"
    (fp32 operands rounded to TF32, mma.sync m16n8k8) or "f16" / "bf16" (16-bit operands,
    mma.sync m16n8k16 fed by ldmatrix), each warp computing 64 x 64 in fp32. `wgmma`: the
    sm_90a form of `arrayjit.schedule.gpu_wgmma`, whose `block_rows` is the side of its A
    operand (64 per consumer warpgroup) and `block_cols` that of its B operand."""

    block_rows: int = 128
    block_cols: int = 128
    depth: int = 8
    stages: int = 4
    tensor_cores: str | None = None
    wgmma: bool = False
    #: Columns of a SIMT thread's patch (4, 8 or 16): 16 reads a quarter fewer shared values per
    #: product, with 128 accumulators a thread (one block a multiprocessor); 4 gives a small
    #: product twice the threads.
    thread_cols: int = 8
    #: wgmma: a tile's last product stays in flight while the next tile's are issued (its stage
    #: released one tile later) rather than all retired at the end of each tile.
    overlap: bool = False
    #: SIMT: k steps of a tile unrolled (0: all). Fewer keep the main loop of a deep tile or a
    #: wide patch small (a 16-deep 128 x 128 tile's unrolled loop is 1200 instructions, 19 KB).
    k_unroll: int = 0

    @property
    def threads(self) -> int:
        if self.wgmma:
            return 128 * (1 + self.block_rows // 64)
        if self.tensor_cores:
            return 32 * (self.block_rows // 64) * (self.block_cols // 64)
        return (self.block_rows // 8) * (self.block_cols // self.thread_cols)

    @property
    def blocks_per_multiprocessor(self) -> int:
        """The blocks a multiprocessor should hold (`__launch_bounds__`; registers follow)."""
        if self.tensor_cores:
            return 0
        return 2 if self.thread_cols == 8 and self.threads <= 256 else 1

    @property
    def padding(self) -> int:
        """Extra elements per tile row: conflict-free transposed stores (4) or fragment reads (8)."""
        return 8 if self.tensor_cores else 4

    def tile_elements(self, side: int, side_major: bool, itemsize: int = 4) -> int:
        """Elements of one stage of an operand's tile: `[depth][side + padding]`, or
        `[side][depth + 16 bytes]` when the operand is stored along k (see `OperandLoad`)."""
        if side_major:
            return side * (self.depth + 16 // itemsize)
        return self.depth * (side + self.padding)

    def shared_bytes(
        self, itemsize_x: int, itemsize_y: int, side_major: tuple[bool, bool] = (False, False)
    ) -> int:
        if self.wgmma:  # 1 KB to align the tiles, rows of 128 bytes, two mbarriers per stage
            # and a spare one
            return 1024 + self.stages * ((self.block_rows + self.block_cols) * 128 + 16) + 16
        x = self.tile_elements(self.block_rows, side_major[0], itemsize_x) * itemsize_x
        y = self.tile_elements(self.block_cols, side_major[1], itemsize_y) * itemsize_y
        return self.stages * (x + y)

    def describe(self) -> str:
        kind = self.tensor_cores or "simt"
        if self.wgmma:
            kind = f"wgmma-{kind}"
        extra = f" 8x{self.thread_cols}/thread" if self.thread_cols != 8 else ""
        extra += " overlapped" if self.overlap else ""
        extra += f" unroll {self.k_unroll}" if self.k_unroll else ""
        return (
            f"{kind} {self.block_rows}x{self.block_cols}x{self.depth} {self.stages} stages{extra}"
        )


#: The configuration used when no tuned one is known, per kind of kernel: the tile shapes of
#: CUTLASS's SM80 SIMT (128x128x8, 4 stages) and TF32 (128x128x32, 3 stages) GEMMs.
DEFAULT = MatmulConfig(128, 128, 8, 4)
DEFAULT_TF32 = MatmulConfig(128, 128, 32, 3, "tf32")
#: The default for products too small for 128 x 128 tiles to fill the GPU: 64 x 64 tiles, four
#: times the blocks (SIMT: 8 x 4 patches, 4 warps; several blocks a multiprocessor).
SMALL = MatmulConfig(64, 64, 16, 3, thread_cols=4)
SMALL_TF32 = MatmulConfig(64, 64, 32, 4, "tf32")
#: Multiprocessors of the GPUs the defaults are chosen for (H100 and H200 SXM: 132).
MULTIPROCESSORS = 132
#: What tuning times (see `arrayjit.backends.cuda.tuning`): for large products 128 x 128 tiles,
#: deeper ones spending fewer of the issue slots on copies and barriers (a 32-deep tile's main
#: loop is 88% FFMA on sm_90, an 8-deep one's 85%), 128 x 256 ones reading a quarter fewer
#: operand values from L2 per product, with 8 x 16 patches a quarter fewer shared values; 128 x
#: 64 and 64 x 64 give a 1024 x 1024 product 128 and 256 blocks for the H100's 132
#: multiprocessors (with 8 x 4 patches, 256 blocks of 4 warps). On the H100 the deeper and wider
#: tiles, whose unrolled main loops are over 1100 instructions, were slower than the 600 of a
#: 128 x 128 x 8 tile: hence the same with their k steps partly unrolled (not yet timed there).
CANDIDATES = (
    MatmulConfig(128, 128, 8, 2),
    MatmulConfig(128, 128, 8, 4),
    MatmulConfig(128, 128, 16, 3),
    MatmulConfig(128, 128, 32, 2),
    MatmulConfig(128, 128, 32, 3),
    MatmulConfig(128, 64, 32, 3),
    MatmulConfig(64, 64, 16, 3),
    MatmulConfig(64, 64, 16, 3, thread_cols=4),
    MatmulConfig(64, 64, 32, 3, thread_cols=4),
    MatmulConfig(128, 256, 8, 2),
    MatmulConfig(128, 256, 8, 2, thread_cols=16),
    MatmulConfig(128, 256, 8, 3, thread_cols=16),
    MatmulConfig(128, 256, 16, 2, thread_cols=16),
    MatmulConfig(128, 256, 8, 2, thread_cols=16, k_unroll=4),
    MatmulConfig(128, 256, 16, 2, thread_cols=16, k_unroll=4),
    MatmulConfig(128, 128, 16, 3, k_unroll=8),
    MatmulConfig(128, 128, 32, 2, k_unroll=8),
)
CANDIDATES_TF32 = (
    MatmulConfig(128, 128, 16, 3, "tf32"),
    MatmulConfig(128, 128, 32, 3, "tf32"),
    MatmulConfig(128, 128, 32, 4, "tf32"),
    MatmulConfig(128, 64, 32, 3, "tf32"),
    MatmulConfig(64, 64, 32, 4, "tf32"),
)
#: wgmma tiles (A side x B side, stages), largest first; `depth` is set per kind (128 bytes). The
#: default is the first that gives every multiprocessor a block. Overlapped (a tile's last product
#: in flight while the next tile's are issued): 4% faster than retiring each k tile's products at
#: its end for TF32 4096 on the H100 (0.376 against 0.394 ms).
CANDIDATES_WGMMA = (
    MatmulConfig(128, 256, 0, 4, wgmma=True, overlap=True),
    MatmulConfig(128, 128, 0, 6, wgmma=True, overlap=True),
    MatmulConfig(128, 64, 0, 8, wgmma=True, overlap=True),
)
#: Timed by tuning besides the defaults: other depths, and products retired at each tile's end.
CANDIDATES_WGMMA_MORE = (
    MatmulConfig(128, 256, 0, 3, wgmma=True, overlap=True),
    MatmulConfig(128, 256, 0, 4, wgmma=True),
    MatmulConfig(128, 256, 0, 3, wgmma=True),
    MatmulConfig(128, 128, 0, 6, wgmma=True),
    MatmulConfig(128, 128, 0, 4, wgmma=True),
    MatmulConfig(128, 64, 0, 8, wgmma=True),
)
#: 16-bit element types (their dtype names) and the mma kind of each.
HALF_KINDS = {"float16": "f16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class OperandLoad:
    """How one operand's tiles are filled: `mode` (see the module docstring), `vector` elements
    per copy, and whether neighbouring threads take neighbouring k (else neighbouring rows).
    `async16` along k (`k_fast`, tensor cores only) fills a `[side][k]` tile."""

    mode: str
    vector: int = 1
    k_fast: bool = False

    @property
    def side_major(self) -> bool:
        return self.k_fast and self.mode in ("async16", "raw")


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
    config: MatmulConfig = DEFAULT
    loads: tuple[OperandLoad, OperandLoad] = field(
        default=(OperandLoad("compute"), OperandLoad("compute"))
    )
    #: The operands of the wgmma form (`config.wgmma`), else None.
    wgmma: gpu_wgmma.WgmmaPlan | None = None

    @property
    def extents(self) -> tuple[int, int, int, int]:
        """(batch, rows, cols, depth)."""
        batch = math.prod(b.extent for b in self.batch)
        return batch, self.row.extent, self.col.extent, self.reduction.extent

    def signature(self) -> str:
        """What the best configuration depends on: the extents, ops, dtypes and the operands'
        layouts (not buffer names), as text."""
        combine = self.update.args[1]
        parts = [
            "x".join(map(str, self.extents)),
            f"{self.update.op}/{combine.op}",
            self.acc.dtype.name,
            *(f"{load.mode}{load.vector}{'k' if load.k_fast else 'm'}" for load in self.loads),
            *(_operand_dtype(e).name for e in (self.x, self.y)),
        ]
        return " ".join(parts)


def _expr_iterators(e: ir.Expr) -> set[Iterator]:
    out: set[Iterator] = set()
    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            out.update(it for idx in x.index for it in ir.index_iterators(idx))
        elif isinstance(x, ir.IndexValue):
            out.update(iterators_of(x.index))
    return out


def _stored_local(store: ir.Set) -> ir.Expr:
    """What a store writes, less the rounding into a 16-bit buffer."""
    value = store.value
    if isinstance(value, ir.Cast) and value.dtype == store.tnode.dtype:
        return value.value
    return value


def _has_local(e: ir.Expr) -> bool:
    return any(isinstance(x, ir.Local) for x in ir.walk_expr(e))


def _substituted(e: ir.Expr, definitions: dict[str, ir.Expr]) -> ir.Expr:
    """`e` with each local of `definitions` replaced by its defining expression (which may read
    other such locals); other locals stay."""
    memo: dict[str, ir.Expr] = {}

    def resolve(name: str) -> ir.Expr:
        if name not in memo:
            memo[name] = ir.map_expr(definitions[name], replace_local)
        return memo[name]

    def replace_local(x: ir.Expr) -> ir.Expr:
        return resolve(x.name) if isinstance(x, ir.Local) and x.name in definitions else x

    return ir.map_expr(e, replace_local)


def _reads(*exprs: ir.Expr) -> set:
    return {x.tnode for e in exprs for x in ir.walk_expr(e) if isinstance(x, ir.Get)}


def _cell_parts(plan: KernelPlan) -> tuple[ir.DeclLocal, ir.For, ir.Set, dict] | None:
    """The accumulator, reduction loop and store of a cell `(locals); for k: acc := ...; out[..]
    := acc`, with the definitions of the other locals (the cell's and the prologue's)."""
    if len(plan.body) < 3:
        return None
    *decls, loop, store = plan.body
    if not (
        all(isinstance(d, ir.DeclLocal) for d in decls)
        and isinstance(loop, ir.For)
        and not loop.parallel
        and isinstance(loop.body, ir.SetLocal)
        and isinstance(store, ir.Set)
    ):
        return None
    acc = next((d for d in decls if d.name == loop.body.name), None)
    if acc is None:
        return None
    definitions = {d.name: d.init for d in [*plan.prologue, *decls] if d is not acc}
    if len(definitions) != len(plan.prologue) + len(decls) - 1:
        return None  # a name declared twice
    return acc, loop, store, definitions


def matmul_shape(plan: KernelPlan) -> MatmulShape | None:
    """Recognize the nest that the tiled kernel computes; None for anything else. Locals the
    cell declares before the reduction (hoisted parts of a fused operand, such as a layer norm's
    mean and scale of the row) are substituted into the operands: the tile loaders compute them
    per tile element, which is right as long as each depends only on its operand's side."""
    if len(plan.grid) < 2:
        return None
    parts = _cell_parts(plan)
    if parts is None:
        return None
    decl, loop, store, definitions = parts
    if not (
        _stored_local(store) == ir.Local(decl.name, decl.dtype)
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
    first, second = (_substituted(e, definitions) for e in update.args[1].args)
    if _has_local(first) or _has_local(second):
        return None
    if store.tnode in _reads(first, second) - _reads(*update.args[1].args):
        return None  # a local read the output before the nest: the tiles must not read it
    sides = _sides(plan.grid, _expr_iterators(first), _expr_iterators(second), loop.iterator)
    if sides is None:
        return None
    swap, batch, row, col = sides
    x, y = (second, first) if swap else (first, second)
    if row.extent < 32 or col.extent < 32 or math.prod(b.extent for b in batch) > 65535:
        return None
    if math.ceil(row.extent / 64) > 65535:
        return None
    return MatmulShape(batch, row, col, loop, decl, update, x, y, store)


def _sides(
    grid: list[ir.For], first: set[Iterator], second: set[Iterator], k: Iterator
) -> tuple[bool, list[ir.For], ir.For, ir.For] | None:
    """Which operand is x (`swap`: the second), and the batch, row and column loops: the last
    two grid loops when x is free of the last and y of the one before; else the one grid loop
    that only x reads and the one that only y reads (a product over `b, s, h, d` whose heads `h`
    are a batch axis of both operands), columns the later of the two."""
    *batch, row, col = grid
    outer = {b.iterator for b in batch}
    for swap, (x_its, y_its) in ((False, (first, second)), (True, (second, first))):
        if x_its <= outer | {row.iterator, k} and y_its <= outer | {k, col.iterator}:
            return swap, batch, row, col
    only_first = [g for g in grid if g.iterator in first - second]
    only_second = [g for g in grid if g.iterator in second - first]
    if len(only_first) != 1 or len(only_second) != 1:
        return None
    (a,), (b,) = only_first, only_second
    swap = grid.index(a) > grid.index(b)  # x's side is the rows: the earlier loop
    row, col = (b, a) if swap else (a, b)
    batch = [g for g in grid if g is not row and g is not col]
    bound = {g.iterator for g in grid} | {k}
    if not (first | second) <= bound:
        return None
    return swap, batch, row, col


def _operand_dtype(e: ir.Expr):
    return e.tnode.dtype if isinstance(e, ir.Get) else e.dtype


def _plain_read(e: ir.Expr) -> ir.Get | None:
    """The read `e` is, or widens to float32 (a 16-bit value converted as it is read)."""
    if isinstance(e, ir.Cast) and e.dtype.name == "float32":
        e = e.value
    return e if isinstance(e, ir.Get) and not ir.is_dynamic(e.index) else None


def _aligned_along(strides: dict, offset: int, axis: ir.For, vector: int) -> bool:
    """Whether `vector` consecutive values along `axis` (from a multiple of `vector`) are one
    aligned 16-byte chunk, wherever the other iterators are."""
    others = [c for it, c in strides.items() if it != axis.iterator]
    return (
        strides.get(axis.iterator) == 1
        and axis.extent % vector == 0
        and offset % vector == 0
        and all(c % vector == 0 for c in others)
    )


def operand_load(e: ir.Expr, side: ir.For, k: ir.For, tensor_cores: bool = False) -> OperandLoad:
    """How to fill tiles of operand `e`, whose output axis is `side` (rows of x, columns of y).
    Tensor-core tiles may also be `[side][k]`, for 16-byte copies along a contiguous k."""
    found = gpu_wgmma.read_strides(e)
    if found is not None and e.tnode.dtype.itemsize == 2:
        strides, offset = found
        if _aligned_along(strides, offset, side, 8):
            return OperandLoad("async16", 8, False)
        k_fast = abs(strides.get(k.iterator, 0)) == 1
        if _aligned_along(strides, offset, k, 8):
            return OperandLoad("async16", 8, True)
        return OperandLoad("raw", 1, k_fast)
    if found is None:
        first = next((x for x in ir.walk_expr(e) if isinstance(x, ir.Get)), None)
        layout = gpu_wgmma.read_strides(first) if first is not None else None
        k_fast = layout is not None and abs(layout[0].get(k.iterator, 0)) == 1
        return OperandLoad("compute", 1, k_fast)
    strides, offset = found
    itemsize = e.tnode.dtype.itemsize
    if itemsize not in (4, 8):
        return OperandLoad("compute", 1, abs(strides.get(k.iterator, 0)) == 1)
    vector = 16 // itemsize
    if _aligned_along(strides, offset, side, vector):
        return OperandLoad("async16", vector, False)
    if tensor_cores and _aligned_along(strides, offset, k, vector):
        return OperandLoad("async16", vector, True)
    return OperandLoad("async", 1, abs(strides.get(k.iterator, 0)) == 1)


def tensor_core_kind(shape: MatmulShape, options: GpuOptions) -> str | None:
    """The tensor-core kind: tf32 for an fp32 sum of products when TF32 is allowed; f16 / bf16
    for a sum of products of two plain reads of that 16-bit type (accumulated in fp32)."""
    combine = shape.update.args[1]
    if shape.update.op != "add" or combine.op != "mul":
        return None
    acc = shape.acc.dtype.name
    reads = [_plain_read(e) for e in (shape.x, shape.y)]
    if all(reads):
        names = {r.tnode.dtype.name for r in reads}
        if len(names) == 1 and (name := names.pop()) in HALF_KINDS and acc == "float32":
            return HALF_KINDS[name]
    names = {_operand_dtype(e).name for e in (shape.x, shape.y)}
    if names == {"float32"} and acc == "float32":
        return "tf32" if options.allow_tf32 else None
    return None


def config_key(shape: MatmulShape, kind: str | None) -> str:
    """What a tuned configuration is remembered by (see `GpuOptions.matmul_configs`)."""
    return f"{shape.signature()} {kind or 'simt'}"


def candidates(kind: str | None, wgmma: bool = False) -> tuple[MatmulConfig, ...]:
    """The configurations tuning times for a nest of this kind."""
    if wgmma:
        return gpu_wgmma.with_kind(CANDIDATES_WGMMA + CANDIDATES_WGMMA_MORE, kind)
    if kind is None:
        return CANDIDATES
    return tuple(replace(c, tensor_cores=kind) for c in CANDIDATES_TF32 if c.depth % 16 == 0)


def plan_matmul(plan: KernelPlan, options: GpuOptions) -> MatmulShape | None:
    """The matmul form of `plan` with its configuration (tuned, else the default), or None."""
    shape = matmul_shape(plan)
    if shape is None:
        return None
    kind = tensor_core_kind(shape, options)
    if kind in HALF_KINDS.values():
        # The tiles hold the 16-bit values themselves; the tensor cores widen them.
        shape.x, shape.y = _plain_read(shape.x), _plain_read(shape.y)
    if kind and options.wgmma and _plan_wgmma(plan, shape, kind, options):
        return shape
    shape.loads = (
        operand_load(shape.x, shape.row, shape.reduction, kind is not None),
        operand_load(shape.y, shape.col, shape.reduction, kind is not None),
    )
    tuned = options.matmul_configs.get(config_key(shape, kind))
    if isinstance(tuned, MatmulConfig) and tuned.tensor_cores == kind and not tuned.wgmma:
        shape.config = tuned
    else:
        shape.config = default_config(shape, kind)
    return shape


def default_config(shape: MatmulShape, kind: str | None) -> MatmulConfig:
    """128 x 128 tiles, or 64 x 64 ones where the larger would not give every multiprocessor
    two blocks (GPT-2 124M's 2048 x 768 products: 96 blocks of 128 x 128, 384 of 64 x 64)."""
    large = replace(DEFAULT_TF32, tensor_cores=kind) if kind else DEFAULT
    batch, rows, cols, _ = shape.extents
    blocks = batch * -(-rows // large.block_rows) * -(-cols // large.block_cols)
    if blocks >= 2 * MULTIPROCESSORS:
        return large
    return replace(SMALL_TF32, tensor_cores=kind) if kind else SMALL


def _plan_wgmma(plan: KernelPlan, shape: MatmulShape, kind: str, options: GpuOptions) -> bool:
    """Give `shape` the wgmma form if its operands allow it; its tensor maps become scratch
    buffers of `plan`."""
    layouts = gpu_wgmma.operand_layouts(shape)
    if layouts is None:
        return False
    swap, la, lb = layouts
    x_kmajor, y_kmajor = (lb[0], la[0]) if swap else (la[0], lb[0])
    shape.loads = (OperandLoad("tma", 1, x_kmajor), OperandLoad("tma", 1, y_kmajor))
    tuned = options.matmul_configs.get(config_key(shape, kind))
    if isinstance(tuned, MatmulConfig) and tuned.wgmma and tuned.tensor_cores == kind:
        config = tuned
    else:
        defaults = gpu_wgmma.with_kind(CANDIDATES_WGMMA, kind)
        config = gpu_wgmma.default_config(shape, kind, swap, defaults)
    found = gpu_wgmma.plan_wgmma(shape, config)
    if found is None:
        return False
    shape.config, shape.wgmma = config, found
    plan.scratch = [*plan.scratch, *found.maps]
    return True

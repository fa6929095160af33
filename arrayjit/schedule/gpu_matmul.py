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
from arrayjit.indexing import Iterator, as_affine, iterators_of
from arrayjit.schedule.kernel_plan import GpuOptions, KernelPlan

#: Shared memory a block may have (227 KB on sm_90; kernels over 48 KB opt in at load time).
MAX_SHARED_BYTES = 227 * 1024


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes of the tiled kernel. `tensor_cores`: None (an 8 x 8 patch per thread), "tf32"
    (fp32 operands rounded to TF32, mma.sync m16n8k8) or "f16" / "bf16" (16-bit operands,
    mma.sync m16n8k16 fed by ldmatrix), each warp computing 64 x 64 in fp32."""

    block_rows: int = 128
    block_cols: int = 128
    depth: int = 8
    stages: int = 4
    tensor_cores: str | None = None

    @property
    def threads(self) -> int:
        if self.tensor_cores:
            return 32 * (self.block_rows // 64) * (self.block_cols // 64)
        return (self.block_rows // 8) * (self.block_cols // 8)

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
        x = self.tile_elements(self.block_rows, side_major[0], itemsize_x) * itemsize_x
        y = self.tile_elements(self.block_cols, side_major[1], itemsize_y) * itemsize_y
        return self.stages * (x + y)

    def describe(self) -> str:
        kind = self.tensor_cores or "simt"
        return f"{kind} {self.block_rows}x{self.block_cols}x{self.depth} {self.stages} stages"


#: The configuration used when no tuned one is known, per kind of kernel: the tile shapes of
#: CUTLASS's SM80 SIMT (128x128x8, 4 stages) and TF32 (128x128x32, 3 stages) GEMMs.
DEFAULT = MatmulConfig(128, 128, 8, 4)
DEFAULT_TF32 = MatmulConfig(128, 128, 32, 3, "tf32")
#: What tuning times (see `arrayjit.backends.cuda.tuning`).
CANDIDATES = (
    MatmulConfig(128, 128, 8, 2),
    MatmulConfig(128, 128, 8, 3),
    MatmulConfig(128, 128, 8, 4),
    MatmulConfig(128, 128, 16, 3),
    MatmulConfig(128, 64, 16, 3),
    MatmulConfig(64, 64, 16, 3),
)
CANDIDATES_TF32 = (
    MatmulConfig(128, 128, 16, 3, "tf32"),
    MatmulConfig(128, 128, 32, 3, "tf32"),
    MatmulConfig(128, 128, 32, 4, "tf32"),
    MatmulConfig(128, 64, 32, 3, "tf32"),
    MatmulConfig(64, 64, 32, 4, "tf32"),
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


def matmul_shape(plan: KernelPlan) -> MatmulShape | None:
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
        and _stored_local(store) == ir.Local(decl.name, decl.dtype)
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
    if math.ceil(row.extent / 64) > 65535:
        return None
    return MatmulShape(batch, row, col, loop, decl, update, x, y, store)


def _operand_dtype(e: ir.Expr):
    return e.tnode.dtype if isinstance(e, ir.Get) else e.dtype


def _plain_read(e: ir.Expr) -> ir.Get | None:
    """The read `e` is, or widens to float32 (a 16-bit value converted as it is read)."""
    if isinstance(e, ir.Cast) and e.dtype.name == "float32":
        e = e.value
    return e if isinstance(e, ir.Get) and not ir.is_dynamic(e.index) else None


def _strides(e: ir.Expr) -> tuple[dict[Iterator, int], int] | None:
    """The strides of each iterator in a plain read's row-major offset, and its constant."""
    from arrayjit.lowering import row_major_offset

    if not isinstance(e, ir.Get) or ir.is_dynamic(e.index):
        return None
    terms, offset = as_affine(row_major_offset(e.tnode.dims, e.index))
    strides: dict[Iterator, int] = {}
    for c, it in terms:
        strides[it] = strides.get(it, 0) + c
    return strides, offset


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
    found = _strides(e)
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
        layout = _strides(first) if first is not None else None
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


def candidates(kind: str | None) -> tuple[MatmulConfig, ...]:
    """The configurations tuning times for a nest of this kind."""
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
    shape.loads = (
        operand_load(shape.x, shape.row, shape.reduction, kind is not None),
        operand_load(shape.y, shape.col, shape.reduction, kind is not None),
    )
    tuned = options.matmul_configs.get(config_key(shape, kind))
    if isinstance(tuned, MatmulConfig) and tuned.tensor_cores == kind:
        shape.config = tuned
    else:
        shape.config = replace(DEFAULT_TF32, tensor_cores=kind) if kind else DEFAULT
    return shape

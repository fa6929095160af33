"""Hopper (sm_90a) tensor-core matrix products: warpgroup MMA (`wgmma`) fed by the tensor memory
accelerator (TMA). The planning half; `arrayjit.codegen.cuda_wgmma` prints the kernel.

A nest that takes tensor cores (`gpu_matmul.tensor_core_kind`) takes this form on an sm_90 device
when both operands are plain reads whose tiles TMA can copy: one axis of the two (the output axis,
"side", or the reduction `k`) contiguous, the other's stride and the start 16-byte aligned, batch
loops on their own strides. `wgmma` reads its B operand from shared memory through a descriptor
in the K-major layout (fp32 / TF32 has no other), its A operand from registers, which the threads
load from shared memory in either layout. So the operand stored contiguous along k becomes B: `y`
if it is, else `x`, in which case the kernel computes the transposed product (`swap`): its A rows
are the output's columns. Both contiguous along the side: no wgmma (mma.sync instead).

Tiles in shared memory are rows of 128 bytes (`depth` = 128 bytes of k: 32 fp32 or 64 16-bit
values; 128 bytes of side for an A tile stored side-contiguous, in boxes of that width), in TMA's
128-byte swizzle, which is also the layout the descriptor names. A block has one producer
warpgroup (one thread issues the copies) and `block_rows / 64` consumer warpgroups of 64 A rows
each; `stages` tiles in flight, handed over by full/empty mbarriers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, as_affine
from arrayjit.tnode import MemoryMode, TNode

#: Multiprocessors of the H100 the default tile is chosen for (enough blocks to fill it).
MULTIPROCESSORS = 132
#: Bytes of one shared-memory row of a tile (the 128-byte swizzle's row).
ROW_BYTES = 128
#: Bytes of each tensor map buffer (CUtensorMap is 128 bytes, 64-byte aligned).
TENSOR_MAP_BYTES = 128
#: The most dimensions a tensor map has.
MAX_RANK = 5


@dataclass(frozen=True)
class TensorMapSpec:
    """A TMA tensor map over an operand's buffer: `dims` extents with element `strides` (the
    first dimension contiguous, its stride 1), starting `offset` elements into `tnode`; `box`
    elements are copied per dimension, in the 128-byte swizzle, zeros outside `dims`."""

    tnode: TNode
    offset: int
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    box: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        return self.tnode.dtype.itemsize

    @property
    def box_bytes(self) -> int:
        return math.prod(self.box) * self.itemsize


@dataclass(frozen=True)
class TmaOperand:
    """An operand read by TMA: the tensor map, whether k is its contiguous axis (else the side),
    and the batch loop giving the coordinate of each of the map's dimensions past the first two."""

    expr: ir.Get
    side: ir.For
    k_major: bool
    spec: TensorMapSpec
    batch: tuple[Iterator, ...]


@dataclass
class WgmmaPlan:
    """The operands of the wgmma kernel: `a` (registers, the block's `block_rows` side) and `b`
    (shared-memory descriptor, K-major, the `block_cols` side); `swap` when a is y (the kernel
    computes the transposed product); `maps` the scratch buffers holding their tensor maps."""

    swap: bool
    a: TmaOperand
    b: TmaOperand
    a_boxes: int
    maps: tuple[TNode, TNode]


def read_strides(e: ir.Expr) -> tuple[dict[Iterator, int], int] | None:
    """The strides of each iterator in a plain read's row-major offset, and its constant."""
    from arrayjit.lowering import row_major_offset

    if not isinstance(e, ir.Get) or ir.is_dynamic(e.index):
        return None
    terms, offset = as_affine(row_major_offset(e.tnode.dims, e.index))
    strides: dict[Iterator, int] = {}
    for c, it in terms:
        strides[it] = strides.get(it, 0) + c
    return strides, offset


def _layout(e: ir.Expr, side: ir.For, k: ir.For, batch: list[ir.For]):
    """(k_major, offset, [(iterator, extent, stride)] contiguous axis first, then the other of
    side/k, then batch loops the operand moves with), or None if TMA cannot copy its tiles."""
    found = read_strides(e)
    if found is None:
        return None
    strides, offset = found
    itemsize = e.tnode.dtype.itemsize
    extents = {loop.iterator: loop.extent for loop in (side, k, *batch)}
    if any(it not in extents for it in strides) or offset < 0 or offset * itemsize % 16:
        return None
    side_stride, k_stride = strides.get(side.iterator, 0), strides.get(k.iterator, 0)
    if k_stride == 1 and side_stride > 0:
        k_major, axes = True, [(k, 1), (side, side_stride)]
    elif side_stride == 1 and k_stride > 0:
        k_major, axes = False, [(side, 1), (k, k_stride)]
    else:
        return None
    moving = [(loop, strides[loop.iterator]) for loop in batch if strides.get(loop.iterator)]
    axes += sorted(moving, key=lambda axis: axis[1])
    if len(axes) > MAX_RANK:
        return None
    if any(stride < 0 or stride * itemsize % 16 for _, stride in axes[1:]):
        return None
    # The driver takes each dimension's stride to span the previous one (no overlaps).
    if any(s < p.extent * ps for (p, ps), (_, s) in zip(axes, axes[1:], strict=False)):
        return None
    # TMA coordinates and the kernel's tile positions (up to a tile past the extent) are int.
    if any(loop.extent >= (1 << 31) - 256 for loop, _ in axes):
        return None
    return k_major, offset, [(loop.iterator, loop.extent, stride) for loop, stride in axes]


def operand_layouts(shape) -> tuple[bool, tuple, tuple] | None:
    """(swap, layout of the A operand, layout of the B operand) when the nest takes wgmma."""
    x, y = shape.x, shape.y
    if not (isinstance(x, ir.Get) and isinstance(y, ir.Get)):
        return None
    lx = _layout(x, shape.row, shape.reduction, shape.batch)
    ly = _layout(y, shape.col, shape.reduction, shape.batch)
    if lx is None or ly is None:
        return None
    if ly[0]:
        return False, lx, ly
    if lx[0]:
        return True, ly, lx
    return None


def config_fits(config, shape) -> bool:
    """Whether `config` is a wgmma configuration this nest can take (tile sides TMA can copy)."""
    return (
        config.wgmma
        and config.block_rows % 64 == 0
        and 64 <= config.block_rows <= 256
        and config.block_cols % 8 == 0
        and 8 <= config.block_cols <= 256
        and config.depth * _itemsize(shape) == ROW_BYTES
    )


def _itemsize(shape) -> int:
    return shape.x.tnode.dtype.itemsize


def default_config(shape, kind: str, swap: bool, candidates: tuple):
    """The largest tile that still gives every multiprocessor a block (the last one if none)."""
    batch, rows, cols, _ = shape.extents
    a_side, b_side = (cols, rows) if swap else (rows, cols)
    for config in candidates:
        tiles = math.ceil(a_side / config.block_rows) * math.ceil(b_side / config.block_cols)
        if tiles * batch >= MULTIPROCESSORS:
            return config
    return candidates[-1]


def _operand(e: ir.Get, side: ir.For, layout, box_side: int, depth: int) -> tuple[TmaOperand, int]:
    """The TMA operand of `e`, its box and how many boxes a tile of `box_side` takes."""
    k_major, offset, axes = layout
    itemsize = e.tnode.dtype.itemsize
    width = ROW_BYTES // itemsize
    if k_major:
        box, boxes = (depth, box_side), 1
    else:
        box, boxes = (width, depth), box_side // width
    box += (1,) * (len(axes) - 2)
    spec = TensorMapSpec(
        e.tnode,
        offset,
        tuple(extent for _, extent, _ in axes),
        tuple(stride for _, _, stride in axes[1:]),
        box,
    )
    batch = tuple(it for it, _, _ in axes[2:])
    return TmaOperand(e, side, k_major, spec, batch), boxes


def plan_wgmma(shape, config) -> WgmmaPlan | None:
    """The wgmma operands of `shape` under `config` (a wgmma configuration), or None."""
    found = operand_layouts(shape)
    if found is None or not config_fits(config, shape):
        return None
    swap, la, lb = found
    a_expr, b_expr = (shape.y, shape.x) if swap else (shape.x, shape.y)
    a_side, b_side = (shape.col, shape.row) if swap else (shape.row, shape.col)
    width = ROW_BYTES // _itemsize(shape)
    if not la[0] and config.block_rows % width:
        return None
    a, a_boxes = _operand(a_expr, a_side, la, config.block_rows, config.depth)
    b, _ = _operand(b_expr, b_side, lb, config.block_cols, config.depth)
    maps = tuple(
        TNode(f"tensormap{name}", (TENSOR_MAP_BYTES // 4,), "int32", MemoryMode.LOCAL)
        for name in ("a", "b")
    )
    return WgmmaPlan(swap, a, b, a_boxes, maps)


def with_kind(configs: tuple, kind: str) -> tuple:
    """`configs` with their tensor-core kind and depth (128 bytes of k) for `kind`."""
    depth = ROW_BYTES // (4 if kind == "tf32" else 2)
    return tuple(replace(c, tensor_cores=kind, depth=depth) for c in configs)

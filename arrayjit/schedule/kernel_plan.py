"""What the GPU planner decides for one kernel (`KernelPlan`) and the backend's choices that
change it (`GpuOptions`); `arrayjit.schedule.gpu_kernels` makes the plans."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from arrayjit import loop_ir as ir
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.schedule.gpu_matmul import MatmulShape
    from arrayjit.schedule.gpu_reductions import ReductionPlan
    from arrayjit.schedule.gpu_rows import RowPlan

THREADS = 256
#: The grid-stride loop caps the grid at this many blocks.
MAX_BLOCKS = 1 << 20


@dataclass
class GpuOptions:
    """Choices of the CUDA backend that change the generated kernels (and so the cache key)."""

    #: Matrix-product nests get a tiled kernel (else one thread per cell).
    tile_matmul: bool = True
    #: Reductions over many values get a team of threads (else one thread per cell or routine).
    parallel_reductions: bool = True
    #: fp32 matrix products may round their operands to TF32 for the tensor cores.
    allow_tf32: bool = False
    #: Tensor-core matrix products may take the sm_90a wgmma form (set for sm_90 devices).
    wgmma: bool = False
    #: The matmul configuration to use per nest, by `MatmulShape.signature()` (from tuning).
    matmul_configs: dict[str, object] = field(default_factory=dict)


@dataclass
class KernelPlan:
    """One kernel: the loops flattened onto the grid (none: one thread), the statements each
    thread runs, the hoisted locals it recomputes first, and its form when it is not one thread
    per cell."""

    grid: list[ir.For]
    body: list[ir.Stmt]
    prologue: list[ir.DeclLocal] = field(default_factory=list)
    matmul: MatmulShape | None = None
    reduction: ReductionPlan | None = None
    #: A team of threads per grid cell (a row) running the row's stages (row fusion).
    rows: RowPlan | None = None
    #: Buffers this kernel reads or writes that are not in the routine's IR (partial results).
    scratch: list[TNode] = field(default_factory=list)
    #: Neighbouring cells per thread of a one-thread-per-cell kernel (vector loads and stores).
    vector: int = 1

    @property
    def cells(self) -> int:
        return math.prod(loop.extent for loop in self.grid)

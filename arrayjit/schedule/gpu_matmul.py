"""Matrix-product nests on a GPU: recognizing them and choosing the tiled kernel's configuration.

A nest `acc = acc op f(x, y)` over an innermost reduction `k`, under parallel loops `..., i, j`,
with `x` free of `j` and `y` free of `i`, is a (generalized) matrix product: the tiled kernels of
`arrayjit.codegen.cuda_matmul` compute it block by block from shared-memory tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, iterators_of
from arrayjit.schedule.kernel_plan import GpuOptions, KernelPlan

TILE = 128  # rows and columns of the output tile of one block of the tiled kernel
TILE_K = 8  # reduction steps per shared-memory tile
SUB = 8  # rows (and columns) of the output computed by one thread: TILE / 16


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


def _expr_iterators(e: ir.Expr) -> set[Iterator]:
    out: set[Iterator] = set()
    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            out.update(it for idx in x.index for it in iterators_of(idx))
        elif isinstance(x, ir.IndexValue):
            out.update(iterators_of(x.index))
    return out


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


def plan_matmul(plan: KernelPlan, options: GpuOptions) -> MatmulShape | None:
    return matmul_shape(plan)

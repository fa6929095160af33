"""Pointwise kernels on a GPU: how many neighbouring cells one thread takes.

A one-thread-per-cell kernel whose cell body is straight-line code (stores and locals, no loops)
moves its bytes fastest with 16-byte accesses: when every store, and every read that moves with
the innermost grid loop, touches consecutive elements along it from an aligned start, a thread
takes `vector` neighbouring cells (4 floats, 2 doubles), loads each such read once as a vector,
computes the cells one after another and stores each result vector at once. Reads that do not
move with the innermost loop are read per cell as before.
"""

from __future__ import annotations

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, as_affine
from arrayjit.schedule.kernel_plan import KernelPlan


def _stride(tnode, index, it: Iterator, vector: int = 1) -> tuple[int | None, bool]:
    """The stride of `it` in the row-major offset (None: a dynamic index that depends on `it`),
    and whether the rest is a multiple of `vector`."""
    affine, dynamic = ir.split_offset(tnode.dims, index)
    terms, offset = as_affine(affine)
    own = sum(c for c, term in terms if term == it)
    rest = [c for c, term in terms if term != it] + [offset]
    for stride, d in dynamic:
        if it in ir.index_iterators(d):
            return None, False
        rest.append(stride)
    return own, all(c % vector == 0 for c in rest)


def moving_reads(plan: KernelPlan) -> list[ir.Get]:
    """The distinct reads of a cell body that move with the innermost grid loop."""
    it = plan.grid[-1].iterator
    reads, _ = accesses(plan)
    return list(dict.fromkeys(g for g in reads if _stride(g.tnode, g.index, it)[0] != 0))


def accesses(plan: KernelPlan) -> tuple[list[ir.Get], list[ir.Set]]:
    """The reads (in the body's expressions) and the stores of a cell body."""
    body = ir.Block(tuple(plan.body))
    reads = [e for e in ir.stmt_exprs(body) if isinstance(e, ir.Get)]
    stores = [s for s in ir.walk(body) if isinstance(s, ir.Set)]
    return reads, stores


def vector_width(plan: KernelPlan) -> int:
    """Neighbouring cells per thread for a one-thread-per-cell plan: 4 (or 2 for 8-byte
    elements) when every access allows it, else 1."""
    if not plan.grid or plan.matmul is not None or plan.reduction is not None:
        return 1
    if not all(isinstance(s, ir.Set | ir.DeclLocal) for s in plan.body):
        return 1
    it = plan.grid[-1].iterator
    reads, stores = accesses(plan)
    if not stores or {s.tnode for s in stores} & {g.tnode for g in reads}:
        return 1  # a cell that reads what the kernel writes: keep the order of one cell at a time
    if any(ir.is_dynamic(x.index) for x in [*reads, *stores]):
        return 1  # the index value is computed in the cell's body, after the loads
    moving = [g for g in reads if _stride(g.tnode, g.index, it)[0] != 0]
    sizes = {x.tnode.dtype.itemsize for x in [*stores, *moving]}
    if not sizes <= {4, 8}:
        return 1
    vector = 16 // max(sizes)
    if plan.grid[-1].extent % vector:
        return 1
    for x in [*stores, *moving]:
        own, aligned = _stride(x.tnode, x.index, it, vector)
        if own != 1 or not aligned:
            return 1
    return vector

"""Which loops may run as vectors or on threads, and what a loop nest costs: the analyses the CPU
schedule's thread and vectorization passes decide with.

A loop's iterations are *independent* when running them in any order, or at once, gives the
result of running them in order: every buffer the loop writes is read and written at indices
with the loop's iterator in exactly one axis, the same axis with the same index there in all of
them, next to no iterator of an inner loop (so different iterations touch different cells: the
stages of a row-fused nest may write a row at `[i, j]` and read it at `[i, d]`), and every
scalar local it assigns is declared inside it, or is a *reduction* (`acc := acc op term`, read
nowhere else in the loop) that the vector or thread code combines.
"""

from __future__ import annotations

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.indexing import Iterator

#: Accumulate ops a loop can reduce with in any order (up to rounding for floats).
REDUCIBLE = ("add", "sub", "mul", "max", "min")
#: How partial results of an accumulator combine: `acc - x - y` is `acc - (x + y)`, and a
#: partial result of `-` (from zero) already holds the minus sign.
COMBINE = {"sub": "add"}
#: Ops that cost about this many simple ones (libm calls, even vectorized).
EXPENSIVE = {"exp", "log", "exp2", "log2", "sin", "cos", "tanh", "pow", "erf", "uniform_at"}


def innermost(loop: ir.For) -> bool:
    """No loop (or matrix product) inside."""
    return not any(isinstance(x, ir.For | ir.Matmul) for x in ir.walk(loop.body))


def reductions(loop: ir.For) -> tuple[ir.Reduction, ...] | None:
    """The locals declared outside `loop` that it reduces into, or None if it assigns such a
    local in another way (which makes its iterations dependent)."""
    inside = ir.declared_locals(loop.body)
    found: dict[str, ir.Reduction] = {}
    for s in ir.walk(loop.body):
        if not isinstance(s, ir.SetLocal) or s.name in inside:
            continue
        value = s.value
        acc = ir.Local(s.name, value.dtype) if isinstance(value, ir.Apply) else None
        if not (
            acc is not None
            and value.op in REDUCIBLE
            and value.args[0] == acc
            and s.name not in found
            and acc not in ir.walk_expr(value.args[1])
        ):
            return None
        found[s.name] = ir.Reduction(value.op, s.name, value.dtype)
    # The accumulator is read only by its own update.
    reads = [e for e in ir.stmt_exprs(loop.body) if isinstance(e, ir.Local) and e.name in found]
    if len(reads) != len(found):
        return None
    return tuple(found.values())


def independent(loop: ir.For) -> bool:
    """Whether the iterations of `loop` touch disjoint cells (see the module docstring); the
    locals it reduces into (`reductions`) are left to the caller."""
    if any(isinstance(x, ir.Matmul) for x in ir.walk(loop.body)):
        return False  # a product packs into shared scratch buffers
    if reductions(loop) is None:
        return False
    written = ir.written_tnodes(loop.body)
    inner = ir.bound_iterators(loop.body)
    # Each written buffer: the axis holding the loop's iterator, and its index there.
    axis_of: dict[object, tuple] = {}
    for s in ir.walk(loop.body):
        accesses = [(s.tnode, s.index)] if isinstance(s, ir.Set) else []
        for root in ir.root_exprs(s):
            accesses += [(e.tnode, e.index) for e in ir.walk_expr(root) if isinstance(e, ir.Get)]
        for tnode, index in accesses:
            if tnode not in written:
                continue
            if not _separates(index, loop.iterator, inner):
                return False
            k = next(k for k, i in enumerate(index) if loop.iterator in ir.index_iterators(i))
            if axis_of.setdefault(tnode, (k, index[k])) != (k, index[k]):
                return False
    return True


def _separates(index: tuple, it: Iterator, inner: set[Iterator]) -> bool:
    """Whether different values of `it` give different cells: it occurs in one axis only,
    whose other terms are fixed while it varies (no iterator of an inner loop), and in no
    index read from data (two ids may pick one cell)."""
    if any(isinstance(idx, ir.Dynamic) and it in ir.index_iterators(idx) for idx in index):
        return False
    axes = [ir.index_iterators(idx) for idx in index if it in ir.index_iterators(idx)]
    return len(axes) == 1 and not (set(axes[0]) & inner)


def work(s: ir.Stmt) -> int:
    """Estimated operations to run `s`: iterations times the ops of each statement."""
    if isinstance(s, ir.For):
        return s.extent * work(s.body)
    if isinstance(s, ir.Block):
        return sum(work(x) for x in s.stmts)
    if isinstance(s, ir.Matmul):
        m, n, k = s.extents
        return 2 * m * n * k
    return 1 + sum(
        8 if e.op in EXPENSIVE else 1
        for root in ir.root_exprs(s)
        for e in ir.walk_expr(root)
        if isinstance(e, ir.Apply)
    )


def combine_op(r: ir.Reduction) -> str:
    """The op that combines partial results of `r` (each started from `partial_start(r)`)."""
    return COMBINE.get(r.op, r.op)


def partial_start(r: ir.Reduction) -> ir.Const:
    """Where a partial result of `r` starts: the neutral element of its combination."""
    return ir.Const(ops.neutral(combine_op(r), r.dtype), r.dtype)

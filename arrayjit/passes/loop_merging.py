"""Loop merging (GPU pipeline): two directly nested loops of the same kind become one loop.

`for o < A: for i < B: body` becomes `for m < A*B: body` when the loops are both parallel (grid
loops) or both sequential (reductions), and every access of `body` walks memory as one loop
would: in the row-major offset of each read and store, the coefficient of `o` is `B` times that
of `i` (both zero included), so that `c*(B*o + i)` becomes `c*m`. Iterations run in the same
order, so any loops of the same kind may merge; the iterators must appear nowhere else (an index
value such as a causal mask's comparison, a guard, the value of a gather index), or nothing
changes. Grid loops merge only around a cell with a loop of its own (a reduction, a product):
a pointwise nest is flattened onto the grid as it is. Merged, `(b, t, h, d)` projections and `(b, t)` weight-gradient sums become the plain
2-D products that the tiled matmul kernel takes (`arrayjit.schedule.gpu_matmul`).

After merging, only an access's row-major offset is meaningful: the merged term sits on the
innermost axis the two iterators indexed and may run past that axis (every later consumer reads
indices through `loop_ir.split_offset`).
"""

from __future__ import annotations

from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Index, Iterator, affine, as_affine, iterators_of

_Access = tuple[tuple[int, ...], tuple[ir.AxisIndex, ...]]


def run(stmt: ir.Stmt) -> ir.Stmt:
    """Merge inner pairs first, so a nest of several compatible loops becomes one loop."""
    return ir.map_stmt(stmt, lambda s: _merged(s) if isinstance(s, ir.For) else s)


def _plain(loop: ir.For) -> bool:
    """No CPU schedule marks (those passes run after this one on the C side only)."""
    return loop.threads == 1 and not loop.vectorize and not loop.reductions


def _merged(outer: ir.For) -> ir.Stmt:
    inner = outer.body
    if not (
        isinstance(inner, ir.For)
        and inner.parallel == outer.parallel
        and _plain(outer)
        and _plain(inner)
    ):
        return outer
    if outer.parallel and not any(
        isinstance(s, ir.For) and not s.parallel for s in ir.walk(inner.body)
    ):
        return outer  # a pointwise nest: its grid is flattened as it is
    o, i = outer.iterator, inner.iterator
    accesses = _accesses(inner.body, {o, i})
    if accesses is None:
        return outer
    for dims, index in accesses:
        coeffs = dict((it, c) for c, it in as_affine(ir.split_offset(dims, index)[0])[0])
        if coeffs.get(o, 0) != inner.extent * coeffs.get(i, 0):
            return outer
    merged = Iterator(name=f"{o}{i}")
    body = _rewrite(inner.body, o, i, merged)
    return ir.For(merged, outer.extent * inner.extent, body, parallel=outer.parallel)


def _accesses(body: ir.Stmt, its: set[Iterator]) -> list[_Access] | None:
    """The (dims, index) of every read and store of `body`; None when an iterator of `its`
    occurs anywhere but in their affine indices."""
    found: list[_Access] = []
    for s in ir.walk(body):
        if isinstance(s, ir.Matmul):
            return None
        if isinstance(s, ir.If) and any(its & set(iterators_of(c.index)) for c in s.conditions):
            return None
        if isinstance(s, ir.Set):
            found.append((s.tnode.dims, s.index))
            if _in_dynamic(s.index, its):
                return None
        for root in ir.root_exprs(s):
            for e in ir.walk_expr(root):
                if isinstance(e, ir.IndexValue) and its & set(iterators_of(e.index)):
                    return None
                if isinstance(e, ir.Get):
                    if _in_dynamic(e.index, its):
                        return None
                    found.append((e.tnode.dims, e.index))
    return found


def _in_dynamic(index: tuple[ir.AxisIndex, ...], its: set[Iterator]) -> bool:
    """Whether the value of a gather index of `index` depends on an iterator of `its`."""
    return any(its & set(ir.index_iterators(i)) for i in index if isinstance(i, ir.Dynamic))


def _rewrite(body: ir.Stmt, o: Iterator, i: Iterator, merged: Iterator) -> ir.Stmt:
    def index(dims: tuple[int, ...], idx: tuple[ir.AxisIndex, ...]) -> tuple[ir.AxisIndex, ...]:
        return _merge_index(dims, idx, o, i, merged)

    def expr(e: ir.Expr) -> ir.Expr:
        return ir.Get(e.tnode, index(e.tnode.dims, e.index)) if isinstance(e, ir.Get) else e

    def stmt(s: ir.Stmt) -> ir.Stmt:
        return replace(s, index=index(s.tnode.dims, s.index)) if isinstance(s, ir.Set) else s

    return ir.map_stmt(ir.map_stmt_exprs(body, expr), stmt)


def _merge_index(
    dims: tuple[int, ...],
    index: tuple[ir.AxisIndex, ...],
    o: Iterator,
    i: Iterator,
    merged: Iterator,
) -> tuple[ir.AxisIndex, ...]:
    """`index` with `o` and `i` replaced by `merged`, the row-major offset unchanged (given the
    coefficients checked in `_merged`): the term goes on the innermost axis that used either."""
    strides = [1] * len(dims)
    for k in range(len(dims) - 2, -1, -1):
        strides[k] = strides[k + 1] * dims[k + 1]
    axes: list[ir.AxisIndex] = list(index)
    coeff_i = 0
    last = None
    for k, idx in enumerate(index):
        if isinstance(idx, ir.Dynamic):
            continue
        terms, offset = as_affine(idx)
        if not any(it in (o, i) for _, it in terms):
            continue
        coeff_i += sum(c * strides[k] for c, it in terms if it == i)
        axes[k] = affine(*((c, it) for c, it in terms if it not in (o, i)), offset=offset)
        last = k
    if last is not None and coeff_i:
        # Row-major strides of outer axes are multiples of inner ones: this divides exactly.
        kept: Index = axes[last]  # type: ignore[assignment]
        terms, offset = as_affine(kept)
        axes[last] = affine(*terms, (coeff_i // strides[last], merged), offset=offset)
    return tuple(axes)

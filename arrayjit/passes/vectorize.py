"""Vectorization (CPU schedule): innermost loops whose iterations are independent get
`#pragma omp simd`, and a register accumulator they reduce into a reduction clause.

The pragma is what lets the compiler vectorize a reduction over floats: it licenses adding the
terms in several partial sums (one per vector lane, combined at the end) instead of strictly in
loop order. One vector of partial sums still waits on each addition before the next, so a long
reduction is also cut into `REDUCTION_PARTS` contiguous parts summed side by side into their own
accumulators, combined pairwise after the loop (then the few iterations the division leaves
over). The result differs from the sequential sum by rounding (the error bound of a sum of n
terms, about n ulp of the terms' magnitude, is unchanged in kind) and is the same on every run.
The pragma also lets `exp`, `log`... compute whole vectors through glibc's libmvec. Loops
shorter than `CpuTarget.vectorize_min_extent` are left as they are: they gain nothing, and short
reductions keep their sequential order.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, affine
from arrayjit.schedule import cpu_loops
from arrayjit.schedule.cpu_target import CpuTarget

#: Accumulators a long reduction loop sums into side by side.
REDUCTION_PARTS = 4

_names = itertools.count(1)


def run(stmt: ir.Stmt, target: CpuTarget) -> ir.Stmt:
    def mark(s: ir.Stmt) -> ir.Stmt:
        if not (
            isinstance(s, ir.For)
            and s.extent >= target.vectorize_min_extent
            and cpu_loops.innermost(s)
            and cpu_loops.independent(s)
        ):
            return s
        reductions = cpu_loops.reductions(s) or ()
        if reductions and s.extent >= REDUCTION_PARTS * target.vectorize_min_extent:
            return _side_by_side(s, reductions)
        return replace(s, vectorize=True, reductions=reductions)

    return ir.map_stmt(stmt, mark)


def _side_by_side(loop: ir.For, reductions: tuple[ir.Reduction, ...]) -> ir.Stmt:
    """`loop` as `REDUCTION_PARTS` contiguous parts in one vectorized loop, each part reducing
    into accumulators of its own; then their pairwise combination and the leftover iterations."""
    part = loop.extent // REDUCTION_PARTS
    inner, tail = Iterator(name=loop.iterator.name), Iterator(name=loop.iterator.name)
    inside = ir.declared_locals(loop.body)
    decls: list[ir.Stmt] = []
    bodies: list[ir.Stmt] = []
    partials: dict[str, list[ir.Local]] = {r.name: [] for r in reductions}
    for k in range(REDUCTION_PARTS):
        names = {name: f"{name}p{next(_names)}" for name in (*partials, *sorted(inside))}
        shifted = {loop.iterator: affine((1, inner), offset=k * part)}
        bodies.append(ir.rename_locals(ir.substitute_iterators(loop.body, shifted), names))
        for r in reductions:
            decls.append(ir.DeclLocal(names[r.name], r.dtype, cpu_loops.partial_start(r)))
            partials[r.name].append(ir.Local(names[r.name], r.dtype))
    clauses = tuple(
        ir.Reduction(r.op, local.name, r.dtype) for r in reductions for local in partials[r.name]
    )
    vectorized = ir.For(
        inner, part, ir.block(bodies), loop.parallel, vectorize=True, reductions=clauses
    )
    combined = [
        ir.SetLocal(
            r.name,
            ir.Apply(
                cpu_loops.combine_op(r),
                (ir.Local(r.name, r.dtype), _pairwise(r, partials[r.name])),
                r.dtype,
            ),
        )
        for r in reductions
    ]
    rest = []
    if loop.extent > part * REDUCTION_PARTS:
        start = {loop.iterator: affine((1, tail), offset=part * REDUCTION_PARTS)}
        rest.append(
            ir.For(
                tail,
                loop.extent - part * REDUCTION_PARTS,
                ir.substitute_iterators(loop.body, start),
            )
        )
    return ir.block([*decls, vectorized, *combined, *rest])


def _pairwise(r: ir.Reduction, terms: list[ir.Expr]) -> ir.Expr:
    """`terms` combined as a balanced tree: ((t0 op t1) op (t2 op t3))."""
    while len(terms) > 1:
        pairs = [terms[k : k + 2] for k in range(0, len(terms), 2)]
        terms = [
            ir.Apply(cpu_loops.combine_op(r), tuple(pair), r.dtype) if len(pair) == 2 else pair[0]
            for pair in pairs
        ]
    return terms[0]

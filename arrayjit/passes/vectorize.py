"""Vectorization (CPU schedule): innermost loops whose iterations are independent get
`#pragma omp simd`, and a register accumulator they reduce into a reduction clause.

The pragma is what lets the compiler vectorize a reduction over floats: it licenses adding the
terms in several partial sums (one per vector lane, combined at the end) instead of strictly in
loop order, so the result differs from the sequential sum by rounding (the error bound of a sum
of n terms, about n ulp, is unchanged in kind). It also lets `exp`, `log`... compute whole
vectors through glibc's libmvec. Loops shorter than `CpuTarget.vectorize_min_extent` are left
as they are: they gain nothing, and short reductions keep their sequential order.
"""

from __future__ import annotations

from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit.schedule import cpu_loops
from arrayjit.schedule.cpu_target import CpuTarget


def run(stmt: ir.Stmt, target: CpuTarget) -> ir.Stmt:
    def mark(s: ir.Stmt) -> ir.Stmt:
        if (
            isinstance(s, ir.For)
            and s.extent >= target.vectorize_min_extent
            and cpu_loops.innermost(s)
            and cpu_loops.independent(s)
        ):
            return replace(s, vectorize=True, reductions=cpu_loops.reductions(s) or ())
        return s

    return ir.map_stmt(stmt, mark)

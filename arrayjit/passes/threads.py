"""Threads (CPU schedule): the outermost loop of a top-level nest runs on `CpuTarget.threads`
threads (OpenMP, static chunks) when its iterations are independent and the nest's work is
worth starting threads for. Each iteration computes what it would alone, so results do not
depend on the thread count. Products (`Matmul`) split themselves over threads.

A top-level loop that reduces into a register accumulator (a full sum, a dot product) is split
into one contiguous chunk per thread, each summing into its own accumulator; the partial
results are then combined in thread order, and the iterations left over by the division run
last. The result differs from the sequential sum by rounding and is the same on every run for
a given thread count.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.indexing import Iterator, affine
from arrayjit.schedule import cpu_loops
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import MemoryMode, TNode

#: How the partial results of each thread's accumulator combine: `acc - x - y` is `acc - (x + y)`,
#: and each thread's partial result of `-` already holds the minus sign.
COMBINE = {"sub": "add"}

_names = itertools.count(1)


def run(stmt: ir.Stmt, target: CpuTarget) -> ir.Stmt:
    if target.threads <= 1:
        return stmt
    top = stmt.stmts if isinstance(stmt, ir.Block) else (stmt,)
    return ir.block([_parallel(s, target) for s in top])


def _parallel(s: ir.Stmt, target: CpuTarget) -> ir.Stmt:
    if not (
        isinstance(s, ir.For)
        and s.extent > 1
        and cpu_loops.work(s) >= target.parallel_min_work
        and cpu_loops.independent(s)
    ):
        return s
    reductions = cpu_loops.reductions(s)
    if not reductions:
        return replace(s, threads=min(target.threads, s.extent))
    if s.extent < 2 * target.threads:
        return s
    return _split_reduction(s, reductions, target.threads)


def _split_reduction(loop: ir.For, reductions: tuple[ir.Reduction, ...], threads: int) -> ir.Stmt:
    """`loop` as one chunk per thread into per-thread accumulators, their combination in thread
    order, and the iterations left over."""
    chunk = loop.extent // threads
    thread, inner, combine, tail = (
        Iterator(name=name) for name in ("t", loop.iterator.name or "i", "t", "i")
    )
    own = {r.name: f"part{next(_names)}" for r in reductions}
    partials = {
        r.name: TNode("partials", (threads,), r.dtype, MemoryMode.LOCAL) for r in reductions
    }
    body = ir.substitute_iterators(
        ir.rename_locals(loop.body, own), {loop.iterator: affine((chunk, thread), (1, inner))}
    )
    per_thread = ir.block(
        [
            *(ir.DeclLocal(own[r.name], r.dtype, _neutral(r)) for r in reductions),
            ir.For(inner, chunk, body),
            *(
                ir.Set(partials[r.name], (thread,), ir.Local(own[r.name], r.dtype))
                for r in reductions
            ),
        ]
    )
    out: list[ir.Stmt] = [ir.For(thread, threads, per_thread, parallel=True, threads=threads)]
    for r in reductions:
        acc = ir.Local(r.name, r.dtype)
        term = ir.Get(partials[r.name], (combine,))
        out.append(
            ir.For(
                combine,
                threads,
                ir.SetLocal(r.name, ir.Apply(COMBINE.get(r.op, r.op), (acc, term), r.dtype)),
            )
        )
    if loop.extent > chunk * threads:
        rest = ir.substitute_iterators(
            loop.body, {loop.iterator: affine((1, tail), offset=chunk * threads)}
        )
        out.append(ir.For(tail, loop.extent - chunk * threads, rest))
    return ir.block(out)


def _neutral(r: ir.Reduction) -> ir.Const:
    return ir.Const(ops.neutral(COMBINE.get(r.op, r.op), r.dtype), r.dtype)

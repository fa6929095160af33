"""Threads (CPU schedule): the outermost loop of a top-level nest runs on `CpuTarget.threads`
threads (OpenMP, static chunks) when its iterations are independent and the nest's work is
worth starting threads for. Each iteration computes what it would alone, so results do not
depend on the thread count. Products (`Matmul`) split themselves over threads.

A loop with no loop inside (a 1-D pointwise loop) is first cut into one chunk per thread, of a
length fixed here (a multiple of `CHUNK_MULTIPLE`), and a tail: the chunk then vectorizes as a
loop of its own, so which elements the vector code computes (vector math functions differ from
the scalar ones by rounding) never depends on how many threads the runtime actually starts.

A top-level loop that reduces into a register accumulator (a full sum, a dot product) is split
the same way, each chunk summing into its own accumulator; the partial results are then
combined in thread order, and the tail runs last. The result differs from the sequential sum by
rounding and is the same on every run for a given thread count.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from arrayjit import loop_ir as ir
from arrayjit.indexing import Iterator, affine
from arrayjit.schedule import cpu_loops
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import MemoryMode, TNode

#: Chunks are a multiple of this many iterations (whole vectors).
CHUNK_MULTIPLE = 16

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
    if not reductions and not cpu_loops.innermost(s):
        return replace(s, threads=min(target.threads, s.extent))
    if _chunk(s, target.threads)[0] == 0:
        return s
    if not reductions:
        return _chunked(s, target.threads)
    return _split_reduction(s, reductions, target.threads)


def _chunk(loop: ir.For, threads: int) -> tuple[int, Iterator, Iterator, Iterator]:
    """The chunk length (whole vectors if the chunk is an innermost loop), and iterators for the
    thread, the chunk and the tail."""
    multiple = CHUNK_MULTIPLE if cpu_loops.innermost(loop) else 1
    chunk = loop.extent // threads // multiple * multiple
    name = loop.iterator.name or "i"
    return chunk, Iterator(name="t"), Iterator(name=name), Iterator(name=name)


def _tail(loop: ir.For, start: int, tail: Iterator) -> list[ir.Stmt]:
    """The iterations of `loop` from `start` on, as a loop of their own (if any)."""
    if loop.extent == start:
        return []
    body = ir.substitute_iterators(loop.body, {loop.iterator: affine((1, tail), offset=start)})
    return [ir.For(tail, loop.extent - start, body, loop.parallel)]


def _chunked(loop: ir.For, threads: int) -> ir.Stmt:
    """`loop` as one chunk per thread, then the tail."""
    chunk, thread, inner, tail = _chunk(loop, threads)
    body = ir.substitute_iterators(loop.body, {loop.iterator: affine((chunk, thread), (1, inner))})
    chunks = ir.For(inner, chunk, body, parallel=True)
    return ir.block(
        [
            ir.For(thread, threads, chunks, parallel=True, threads=threads),
            *_tail(loop, chunk * threads, tail),
        ]
    )


def _split_reduction(loop: ir.For, reductions: tuple[ir.Reduction, ...], threads: int) -> ir.Stmt:
    """`loop` as one chunk per thread into per-thread accumulators, their combination in thread
    order, and the iterations left over."""
    chunk, thread, inner, tail = _chunk(loop, threads)
    combine = Iterator(name="t")
    own = {r.name: f"part{next(_names)}" for r in reductions}
    partials = {
        r.name: TNode("partials", (threads,), r.dtype, MemoryMode.LOCAL) for r in reductions
    }
    body = ir.substitute_iterators(
        ir.rename_locals(loop.body, own), {loop.iterator: affine((chunk, thread), (1, inner))}
    )
    per_thread = ir.block(
        [
            *(ir.DeclLocal(own[r.name], r.dtype, cpu_loops.partial_start(r)) for r in reductions),
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
                ir.SetLocal(r.name, ir.Apply(cpu_loops.combine_op(r), (acc, term), r.dtype)),
            )
        )
    return ir.block([*out, *_tail(loop, chunk * threads, tail)])

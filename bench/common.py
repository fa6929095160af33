"""Pieces shared by the benchmarks: the matmul assignment and GPU timing with CUDA events."""

from __future__ import annotations

import statistics

from arrayjit.assignments import Accum
from arrayjit.indexing import Iterator, Projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode


def matmul(n: int) -> tuple[Accum, TNode, TNode, TNode]:
    """`c =:+ a * b` over n x n float32 buffers, as assignment code, and the buffers."""
    a, b, c = TNode("a", (n, n)), TNode("b", (n, n)), TNode("c", (n, n))
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    proj = Projections((n, n, n), (i, j, k), (i, j), ((i, k), (k, j)))
    return Accum(c, "add", "mul", (a, b), proj, zero_first=True), a, b, c


def gpu_median_seconds(ctx: Runtime, fn, repeats: int) -> float:
    """Median seconds of `fn()` after a warm-up, from events on the CUDA backend's stream."""
    from cuda.core import EventOptions

    timing = EventOptions(timing_enabled=True)
    stream = ctx.backend.stream
    fn()
    ctx.synchronize()
    times = []
    for _ in range(repeats):
        start = stream.record(options=timing)
        fn()
        end = stream.record(options=timing)
        end.sync()
        times.append((end - start) / 1e3)
    return statistics.median(times)


def torch_median_seconds(fn, repeats: int) -> float:
    """Median seconds of `fn()` after a warm-up, from CUDA events on torch's current stream."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)

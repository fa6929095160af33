"""The CPU that C code is scheduled for: the thread count and the thresholds of the schedule's
decisions. The C backend passes a `CpuTarget` to `lowering.compile_to_ir`, whose CPU passes read
it. Every field is a plain value, so a target prints, compares and hashes: it is part of what
determines the generated code.

What the instruction set offers (vector width, registers) is not here: the generated C tests
the compiler's macros (`__AVX512F__`, `__AVX__`) itself, so the same source is right for any
target. What the compiler offers (OpenMP, vector math) only changes flags
(`arrayjit.backends.cc_features`): without it the same source runs on one thread, unvectorized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuTarget:
    #: Threads a parallel loop or a matrix product uses (1: none). Part of the generated code
    #: (`num_threads(...)`), so results are deterministic for a given count.
    threads: int = 1
    # ---- thresholds (tests lower them to exercise the schedules on small sizes) ----------------
    #: A contraction becomes a packed matmul when m * n * k reaches this.
    matmul_min_volume: int = 32 * 32 * 32
    #: A loop nest (or a product's m * n * k) runs on threads when its estimated work reaches
    #: this: below it, starting the threads costs more than they save.
    parallel_min_work: int = 1 << 16
    #: An innermost loop is vectorized when it has at least this many iterations (shorter ones
    #: gain nothing, and short reductions keep their sequential order).
    vectorize_min_extent: int = 16

    @classmethod
    def from_environment(cls) -> CpuTarget:
        """The default target: `ARRAYJIT_NUM_THREADS` threads, else one per usable core."""
        return cls(threads=thread_count())


def thread_count() -> int:
    """`ARRAYJIT_NUM_THREADS`, else the cores this process may run on."""
    configured = os.environ.get("ARRAYJIT_NUM_THREADS", "").strip()
    if configured:
        try:
            count = int(configured)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"ARRAYJIT_NUM_THREADS must be a positive integer, got {configured!r}")
        return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

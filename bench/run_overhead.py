"""Per-run overhead of a compiled routine on the C backend: `routine.run()` of routines of 1, 10,
100 and 1000 tiny chunks (4-cell pointwise nests), against calling the same chunk functions one by
one from Python through ctypes in the same process.

    python bench/run_overhead.py
"""

from __future__ import annotations

import ctypes
import time

from arrayjit.assignments import Accum
from arrayjit.indexing import identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode


def negations(chunks: int):
    """`y_k = -y_(k-1)` over 4 cells, `chunks` times: one chunk per statement."""
    y = TNode("x", (4,))
    code = None
    for k in range(chunks):
        out = TNode(f"y{k}", (4,))
        step = Accum(out, None, "neg", (y,), identity_projections((4,), 1))
        code = step if code is None else code + step
        y = out
    return code


def best_microseconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 1e6 * best


def main() -> None:
    runtime = Runtime("c")
    print("C backend, per-run overhead of routine.run() (us), best of 5")
    print(f"{'chunks':>7}{'run()':>10}{'ctypes loop':>13}{'ratio':>8}")
    for chunks in (1, 10, 100, 1000):
        routine = runtime.compile(negations(chunks), f"negations{chunks}")
        compiled = routine.compiled
        calls = [
            (ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address), ctypes.addressof(table))
            for address, table in zip(compiled.function_array, compiled.tables, strict=True)
        ]

        def one_by_one(calls=calls) -> None:
            for function, table in calls:
                function(table)

        repeats = max(10, 20000 // chunks)
        run = best_microseconds(routine.run, repeats)
        loop = best_microseconds(one_by_one, repeats)
        print(f"{chunks:>7}{run:>10.2f}{loop:>13.2f}{loop / run:>8.1f}")


if __name__ == "__main__":
    main()

"""Graph building and shape closing scale linearly (issue 15, item 1).

1. Chains of `relu(w @ y + y)` layers, each `w` a parameter whose dims are inferred: the time to
   build the graph (shape inference as operations are added) and to close its shapes (as
   compiling does), per chain length, with the ratio to the shortest chain (linear: 8 for 400/50).
2. A graph rebuilt on the same parameters at every step and lowered (its shapes closed), as an
   inference or sampling loop does: time and memory per step, early and late.

Times are CPU seconds of this process (`time.process_time`), best of 3, so that other work on
the machine disturbs them less.

    python bench/shape_build.py
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

import ocannl_py as oc
from ocannl_py import shape

LENGTHS = (50, 100, 200, 400)
REPEATS = 3
REBUILDS = 600


def chain(n: int) -> oc.Tensor:
    y = oc.term("x", batch_dims=[4], input_dims=[], output_dims=[16])
    for k in range(n):
        y = oc.relu(oc.param(f"w{k}") @ y + y)
    return y


def build_and_close(n: int) -> tuple[float, float]:
    """Best of REPEATS: seconds to build a chain of n layers, and to close its shapes."""
    best_build = best_close = float("inf")
    for _ in range(REPEATS):
        gc.collect()
        start = time.process_time()
        y = chain(n)
        built = time.process_time()
        shape.close([t.shape for t in y.subgraph()])
        closed = time.process_time()
        best_build = min(best_build, built - start)
        best_close = min(best_close, closed - built)
    return best_build, best_close


def rebuild_loop() -> tuple[float, float, float]:
    """Median ms per step over the first and the last 50 steps, and bytes kept per step."""
    x = oc.term("x", batch_dims=[8], input_dims=[], output_dims=[16])
    w1, w2 = oc.param("w1", output_dims=[32]), oc.param("w2", output_dims=[16])
    times = []
    tracemalloc.start()
    for step in range(REBUILDS):
        start = time.process_time()
        y = oc.op("w2 * relu(w1 * x)", w1=w1, w2=w2, x=x)
        y.forward.lower()
        times.append(time.process_time() - start)
        if step == 49:
            gc.collect()
            early_memory = tracemalloc.get_traced_memory()[0]
    gc.collect()
    late_memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_step = (late_memory - early_memory) / (REBUILDS - 50)
    return 1e3 * statistics.median(times[:50]), 1e3 * statistics.median(times[-50:]), per_step


def main() -> None:
    print("chains of relu(w @ y + y) layers: seconds (ratio to the 50-layer chain)")
    print(f"{'layers':>8}{'build':>16}{'close':>16}")
    base = None
    for n in LENGTHS:
        build, close = build_and_close(n)
        base = base or (build, close)
        print(f"{n:>8}{build:>9.3f} ({build / base[0]:4.1f}){close:>9.3f} ({close / base[1]:4.1f})")
    early, late, memory = rebuild_loop()
    print(f"\ngraph rebuilt on shared parameters, {REBUILDS} steps (build + close + lower)")
    print(f"first 50 steps: {early:.1f} ms/step, last 50: {late:.1f} ms/step "
          f"(ratio {late / early:.2f}); memory kept: {memory:.0f} bytes/step")  # fmt: skip


if __name__ == "__main__":
    main()

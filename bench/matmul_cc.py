"""Float32 matmul built from assignments, compiled by the C backend (the CPU schedule's packed,
register-blocked product on `ARRAYJIT_NUM_THREADS` threads), against numpy in the same run.

    python bench/matmul_cc.py [sizes...]      (default: 512 1024)
Prints GFLOP/s for both (median of several runs after a warm-up) and the ratio generated / numpy.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from common import matmul

from arrayjit.runtime.runtime import Runtime


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(n: int, ctx: Runtime) -> tuple[float, float]:
    code, a, b, c = matmul(n)
    routine = ctx.compile(code, f"matmul{n}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = rng.standard_normal((n, n), dtype=np.float32)
    a.set_host(x)
    b.set_host(y)
    repeats = max(3, int(2e9 / n**3))
    t_gen = median_time(routine.run, repeats)
    t_np = median_time(lambda: x @ y, repeats)
    np.testing.assert_allclose(c.host(), x @ y, rtol=1e-3, atol=1e-3 * np.sqrt(n))
    flops = 2 * n**3
    return flops / t_gen / 1e9, flops / t_np / 1e9


def main() -> None:
    sizes = [int(s) for s in sys.argv[1:]] or [512, 1024]
    ctx = Runtime("c")
    print(f"threads: {ctx.backend.cpu_target().threads}")
    print(f"{'n':>6} {'generated GFLOP/s':>18} {'numpy GFLOP/s':>14} {'ratio':>7}")
    for n in sizes:
        gen, ref = bench(n, ctx)
        print(f"{n:>6} {gen:>18.2f} {ref:>14.2f} {gen / ref:>7.3f}")


if __name__ == "__main__":
    main()

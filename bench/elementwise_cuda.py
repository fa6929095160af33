"""A fused pointwise chain, y = relu(exp(x) * x + 1) with virtual intermediates (one kernel),
compiled by the CUDA backend, against a device-to-device copy of the same bytes in the same run.

    python bench/elementwise_cuda.py [log2 sizes...]      (default: 26, i.e. 2^26 floats)
Times with CUDA events after a warm-up, median of several runs; bandwidth counts the bytes read
plus the bytes written.
"""

from __future__ import annotations

import sys

import numpy as np
from common import gpu_median_seconds

from arrayjit.assignments import Accum, Arg, Call, Lit
from arrayjit.indexing import identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode, TNode

REPEATS = 20


def bench(log2_n: int, ctx: Runtime) -> tuple[float, float]:
    n = 1 << log2_n
    x, y = TNode("x", (n,)), TNode("y", (n,))
    exp_x, times_x, plus_one = (TNode(s, (n,), memory_mode=MemoryMode.VIRTUAL) for s in "epq")
    p1, p2 = identity_projections((n,), 1), identity_projections((n,), 2)
    code = (
        Accum(exp_x, None, "exp", (x,), p1)
        + Accum(times_x, None, "mul", (exp_x, x), p2)
        + Accum(plus_one, None, Call("add", (Arg(0), Lit(1.0))), (times_x,), p1)
        + Accum(y, None, "relu", (plus_one,), p1)
    )
    values = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    x.set_host(values)
    y.set_host(np.full(n, np.nan, np.float32))
    routine = ctx.compile(code, "relu_exp_chain")
    assert len(routine.compiled.kernels) == 1, "the chain should fuse into one kernel"
    t_chain = gpu_median_seconds(ctx, routine.run, REPEATS)
    expected = np.maximum(np.exp(values) * values + 1, 0)
    np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-6)

    backend = ctx.backend
    source, target = backend.allocate(4 * n), backend.allocate(4 * n)
    t_copy = gpu_median_seconds(
        ctx, lambda: target.copy_from(source, stream=backend.stream), REPEATS
    )
    moved = 2 * 4 * n  # bytes read + bytes written, the same for both
    return moved / t_chain / 1e9, moved / t_copy / 1e9


def main() -> None:
    sizes = [int(s) for s in sys.argv[1:]] or [26]
    ctx = Runtime("cuda")
    print(f"device: {ctx.backend.device.name}")
    print(f"{'n':>8} {'chain GB/s':>11} {'copy GB/s':>10} {'ratio':>6}")
    for log2_n in sizes:
        chain, copy = bench(log2_n, ctx)
        print(f"{'2^' + str(log2_n):>8} {chain:>11.1f} {copy:>10.1f} {chain / copy:>6.3f}")


if __name__ == "__main__":
    main()

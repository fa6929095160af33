"""Float32 matmul built from assignments, compiled by the CUDA backend, against cuBLAS (through
torch, TF32 off: true float32) in the same run.

    python bench/matmul_cuda.py [sizes...]      (default: 4096)
Times with CUDA events after a warm-up, median of several runs; prints TFLOP/s of the tiled
kernel, of the one-thread-per-cell kernel and of cuBLAS, and the ratios to cuBLAS.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from common import gpu_median_seconds, matmul, torch_median_seconds

from arrayjit.runtime.runtime import Runtime

REPEATS = 10


def bench(n: int, ctx: Runtime) -> dict[str, float]:
    code, a, b, c = matmul(n)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = rng.standard_normal((n, n), dtype=np.float32)
    a.set_host(x)
    b.set_host(y)
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    reference = (tx.double() @ ty.double()).cpu().numpy()
    flops = 2 * n**3
    out = {}
    for variant, tiled in (("tiled", True), ("one thread per cell", False)):
        ctx.backend.tile_matmul = tiled
        routine = ctx.compile(code, f"matmul{n}_{'tiled' if tiled else 'naive'}")
        c.set_host(np.full((n, n), np.nan, np.float32))  # poison: every cell must be written
        out[variant] = flops / gpu_median_seconds(ctx, routine.run, REPEATS) / 1e12
        error = np.linalg.norm(c.host() - reference) / np.linalg.norm(reference)
        assert error < 1e-5, f"{variant}: relative error {error}"
    ctx.backend.tile_matmul = True
    out["cuBLAS"] = flops / torch_median_seconds(lambda: tx @ ty, REPEATS) / 1e12
    return out


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = [int(s) for s in sys.argv[1:]] or [4096]
    ctx = Runtime("cuda")
    print(f"device: {ctx.backend.device.name}")
    print(
        f"{'n':>6} {'tiled TFLOP/s':>14} {'per-cell TFLOP/s':>17} {'cuBLAS TFLOP/s':>15}"
        f" {'tiled/cuBLAS':>13} {'per-cell/cuBLAS':>16}"
    )
    for n in sizes:
        r = bench(n, ctx)
        tiled, naive, ref = r["tiled"], r["one thread per cell"], r["cuBLAS"]
        print(
            f"{n:>6} {tiled:>14.2f} {naive:>17.2f} {ref:>15.2f} {tiled / ref:>13.3f}"
            f" {naive / ref:>16.3f}"
        )


if __name__ == "__main__":
    main()

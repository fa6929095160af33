"""The GPU acceptance suite of issue 11 (run on an H100): each item built with arrayjit, checked
against a reference, then timed against PyTorch (cuBLAS; TF32 off except for the TF32 item) or a
device-to-device copy in the same process, with CUDA events (median of several timed batches after
a warm-up; a batch of small calls amortizes the gap between launches). Prints one line per item as
it goes and a table of ratios (reference time / ours: above 1 is faster) last.

    python bench/gpu_suite.py            (matmul tiles autotuned; --no-tune for the defaults)
Items that need work outside this suite's kernels print "not yet available".
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np
import torch
from common import gpu_median_seconds, matmul, torch_median_seconds
from elementwise_cuda import bench as pointwise_chain

from arrayjit.assignments import Accum
from arrayjit.indexing import Fixed, Iterator, Projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode

REPEATS = 15


@dataclass
class Row:
    item: str
    ours: str
    reference: str
    ratio: float | None
    target: float | None


def report(row: Row) -> Row:
    ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
    print(f"{row.item}: ours {row.ours}, reference {row.reference}, ratio {ratio}", flush=True)
    return row


def timed(ctx: Runtime, run, calls: int) -> float:
    """Seconds per call of `run` on the backend's stream, `calls` calls per timed batch."""

    def batch() -> None:
        for _ in range(calls):
            run()

    return gpu_median_seconds(ctx, batch, REPEATS) / calls


def torch_timed(fn, calls: int) -> float:
    def batch() -> None:
        for _ in range(calls):
            fn()

    return torch_median_seconds(batch, REPEATS) / calls


# ---- matrix products ---------------------------------------------------------------------


def matmul_item(ctx: Runtime, n: int, tf32: bool, label: str) -> Row:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    ctx.backend.allow_tf32 = tf32
    code, a, b, c = matmul(n)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = rng.standard_normal((n, n), dtype=np.float32)
    a.set_host(x)
    b.set_host(y)
    c.set_host(np.full((n, n), np.nan, np.float32))  # poison: every cell must be written
    routine = ctx.compile(code, f"suite_matmul{n}_{'tf32' if tf32 else 'fp32'}")
    (plan,) = routine.compiled.plans
    routine.run()
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    expected = (tx.double() @ ty.double()).cpu().numpy()
    error = np.linalg.norm(c.host() - expected) / np.linalg.norm(expected)
    limit = 1e-3 if tf32 else 1e-5
    assert error < limit, f"{label}: relative error {error:.2e} over {limit:.0e}"
    calls = 1 if n >= 2048 else 10
    ours = timed(ctx, routine.run, calls)
    reference = torch_timed(lambda: tx @ ty, calls)
    torch.backends.cuda.matmul.allow_tf32 = False
    ctx.backend.allow_tf32 = False
    flops = 2 * n**3
    config = plan.matmul.config.describe()
    return Row(
        label,
        f"{flops / ours / 1e12:.1f} TFLOP/s ({config}, error {error:.1e})",
        f"{flops / reference / 1e12:.1f} TFLOP/s (cuBLAS)",
        reference / ours,
        None,
    )


# ---- reductions --------------------------------------------------------------------------


def reduction_item(ctx: Runtime, label: str, dims: tuple[int, ...], keep: int | None) -> Row:
    """Sum over every axis (`keep` None), or over all but axis `keep`."""
    its = tuple(Iterator(name=f"r{k}") for k in range(len(dims)))
    x = TNode("x", dims)
    out_dims = (1,) if keep is None else (dims[keep],)
    out = TNode("out", out_dims)
    lhs = (Fixed(0),) if keep is None else (its[keep],)
    code = Accum(out, "add", "identity", (x,), Projections(dims, its, lhs, (its,)), True)
    values = np.random.default_rng(len(dims)).standard_normal(dims, dtype=np.float32)
    x.set_host(values)
    out.set_host(np.full(out_dims, np.nan, np.float32))
    routine = ctx.compile(code, f"suite_{label.replace(' ', '_')}")
    routine.run()
    axes = tuple(k for k in range(len(dims)) if k != keep)
    expected = values.astype(np.float64).sum(axis=axes).reshape(out_dims)
    scale = np.abs(values).astype(np.float64).sum(axis=axes).reshape(out_dims)
    error = float(np.max(np.abs(out.host() - expected) / scale))
    assert error < 1e-5, f"{label}: error {error:.2e} of the sum of magnitudes"
    tx = torch.from_numpy(values).cuda()
    reference_fn = (lambda: tx.sum()) if keep is None else (lambda: tx.sum(dim=axes))
    ours = timed(ctx, routine.run, 10)
    reference = torch_timed(reference_fn, 10)
    nbytes = values.nbytes
    forms = [
        f"team {p.reduction.team} x {p.reduction.parts} parts" if p.reduction else "thread/cell"
        for p in routine.compiled.plans
    ]
    return Row(
        label,
        f"{1e6 * ours:.1f} us, {nbytes / ours / 1e9:.0f} GB/s ({' + '.join(forms)})",
        f"{1e6 * reference:.1f} us (torch.sum)",
        reference / ours,
        None,
    )


def pointwise_item(ctx: Runtime) -> Row:
    chain, copy = pointwise_chain(26, ctx)
    return Row(
        "relu(exp(x)*x+1), 2^26 floats",
        f"{chain:.0f} GB/s",
        f"{copy:.0f} GB/s (device copy)",
        chain / copy,
        None,
    )


NOT_YET = [
    "bf16 matmul 4096 and 8192 (needs 16-bit dtypes)",
    "row softmax 8192x4096 (needs reduction + pointwise fusion)",
    "layer norm (needs reduction + pointwise fusion)",
    "causal attention b8 h12 t1024 d64 bf16 (needs flash-style fusion)",
    "MLP 784-1024-1024-10 SGD step (needs the above and CUDA graphs)",
    "launch overhead of small routines (needs CUDA graph replay)",
]
TARGETS = {
    "fp32 matmul 4096": 0.9,
    "tf32 matmul 4096": 0.7,
    "sum of 2^24": 0.9,
    "row sums 8192x4096": 0.9,
    "relu(exp(x)*x+1), 2^26 floats": 0.9,
}


def main() -> None:
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("arrayjit").setLevel(logging.INFO)  # shows the tuned configurations
    ctx = Runtime("cuda")
    ctx.backend.autotune = "--no-tune" not in sys.argv
    torch.backends.cuda.matmul.allow_tf32 = False
    print(
        f"device: {ctx.backend.device.name}; torch {torch.__version__}; autotune {ctx.backend.autotune}"
    )
    rows = [
        report(matmul_item(ctx, 4096, False, "fp32 matmul 4096")),
        report(matmul_item(ctx, 4096, True, "tf32 matmul 4096")),
        report(matmul_item(ctx, 1024, False, "fp32 matmul 1024")),
        report(reduction_item(ctx, "sum of 2^24", (1 << 24,), None)),
        report(reduction_item(ctx, "row sums 8192x4096", (8192, 4096), 0)),
        report(reduction_item(ctx, "column sums 8192x4096", (8192, 4096), 1)),
        report(pointwise_item(ctx)),
    ]
    for row in rows:
        row.target = TARGETS.get(row.item)
    print()
    print(f"{'item':<32} {'ratio':>6} {'target':>7}  status")
    for row in rows:
        target = "" if row.target is None else f">={row.target}"
        status = "" if row.target is None else ("met" if row.ratio >= row.target else "BELOW")
        print(f"{row.item:<32} {row.ratio:>6.3f} {target:>7}  {status}")
    for item in NOT_YET:
        print(f"{item:<32} not yet available")


if __name__ == "__main__":
    main()

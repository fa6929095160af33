"""The GPU acceptance suite of issue 11 (run on an H100): each item built with arrayjit, checked
against a reference, then timed against PyTorch (cuBLAS; TF32 off except for the TF32 item) or a
device-to-device copy in the same process, with CUDA events (median of several timed batches after
a warm-up; a batch of small calls amortizes the gap between launches). Prints one line per item as
it goes and a table of ratios (reference time / ours: above 1 is faster) last.

    python bench/gpu_suite.py            (matmul tiles autotuned; --no-tune for the defaults)
        [--items matmul|tf32|other|all] [--no-wgmma]   (a part of the suite; TF32 on mma.sync)
Items that need work outside this suite's kernels print "not yet available"; an item that fails
is reported and the others still run.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np
import torch
from common import gpu_median_seconds, matmul, torch_median_seconds
from elementwise_cuda import bench as pointwise_chain

from arrayjit import dtypes
from arrayjit.assignments import Accum, Arg, Call, Lit
from arrayjit.indexing import Fixed, Iterator, Projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode, TNode

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


def matmul_item(ctx: Runtime, n: int, tf32: bool, label: str, wgmma: bool = True) -> Row:
    """fp32 `c = a @ b` (TF32 tensor cores when `tf32`; wgmma on sm_90 unless `wgmma` is off)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    ctx.backend.allow_tf32, ctx.backend.wgmma = tf32, wgmma
    try:
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
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        ctx.backend.allow_tf32, ctx.backend.wgmma = False, True
    flops = 2 * n**3
    config = plan.matmul.config.describe()
    return Row(
        label,
        f"{flops / ours / 1e12:.1f} TFLOP/s ({config}, error {error:.1e})",
        f"{flops / reference / 1e12:.1f} TFLOP/s (cuBLAS)",
        reference / ours,
        None,
    )


def bf16_item(ctx: Runtime, n: int, label: str) -> Row:
    """`c = a @ b` with bfloat16 a, b and an fp32 c (fp32 sums), against torch's bf16 matmul."""
    a, b, c = TNode("a", (n, n), "bfloat16"), TNode("b", (n, n), "bfloat16"), TNode("c", (n, n))
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((n, n, n), (i, j, k), (i, j), ((i, k), (k, j)))
    code = Accum(c, "add", "mul", (a, b), projections, zero_first=True)
    generator = torch.Generator(device="cuda").manual_seed(n)
    ta = torch.randn((n, n), device="cuda", generator=generator).to(torch.bfloat16)
    tb = torch.randn((n, n), device="cuda", generator=generator).to(torch.bfloat16)
    a.set_host(ta.float().cpu().numpy())  # exactly the bf16 values torch multiplies
    b.set_host(tb.float().cpu().numpy())
    c.set_host(np.full((n, n), np.nan, np.float32))
    routine = ctx.compile(code, f"suite_matmul{n}_bf16")
    (plan,) = routine.compiled.plans
    routine.run()
    expected = (ta.double() @ tb.double()).cpu().numpy()
    error = np.linalg.norm(c.host() - expected) / np.linalg.norm(expected)
    assert error < 1e-4, f"{label}: relative error {error:.2e} over 1e-4 (fp32 sums of bf16)"
    ours = timed(ctx, routine.run, 1)
    reference = torch_timed(lambda: ta @ tb, 1)
    flops = 2 * n**3
    return Row(
        label,
        f"{flops / ours / 1e12:.1f} TFLOP/s ({plan.matmul.config.describe()}, error {error:.1e})",
        f"{flops / reference / 1e12:.1f} TFLOP/s (cuBLAS bf16)",
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


# ---- rows: a reduction fused with its pointwise consumers (row fusion) --------------------


def _over_rows(lhs: TNode, accum: str | None, op, rhses: tuple[TNode, ...], reads: str) -> Accum:
    """`lhs[i, j] (accum)= op(...)` over the rows i and columns j of the first operand (or of
    `lhs`); `reads` says where each operand is read: "r" at [i], "c" at [j], "x" at [i, j]. A
    reduction (accum, 1-D lhs) reduces each row."""
    i, j = Iterator(name="i"), Iterator(name="j")
    at = {"r": (i,), "c": (j,), "x": (i, j)}
    dims = rhses[0].dims if len(lhs.dims) == 1 else lhs.dims
    lhs_index = (i,) if len(lhs.dims) == 1 else (i, j)
    projections = Projections(dims, (i, j), lhs_index, tuple(at[r] for r in reads))
    return Accum(lhs, accum, op, rhses, projections, accum is not None)


def _private(label: str, dims: tuple[int, ...]) -> TNode:
    return TNode(label, dims, memory_mode=MemoryMode.VIRTUAL)


def softmax_code(x: TNode, y: TNode) -> Accum:
    """`y = softmax(x)` over rows, as nn.softmax lowers it: max, exp(x - max), sum, divide."""
    rows, length = x.dims
    top, e, total = _private("max", (rows,)), _private("e", x.dims), _private("sum", (rows,))
    shifted_exp = Call("exp", (Call("sub", (Arg(0), Arg(1))),))
    return (
        _over_rows(top, "max", "identity", (x,), "x")
        + _over_rows(e, None, shifted_exp, (x, top), "xr")
        + _over_rows(total, "add", "identity", (e,), "x")
        + _over_rows(y, None, "div", (e, total), "xr")
    )


def layer_norm_code(x: TNode, w: TNode, b: TNode, y: TNode, eps: float) -> Accum:
    """`y = (x - mean) / sqrt(var + eps) * w + b` over rows, as nn.layer_norm lowers it."""
    rows, length = x.dims
    total, centred, squares = (
        _private("sum", (rows,)),
        _private("c", x.dims),
        _private("sq", (rows,)),
    )
    inverse = 1.0 / length
    centre = Call("sub", (Arg(0), Call("mul", (Arg(1), Lit(inverse)))))
    square = Call("mul", (Arg(0), Arg(0)))
    rstd = Call("recip_sqrt", (Call("add", (Call("mul", (Arg(1), Lit(inverse))), Lit(eps))),))
    scaled = Call("add", (Call("mul", (Call("mul", (Arg(0), rstd)), Arg(2))), Arg(3)))
    return (
        _over_rows(total, "add", "identity", (x,), "x")
        + _over_rows(centred, None, centre, (x, total), "xr")
        + _over_rows(squares, "add", square, (centred,), "x")
        + _over_rows(y, None, scaled, (centred, squares, w, b), "xrcc")
    )


def row_item(ctx: Runtime, label: str, rows: int, length: int, norm: bool) -> Row:
    """Softmax (or layer norm) over the rows of a `rows` x `length` float32 array: one
    row-fused kernel, its values checked against torch, timed against torch.softmax (or
    torch.nn.functional.layer_norm)."""
    rng = np.random.default_rng(rows + length)
    x, y = TNode("x", (rows, length)), TNode("y", (rows, length))
    values = rng.standard_normal((rows, length), dtype=np.float32) * 3
    x.set_host(values)
    y.set_host(np.full((rows, length), np.nan, np.float32))
    tx = torch.from_numpy(values).cuda()
    if norm:
        w, b = TNode("w", (length,)), TNode("b", (length,))
        wv = rng.standard_normal(length, dtype=np.float32)
        bv = rng.standard_normal(length, dtype=np.float32)
        w.set_host(wv), b.set_host(bv)
        code = layer_norm_code(x, w, b, y, 1e-5)
        tw, tb = torch.from_numpy(wv).cuda(), torch.from_numpy(bv).cuda()
        reference_fn = lambda: torch.nn.functional.layer_norm(tx, (length,), tw, tb, 1e-5)  # noqa: E731
        name = "F.layer_norm"
    else:
        code = softmax_code(x, y)
        reference_fn = lambda: torch.softmax(tx, dim=1)  # noqa: E731
        name = "torch.softmax"
    routine = ctx.compile(code, f"suite_{label.replace(' ', '_')}")
    kernels = len(routine.compiled.kernels)
    assert kernels == 1, f"{label}: {kernels} kernels, expected one row-fused kernel"
    routine.run()
    expected = reference_fn().cpu().numpy()
    error = float(np.max(np.abs(y.host() - expected)))
    assert error < 2e-5 * max(1.0, float(np.abs(expected).max())), f"{label}: error {error:.2e}"
    ours = timed(ctx, routine.run, 10)
    reference = torch_timed(reference_fn, 10)
    nbytes = 2 * values.nbytes  # read once, written once
    team = routine.compiled.plans[0].rows.team
    return Row(
        label,
        f"{1e6 * ours:.1f} us, {nbytes / ours / 1e9:.0f} GB/s (team of {team} per row)",
        f"{1e6 * reference:.1f} us, {nbytes / reference / 1e9:.0f} GB/s ({name})",
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


def mlp_item() -> Row:
    """The MLP training step of `cuda_launch.py` (compiled in fresh processes), vs torch eager."""
    from cuda_launch import mlp_figures

    cold, cached, timed, theirs = mlp_figures()
    print(
        f"MLP step: ours {timed['step_ms']:.3f} ms (compile {cold['compile_s']:.2f} s cold, "
        f"{1e3 * cached:.1f} ms cached), reference {theirs:.3f} ms (torch eager)",
        flush=True,
    )
    return Row(
        "MLP 784-1024-1024-10 SGD step",
        f"{timed['step_ms']:.3f} ms",
        f"{theirs:.3f} ms (torch eager)",
        theirs / timed["step_ms"],
        None,
    )


def launch_item() -> Row:
    """A routine of 100 small kernels replayed as a CUDA graph vs torch launching as many."""
    from cuda_launch import launch_figures

    ((kernels, ours, one_by_one, theirs),) = launch_figures((100,))
    print(
        f"{kernels} small kernels a run: ours {ours:.1f} us (graph; {one_by_one:.1f} us launched "
        f"one by one), reference {theirs:.1f} us (torch eager)",
        flush=True,
    )
    return Row("100 small kernels a run", f"{ours:.1f} us", f"{theirs:.1f} us", theirs / ours, None)


NOT_YET = ["causal attention b8 h12 t1024 d64 bf16 (needs flash-style fusion)"]
TARGETS = {
    "fp32 matmul 4096": 0.9,
    "tf32 matmul 4096": 0.7,
    "bf16 matmul 4096": 0.7,
    "bf16 matmul 8192": 0.7,
    "sum of 2^24": 0.9,
    "row sums 8192x4096": 0.9,
    "row softmax 8192x4096": 1.0,
    "layer norm 8192x4096": 1.0,
    "relu(exp(x)*x+1), 2^26 floats": 0.9,
    "MLP 784-1024-1024-10 SGD step": 1.5,
}


def _items(ctx: Runtime, groups: set[str]) -> tuple[list, list[str]]:
    """(label, thunk) of each item of the chosen groups, in order, and the items not available."""
    wgmma = "--no-wgmma" not in sys.argv
    items, missing = [], []
    if "matmul" in groups:
        # Riskier kernels last: a kernel that faults spoils the CUDA context for what follows.
        items += [
            ("fp32 matmul 4096", lambda: matmul_item(ctx, 4096, False, "fp32 matmul 4096")),
            ("fp32 matmul 1024", lambda: matmul_item(ctx, 1024, False, "fp32 matmul 1024")),
            (
                "tf32 matmul 4096 mma.sync",
                lambda: matmul_item(ctx, 4096, True, "tf32 matmul 4096 mma.sync", False),
            ),
        ]
    if groups & {"matmul", "tf32"}:
        items.append(
            ("tf32 matmul 4096", lambda: matmul_item(ctx, 4096, True, "tf32 matmul 4096", wgmma))
        )
    if "matmul" in groups:
        for n in (4096, 8192):
            label = f"bf16 matmul {n}"
            if "bfloat16" in dtypes.ALL:
                items.append((label, lambda n=n, label=label: bf16_item(ctx, n, label)))
            else:
                missing.append(f"{label} (arrayjit has no bfloat16 dtype yet)")
    if "other" in groups:
        items += [
            ("sum of 2^24", lambda: reduction_item(ctx, "sum of 2^24", (1 << 24,), None)),
            (
                "row sums 8192x4096",
                lambda: reduction_item(ctx, "row sums 8192x4096", (8192, 4096), 0),
            ),
            (
                "column sums 8192x4096",
                lambda: reduction_item(ctx, "column sums 8192x4096", (8192, 4096), 1),
            ),
            (
                "row softmax 8192x4096",
                lambda: row_item(ctx, "row softmax 8192x4096", 8192, 4096, False),
            ),
            (
                "layer norm 8192x4096",
                lambda: row_item(ctx, "layer norm 8192x4096", 8192, 4096, True),
            ),
            ("relu(exp(x)*x+1), 2^26 floats", lambda: pointwise_item(ctx)),
            ("MLP 784-1024-1024-10 SGD step", mlp_item),
            ("100 small kernels a run", launch_item),
        ]
        missing += NOT_YET
    return items, missing


def main() -> None:
    """`--items matmul|tf32|other|all` (all), `--no-tune`, `--no-wgmma` (TF32 on mma.sync)."""
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("arrayjit").setLevel(logging.INFO)  # shows the tuned configurations
    choice = sys.argv[sys.argv.index("--items") + 1] if "--items" in sys.argv else "all"
    groups = {"matmul", "other"} if choice == "all" else {choice}
    ctx = Runtime("cuda")
    ctx.backend.autotune = "--no-tune" not in sys.argv
    torch.backends.cuda.matmul.allow_tf32 = False
    print(
        f"device: {ctx.backend.device.name}; torch {torch.__version__}; autotune {ctx.backend.autotune}"
    )
    rows = []
    items, missing = _items(ctx, groups)
    for label, item in items:
        try:
            rows.append(report(item()))
        except Exception as exc:  # report and go on: the table shows what failed
            print(f"{label}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            rows.append(Row(label, "", "", None, None))
    for row in rows:
        row.target = TARGETS.get(row.item)
    print()
    print(f"{'item':<32} {'ratio':>6} {'target':>7}  status")
    for row in rows:
        target = "" if row.target is None else f">={row.target}"
        if row.ratio is None:
            print(f"{row.item:<32} {'':>6} {target:>7}  FAILED")
            continue
        status = "" if row.target is None else ("met" if row.ratio >= row.target else "BELOW")
        print(f"{row.item:<32} {row.ratio:>6.3f} {target:>7}  {status}")
    for item in missing:
        print(f"{item:<32} not yet available")


if __name__ == "__main__":
    main()

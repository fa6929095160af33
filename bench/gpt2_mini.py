"""OCANNL's `gpt2_mini` benchmark (issue 11, whole model): the fp32 forward pass of a GPT-2 with 4
layers, d 256 (4 heads), batch 8 x 128 tokens, random weights, built by `ocannl_py.models.gpt2`,
against `torch.compile` of transformers' GPT2Model (the hidden states after ln_f; `--head`:
GPT2LMHeadModel's logits) with the same weights, on the same device, in the same process. Prints
ms per forward of each, their ratio, and the largest absolute difference of the outputs.

    python bench/gpt2_mini.py                        (CUDA, the sizes above)
    python bench/gpt2_mini.py --backend c --batch 2 --seq 16   (C backend, small, on the CPU)
        [--layers 4 --embd 256 --heads 4 --batch 8 --seq 128 --vocab 50257] [--head] [--eager]

On the GPU both sides are timed with CUDA events (median of batches after a warm-up); on the CPU
with wall time. Where `torch.compile` is unavailable or fails, the reference runs eagerly and the
reason is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPEATS = 15
CALLS = 5  # forwards per timed batch


def ours_forward(args):
    """The compiled forward routine, its output tensor, the ids and the checkpoint."""
    from ocannl_py import Context, models
    from ocannl_py.models import gpt2
    from ocannl_py.models.token_ids import ids_term, set_ids

    positions_needed = max(args.seq, 1024)
    name = (
        f"gpt2-random:{args.layers},{args.embd},{args.heads},vocab={args.vocab},"
        f"positions={positions_needed}"
    )
    ckpt = models.checkpoint(name)
    config = ckpt.config
    values = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq))
    ids = ids_term("ids", [args.batch, args.seq])
    positions = ids_term("positions", [args.batch, args.seq])
    set_ids(ids, values, config.vocab_size, "ids")
    set_ids(positions, np.broadcast_to(np.arange(args.seq), values.shape), config.n_positions,
            "positions")  # fmt: skip
    params: dict = {}
    if args.head:
        out = gpt2.logits(ids, positions, config, params=params)
    else:
        out = gpt2.hidden_states(ids, positions, config, params=params)[-1]
    ckpt.load_into(params)
    ctx = Context(args.backend)
    start = time.perf_counter()
    routine = ctx.compile(out.forward)
    compile_s = time.perf_counter() - start
    return ctx, routine, out, values, ckpt, compile_s


def reference_model(args, ckpt, device: str):
    """transformers' model with the checkpoint's weights, compiled (or eager, with the reason)."""
    import torch
    import transformers

    kind = transformers.GPT2LMHeadModel if args.head else transformers.GPT2Model
    with tempfile.TemporaryDirectory() as folder:
        model = kind.from_pretrained(ckpt.write_folder(folder)).eval().to(device)
    if args.eager:
        return model, model, "eager (--eager)"
    try:
        compiled = torch.compile(model)
        return model, compiled, "torch.compile"
    except Exception as exc:  # report and fall back: the comparison still runs
        return model, model, f"eager (torch.compile unavailable: {type(exc).__name__}: {exc})"


def seconds_per_call(fn, synchronize, events) -> float:
    """Median seconds of one call of `fn`, over batches of CALLS after a warm-up."""

    def batch() -> None:
        for _ in range(CALLS):
            fn()

    if events is not None:
        return events(batch, REPEATS) / CALLS
    batch()
    synchronize()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        batch()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / CALLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cuda", help="cuda (default) or c (alias cc)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--head", action="store_true", help="the logits (GPT2LMHeadModel)")
    parser.add_argument("--eager", action="store_true", help="reference without torch.compile")
    args = parser.parse_args()
    args.backend = "c" if args.backend == "cc" else args.backend

    import torch
    from common import gpu_median_seconds, torch_median_seconds

    ctx, routine, out, values, ckpt, compile_s = ours_forward(args)
    gpu = args.backend == "cuda"
    device = "cuda" if gpu else "cpu"
    if not gpu:
        torch.set_num_threads(os.cpu_count() or 1)
    model, reference, how = reference_model(args, ckpt, device)
    input_ids = torch.tensor(values, device=device)

    def theirs():
        with torch.no_grad():
            result = reference(input_ids=input_ids)
        return result.logits if args.head else result.last_hidden_state

    try:
        theirs()  # compiles
    except Exception as exc:  # torch.compile fails late (no compiler, no triton): eager instead
        how = f"eager (torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0]})"
        reference = model
    routine.run()
    ours_value = out.value.reshape(args.batch, args.seq, -1)
    expected = theirs().float().cpu().numpy()
    difference = float(np.max(np.abs(ours_value - expected)))
    scale = float(np.max(np.abs(expected)))

    if gpu:
        ours_s = seconds_per_call(routine.run, ctx.synchronize,
                                  lambda fn, n: gpu_median_seconds(ctx.runtime, fn, n))  # fmt: skip
        theirs_s = seconds_per_call(theirs, torch.cuda.synchronize, torch_median_seconds)
        where = f"{ctx.backend.device.name}; torch {torch.__version__}"
    else:
        ours_s = seconds_per_call(routine.run, ctx.synchronize, None)
        theirs_s = seconds_per_call(theirs, lambda: None, None)
        where = f"CPU ({os.cpu_count()} cores); torch {torch.__version__}"
    what = "logits (GPT2LMHeadModel)" if args.head else "hidden states (GPT2Model)"
    print(f"gpt2_mini: {args.layers} layers, d {args.embd}, {args.heads} heads, batch "
          f"{args.batch} x {args.seq} tokens, vocab {args.vocab}, fp32 forward, {what}")  # fmt: skip
    print(f"device: {where}; backend {args.backend}; compile {compile_s:.1f} s")
    print(f"reference: {how}")
    print(f"max |ours - reference| {difference:.2e} (largest |value| {scale:.2f})")
    print(f"ms per forward: ocannl {1e3 * ours_s:.3f}, reference {1e3 * theirs_s:.3f}; "
          f"ratio (reference time / ours: above 1 is faster) {theirs_s / ours_s:.3f}")  # fmt: skip
    if difference > 1e-3 * max(1.0, scale):
        raise SystemExit(f"outputs differ: max |ours - reference| {difference:.2e}")


if __name__ == "__main__":
    main()

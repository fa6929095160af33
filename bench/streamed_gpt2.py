"""Streamed GPT-2 decoding (issue 12): GPT-2 XL's shape with random weights, greedy decoding
through a device memory budget (weights in pinned host memory, one stage per layer copied in
while the stage before computes), against the PCIe floor measured in the same run.

For each weights dtype (`--weights-dtype float32 bfloat16`: the weights stored and streamed in
that type, activations and sums in float32), prints for the streamed plan and the naive baseline
(one slot: copy a layer, then compute it; nothing resident) the time per token, the bytes copied
per token, the floor (those bytes at the pinned host-to-device bandwidth), the ratio, the share
of copy time hidden behind compute, the plan's peak and the drop of the driver's free memory;
then a table of all runs. The driver's free memory and the plan's peak are printed at tokens 10,
500 and 1000 when the run reaches them (`--tokens 1000`, or `--memory-tokens 1000` after the
other runs: memory does not grow). With --check (default), the ids equal transformers'
`GPT2LMHeadModel.generate(do_sample=False)` on the GPU with the same weights (for 16-bit ones:
rounded to that type, then computed in float32).

    python bench/streamed_gpt2.py [--model gpt2-random:48,1600,25] [--budget 2GiB] [--prompt 4]
        [--tokens 16] [--weights-dtype float32 [bfloat16 ...]] [--no-naive] [--no-check]
        [--memory-tokens 1000] [--backend cuda|c]

`--backend c` runs the same plans on the C backend (no floor, no driver figures: a dry run of
this script on a machine without a GPU, with a small `--model`).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
from streamed_layers import free_device_bytes, pinned_bandwidth

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Tokens at which the driver's free memory is printed (those the run reaches).
WATCHED = (10, 500, 1000)
PLANS = {
    "streamed": {},  # 2 slots, the stages that fit kept resident
    "naive": {"slots": 1, "keep_resident": False},  # copy a layer, then compute it
}


def loader(ckpt):
    """A decoder's `load`: the checkpoint's weights mapped to our layout once, for every decoder
    built (as `Decoder.from_checkpoint` loads them, without mapping them again each time)."""
    from ocannl_py import persistence

    arrays = ckpt.weights()

    def load(params: dict) -> None:
        persistence.assign(params, {label: arrays[label] for label in params}, ckpt.name,
                           ckpt.rows())  # fmt: skip

    return load


def decode(ckpt, load, backend: str, budget: str, prompt: list[int], tokens: int,
           weights_dtype: str, options: dict) -> dict:  # fmt: skip
    """One streamed decoder's figures: its generation, stats, build seconds (weights converted
    and packed, stages compiled), the drop of the driver's free memory, and (token, free bytes,
    peak) at the watched tokens."""
    from ocannl_py import Context
    from ocannl_py.models.generate import Decoder

    gpu = backend == "cuda"
    ctx = Context(backend)
    ctx.runtime.synchronize()
    free_before = free_device_bytes() if gpu else 0
    start = time.perf_counter()
    decoder = Decoder(ckpt.config, ctx, len(prompt) + tokens, load=load, budget=budget,
                      stream_options=options, weights_dtype=weights_dtype)  # fmt: skip
    built = time.perf_counter() - start
    decoder.generate(prompt, 2)  # warm-up: weights packed, kernels loaded, graphs captured
    ctx.runtime.synchronize()
    drop = free_before - free_device_bytes() if gpu else 0
    watched = []

    def watch(n: int) -> None:
        if n in WATCHED:
            free = free_device_bytes() if gpu else 0
            watched.append((n, free, decoder.step.stats.peak_device_bytes))

    result = decoder.generate(prompt, tokens, on_token=watch)
    return {"result": result, "stats": decoder.step.stats, "built": built, "drop": drop,
            "watched": watched, "bandwidth": pinned_bandwidth(ctx.runtime) if gpu else None}  # fmt: skip


def report(label: str, run: dict) -> dict:
    """Print one run's figures; its row of the summary table."""
    result, stats, bandwidth = run["result"], run["stats"], run["bandwidth"]
    mib = 2**-20
    print(f"{label}: built in {run['built']:.1f} s; {stats.streamed_stages} stages streamed, "
          f"{stats.resident_stages} resident; peak {stats.peak_device_bytes * mib:.0f} MiB "
          f"(driver's free memory dropped {run['drop'] * mib:.0f} MiB)")  # fmt: skip
    floor = 1e3 * stats.bytes_copied / bandwidth if bandwidth else float("nan")
    print(f"  {result.ms_per_token:.1f} ms per token; {stats.bytes_copied / 1e9:.3f} GB copied "
          f"per token at {(bandwidth or 0) / 1e9:.1f} GB/s: floor {floor:.1f} ms, ratio "
          f"{result.ms_per_token / floor:.3f}; {100 * stats.hidden_share:.0f}% of copy time "
          "hidden behind compute")  # fmt: skip
    for n, free, peak in run["watched"]:
        print(f"  token {n}: driver's free memory {free * mib:.0f} MiB, plan's peak "
              f"{peak * mib:.0f} MiB")  # fmt: skip
    return {"plan": label, "ms": result.ms_per_token, "gb": stats.bytes_copied / 1e9,
            "floor": floor, "gbps": (bandwidth or 0) / 1e9, "hidden": stats.hidden_share,
            "peak": stats.peak_device_bytes * mib, "drop": run["drop"] * mib}  # fmt: skip


def reference_ids(ckpt, backend: str, prompt: list[int], tokens: int,
                  dtypes: list[str]) -> dict[str, list[int]]:  # fmt: skip
    """transformers' greedy ids with the checkpoint's weights, per weights dtype: float32, or
    rounded to the 16-bit type and widened back (computed in float32, as ours)."""
    import torch
    import transformers

    from ocannl_py.models import gpt2

    device = "cuda" if backend == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.device(device):
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**ckpt.hf_config))
    state = {name: torch.from_numpy(np.asarray(ckpt.tensors[name])) for name in ckpt.tensors}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Left out of the state: the tied head and the causal-mask buffers of older versions.
    assert not unexpected and all(gpt2.IGNORED.match(k) for k in missing), (missing, unexpected)
    model = model.eval()
    out, exact = {}, {name: p.detach().clone() for name, p in model.named_parameters()}
    for dtype in dtypes:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(exact[name].to(getattr(torch, dtype)).float())
            ids = model.generate(torch.tensor([prompt], device=device), max_new_tokens=tokens,
                                 do_sample=False, pad_token_id=0)  # fmt: skip
        out[dtype] = ids[0, len(prompt) :].tolist()
    del model, exact
    if device == "cuda":
        torch.cuda.empty_cache()  # the device memory goes back before the next plan is measured
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-random:48,1600,25")
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--prompt", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--weights-dtype", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16", "float16"])  # fmt: skip
    parser.add_argument("--no-naive", action="store_true", help="the streamed plan only")
    parser.add_argument("--memory-tokens", type=int, default=0, metavar="N",
                        help="then N tokens with the streamed plan and the last weights dtype "
                        "(the free-memory watch of --tokens N, in the same process)")  # fmt: skip
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--backend", default="cuda", choices=["cuda", "c"])
    args = parser.parse_args()

    from ocannl_py import models

    start = time.perf_counter()
    ckpt = models.checkpoint(args.model)
    load = loader(ckpt)
    print(f"weights made and mapped in {time.perf_counter() - start:.1f} s")
    vocab = ckpt.config.vocab_size
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, vocab, args.prompt)]
    print(f"{args.model}, budget {args.budget}, prompt {args.prompt} tokens, {args.tokens} new, "
          f"{args.backend} backend")  # fmt: skip
    plans = ["streamed"] if args.no_naive else list(PLANS)
    rows, ids, failed = [], {}, False
    for dtype in args.weights_dtype:
        for plan in plans:
            run = decode(ckpt, load, args.backend, args.budget, prompt, args.tokens, dtype,
                         PLANS[plan])  # fmt: skip
            gc.collect()  # the plan's device memory goes before the next plan is measured
            rows.append(report(f"{plan}, {dtype} weights", run))
            ids.setdefault(dtype, run["result"].ids)
            if run["result"].ids != ids[dtype]:
                print(f"  ids DIFFER from the streamed plan's: {run['result'].ids}")
                failed = True
    print("\n| plan | ms per token | copied per token | floor | ratio | copy hidden | peak / "
          "driver's drop |\n| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for r in rows:
        print(f"| {r['plan']} | {r['ms']:.1f} | {r['gb']:.3f} GB | {r['floor']:.1f} ms "
              f"({r['gbps']:.1f} GB/s) | {r['ms'] / r['floor']:.3f} | {100 * r['hidden']:.0f}% | "
              f"{r['peak']:.0f} MiB / {r['drop']:.0f} MiB |")  # fmt: skip
    if len(args.weights_dtype) > 1:
        base = rows[0]["ms"]
        for r in rows[len(plans) : len(plans) * len(args.weights_dtype) : len(plans)]:
            print(f"{r['plan']}: {r['ms'] / base:.3f} of the time per token of {rows[0]['plan']}")
    if not args.no_check:
        theirs = reference_ids(ckpt, args.backend, prompt, args.tokens, list(ids))
        for dtype, ours in ids.items():
            same = theirs[dtype] == ours
            failed |= not same
            print(f"{dtype} weights: ids {'equal' if same else 'DIFFER from'} transformers' "
                  f"greedy generate with the same weights: {ours}")  # fmt: skip
            if not same:
                print(f"transformers: {theirs[dtype]}")
    if args.memory_tokens:  # last: the figures above come first if it runs out of time
        dtype = args.weights_dtype[-1]
        run = decode(ckpt, load, args.backend, args.budget, prompt, args.memory_tokens, dtype,
                     PLANS["streamed"])  # fmt: skip
        report(f"\nstreamed, {dtype} weights, {args.memory_tokens} tokens", run)
        if run["watched"]:
            (first, free_first, _), (last, free_last, _) = run["watched"][0], run["watched"][-1]
            print(f"  the driver's free memory fell by {(free_first - free_last) / 2**20:.0f} "
                  f"MiB from token {first} to token {last}")  # fmt: skip
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

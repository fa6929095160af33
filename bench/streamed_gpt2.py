"""Streamed GPT-2 decoding (issue 12): GPT-2 XL's shape with random weights, greedy decoding
through a device memory budget (weights in pinned host memory, one stage per layer copied in
while the stage before computes), against the PCIe floor measured in the same run.

Prints, for the streamed plan and for the naive baseline (one slot: copy a layer, then compute
it; nothing resident), the time per token, the bytes copied per token, the floor (those bytes at
the pinned host-to-device bandwidth), the ratio, the share of copy time hidden behind compute,
the plan's peak and the drop of the driver's free memory. With --check (default), the ids equal
transformers' `GPT2LMHeadModel.generate(do_sample=False)` with the same weights on the GPU.

    python bench/streamed_gpt2.py [--model gpt2-random:48,1600,25] [--budget 2GiB]
                                  [--prompt 4] [--tokens 16] [--no-check]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from streamed_layers import free_device_bytes, pinned_bandwidth

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def decode(ckpt, budget, prompt, tokens, **options):
    """(generation, stats, free-memory drop, build seconds) of a streamed decoder."""
    from ocannl_py import Context
    from ocannl_py.models.generate import Decoder

    ctx = Context("cuda")
    ctx.runtime.synchronize()
    free_before = free_device_bytes()
    start = time.perf_counter()
    decoder = Decoder.from_checkpoint(
        ckpt, ctx, len(prompt) + tokens, budget=budget, stream_options=options
    )
    built = time.perf_counter() - start
    decoder.generate(prompt, 2)  # warm-up: weights packed, kernels loaded, graphs captured
    ctx.runtime.synchronize()
    drop = free_before - free_device_bytes()
    result = decoder.generate(prompt, tokens)
    return result, decoder.step.stats, drop, built, ctx


def hf_ids(ckpt, prompt, tokens) -> list[int]:
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as folder:
        model = transformers.GPT2LMHeadModel.from_pretrained(ckpt.write_folder(folder))
    model = model.eval().cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=tokens,
                             do_sample=False, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-random:48,1600,25")
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--prompt", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()

    from ocannl_py import models

    ckpt = models.checkpoint(args.model)
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, 50257, args.prompt)]
    print(f"{args.model}, budget {args.budget}, prompt {args.prompt} tokens, {args.tokens} new")
    results = {}
    for label, options in (("streamed (2 slots, stages that fit resident)", {}),
                           ("naive (1 slot: copy then compute, nothing resident)",
                            {"slots": 1, "keep_resident": False})):  # fmt: skip
        result, stats, drop, built, ctx = decode(ckpt, args.budget, prompt, args.tokens, **options)
        bandwidth = pinned_bandwidth(ctx.runtime)
        floor_ms = 1e3 * stats.bytes_copied / bandwidth
        results[label] = result
        print(f"{label}: built in {built:.1f} s; {stats.streamed_stages} stages streamed, "
              f"{stats.resident_stages} resident; peak {stats.peak_device_bytes / 2**20:.0f} MiB "
              f"(driver's free memory dropped {drop / 2**20:.0f} MiB)")  # fmt: skip
        print(f"  {result.ms_per_token:.1f} ms per token; {stats.bytes_copied / 1e9:.3f} GB "
              f"copied per token at {bandwidth / 1e9:.1f} GB/s: floor {floor_ms:.1f} ms, ratio "
              f"{result.ms_per_token / floor_ms:.3f}; {100 * stats.hidden_share:.0f}% of copy "
              "time hidden behind compute")  # fmt: skip
        del ctx
    streamed, naive = results.values()
    assert streamed.ids == naive.ids, "the two plans generated different ids"
    print(f"naive / streamed: {naive.ms_per_token / streamed.ms_per_token:.2f}x")
    if not args.no_check:
        theirs = hf_ids(ckpt, prompt, args.tokens)
        same = theirs == streamed.ids
        print(f"ids {'equal' if same else 'DIFFER from'} transformers' greedy generate: "
              f"{streamed.ids}")  # fmt: skip
        if not same:
            print(f"transformers: {theirs}")
            raise SystemExit(1)


if __name__ == "__main__":
    main()

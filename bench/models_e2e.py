"""The two real models end to end, against their references in the same process: greedy GPT-2
generation (a random GPT-2 of the given shape, GPT-2's vocabulary) vs transformers'
`generate` (ids checked equal), and MiniLM sentence embeddings vs sentence-transformers'
BertModel (`bench/minilm_cpu.py`'s batch workload: embeddings compared on every run). Prints
ms per token / per batch, compile time, and the ratios.

    python bench/models_e2e.py [--layers 4 --embd 256 --heads 4 --prompt 8 --tokens 32]
                               [--backend c] [--budget 16MiB] [--no-minilm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gpt2(args) -> None:
    import torch
    import transformers

    from ocannl_py import Context, models
    from ocannl_py.models.generate import Decoder

    name = f"gpt2-random:{args.layers},{args.embd},{args.heads},positions=256"
    ckpt = models.checkpoint(name)
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, 50257, args.prompt)]
    start = time.perf_counter()
    decoder = Decoder.from_checkpoint(ckpt, Context(args.backend), args.prompt + args.tokens,
                                      progress=False)  # fmt: skip
    build = time.perf_counter() - start
    decoder.generate(prompt, 2)  # warm-up
    walls, runs = [], []
    for _ in range(3):
        start = time.perf_counter()
        runs.append(decoder.generate(prompt, args.tokens))
        walls.append(time.perf_counter() - start)
    ours = 1e3 * statistics.median(walls) / args.tokens
    step = statistics.median(r.ms_per_token for r in runs)

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        model = transformers.GPT2LMHeadModel.from_pretrained(ckpt.write_folder(folder)).eval()
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            out = model.generate(torch.tensor([prompt]), max_new_tokens=args.tokens,
                                 do_sample=False, pad_token_id=0)  # fmt: skip
            times.append(time.perf_counter() - start)
    # Both: the wall time of the whole generation (prompt read, new tokens made) per new token.
    theirs = 1e3 * statistics.median(times) / args.tokens
    assert out[0, args.prompt :].tolist() == runs[0].ids, "generated ids differ"
    print(f"GPT-2 {args.layers} layers, embd {args.embd}, {args.heads} heads, vocab 50257, "
          f"prompt {args.prompt}, {args.tokens} new tokens, backend {args.backend}")  # fmt: skip
    print(f"  load + compile the step: {build:.1f} s; device bytes {runs[0].peak_device_bytes:,}; "
          f"one step {step:.2f} ms")  # fmt: skip
    print(f"  ms per token: ocannl {ours:.2f}, transformers {theirs:.2f} "
          f"(ratio ocannl / transformers {ours / theirs:.2f}); ids equal")  # fmt: skip
    if args.budget:
        streamed = Decoder.from_checkpoint(ckpt, Context(args.backend), args.prompt + args.tokens,
                                           budget=args.budget, progress=False)  # fmt: skip
        streamed.generate(prompt, 2)
        start = time.perf_counter()
        result = streamed.generate(prompt, args.tokens)
        wall = 1e3 * (time.perf_counter() - start) / args.tokens
        assert result.ids == runs[0].ids, "streamed ids differ"
        stats = streamed.step.stats
        print(f"  streamed within {args.budget}: {wall:.2f} ms per token (ratio to whole "
              f"{wall / ours:.2f}); peak device bytes {stats.peak_device_bytes:,}, "
              f"{stats.streamed_stages} stages streamed, {stats.resident_stages} resident")  # fmt: skip


def minilm(args) -> None:
    """MiniLM's batch of 32 x 128 tokens, as `bench/minilm_cpu.py` measures it."""
    from minilm_cpu import run

    run(["batch"], repeats=3, backend=args.backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--backend", default="c")
    parser.add_argument("--budget", help="also stream the decoding step within this budget")
    parser.add_argument("--no-minilm", action="store_true")
    args = parser.parse_args()
    gpt2(args)
    if not args.no_minilm:
        minilm(args)


if __name__ == "__main__":
    main()

"""Decoding with nn.KVCache: a GPT-2 stack of nn.transformer_block (random weights, loaded by
label) decodes token by token through one compiled step routine, against (1) recomputing the
whole causal forward pass each token and (2) Hugging Face transformers' GPT2Model with its own
KV cache (past_key_values) in the same process, which also checks every step's output.

    python bench/kv_cache_decode.py [--layers 4 --embd 256 --heads 4 --tokens 64 --backend c]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def decoder(x, config, cache=None, params=None):
    from ocannl_py import nn

    h = x
    for i in range(config.n_layer):
        h = nn.transformer_block(
            h, config.n_head, f"layer{i}", True, mlp_ratio=config.n_inner / config.n_embd,
            eps=config.layer_norm_epsilon, cache=cache, params=params,
        )  # fmt: skip
    return nn.layer_norm(h, "ln_f", config.layer_norm_epsilon, params=params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--backend", default="c")
    args = parser.parse_args()

    import torch
    import transformers

    import ocannl_py as oc
    from ocannl_py import Context, models, nn

    n = args.tokens
    ckpt = models.checkpoint(
        f"gpt2-random:{args.layers},{args.embd},{args.heads},vocab=64,positions={n}"
    )
    config, weights = ckpt.config, ckpt.weights(progress=False)
    rng = np.random.default_rng(0)
    # Token embeddings plus position embeddings, as GPT2Model adds them to inputs_embeds.
    embeds = rng.normal(scale=0.1, size=(n, config.n_embd)).astype(np.float32)
    inputs = embeds + weights["embed.pos.w"][:, :n].T

    ctx = Context(args.backend)
    shared: dict = {}
    cache = nn.KVCache(n)
    token = oc.term("token", batch_dims=[1, 1], input_dims=[], output_dims=[config.n_embd])
    y = decoder(token, config, cache, shared)
    for label, p in shared.items():
        p.set_value(weights[label])
    start = time.perf_counter()
    step = ctx.compile(y.forward + cache.update(y))
    compile_step = time.perf_counter() - start
    sequence = oc.term("sequence", batch_dims=[1, n], input_dims=[], output_dims=[config.n_embd])
    sequence.set_value(inputs[None])
    full = decoder(sequence, config, params=shared)
    full_routine = ctx.compile(full.forward)

    with tempfile.TemporaryDirectory() as folder:
        model = transformers.GPT2Model.from_pretrained(ckpt.write_folder(folder)).eval()
    torch.set_num_threads(1)

    ours, theirs, recompute, worst = [], [], [], 0.0
    past = None
    for t in range(n):
        token.set_value(inputs[None, t : t + 1])
        start = time.perf_counter()
        step.run()
        value = y.value
        ours.append(time.perf_counter() - start)
        with torch.no_grad():
            start = time.perf_counter()
            out = model(inputs_embeds=torch.tensor(embeds[None, t : t + 1]), past_key_values=past,
                        use_cache=True)  # fmt: skip
            theirs.append(time.perf_counter() - start)
        past = out.past_key_values
        worst = max(worst, float(np.abs(value[0, 0] - out.last_hidden_state[0, 0].numpy()).max()))
        start = time.perf_counter()
        full_routine.run()
        _ = full.value
        recompute.append(time.perf_counter() - start)
    assert worst < 1e-3, f"decoding differs from transformers by {worst}"

    ms = {name: 1e3 * statistics.median(v) for name, v in
          (("cache", ours), ("recompute", recompute), ("torch", theirs))}  # fmt: skip
    print(f"GPT-2 stack: {config.n_layer} layers, embd {config.n_embd}, {config.n_head} heads, "
          f"{n} tokens, backend {args.backend}; step routine compiled in {compile_step:.1f} s")  # fmt: skip
    print(f"max |ours - transformers| over every step: {worst:.2e}")
    print(f"{'ms per token (median)':32}{'ms':>8}{'ratio to KV cache':>20}")
    print(f"{'nn.KVCache, one step routine':32}{ms['cache']:>8.3f}{1.0:>20.2f}")
    print(
        f"{'recompute all positions':32}{ms['recompute']:>8.3f}{ms['recompute'] / ms['cache']:>20.2f}"
    )
    print(
        f"{'transformers, past_key_values':32}{ms['torch']:>8.3f}{ms['torch'] / ms['cache']:>20.2f}"
    )


if __name__ == "__main__":
    main()

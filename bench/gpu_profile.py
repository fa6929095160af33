"""Where a CUDA routine's time goes: each kernel timed alone (`Routine.profile`), grouped by form,
the slowest first. The workload is a GPT-2 training step (forward, backward, Adam) or its forward
alone, on one GPU, with random weights and data.

    python bench/gpu_profile.py [--mlp] [--layers 12 --embd 768 --heads 12 --vocab 50257 --seq 256
                                 --batch 8 --forward --top 25]
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np


def build_mlp(args):
    """The MLP 784-1024-1024-10 training step of issue 11 (batch 1024, squared error, SGD)."""
    import ocannl_py as oc
    from ocannl_py import train

    x = oc.term("x", batch_dims=[1024], input_dims=[], output_dims=[784])
    y = oc.term("y", batch_dims=[1024], input_dims=[], output_dims=[10])
    mlp = oc.op("{w3} * relu({b2; o = [1024]} + {w2} * relu({b1; o = [1024]} + {w1} * x)) "
                "+ {b3; o = [10]}", x=x)  # fmt: skip
    loss = oc.op('((mlp - y) **. 2 ++ "...|... => 0") /. 1024', mlp=mlp, y=y)
    rng = np.random.default_rng(0)
    x.set_value(rng.standard_normal((1024, 784), dtype=np.float32))
    y.set_value(rng.standard_normal((1024, 10), dtype=np.float32))
    ctx = oc.Context("cuda")
    return ctx, [ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.01), "mlp_step")]


def build(args):
    import ocannl_py as oc
    from ocannl_py import nn, train
    from ocannl_py.models import gpt2

    if args.mlp:
        return build_mlp(args)

    config = gpt2.GPT2Config(
        vocab_size=args.vocab, n_positions=max(1024, args.seq), n_embd=args.embd,
        n_layer=args.layers, n_head=args.heads, n_inner=4 * args.embd,
    )  # fmt: skip
    rows = {"batch_dims": [args.batch, args.seq], "input_dims": []}
    ids = oc.term("ids", output_dims=[], dtype="int32", **rows)
    positions = oc.term("positions", output_dims=[], dtype="int32", **rows)
    logits = gpt2.logits(ids, positions, config)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab, (args.batch, args.seq + 1))
    ids.set_value(tokens[:, :-1].astype(np.int32))
    positions.set_value(np.broadcast_to(np.arange(args.seq, dtype=np.int32), ids.value.shape))
    ctx = oc.Context("cuda")
    if args.forward:
        return ctx, [ctx.compile(logits.forward, "profile_forward")]
    targets = oc.term("targets", output_dims=[args.vocab], **rows)
    one_hot = np.zeros((args.batch, args.seq, args.vocab), np.float32)
    np.put_along_axis(one_hot, tokens[:, 1:, None], 1.0, axis=-1)
    targets.set_value(one_hot)
    loss = nn.cross_entropy(logits, targets)
    step = train.grad_update(loss) + train.adam_update(loss, 1e-4)
    return ctx, [ctx.compile(step, "profile_step")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--forward", action="store_true", help="the forward pass alone")
    parser.add_argument("--mlp", action="store_true", help="the MLP 784-1024-1024-10 step instead")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    start = time.perf_counter()
    ctx, routines = build(args)
    print(f"compile {time.perf_counter() - start:.1f} s", flush=True)
    for routine in routines:
        routine.run()
        ctx.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            routine.run()
        ctx.synchronize()
        whole = (time.perf_counter() - start) / 3 * 1e3
        kernels = routine.profile(repeats=3)
        total = sum(k.ms for k in kernels)
        print(f"{routine.executable.name}: {whole:.2f} ms a run (graph), {len(kernels)} kernels, "
              f"{total:.2f} ms timed one by one")  # fmt: skip
        by_form = collections.defaultdict(lambda: [0.0, 0])
        for k in kernels:
            kind = k.form.split(" ")[0]
            by_form[kind][0] += k.ms
            by_form[kind][1] += 1
        for kind, (ms, count) in sorted(by_form.items(), key=lambda kv: -kv[1][0]):
            print(f"  {kind:>10}: {count:4d} kernels, {ms:9.3f} ms ({100 * ms / total:.1f}%)")
        for k in sorted(kernels, key=lambda k: -k.ms)[: args.top]:
            print(f"  {k.ms:9.3f} ms {k.name:>28} grid {k.grid} block {k.block}: {k.form}")


if __name__ == "__main__":
    main()

"""Data-parallel training (train.data_parallel): samples/s of a GPT-2-124M-shaped training step on
1 and on 2 GPUs of one host, the batch per GPU fixed, and the ratio (ideal: 2.0).

The model is GPT-2 small's stack with its parameter shapes: 12 nn.transformer_block (768
features, 12 heads, MLP 3072), the final layer norm and an untied 768 x 50257 head, softmax
cross-entropy, Adam. The token and position embeddings are left out: the inputs are the embedded
vectors (a stand-in: the embedding lookup is not on main). The sequence defaults to 256 tokens
(GPT-2's 1024 with --seq 1024). The data stays on each GPU; each step runs forward, backward
bucket by bucket with NCCL all-reduces on a communication stream, and the update.

    python bench/data_parallel.py [--layers 12 --embd 768 --heads 12 --vocab 50257 --seq 256
                                   --batch-per-gpu 8 --steps 10 --bucket-mib 25]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

# NVLink multicast stays off (the device machines' rule: it can take the host's GPUs down).
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"


def gpt2_step(args):
    """`model(shard) -> (loss, inputs)` for train.data_parallel: GPT-2's stack on embedded inputs."""
    import ocannl_py as oc
    from ocannl_py import nn

    def model(size: int):
        x = oc.term("x", batch_dims=[size, args.seq], input_dims=[], output_dims=[args.embd])
        targets = oc.term(
            "targets", batch_dims=[size, args.seq], input_dims=[], output_dims=[args.vocab]
        )
        h = x
        for i in range(args.layers):
            h = nn.transformer_block(h, args.heads, f"layer{i}", True)
        h = nn.layer_norm(h, "ln_f")
        logits = nn.linear(h, [args.vocab], "head")
        return nn.cross_entropy(logits, targets), {"x": x, "targets": targets}

    return model


def measure(args, gpus: int) -> tuple[float, float, float]:
    """(samples/s, compile seconds, last loss) on `gpus` GPUs."""
    from ocannl_py import train

    batch = args.batch_per_gpu * gpus
    start = time.perf_counter()
    dp = train.data_parallel(
        gpt2_step(args), lambda loss: train.adam_update(loss, 1e-4), batch_size=batch,
        replicas=gpus, backend="cuda", bucket_bytes=args.bucket_mib * 2**20,
    )  # fmt: skip
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    shard = args.batch_per_gpu
    for replica in dp.replicas:
        dp.activate(replica)
        x = rng.normal(scale=0.5, size=(shard, args.seq, args.embd)).astype(np.float32)
        labels = rng.integers(0, args.vocab, (shard, args.seq))
        targets = np.zeros((shard, args.seq, args.vocab), np.float32)
        np.put_along_axis(targets, labels[..., None], 1.0, axis=-1)
        replica.inputs["x"].set_value(x)
        replica.inputs["targets"].set_value(targets)
    for _ in range(args.warmup):
        dp.run()
    dp.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        dp.run()
    dp.synchronize()
    seconds = time.perf_counter() - start
    dp.activate(dp.replicas[0])
    loss = dp.loss.item()
    dp.close()
    print(
        f"{gpus} GPU(s): {len(dp.replicas)} replicas, {len(dp.replicas[0].backward)} buckets, "
        f"compile {compile_s:.1f} s, {args.steps * batch / seconds:.2f} samples/s "
        f"({args.steps * batch * args.seq / seconds:.0f} tokens/s), "
        f"{1e3 * seconds / args.steps:.1f} ms/step, loss {loss:.4f}",
        flush=True,
    )
    return args.steps * batch / seconds, compile_s, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch-per-gpu", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bucket-mib", type=int, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from arrayjit.runtime.collectives import gpu_count

    available = gpu_count()
    print(
        f"GPT-2-124M-shaped step: {args.layers} layers, {args.embd} features, {args.heads} heads, "
        f"vocab {args.vocab}, {args.seq} tokens, {args.batch_per_gpu} sequences per GPU; "
        f"{available} GPU(s) here",
        flush=True,
    )
    if available < 1:
        raise SystemExit("no GPU here: this benchmark needs CUDA GPUs")
    one, _, _ = measure(args, 1)
    if available < 2:
        print("one GPU only: no 2-GPU figure")
        return
    two, _, _ = measure(args, 2)
    print(f"ratio 2 GPUs / 1 GPU: {two / one:.2f}x samples/s (ideal 2.00)")


if __name__ == "__main__":
    main()

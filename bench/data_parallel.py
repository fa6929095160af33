"""Data-parallel training (train.data_parallel): samples/s of a GPT-2-124M-shaped training step on
1 and on 2 GPUs of one host, the batch per GPU fixed, and the ratio (ideal: 2.0).

The model is GPT-2 small (models.gpt2.logits, random initial weights): token and position
embeddings, 12 nn.transformer_block (768 features, 12 heads, MLP 3072), the final layer norm and
the head tied to the token embedding (124M parameters), softmax cross-entropy on the next
tokens, Adam. The sequence defaults to 256 tokens (GPT-2's 1024 with --seq 1024). The data stays
on each GPU; each step runs forward, backward bucket by bucket with NCCL all-reduces on a
communication stream, and the update. `--torch`:
the same model in PyTorch DDP (one process per GPU, exact fp32) in the same run, for reference.

    python bench/data_parallel.py [--layers 12 --embd 768 --heads 12 --vocab 50257 --seq 256
                                   --batch-per-gpu 8 --steps 10 --bucket-mib 25 --torch]
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
    """`model(shard) -> (loss, inputs)` for train.data_parallel: GPT-2 (models.gpt2.logits: token
    and position embeddings, the blocks, ln_f, the head tied to the token embedding) and the
    cross-entropy of the next tokens."""
    import ocannl_py as oc
    from ocannl_py import nn
    from ocannl_py.models import gpt2

    config = gpt2.GPT2Config(
        vocab_size=args.vocab, n_positions=max(1024, args.seq), n_embd=args.embd,
        n_layer=args.layers, n_head=args.heads, n_inner=4 * args.embd,
    )  # fmt: skip

    def model(size: int):
        rows = {"batch_dims": [size, args.seq], "input_dims": []}
        ids = oc.term("ids", output_dims=[], dtype="int32", **rows)
        positions = oc.term("positions", output_dims=[], dtype="int32", **rows)
        targets = oc.term("targets", output_dims=[args.vocab], **rows)
        logits = gpt2.logits(ids, positions, config)
        inputs = {"ids": ids, "positions": positions, "targets": targets}
        return nn.cross_entropy(logits, targets), inputs

    return model


def batch_arrays(args, shard: int, rng) -> dict[str, np.ndarray]:
    """Random token ids, their positions, and the next tokens one-hot."""
    tokens = rng.integers(0, args.vocab, (shard, args.seq + 1))
    targets = np.zeros((shard, args.seq, args.vocab), np.float32)
    np.put_along_axis(targets, tokens[:, 1:, None], 1.0, axis=-1)
    positions = np.broadcast_to(np.arange(args.seq, dtype=np.int32), (shard, args.seq))
    return {"ids": tokens[:, :-1].astype(np.int32), "positions": positions, "targets": targets}


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
        for name, array in batch_arrays(args, shard, rng).items():
            replica.inputs[name].set_value(array)
    for _ in range(args.warmup):
        dp.run()
    dp.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        dp.run()
    queued = time.perf_counter() - start
    dp.synchronize()
    seconds = time.perf_counter() - start
    dp.activate(dp.replicas[0])
    loss = dp.loss.item()
    if args.breakdown:
        breakdown(args, dp, queued, seconds)
    dp.close()
    print(
        f"{gpus} GPU(s): {len(dp.replicas)} replicas, {len(dp.replicas[0].backward)} buckets, "
        f"compile {compile_s:.1f} s, {args.steps * batch / seconds:.2f} samples/s "
        f"({args.steps * batch * args.seq / seconds:.0f} tokens/s), "
        f"{1e3 * seconds / args.steps:.1f} ms/step, loss {loss:.4f}",
        flush=True,
    )
    return args.steps * batch / seconds, compile_s, loss


def _timed(dp, action, steps: int) -> float:
    """Milliseconds per call of `action`, all replicas synchronized before and after."""
    dp.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        action()
    dp.synchronize()
    return 1e3 * (time.perf_counter() - start) / steps


def breakdown(args, dp, queued: float, seconds: float) -> None:
    """Where a step's time goes: the host's queueing, the step without its all-reduces, the
    all-reduces alone (every bucket, back to back). Runs after the timed steps."""
    print(
        f"  host queueing {1e3 * queued / args.steps:.1f} ms/step of {1e3 * seconds / args.steps:.1f}"
    )
    import cProfile
    import io
    import pstats

    dp.synchronize()
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [dp.run() for _ in range(3)])
    dp.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    print("  host profile of 3 steps (by own time):")
    print("\n".join("    " + line for line in text.getvalue().splitlines()[-20:] if line.strip()))
    if len(dp.replicas) < 2:
        return
    collective = dp.collective
    buckets = range(len(dp.replicas[0].backward))

    class _Skip:
        replicas = collective.replicas

        def all_reduce(self, buffers, streams=None):
            return None

    dp.collective = _Skip()
    print(f"  step without all-reduces {_timed(dp, dp.run, args.steps):.1f} ms")
    dp.collective = collective

    def reduce_all() -> None:
        for n in buckets:
            collective.all_reduce([r.buckets[n] for r in dp.replicas], dp.comm_streams)

    gib = (
        sum(t.size * t.dtype.itemsize for r in dp.replicas[:1] for b in r.buckets for t in b)
        / 2**30
    )
    ms = _timed(dp, reduce_all, args.steps)
    print(
        f"  all-reduces alone {ms:.1f} ms for {gib:.3f} GiB per replica ({gib / ms * 1e3:.1f} GiB/s)"
    )


def _torch_gpt2(args):
    """The same model in PyTorch: embeddings, pre-norm blocks (causal attention, tanh-GELU MLP),
    final norm, tied head."""
    import torch
    from torch import nn as tnn
    from torch.nn import functional as F

    class Block(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            e = args.embd
            self.ln1, self.ln2 = tnn.LayerNorm(e), tnn.LayerNorm(e)
            self.qkv, self.proj = tnn.Linear(e, 3 * e), tnn.Linear(e, e)
            self.fc, self.out = tnn.Linear(e, 4 * e), tnn.Linear(4 * e, e)

        def forward(self, x):
            b, t, e = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, args.heads, -1).unbind(2)
            a = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, e))
            return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT2(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = tnn.Embedding(args.vocab, args.embd)
            self.wpe = tnn.Embedding(max(1024, args.seq), args.embd)
            self.blocks = tnn.Sequential(*[Block() for _ in range(args.layers)])
            self.ln_f = tnn.LayerNorm(args.embd)

        def forward(self, ids):
            positions = torch.arange(ids.shape[1], device=ids.device)
            h = self.ln_f(self.blocks(self.wte(ids) + self.wpe(positions)))
            return h @ self.wte.weight.T  # the head tied to the token embedding

    return GPT2()


def _torch_worker(rank: int, world: int, args, port: int, results) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32, as our step
    torch.manual_seed(rank)
    model = DistributedDataParallel(
        _torch_gpt2(args).cuda(rank), device_ids=[rank], bucket_cap_mb=args.bucket_mib
    )
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    b = args.batch_per_gpu
    tokens = torch.randint(0, args.vocab, (b, args.seq + 1), device="cuda")
    ids, labels = tokens[:, :-1], tokens[:, 1:].flatten()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids).flatten(0, 1), labels).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        results.put(args.steps * b * world / seconds)
    dist.destroy_process_group()


def torch_ddp(args, world: int) -> float:
    """samples/s of PyTorch DDP (one process per GPU, NCCL) on the same step and sizes."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = 29500 + world
    workers = [
        context.Process(target=_torch_worker, args=(r, world, args, port, results))
        for r in range(world)
    ]
    for w in workers:
        w.start()
    rate = results.get(timeout=300)
    for w in workers:
        w.join()
    print(f"PyTorch DDP, {world} GPU(s): {rate:.2f} samples/s", flush=True)
    return rate


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
    parser.add_argument("--torch", action="store_true", help="also PyTorch DDP on 1 and 2 GPUs")
    parser.add_argument(
        "--breakdown", action="store_true",
        help="host queueing time, the step without all-reduces, the all-reduces alone",
    )  # fmt: skip
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
    print(f"ratio 2 GPUs / 1 GPU: {two / one:.2f}x samples/s (ideal 2.00)", flush=True)
    if args.torch:
        torch_one, torch_two = torch_ddp(args, 1), torch_ddp(args, 2)
        print(
            f"PyTorch DDP ratio 2 GPUs / 1 GPU: {torch_two / torch_one:.2f}x; ours / PyTorch: "
            f"{one / torch_one:.2f}x on 1 GPU, {two / torch_two:.2f}x on 2 GPUs"
        )


if __name__ == "__main__":
    main()

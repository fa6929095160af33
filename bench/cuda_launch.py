"""Launch overhead and compile latency of the CUDA backend (issue 11, item 4), against PyTorch
eager in the same process.

1. Per-run cost of routines of 1, 10 and 100 small pointwise kernels (4096 floats each):
   `routine.run()` with the kernels replayed as one CUDA graph, the same launched one by one from
   Python, and PyTorch launching the same number of `torch.neg` kernels.
2. The MLP 784-1024-1024-10 training step (batch 1024, squared error, SGD) through the user API:
   compile time with an empty cache and from the cache in a fresh process, then the step's time
   against the same step in PyTorch eager (cuBLAS, TF32 off).

    python bench/cuda_launch.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from arrayjit.assignments import Accum
from arrayjit.indexing import identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode

N = 4096


def negations(kernels: int):
    """`y_k = -y_(k-1)`, `kernels` times: one kernel per statement."""
    y = TNode("x", (N,))
    code = None
    for k in range(kernels):
        out = TNode(f"y{k}", (N,))
        step = Accum(out, None, "neg", (y,), identity_projections((N,), 1))
        code = step if code is None else code + step
        y = out
    return code


def best_microseconds(fn, sync, repeats: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 1e6 * best


def launch_figures(counts=(1, 10, 100)) -> list[tuple[int, float, float, float]]:
    """(kernels, graph us, one by one us, torch us) per run of each routine."""
    import torch

    gpu = Runtime("cuda")
    sync = gpu.backend.synchronize
    x = torch.zeros(N, device="cuda")
    rows = []
    for kernels in counts:
        graph = gpu.compile(negations(kernels), f"neg{kernels}")
        gpu.backend.cuda_graphs = False
        eager = gpu.compile(negations(kernels), f"neg{kernels}")
        gpu.backend.cuda_graphs = True
        repeats = max(20, 4000 // kernels)
        ours = best_microseconds(graph.run, sync, repeats)
        one_by_one = best_microseconds(eager.run, sync, repeats)

        def torch_run(kernels=kernels) -> None:
            y = x
            for _ in range(kernels):
                y = torch.neg(y)

        theirs = best_microseconds(torch_run, torch.cuda.synchronize, repeats)
        rows.append((kernels, ours, one_by_one, theirs))
    return rows


def launch_overhead() -> None:
    print("per-run time of a routine of small kernels (us; best of 5)")
    print(f"{'kernels':>8}{'graph':>10}{'one by one':>12}{'torch':>10}{'torch/graph':>13}")
    for kernels, ours, one_by_one, theirs in launch_figures():
        print(f"{kernels:>8}{ours:>10.1f}{one_by_one:>12.1f}{theirs:>10.1f}{theirs / ours:>13.2f}")


MLP_CHILD = """
import time, json, sys
start = time.perf_counter()
import numpy as np
import ocannl_py as oc
from ocannl_py import train
B = 1024
x = oc.term("x", batch_dims=[B], input_dims=[], output_dims=[784])
y = oc.term("y", batch_dims=[B], input_dims=[], output_dims=[10])
mlp = oc.op("{w3} * relu({b2; o = [1024]} + {w2} * relu({b1; o = [1024]} + {w1} * x)) "
            "+ {b3; o = [10]}", x=x)
loss = oc.op('((mlp - y) **. 2 ++ "...|... => 0") /. 1024', mlp=mlp, y=y)
ctx = oc.Context("cuda")
code = train.grad_update(loss) + train.sgd_update(loss, 0.01)
built = time.perf_counter()
step = ctx.compile(code)
compiled = time.perf_counter()
result = {"compile_s": compiled - built}
if sys.argv[1] == "time":
    rng = np.random.default_rng(0)
    x.set_value(rng.normal(size=(B, 784)).astype(np.float32))
    y.set_value(rng.normal(size=(B, 10)).astype(np.float32))
    sync = ctx.runtime.backend.synchronize
    for _ in range(3):
        step.run()
    sync()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(20):
            step.run()
        sync()
        best = min(best, (time.perf_counter() - t) / 20)
    result["step_ms"] = 1e3 * best
    result["loss"] = float(loss.value.reshape(-1)[0])
print(json.dumps(result))
"""


def run_child(cache: str, mode: str) -> dict:
    import json

    env = dict(os.environ, ARRAYJIT_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", MLP_CHILD, mode], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_mlp_ms() -> float:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    ).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(1024, 784, device="cuda")
    y = torch.randn(1024, 10, device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).sum() / 1024
        loss.backward()
        optimizer.step()

    return best_microseconds(step, torch.cuda.synchronize, 20) / 1e3


def mlp_figures() -> tuple[dict, float, dict, float]:
    """The MLP step's compile (empty cache), best cached compile (s), its timing (fresh
    processes) and torch eager's step (ms)."""
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child(cache, "compile")
        cached = min(run_child(cache, "compile")["compile_s"] for _ in range(3))
        timed = run_child(cache, "time")
    return cold, cached, timed, torch_mlp_ms()


def mlp_step() -> None:
    cold, cached, timed, theirs = mlp_figures()
    print("MLP 784-1024-1024-10, batch 1024, squared error + SGD, one training step")
    print(f"  compile: empty cache {cold['compile_s']:.2f} s, cached (fresh process) "
          f"{1e3 * cached:.1f} ms")  # fmt: skip
    print(f"  step: ours {timed['step_ms']:.3f} ms, torch eager {theirs:.3f} ms, "
          f"speed ratio {theirs / timed['step_ms']:.2f} (loss {timed['loss']:.4f})")  # fmt: skip


def main() -> None:
    launch_overhead()
    mlp_step()


if __name__ == "__main__":
    main()

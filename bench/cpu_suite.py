"""CPU benchmarks through the public API (C backend), each against a reference in the same
process: numpy for matrix products, PyTorch eager (limited to as many threads as the generated
code uses) for the rest.

    python bench/cpu_suite.py [--repeats N] [--only NAME ...] [--single-thread]

Prints, per benchmark, the median time of ours and of the reference over N runs (after a
warm-up) and the ratio reference time / our time (higher is better; 1.0 = as fast), plus the
cold compile time of each routine (the suite compiles into a temporary cache folder). Ours and
the reference are timed in separate blocks, so the threads of one runtime do not compete with
the other's. `--single-thread` runs everything (ours, numpy's BLAS, torch) on one thread and
times the CPU time of that thread: a comparison that other processes on a busy machine disturb
much less than wall-clock times of several threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

PARSER = argparse.ArgumentParser(description="CPU benchmarks against numpy and PyTorch")
PARSER.add_argument("--repeats", type=int, default=20)
PARSER.add_argument("--only", nargs="*", default=None)
PARSER.add_argument("--single-thread", action="store_true")
ARGS = PARSER.parse_args()
if ARGS.single_thread:
    # Before numpy and the first compile read them.
    os.environ.update(ARRAYJIT_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
os.environ["ARRAYJIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="arrayjit-bench-")

import numpy as np  # noqa: E402

import ocannl_py as oc  # noqa: E402
from arrayjit.schedule.cpu_target import thread_count  # noqa: E402
from ocannl_py import train  # noqa: E402

THREADS = thread_count()
CLOCK = time.thread_time if ARGS.single_thread else time.perf_counter


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return statistics.median(times)


def compiled(ctx: oc.Context, code, name: str):
    start = time.perf_counter()
    routine = ctx.compile(code, name)
    return routine, time.perf_counter() - start


def matmul(n: int, repeats: int) -> tuple[float, float, float]:
    ctx = oc.Context("c")
    a = oc.term("a", batch_dims=[], output_dims=[n], input_dims=[n])
    b = oc.term("b", batch_dims=[], output_dims=[n], input_dims=[n])
    c = a @ b
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a.set_value(x)
    b.set_value(y)
    routine, compile_s = compiled(ctx, c.forward, f"matmul{n}")
    ours = median_seconds(routine.run, repeats)
    reference = median_seconds(lambda: x @ y, repeats)
    np.testing.assert_allclose(c.value, x @ y, rtol=1e-3, atol=1e-3 * np.sqrt(n))
    return ours, reference, compile_s


def mlp(repeats: int) -> tuple[float, float, float]:
    """One SGD step of a 784-256-256-10 ReLU MLP on a batch of 256, squared-error loss."""
    import torch

    batch = 256
    rng = np.random.default_rng(1)
    inputs = rng.random((batch, 784), dtype=np.float32)
    targets = rng.random((batch, 10), dtype=np.float32)
    ctx = oc.Context("c")
    x = oc.term("x", batch_dims=[batch], input_dims=[], output_dims=[784])
    y = oc.term("y", batch_dims=[batch], input_dims=[], output_dims=[10])
    net = oc.op(
        "{w3} * relu({b2; o = [256]} + {w2} * relu({b1; o = [256]} + {w1} * x)) + {b3; o = [10]}",
        x=x,
    )
    loss = oc.op('((net - y) **. 2 ++ "...|... => 0") /. 256', net=net, y=y)
    x.set_value(inputs)
    y.set_value(targets)
    step, compile_s = compiled(ctx, train.grad_update(loss) + train.sgd_update(loss, 0.01), "mlp")
    ours = median_seconds(step.run, repeats)

    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    tx, ty = torch.from_numpy(inputs), torch.from_numpy(targets)

    def torch_step() -> None:
        optimizer.zero_grad()
        ((model(tx) - ty) ** 2).sum().div(256).backward()
        optimizer.step()

    reference = median_seconds(torch_step, repeats)
    return ours, reference, compile_s


def pointwise_chain(repeats: int) -> tuple[float, float, float]:
    import torch

    n = 1 << 22
    values = np.random.default_rng(2).standard_normal(n, dtype=np.float32)
    ctx = oc.Context("c")
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[n])
    out = oc.relu(oc.exp(x) * x + 1)
    x.set_value(values)
    routine, compile_s = compiled(ctx, out.forward, "chain")
    ours = median_seconds(routine.run, repeats)
    tx = torch.from_numpy(values)
    reference = median_seconds(lambda: torch.relu(torch.exp(tx) * tx + 1), repeats)
    expected = np.maximum(np.exp(values) * values + 1, 0)
    np.testing.assert_allclose(out.value, expected, rtol=1e-5, atol=1e-6)
    return ours, reference, compile_s


def softmax(repeats: int) -> tuple[float, float, float]:
    import torch

    rows, cols = 2048, 1024
    values = np.random.default_rng(3).standard_normal((rows, cols), dtype=np.float32)
    ctx = oc.Context("c")
    x = oc.term("x", batch_dims=[rows], input_dims=[], output_dims=[cols])
    # An empty result row broadcasts back over the row (issue 8 is about `=> ...|0`).
    exps = oc.exp(x - oc.einmax1("...|..d.. => ...|", x))
    out = exps / oc.einsum1("...|..d.. => ...|", exps)
    x.set_value(values)
    routine, compile_s = compiled(ctx, out.forward, "softmax")
    ours = median_seconds(routine.run, repeats)
    tx = torch.from_numpy(values)
    reference = median_seconds(lambda: torch.softmax(tx, dim=1), repeats)
    expected = torch.softmax(tx, dim=1).numpy()
    np.testing.assert_allclose(out.value, expected, rtol=1e-5, atol=1e-7)
    return ours, reference, compile_s


def sums(shape: tuple[int, ...], repeats: int) -> tuple[float, float, float]:
    """Row sums of a matrix, or the sum of a vector."""
    import torch

    values = np.random.default_rng(4).standard_normal(shape, dtype=np.float32)
    ctx = oc.Context("c")
    if len(shape) == 2:
        x = oc.term("x", batch_dims=[shape[0]], input_dims=[], output_dims=[shape[1]])
        reduce = lambda t: t.sum(dim=1)  # noqa: E731
    else:
        x = oc.term("x", batch_dims=[], input_dims=[], output_dims=list(shape))
        reduce = lambda t: t.sum()  # noqa: E731
    out = oc.einsum1("...|..d.. => ...|", x)
    x.set_value(values)
    routine, compile_s = compiled(ctx, out.forward, "sums")
    ours = median_seconds(routine.run, repeats)
    tx = torch.from_numpy(values)
    reference = median_seconds(lambda: reduce(tx), repeats)
    expected = reduce(torch.from_numpy(values.astype(np.float64))).numpy()
    bound = (shape[-1] + 2) * np.finfo(np.float32).eps * np.abs(values).sum(axis=-1)
    assert (np.abs(np.reshape(out.value, np.shape(expected)) - expected) <= bound).all()
    return ours, reference, compile_s


BENCHMARKS: dict[str, tuple[str, Callable[[int], tuple[float, float, float]]]] = {
    "matmul1024": ("matmul 1024^3 fp32 vs numpy", lambda r: matmul(1024, r)),
    "matmul1000": ("matmul 1000^3 fp32 vs numpy", lambda r: matmul(1000, r)),
    "mlp": ("MLP 784-256-256-10 b256 SGD step vs torch", mlp),
    "chain": ("relu(exp(x)*x+1), 2^22 vs torch", pointwise_chain),
    "softmax": ("row softmax 2048x1024 vs torch", softmax),
    "rowsums": ("row sums 2048x1024 vs torch", lambda r: sums((2048, 1024), r)),
    "sum": ("sum of 2^22 vs torch", lambda r: sums((1 << 22,), r)),
}


def main() -> None:
    import torch

    torch.set_num_threads(THREADS)
    unknown = set(ARGS.only or ()) - set(BENCHMARKS)
    if unknown:
        PARSER.error(f"unknown benchmarks {sorted(unknown)}; choose from {sorted(BENCHMARKS)}")
    clock = "thread CPU time" if ARGS.single_thread else "wall-clock"
    print(f"threads: {THREADS} (ours, torch{', numpy' if ARGS.single_thread else ''}); {clock}")
    print(f"numpy {np.__version__}, torch {torch.__version__}, load average {os.getloadavg()}")
    print(f"{'benchmark':44}{'ours ms':>10}{'ref ms':>10}{'ratio':>8}{'compile s':>11}")
    for name in ARGS.only or BENCHMARKS:
        title, run = BENCHMARKS[name]
        ours, reference, compile_s = run(ARGS.repeats)
        print(
            f"{title:44}{1e3 * ours:>10.3f}{1e3 * reference:>10.3f}"
            f"{reference / ours:>8.2f}{compile_s:>11.2f}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()

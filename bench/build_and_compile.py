"""Build and compile time of large models, C backend: graph building (shape inference as tensors
are made), cold compile (empty cache) and cached compile (a fresh process, same cache).

- Chains of `relu(w @ y + y)` layers (16 features, batch 8), training step with SGD: build time
  grows with the chain (ratio to 50 layers printed next to the linear ratio).
- A GPT-2-XL-shaped forward: 48 layers, d=1600, 25 heads, 16 tokens, written with compose and
  einsum (projections, attention scores and values), pointwise ops and `einmax1`/`einsum1`
  reductions for softmax and layer norm; the weights are terms (data, as when loaded from a
  file), so compiling does not initialise 1.5 G parameters.

Before timing, a small instance of each model runs and is checked against numpy.
Each measurement runs in its own process; compile time is split into ocannl_py's part (shape
closing, projections, parameter init) and arrayjit's (lookup, or lowering, printing, compiling).

    python bench/build_and_compile.py [--layers 50 100 200 400] [--gpt-layers 48]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import ocannl_py as oc
from arrayjit.backends import cc
from arrayjit.runtime import runtime as runtime_module
from ocannl_py import train

FEATURES, BATCH = 16, 8


def chain(layers: int):
    x = oc.term("x", batch_dims=[BATCH], output_dims=[FEATURES])
    y = x
    weights = []
    for k in range(layers):
        w = oc.param(f"w{k}")
        weights.append(w)
        y = oc.relu(w @ y + y)
    loss = oc.op(f'(y **. 2 ++ "...|... => 0") /. {BATCH}', y=y)
    return train.grad_update(loss) + train.sgd_update(loss, 0.1), x, weights, loss


def chain_reference(x: np.ndarray, weights: list[np.ndarray]) -> float:
    y = x.astype(np.float64)
    for w in weights:
        y = np.maximum(y @ w.T.astype(np.float64) + y, 0)
    return float((y**2).sum() / BATCH)


def gpt(layers: int, d: int, heads: int, tokens: int):
    """A GPT-2-shaped forward; returns the output and its weights in creation order."""
    e = d // heads
    weights: list[oc.Tensor] = []

    def term(name: str, inputs: list[int], outputs: list[int]) -> oc.Tensor:
        weights.append(oc.term(name, batch_dims=[], input_dims=inputs, output_dims=outputs))
        return weights[-1]

    def layer_norm(x: oc.Tensor, name: str) -> oc.Tensor:
        mean = oc.einsum1("t|d => t|", x) / d
        centered = x - mean
        variance = oc.einsum1("t|d => t|", centered * centered) / d
        scale, shift = term(f"{name}_g", [], [d]), term(f"{name}_b", [], [d])
        return centered * oc.recip_sqrt(variance + 1e-5) * scale + shift

    x = oc.term("x", batch_dims=[tokens], output_dims=[d])
    mask = oc.term("mask", batch_dims=[tokens], output_dims=[tokens, 1])
    for k in range(layers):
        h = layer_norm(x, f"ln1_{k}")
        q, key, v = (term(f"w{n}{k}", [d], [heads, e]) @ h for n in "qkv")
        scores = oc.einsum("t|h,e; s|h,e => t|s,h", q, key) * (1 / e**0.5) + mask
        top = oc.einmax1("t|s,h => t|h", scores)
        p = oc.exp(scores - top)
        p = p / oc.einsum1("t|s,h => t|h", p)
        attended = oc.einsum("t|s,h; s|h,e => t|h,e", p, v)
        x = x + term(f"wo{k}", [heads, e], [d]) @ attended
        h = layer_norm(x, f"ln2_{k}")
        u = term(f"w1_{k}", [d], [4 * d]) @ h
        gelu = 0.5 * u * (1 + oc.tanh(0.7978845608 * (u + 0.044715 * u * u * u)))
        x = x + term(f"w2_{k}", [4 * d], [d]) @ gelu
    return x, weights, mask


def gpt_reference(x, mask, weights, layers, d, heads):
    e = d // heads
    values = iter(w.astype(np.float64) for w in weights)

    def layer_norm(x):
        centered = x - x.mean(axis=1, keepdims=True)
        variance = (centered**2).mean(axis=1, keepdims=True)
        return centered / np.sqrt(variance + 1e-5) * next(values) + next(values)

    x = x.astype(np.float64)
    for _ in range(layers):
        h = layer_norm(x)
        q, k, v = (np.einsum("hed,td->the", next(values), h) for _ in range(3))
        scores = np.einsum("the,she->tsh", q, k) / np.sqrt(e) + mask[:, :, :1]
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        x = x + np.einsum("dhe,the->td", next(values), np.einsum("tsh,she->the", p, v))
        u = layer_norm(x) @ next(values).T
        gelu = 0.5 * u * (1 + np.tanh(0.7978845608 * (u + 0.044715 * u**3)))
        x = x + gelu @ next(values).T
    return x


class Stopwatch:
    """Seconds (`clock`: wall or this process's CPU) spent in the functions it wraps."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.seconds = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += self.clock() - start

        return timed


def timed_compile(ctx: oc.Context, code) -> tuple[object, dict]:
    """Compile `code`; seconds in all, in arrayjit's `Runtime.compile`, and CPU seconds in
    lowering (with the passes) and printing the chunks."""
    in_arrayjit = Stopwatch()
    lowering, printing = Stopwatch(time.process_time), Stopwatch(time.process_time)
    ctx.runtime.compile = in_arrayjit.wrap(ctx.runtime.compile)
    runtime_module.compile_to_ir = lowering.wrap(runtime_module.compile_to_ir)
    cc.CBackend.chunk_function = printing.wrap(cc.CBackend.chunk_function)
    start = time.perf_counter()
    routine = ctx.compile(code)
    seconds = time.perf_counter() - start
    return routine, {
        "compile": seconds,
        "arrayjit": in_arrayjit.seconds,
        "lower+print": lowering.seconds + printing.seconds,
    }


def cpu_seconds() -> float:
    """CPU time of this process and of the compiler processes it waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def child(kind: str, sizes: list[int]) -> dict:
    start, start_cpu = time.perf_counter(), cpu_seconds()
    if kind == "chain":
        code = chain(sizes[0])[0]
    else:
        code = gpt(*sizes)[0].forward
    built, built_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    start_cpu = cpu_seconds()
    routine, times = timed_compile(oc.Context("c"), code)
    compiled = routine.executable.compiled
    return {
        "build": built,
        "build cpu": built_cpu,
        **times,
        "compile cpu": cpu_seconds() - start_cpu,
        "chunks": len(compiled.tables),
        "functions": len(set(compiled.function_array)),
    }


def run_child(kind: str, sizes: list[int], cache: str) -> dict:
    env = dict(os.environ, ARRAYJIT_CACHE_DIR=cache)
    args = [sys.executable, __file__, "--child", kind, *map(str, sizes)]
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {sizes} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_small_models() -> None:
    """A 5-layer chain's training step and a 2-layer GPT forward, against numpy."""
    rng = np.random.default_rng(0)
    ctx = oc.Context("c")
    code, x, weights, loss = chain(5)
    step = ctx.compile(code)
    x.set_value(rng.normal(size=(BATCH, FEATURES)))
    expected = chain_reference(x.value, [w.value for w in weights])
    step.run()
    assert abs(loss.item() - expected) <= 1e-4 * abs(expected), (loss.item(), expected)
    layers, d, heads, tokens = 2, 64, 4, 8
    out, terms, mask = gpt(layers, d, heads, tokens)
    causal = np.where(np.arange(tokens)[None, :] > np.arange(tokens)[:, None], -1e9, 0.0)
    mask.set_value(causal[:, :, None])
    x_values = rng.normal(size=(tokens, d))
    for t in terms:
        t.set_value(rng.normal(size=t.shape.dims()) / np.sqrt(d))
    inputs = [t for t in out.subgraph() if t.label == "x"]
    inputs[0].set_value(x_values)
    ctx.forward(out)
    reference = gpt_reference(
        x_values, causal[:, :, None], [t.value for t in terms], layers, d, heads
    )
    np.testing.assert_allclose(out.value, reference, rtol=2e-4, atol=2e-4)
    print("small chain training step and 2-layer GPT forward match numpy")


def measure(kind: str, sizes: list[int]) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child(kind, sizes, cache)
        cached = run_child(kind, sizes, cache)
    return cold, cached


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="*", default=[50, 100, 200, 400])
    parser.add_argument("--gpt-layers", type=int, default=48)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], [int(v) for v in args.child[1:]])))
        return
    check_small_models()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print("wall seconds; cpu: CPU seconds of the process and its compiler processes (a busy")
    print("machine stretches wall times, not CPU times)")
    print("training step of a chain of relu(w @ y + y) layers, C backend (seconds)")
    print("(arrayjit: wall seconds of compiling spent in arrayjit; lower+print: CPU seconds of")
    print(
        " lowering, passes and printing the chunks, within it; the rest is mostly the C compiler)"
    )
    header = (
        f"{'layers':>7}{'build':>8}{'cpu':>8}{'ratio':>7}{'linear':>7}{'cold':>8}{'cpu':>8}"
        f"{'arrayjit':>9}{'lower+print':>12}{'ratio':>7}{'cached':>8}{'cpu':>8}{'arrayjit':>9}"
        f"{'chunks':>7}{'functions':>10}"
    )
    print(header)
    first = None
    for layers in args.layers:
        cold, cached = measure("chain", [layers])
        first = first or (layers, cold["build cpu"], cold["lower+print"])
        print(
            f"{layers:>7}{cold['build']:>8.2f}{cold['build cpu']:>8.2f}"
            f"{cold['build cpu'] / first[1]:>7.1f}{layers / first[0]:>7.1f}"
            f"{cold['compile']:>8.2f}{cold['compile cpu']:>8.2f}{cold['arrayjit']:>9.2f}"
            f"{cold['lower+print']:>12.2f}{cold['lower+print'] / first[2]:>7.1f}"
            f"{cached['compile']:>8.3f}{cached['compile cpu']:>8.3f}{cached['arrayjit']:>9.3f}"
            f"{cold['chunks']:>7}{cold['functions']:>10}"
        )
    print("(build ratio: CPU seconds over those of the first chain; linear: the ratio of layers)")
    sizes = [args.gpt_layers, 1600, 25, 16]
    cold, cached = measure("gpt", sizes)
    print(f"GPT-2-XL-shaped forward ({sizes[0]} layers, d=1600, 25 heads, 16 tokens):")
    print(f"  build {cold['build']:.2f} s, cpu {cold['build cpu']:.2f} s (target <= 5)")
    print(
        f"  compile cold {cold['compile']:.2f} s, cpu {cold['compile cpu']:.2f} s (arrayjit "
        f"{cold['arrayjit']:.2f}, lower+print {cold['lower+print']:.2f}; target <= 30)"
    )
    print(
        f"  compile cached {cached['compile']:.3f} s, cpu {cached['compile cpu']:.3f} s "
        f"(arrayjit {cached['arrayjit']:.3f}; target <= 1)"
    )
    print(f"  {cold['chunks']} chunk calls of {cold['functions']} distinct functions")


if __name__ == "__main__":
    main()

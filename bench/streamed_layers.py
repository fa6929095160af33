"""Streamed execution on a GPU (issue 12): a stack of `relu(w @ x + x)` layers (w: n x n float32,
x: n x batch) whose weights exceed the device memory budget, run through
`Runtime.compile_streamed`, against the PCIe floor measured in the same process.

Prints the pinned host-to-device bandwidth, the plan (stages resident and streamed, slots, peak
bytes against the budget and against the driver's free-memory drop), then per run: the streamed
plan (two slots; with resident stages, without, and with only the output kept so that the
activations share memory), the naive baseline (one slot: copy a layer, then compute it, no
overlap), the whole stack resident (an ordinary routine), the floor (bytes streamed / bandwidth) and the ratios,
with the share of copy time hidden behind compute. Results are checked against the resident run
and numpy before any timing. On the C backend (`--backend c`, small sizes) the same plan runs with
memcpy from host arrays.

    python bench/streamed_layers.py                  # H100: 24 layers of 4096^2, 640 MiB budget
    python bench/streamed_layers.py --batch 1        # decode-like: copy-bound, compute tiny
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from arrayjit.assignments import Accum, Arg, Call
from arrayjit.indexing import Iterator, Projections, identity_projections
from arrayjit.runtime.runtime import Runtime
from arrayjit.runtime.stream_plan import parse_bytes
from arrayjit.tnode import TNode


def stack(layers: int, n: int, batch: int):
    """`layers` stages `y = relu(w @ x + x)`, random weights scaled to keep values bounded."""
    x = TNode("x", (n, batch))
    rng = np.random.default_rng(0)
    x.set_host(rng.standard_normal((n, batch)))
    stages, weights, y = [], [], x
    for k in range(layers):
        w, product, out = (
            TNode(f"w{k}", (n, n)),
            TNode(f"wx{k}", (n, batch)),
            TNode(f"y{k}", (n, batch)),
        )
        i, j, c = Iterator(name="i"), Iterator(name="j"), Iterator(name="c")
        projections = Projections((n, batch, n), (i, c, j), (i, c), ((i, j), (j, c)))
        matmul = Accum(product, "add", "mul", (w, y), projections, zero_first=True)
        relu = Call("relu", (Call("add", (Arg(0), Arg(1))),))
        residual = Accum(out, None, relu, (product, y), identity_projections((n, batch), 2))
        w.set_host((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32))
        stages.append(matmul + residual)
        weights.append(w)
        y = out
    return stages, x, weights, y


def reference(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    y = x.astype(np.float32)
    for w in weights:
        y = np.maximum(w @ y + y, 0)
    return y


def pinned_bandwidth(runtime: Runtime, nbytes: int = 256 << 20, repeats: int = 10) -> float:
    """Pinned host-to-device bytes per second on the copy stream, best of `repeats`."""
    from cuda.core import EventOptions

    backend = runtime.backend
    host, device = backend.pinned.allocate(nbytes), backend.allocate(nbytes)
    stream, timing = backend.copy_stream, EventOptions(timing_enabled=True)
    backend.stream.sync()
    best = float("inf")
    for _ in range(repeats):
        start = stream.record(options=timing)
        device.copy_from(host, stream=stream)
        end = stream.record(options=timing)
        end.sync()
        best = min(best, (end - start) / 1e3)
    return nbytes / best


def free_device_bytes() -> int:
    from cuda.bindings import driver

    err, free, _ = driver.cuMemGetInfo()
    assert err == driver.CUresult.CUDA_SUCCESS, err
    return free


def per_run(run, synchronize, runs: int) -> float:
    run()
    synchronize()
    begin = time.perf_counter()
    for _ in range(runs):
        run()
    synchronize()
    return (time.perf_counter() - begin) / runs


def replay_overhead(runtime: Runtime, layers: int = 48, runs: int = 300) -> None:
    """Per-run time of `layers` tiny stages (4 x 4 weights) kept resident by the plan against
    the same code as one routine: what replaying the table costs per stage."""
    stages, x, weights, y = stack(layers, 4, 1)
    whole = runtime.compile(sum(stages[1:], stages[0]), "whole_tiny")
    streamed = runtime.compile_streamed(stages, "1MiB")
    one = per_run(whole.run, runtime.synchronize, runs)
    replayed = per_run(streamed.run, streamed.synchronize, runs)
    print(
        f"{layers} tiny stages: {replayed * 1e6:.0f} us per run streamed (all resident), "
        f"{one * 1e6:.0f} us as one routine: {(replayed - one) / layers * 1e6:.1f} us per stage"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cuda", choices=["cuda", "c"])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--budget", default="640MiB")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    gpu = args.backend == "cuda"
    runtime = Runtime(args.backend)
    replay_overhead(runtime)
    budget = parse_bytes(args.budget)
    stages, x, weights, y = stack(args.layers, args.n, args.batch)
    weight_bytes = sum(w.size * 4 for w in weights)
    print(
        f"{args.layers} layers of {args.n}x{args.n} float32 ({weight_bytes / 2**20:.0f} MiB of "
        f"weights), batch {args.batch}, budget {budget / 2**20:.0f} MiB, backend {args.backend}"
    )
    bandwidth = pinned_bandwidth(runtime) if gpu else None
    if bandwidth:
        print(f"pinned host-to-device bandwidth: {bandwidth / 1e9:.1f} GB/s")

    # The whole stack resident: the reference the streamed runs must equal.
    whole = runtime.compile(sum(stages[1:], stages[0]), "whole")
    whole.run()
    expected = y.host().copy()
    error = np.abs(expected - reference(x.host(), [w.host() for w in weights])).max()
    print(
        f"resident run vs numpy: max abs difference {error:.2e} (values up to {np.abs(expected).max():.1f})"
    )
    resident_seconds = per_run(whole.run, runtime.synchronize, args.runs)
    del whole

    results = {}
    plans = (
        ("streamed, stages that fit kept resident", 2, True, None),
        ("streamed, nothing resident", 2, False, None),
        ("naive: copy then compute, nothing resident", 1, False, None),
        ("streamed, only the output kept (keep=), stages that fit resident", 2, True, [y]),
    )
    for label, slots, keep_resident, keep in plans:
        free_before = free_device_bytes() if gpu else 0
        streamed = runtime.compile_streamed(
            stages, budget, slots=slots, keep_resident=keep_resident, keep=keep
        )
        y.set_host(np.zeros(y.dims))
        streamed.run()
        np.testing.assert_allclose(y.host(), expected, rtol=1e-4, atol=1e-4)
        drop = free_before - free_device_bytes() if gpu else 0
        seconds = per_run(streamed.run, streamed.synchronize, args.runs)
        stats = streamed.stats
        results[label] = seconds
        plan = streamed.plan
        print(
            f"{label}: {len(plan.streamed)} stages streamed through {len(plan.slot_offsets)} "
            f"slots, {args.layers - len(plan.streamed)} resident; peak {stats.peak_device_bytes / 2**20:.1f} "
            f"MiB of {budget / 2**20:.0f} MiB"
            + (f" (driver's free memory dropped {drop / 2**20:.1f} MiB)" if gpu else "")
        )
        floor = stats.bytes_copied / bandwidth if bandwidth else stats.copy_seconds
        print(
            f"  {seconds * 1e3:.2f} ms per run; {stats.bytes_copied / 2**20:.0f} MiB copied per run;"
            f" floor {floor * 1e3:.2f} ms; ratio to floor {seconds / floor:.3f}; copy time "
            f"{stats.copy_seconds * 1e3:.2f} ms, {100 * stats.hidden_share:.0f}% hidden behind compute"
        )
        del streamed
    print(f"resident (one routine): {resident_seconds * 1e3:.2f} ms per run")
    naive, overlapped = results[plans[2][0]], results[plans[1][0]]
    print(
        f"naive / streamed (same bytes): {naive / overlapped:.2f}x; streamed with resident "
        f"stages / all resident: {results[plans[0][0]] / resident_seconds:.2f}x"
    )


if __name__ == "__main__":
    main()

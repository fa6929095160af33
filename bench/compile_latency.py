"""Compile latency of a 3-layer MLP training step: from scratch (empty cache) and from the cache
in a fresh process, split into ocannl_py's work (shape closing, projections, parameter init) and
arrayjit's (finding the routine by the structure of its code and binding its buffers, or on a miss
lowering, printing and compiling).

    python bench/compile_latency.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = """
import time
start = time.perf_counter()
import ocannl_py as oc
from ocannl_py import train
imported = time.perf_counter()
x = oc.term("x", batch_dims=[32], input_dims=[], output_dims=[8])
y = oc.term("y", batch_dims=[32], input_dims=[], output_dims=[1])
mlp = oc.op("{w3} * relu({b2; o = [64]} + {w2} * relu({b1; o = [64]} + {w1} * x)) + {b3; o = [1]}", x=x)
loss = oc.op('((mlp - y) **. 2 ++ "...|... => 0") /. 32', mlp=mlp, y=y)
ctx = oc.Context("c")
code = train.grad_update(loss) + train.sgd_update(loss, 0.1, momentum=0.9)
built = time.perf_counter()
in_arrayjit = 0.0
arrayjit_compile = ctx.runtime.compile

def timed(*args, **kwargs):
    global in_arrayjit
    t = time.perf_counter()
    try:
        return arrayjit_compile(*args, **kwargs)
    finally:
        in_arrayjit += time.perf_counter() - t

ctx.runtime.compile = timed
step = ctx.compile(code)
done = time.perf_counter()
total = done - built
print(f"{1e3 * (imported - start):.1f} {1e3 * (built - imported):.1f} {1e3 * total:.2f} "
      f"{1e3 * (total - in_arrayjit):.2f} {1e3 * in_arrayjit:.2f}")
"""


def run_child(cache: str) -> list[float]:
    env = dict(os.environ, ARRAYJIT_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return [float(v) for v in out.stdout.split()]


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        first = run_child(cache)
        runs = [run_child(cache) for _ in range(5)]
    again = min(runs, key=lambda r: r[2])
    print("3-layer MLP training step (forward, backprop, SGD with momentum), C backend")
    print("compile = ocannl_py (shapes, projections, init) + arrayjit (lookup or lower+compile)")
    header = f"{'':24}{'import ms':>10}{'build ms':>10}{'compile ms':>12}{'ocannl_py':>11}{'arrayjit':>10}"
    print(header)
    for label, r in (("empty cache", first), ("cached, fresh process", again)):
        print(f"{label:24}{r[0]:>10.1f}{r[1]:>10.1f}{r[2]:>12.2f}{r[3]:>11.2f}{r[4]:>10.2f}")
    print(f"cached compile over 5 fresh processes: {', '.join(f'{r[2]:.1f}' for r in runs)} ms")


if __name__ == "__main__":
    main()

"""Compile latency of a 3-layer MLP training step: from scratch (empty cache) and from the cache
in a fresh process.

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
built = time.perf_counter()
step = ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.1, momentum=0.9))
done = time.perf_counter()
print(f"{1e3 * (imported - start):.1f} {1e3 * (built - imported):.1f} {1e3 * (done - built):.1f}")
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
        again = min((run_child(cache) for _ in range(3)), key=lambda r: r[2])
    print("3-layer MLP training step (forward, backprop, SGD with momentum), C backend")
    print(f"{'':24}{'import ms':>10}{'build graph ms':>16}{'compile ms':>12}")
    print(f"{'empty cache':24}{first[0]:>10.1f}{first[1]:>16.1f}{first[2]:>12.1f}")
    print(f"{'cached, fresh process':24}{again[0]:>10.1f}{again[1]:>16.1f}{again[2]:>12.1f}")


if __name__ == "__main__":
    main()

"""The C optimisation level: cold-compile CPU time and run time of a few routines at -O2 and -O3
(each level in its own process and empty cache), CPU seconds so a busy machine does not blur them.

- MLP 784-256-256-10, batch 256: one SGD training step (issue 10's MLP).
- A GPT-2-shaped forward: 4 layers, d=256, 4 heads, 64 tokens (bench/build_and_compile.py's).
- A 512^3 float32 matmul (bench/matmul_cc.py's assignment).

    python bench/opt_level.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

LEVELS = ("-O2", "-O3")


def compiler_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_run_cpu(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def child() -> dict:
    import numpy as np
    from build_and_compile import gpt
    from common import matmul

    import ocannl_py as oc
    from ocannl_py import train

    rng = np.random.default_rng(0)
    results = {}
    ctx = oc.Context("c")

    x = oc.term("x", batch_dims=[256], output_dims=[784])
    y = oc.term("y", batch_dims=[256], output_dims=[10])
    h = oc.relu(oc.param("w1", output_dims=[256]) @ x + oc.param("b1", output_dims=[256]))
    h = oc.relu(oc.param("w2", output_dims=[256]) @ h + oc.param("b2", output_dims=[256]))
    out = oc.param("w3", output_dims=[10]) @ h + oc.param("b3", output_dims=[10])
    loss = oc.op('((out - y) **. 2 ++ "...|... => 0") /. 256', out=out, y=y)
    x.set_value(rng.normal(size=(256, 784)))
    y.set_value(rng.normal(size=(256, 10)))
    start = compiler_cpu()
    step = ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.01))
    results["MLP step"] = (compiler_cpu() - start, best_run_cpu(step.run, 20))

    out, terms, mask = gpt(4, 256, 4, 64)
    for t in [*terms, mask]:
        t.set_value(rng.normal(size=t.shape.dims()) / 16)
    next(t for t in out.subgraph() if t.label == "x").set_value(rng.normal(size=(64, 256)))
    start = compiler_cpu()
    forward = ctx.compile(out.forward)
    results["GPT forward"] = (compiler_cpu() - start, best_run_cpu(forward.run, 10))

    code, a, b, _ = matmul(512)
    a.set_host(rng.normal(size=(512, 512)))
    b.set_host(rng.normal(size=(512, 512)))
    start = compiler_cpu()
    product = ctx.runtime.compile(code, "matmul512")
    results["matmul 512"] = (compiler_cpu() - start, best_run_cpu(product.run, 10))
    return results


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(child()))
        return
    measured = {}
    for level in LEVELS:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, ARRAYJIT_CACHE_DIR=cache, ARRAYJIT_CFLAGS=level)
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            measured[level] = json.loads(out.stdout.strip().splitlines()[-1])
    print("C backend, CPU seconds: cold compile (compiler processes) and best run")
    print(
        f"{'routine':14}{'compile -O2':>13}{'-O3':>9}{'ratio':>7}{'run -O2':>11}{'-O3':>9}{'ratio':>7}"
    )
    for name in measured["-O3"]:
        (c2, r2), (c3, r3) = measured["-O2"][name], measured["-O3"][name]
        print(f"{name:14}{c2:>13.2f}{c3:>9.2f}{c2 / c3:>7.2f}{r2:>11.4f}{r3:>9.4f}{r2 / r3:>7.2f}")
    print("(ratios are -O2 over -O3: below 1, -O2 is cheaper)")


if __name__ == "__main__":
    main()

"""A 2-D convolution layer's training step (forward, and the gradients for the image and the
kernel) through affine einsum axes on the C backend, against PyTorch on the CPU in the same run.

    python bench/conv2d_cc.py [valid|same ...]      (default: valid same)

Images are 16 x 32x32x16 (batch | height, width, channels), the kernel 3x3x16 -> 32, stride 1.
Prints the median time of each (after a warm-up) and the ratio generated / torch; checks the
values against torch first.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import ocannl_py as oc
from ocannl_py import Context, train

BATCH, SIZE, IC, OC, K = 16, 32, 16, 32, 3


def median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(padding: str, ctx: Context) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((BATCH, SIZE, SIZE, IC)).astype(np.float32)
    wv = (rng.standard_normal((OC, K, K, IC)) / np.sqrt(K * K * IC)).astype(np.float32)
    mark = "<" if padding == "valid" else "="
    x = oc.param("x", value=xv, batch_dims=[BATCH], output_dims=[SIZE, SIZE, IC])
    w = oc.param("w", value=wv, input_dims=[K, K, IC], output_dims=[OC])
    spec = f"...|oh{mark}+kh, ow{mark}+kw, ..ic..; kh, kw, ..ic.. -> ..oc.. => ...|oh, ow, ..oc.."
    y = oc.einsum(spec, x, w)
    loss = oc.einsum1("...|... => 0", y * y)
    step = ctx.compile(train.grad_update(loss))

    xt = torch.tensor(xv).movedim(-1, 1).requires_grad_()
    wt = torch.tensor(wv).movedim(-1, 1).requires_grad_()

    def torch_step():
        xt.grad = wt.grad = None
        out = F.conv2d(xt, wt, padding=0 if padding == "valid" else "same")
        (out * out).sum().backward()
        return out

    out = torch_step()
    step.run()
    np.testing.assert_allclose(y.value, out.detach().movedim(1, -1).numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(w.grad, wt.grad.movedim(1, -1).numpy(), rtol=1e-3, atol=1e-2)
    return median_time(step.run), median_time(torch_step)


def main() -> None:
    paddings = sys.argv[1:] or ["valid", "same"]
    ctx = Context("c")
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'padding':>8} {'generated ms':>13} {'torch ms':>9} {'ratio':>7}")
    for padding in paddings:
        generated, reference = bench(padding, ctx)
        print(
            f"{padding:>8} {generated * 1e3:13.2f} {reference * 1e3:9.2f} "
            f"{generated / reference:7.2f}"
        )


if __name__ == "__main__":
    main()

"""Embedding lookups: `oc.embed` (a gather by int32 ids, a scatter-add backward) against the
one-hot form (`table @ eq(ids, range(vocab))`, what `ocannl_py.models.lookup` does without it)
and numpy's fancy indexing, in one process on the C backend, at GPT-2's table size.

Prints the seconds per run (best of 5, CPU time of this process) and the ratios.

    python bench/embed.py [vocab] [dim] [tokens]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import ocannl_py as oc
from ocannl_py import Context, train

REPEATS = 5


def best(run) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main(vocab: int, dim: int, tokens: int) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(dim, vocab)).astype(np.float32)
    id_values = rng.integers(0, vocab, tokens)
    ctx = Context("c")

    table = oc.param("table", values, output_dims=[dim], input_dims=[vocab])
    ids = oc.term("ids", batch_dims=[tokens], output_dims=[], dtype="int32")
    ids.set_value(id_values)
    gathered = oc.embed(table, ids)
    gather_forward = ctx.compile(gathered.forward)
    gather_grad = ctx.compile(train.grad_update(oc.einsum1("...|...->... => 0", gathered)))
    gather_grad.run()

    float_ids = oc.term("fids", batch_dims=[tokens], output_dims=[])
    float_ids.set_value(id_values.astype(np.float32))
    hot = table @ oc.eq(float_ids, oc.range(vocab))
    hot_forward = ctx.compile(hot.forward)
    hot_grad = ctx.compile(train.grad_update(oc.einsum1("...|...->... => 0", hot)))
    hot_grad.run()

    gather_forward.run()
    hot_forward.run()
    assert np.array_equal(gathered.value, values.T[id_values])
    assert np.allclose(hot.value, values.T[id_values])

    rows = {
        "numpy values.T[ids]": best(lambda: np.ascontiguousarray(values.T[id_values])),
        "oc.embed forward": best(gather_forward.run),
        "one-hot forward": best(hot_forward.run),
        "oc.embed forward+backward": best(gather_grad.run),
        "one-hot forward+backward": best(hot_grad.run),
    }
    print(f"vocab {vocab}, dim {dim}, {tokens} tokens, C backend, best of {REPEATS} (CPU s)")
    for name, seconds in rows.items():
        print(f"  {name:28s} {seconds * 1e3:10.3f} ms")
    print(
        f"  one-hot / embed, forward:          {rows['one-hot forward'] / rows['oc.embed forward']:8.1f}x"
    )
    print(
        "  one-hot / embed, forward+backward: "
        f"{rows['one-hot forward+backward'] / rows['oc.embed forward+backward']:8.1f}x"
    )
    print(
        f"  embed / numpy, forward:            {rows['oc.embed forward'] / rows['numpy values.T[ids]']:8.1f}x"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [50257, 768, 64][len(args) :]))

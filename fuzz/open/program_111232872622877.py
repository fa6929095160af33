# program: t.grad: N of N cells differ: got [N, N], expected [N, N]
# 'p2.grad: 2 of 6 cells differ: got [8.5, 8.0], expected [2.5, 2.0]\nt3.grad: 2 of 6 cells differ: got [8.5, 8.0], expected [2.5, 2.0]\nt5.grad: 4 of 12 cells differ: got [-0.125, -0.125, -0.125, -0.125], expected [0.0, -0.25, 0.0, -0.25]\nt6.grad: 4 of 12 cells differ: got [0.125, 0.125, 0.125, 0.125], expected [0.0, 0.25, 0.0, 0.25]\np12.grad: 4 of 20 cells differ: got [4.0, 4.0, 4.0, 4.0], expected [1.0, 1.0, 1.0, 1.0]\nt13.grad: 2 of 2 cells differ: got [4.0, 4.0], expected [1.0, 1.0]'
"""fuzz program: seed 20261123, program seed 111232872622877 (ties values). Run: python <this file>"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

p1 = oc.param("p1", [[1.0], [2.0], [2.0], [-2.0]], batch_dims=[4], input_dims=[1], output_dims=[])
p2 = oc.param("p2", [[[-1.0, 0.0]], [[0.0, 0.0]], [[3.0, 0.0]]], batch_dims=[], input_dims=[1, 2], output_dims=[3])
t3 = p2 - 2.0
p4 = oc.param("p4", [[[[1.0, 2.0]], [[0.0, -1.0]]], [[[2.0, -2.0]], [[-2.0, -2.0]]], [[[1.0, -1.0]], [[-1.0, -1.0]]]], batch_dims=[], input_dims=[2, 1, 2], output_dims=[3])
t5 = op("a -?/ b", a=p2, b=p4)
t6 = 3.0 - t5
t7 = oc.tropical('_,_,1,...->1 ; ..rv0.. | _, ..., 0->h3, => h3|', t6, t3)
x8 = oc.term("x8", batch_dims=[], input_dims=[], output_dims=[3])
x8.set_value([-1.0, 2.0, 3.0])
t9 = op("a + b", a=p4, b=x8)
p10 = oc.param("p10", [[[[[2.0]], [[2.0]]]], [[[[3.0]], [[3.0]]]]], batch_dims=[], input_dims=[1, 1], output_dims=[2, 1, 2])
t11 = oc.compose(t9, p10)
p12 = oc.param("p12", [[[[0.0, 0.0, -2.0, -1.0, 1.0], [-1.0, 3.0, 1.0, 3.0, 0.0]]], [[[2.0, -2.0, 3.0, -1.0, 2.0], [-2.0, 3.0, -1.0, -1.0, -2.0]]]], batch_dims=[2, 1], input_dims=[2, 5], output_dims=[])
t13 = oc.outer_sum('..v0..|a...b->...1; ba..v0..|c0... -> ... => ..v0..c | ... -> a...', t3, p12)
t14 = oc.stop_gradient(t11)
w0 = oc.term("w0", batch_dims=[3], input_dims=[], output_dims=[])
w0.set_value([-1.0, 0.5, 1.0])
w1 = oc.term("w1", batch_dims=[2], input_dims=[], output_dims=[1])
w1.set_value([[1.0], [1.0]])
w2 = oc.term("w2", batch_dims=[], input_dims=[1, 1], output_dims=[3])
w2.set_value([[[-1.0]], [[2.0]], [[1.0]]])
loss = oc.einsum1("...|...->... => ", t7 * w0) + oc.einsum1("...|...->... => ", t13 * w1) + oc.einsum1("...|...->... => ", t14 * w2)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 1e-05, 1e-05
TYPES = {
    'p2': [[], [3], [1, 2]],
    't3': [[], [3], [1, 2]],
    'p4': [[], [3], [2, 1, 2]],
    't5': [[], [3], [2, 1, 2]],
    't6': [[], [3], [2, 1, 2]],
    't7': [[3], [], []],
    'x8': [[], [3], []],
    't9': [[], [3], [2, 1, 2]],
    'p10': [[], [2, 1, 2], [1, 1]],
    't11': [[], [3], [1, 1]],
    'p12': [[2, 1], [], [2, 5]],
    't13': [[2], [1], []],
    't14': [[], [3], [1, 1]],
}
EXPECTED_VALUES = {
    'p2': [[[-1.0, 0.0]], [[0.0, 0.0]], [[3.0, 0.0]]],
    't3': [[[-3.0, -2.0]], [[-2.0, -2.0]], [[1.0, -2.0]]],
    'p4': [[[[1.0, 2.0]], [[0.0, -1.0]]], [[[2.0, -2.0]], [[-2.0, -2.0]]], [[[1.0, -1.0]], [[-1.0, -1.0]]]],
    't5': [[[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]], [[[1.0, 0.0]], [[-1.0, 0.0]]]],
    't6': [[[[3.0, 3.0]], [[3.0, 3.0]]], [[[3.0, 3.0]], [[3.0, 3.0]]], [[[2.0, 3.0]], [[4.0, 3.0]]]],
    't7': [0.0, 1.0, 4.0],
    'x8': [-1.0, 2.0, 3.0],
    't9': [[[[0.0, 1.0]], [[-1.0, -2.0]]], [[[4.0, 0.0]], [[0.0, 0.0]]], [[[4.0, 2.0]], [[2.0, 2.0]]]],
    'p10': [[[[[2.0]], [[2.0]]]], [[[[3.0]], [[3.0]]]]],
    't11': [[[-7.0]], [[8.0]], [[24.0]]],
    'p12': [[[[0.0, 0.0, -2.0, -1.0, 1.0], [-1.0, 3.0, 1.0, 3.0, 0.0]]], [[[2.0, -2.0, 3.0, -1.0, 2.0], [-2.0, 3.0, -1.0, -1.0, -2.0]]]],
    't13': [[-2.0], [-7.0]],
    't14': [[[-7.0]], [[8.0]], [[24.0]]],
}
EXPECTED_GRADS = {
    'p2': [[[-1.0, 0.0]], [[2.5, 2.0]], [[1.0, 0.0]]],
    't3': [[[-1.0, 0.0]], [[2.5, 2.0]], [[1.0, 0.0]]],
    'p4': [[[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]],
    't5': [[[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, -0.25]], [[0.0, -0.25]]], [[[0.0, 0.0]], [[0.0, 0.0]]]],
    't6': [[[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.25]], [[0.0, 0.25]]], [[[0.0, 0.0]], [[0.0, 0.0]]]],
    't7': [-1.0, 0.5, 1.0],
    't9': [[[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]],
    'p10': [[[[[0.0]], [[0.0]]]], [[[[0.0]], [[0.0]]]]],
    't11': [[[0.0]], [[0.0]], [[0.0]]],
    'p12': [[[[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]], [[[1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]]],
    't13': [[1.0], [1.0]],
}

def rows_of(name):
    shape = globals()[name].shape
    return [list(shape.batch), list(shape.output), list(shape.input)]


def broadcast_axes(got_rows, want_rows):
    """The layout of the expected value inside the computed one: ocannl_py may close an
    intermediate tensor's rows to the greatest shape its uses allow (docs/shape_inference.md),
    a broadcast of the reference's (right-aligned rows, dims of 1). None if it is not one."""
    padded = []
    for got, want in zip(got_rows, want_rows):
        if len(want) > len(got) or any(w not in (g, 1) for g, w in zip(got[::-1], want[::-1])):
            return None
        padded += [1] * (len(got) - len(want)) + want
    return padded


def compare(what, name, got, want, grad):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    got_rows, want_rows = rows_of(name), TYPES[name]
    if got_rows != want_rows:
        padded = broadcast_axes(got_rows, want_rows)
        if padded is None:
            FAILURES.append(f"{what}: rows {got_rows} (batch, output, input), expected {want_rows}")
            return
        BROADCAST.append(name)
        if grad:  # the gradient of each broadcast copy: their sum is the reference's
            axes = tuple(k for k, (p, g) in enumerate(zip(padded, got.shape)) if p != g)
            got = got.sum(axis=axes, keepdims=True).reshape(want.shape)
        else:
            want = np.broadcast_to(want.reshape(padded), got.shape)
    if got.shape != want.shape:
        FAILURES.append(f"{what}: shape {got.shape}, expected {want.shape}")
        return
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL * scale)
    if bad.any():
        FAILURES.append(
            f"{what}: {int(bad.sum())} of {bad.size} cells differ: got {got[bad][:4].tolist()}, "
            f"expected {want[bad][:4].tolist()}"
        )


FAILURES, BROADCAST = [], []
for name, want in EXPECTED_VALUES.items():
    compare(f"{name}.value", name, globals()[name].value, want, grad=False)
for name, want in EXPECTED_GRADS.items():
    compare(f"{name}.grad", name, globals()[name].grad, want, grad=True)
if __name__ == "__main__":
    print("\n".join(FAILURES) or "no difference")
    raise SystemExit(1 if FAILURES else 0)

# program: t.value: N of N cells differ: got [N, N], expected [N, N]
# 't9.value: 2 of 3 cells differ: got [2.0, 2.0], expected [1.0, -1.0]\np5.grad: 3 of 45 cells differ: got [-2.5, -2.5, -2.5], expected [-1.0, -1.0, -0.5]\nt8.grad: 3 of 45 cells differ: got [2.5, 2.5, 2.5], expected [1.0, 1.0, 0.5]'
"""fuzz program: seed 20261123, program seed 244080867567137 (ties values). Run: python <this file>"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

p1 = oc.param("p1", [[1.0, 2.0, 1.0]], batch_dims=[], input_dims=[3], output_dims=[1])
t2 = op("a -?/ b", a=p1, b=p1)
x3 = oc.term("x3", batch_dims=[], input_dims=[1], output_dims=[3])
x3.set_value([[0.0], [2.0], [1.0]])
t4 = t2 @ x3
p5 = oc.param("p5", [[[2.0, -1.0, 0.0], [-2.0, 0.0, 0.0], [3.0, 1.0, -1.0], [2.0, -1.0, -1.0], [0.0, -1.0, 0.0]], [[0.0, 0.0, -1.0], [3.0, 2.0, -1.0], [-1.0, 3.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 3.0, -1.0]], [[0.0, -1.0, -2.0], [-1.0, 1.0, -2.0], [-1.0, 2.0, 3.0], [0.0, 1.0, -2.0], [3.0, 2.0, 1.0]]], batch_dims=[3], input_dims=[3], output_dims=[5])
p6 = oc.param("p6", [[0.0, -2.0, 1.0], [-1.0, 3.0, 2.0], [3.0, -1.0, 3.0], [-2.0, 0.0, -2.0]], batch_dims=[4], input_dims=[3], output_dims=[])
t7 = op('a +* "0, | 0 -> 4,; ..., | 2,...->=> | ->" b', a=p5, b=p6)
t8 = -1.0 * p5
t9 = oc.einsum1('2|q_1,... -> 1=>q_1|', t8)
p10 = oc.param("p10", [[[[0.0]], [[1.0]], [[2.0]], [[-2.0]]]], batch_dims=[1], input_dims=[1, 1], output_dims=[4])
t11 = op("neg(a)", a=p10)
t12 = oc.fma(t7, t7, t7)
w0 = oc.term("w0", batch_dims=[], input_dims=[1], output_dims=[1])
w0.set_value([[2.0]])
w1 = oc.term("w1", batch_dims=[3], input_dims=[], output_dims=[])
w1.set_value([1.0, 1.0, 0.5])
w2 = oc.term("w2", batch_dims=[1], input_dims=[1, 1], output_dims=[4])
w2.set_value([[[[2.0]], [[-1.0]], [[1.0]], [[2.0]]]])
w3 = oc.term("w3", batch_dims=[], input_dims=[], output_dims=[])
w3.set_value(1.0)
loss = oc.einsum1("...|...->... => ", t4 * w0) + oc.einsum1("...|...->... => ", t9 * w1) + oc.einsum1("...|...->... => ", t11 * w2) + oc.einsum1("...|...->... => ", t12 * w3)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 1e-05, 1e-05
TYPES = {
    'p1': [[], [1], [3]],
    't2': [[], [1], [3]],
    'x3': [[], [3], [1]],
    't4': [[], [1], [1]],
    'p5': [[3], [5], [3]],
    'p6': [[4], [], [3]],
    't7': [[], [], []],
    't8': [[3], [5], [3]],
    't9': [[3], [], []],
    'p10': [[1], [4], [1, 1]],
    't11': [[1], [4], [1, 1]],
    't12': [[], [], []],
}
EXPECTED_VALUES = {
    'p1': [[1.0, 2.0, 1.0]],
    't2': [[1.0, 2.0, 1.0]],
    'x3': [[0.0], [2.0], [1.0]],
    't4': [[5.0]],
    'p5': [[[2.0, -1.0, 0.0], [-2.0, 0.0, 0.0], [3.0, 1.0, -1.0], [2.0, -1.0, -1.0], [0.0, -1.0, 0.0]], [[0.0, 0.0, -1.0], [3.0, 2.0, -1.0], [-1.0, 3.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 3.0, -1.0]], [[0.0, -1.0, -2.0], [-1.0, 1.0, -2.0], [-1.0, 2.0, 3.0], [0.0, 1.0, -2.0], [3.0, 2.0, 1.0]]],
    'p6': [[0.0, -2.0, 1.0], [-1.0, 3.0, 2.0], [3.0, -1.0, 3.0], [-2.0, 0.0, -2.0]],
    't7': 0.0,
    't8': [[[-2.0, 1.0, -0.0], [2.0, -0.0, -0.0], [-3.0, -1.0, 1.0], [-2.0, 1.0, 1.0], [-0.0, 1.0, -0.0]], [[-0.0, -0.0, 1.0], [-3.0, -2.0, 1.0], [1.0, -3.0, -1.0], [1.0, -1.0, 1.0], [-1.0, -3.0, 1.0]], [[-0.0, 1.0, 2.0], [1.0, -1.0, 2.0], [1.0, -2.0, -3.0], [-0.0, -1.0, 2.0], [-3.0, -2.0, -1.0]]],
    't9': [1.0, -1.0, 2.0],
    'p10': [[[[0.0]], [[1.0]], [[2.0]], [[-2.0]]]],
    't11': [[[[-0.0]], [[-1.0]], [[-2.0]], [[2.0]]]],
    't12': 0.0,
}
EXPECTED_GRADS = {
    'p1': [[0.0, 4.0, 2.0]],
    't2': [[0.0, 4.0, 2.0]],
    't4': [[2.0]],
    'p5': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [4.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [-1.0, -1.0, -0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    'p6': [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    't7': 1.0,
    't8': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    't9': [1.0, 1.0, 0.5],
    'p10': [[[[-2.0]], [[1.0]], [[-1.0]], [[-2.0]]]],
    't11': [[[[2.0]], [[-1.0]], [[1.0]], [[2.0]]]],
    't12': 1.0,
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

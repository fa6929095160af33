# program: ShapeError (…): Shape mismatch in pointwise operation '…' of '…' (…), '…' (…) into '…' (…): input axes: dim N is too small for fixed index N
# "ShapeError (/work/wt/fuzzrun/ocannl_py/shape/logic.py:close): Shape mismatch in pointwise operation '-' of 'x10' (1:1->0:1), '-' (2:?,3:3->0:3,1:3) into '-' (2:1,3:3->0:3,1:3): input axes: dim 1 is too small for fixed index 2"
"""fuzz program: seed 20261124, program seed 228034465631274 (ties values). Run: python <this file>"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

p1 = oc.param("p1", [[[1.0, -2.0, -1.0], [-1.0, -1.0, -2.0], [3.0, 1.0, -1.0]], [[0.0, -1.0, 3.0], [0.0, 1.0, 0.0], [3.0, 3.0, 3.0]], [[-2.0, 0.0, 0.0], [-1.0, 2.0, 0.0], [0.0, 3.0, 1.0]]], batch_dims=[], input_dims=[3], output_dims=[3, 3])
t2 = -1.0 * p1
t3 = oc.sub(t2, p1)
x4 = oc.term("x4", batch_dims=[3], input_dims=[3], output_dims=[])
x4.set_value([[3.0, 2.0, 1.0], [3.0, 3.0, -1.0], [0.0, -2.0, -1.0]])
t5 = oc.transpose(x4)
t6 = oc.stop_gradient(t3)
p7 = oc.param("p7", [[[2.0, 1.0, 0.0]]], batch_dims=[], input_dims=[3], output_dims=[1, 1])
t8 = oc.sub(p7, t6)
t9 = oc.einmax1(' | 2...->..v0..0 => ..v0.. | ...->', t8)
x10 = oc.term("x10", batch_dims=[], input_dims=[1], output_dims=[1])
x10.set_value([[3.0]])
t11 = op("a - b", a=x10, b=t8)
x12 = oc.term("x12", batch_dims=[1, 2], input_dims=[], output_dims=[2])
x12.set_value([[[1.0, -1.0], [3.0, 3.0]]])
x13 = oc.term("x13", batch_dims=[], input_dims=[], output_dims=[4, 4])
x13.set_value([[0.0, -1.0, 1.0, -1.0], [3.0, 1.0, 3.0, -2.0], [0.0, -1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 2.0]])
t14 = op('a @^+ "h1, q_2|k3 ; ... | ax4,1 => ...,|q_2, k3 -> " b', a=x12, b=x13)
w0 = oc.term("w0", batch_dims=[3], input_dims=[], output_dims=[3])
w0.set_value([[-1.0, 0.5, 1.0], [1.0, 1.0, -1.0], [2.0, 1.0, 2.0]])
w1 = oc.term("w1", batch_dims=[3], input_dims=[], output_dims=[])
w1.set_value([2.0, 2.0, -1.0])
w2 = oc.term("w2", batch_dims=[], input_dims=[3], output_dims=[3, 3])
w2.set_value([[[1.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.5, 0.5, 1.0]], [[0.5, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, 1.0, 0.5]], [[2.0, 2.0, 2.0], [-1.0, -1.0, 1.0], [0.5, -1.0, 2.0]]])
w3 = oc.term("w3", batch_dims=[], input_dims=[2, 2], output_dims=[])
w3.set_value([[0.5, 1.0], [2.0, 0.5]])
loss = oc.einsum1("...|...->... => ", t5 * w0) + oc.einsum1("...|...->... => ", t9 * w1) + oc.einsum1("...|...->... => ", t11 * w2) + oc.einsum1("...|...->... => ", t14 * w3)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 1e-05, 1e-05
TYPES = {
    'p1': [[], [3, 3], [3]],
    't2': [[], [3, 3], [3]],
    't3': [[], [3, 3], [3]],
    'x4': [[3], [], [3]],
    't5': [[3], [3], []],
    't6': [[], [3, 3], [3]],
    'p7': [[], [1, 1], [3]],
    't8': [[], [3, 3], [3]],
    't9': [[3], [], []],
    'x10': [[], [1], [1]],
    't11': [[], [3, 3], [3]],
    'x12': [[1, 2], [2], []],
    'x13': [[], [4, 4], []],
    't14': [[], [], [2, 2]],
}
EXPECTED_VALUES = {
    'p1': [[[1.0, -2.0, -1.0], [-1.0, -1.0, -2.0], [3.0, 1.0, -1.0]], [[0.0, -1.0, 3.0], [0.0, 1.0, 0.0], [3.0, 3.0, 3.0]], [[-2.0, 0.0, 0.0], [-1.0, 2.0, 0.0], [0.0, 3.0, 1.0]]],
    't2': [[[-1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [-3.0, -1.0, 1.0]], [[-0.0, 1.0, -3.0], [-0.0, -1.0, -0.0], [-3.0, -3.0, -3.0]], [[2.0, -0.0, -0.0], [1.0, -2.0, -0.0], [-0.0, -3.0, -1.0]]],
    't3': [[[-2.0, 4.0, 2.0], [2.0, 2.0, 4.0], [-6.0, -2.0, 2.0]], [[-0.0, 2.0, -6.0], [-0.0, -2.0, -0.0], [-6.0, -6.0, -6.0]], [[4.0, -0.0, -0.0], [2.0, -4.0, -0.0], [-0.0, -6.0, -2.0]]],
    'x4': [[3.0, 2.0, 1.0], [3.0, 3.0, -1.0], [0.0, -2.0, -1.0]],
    't5': [[3.0, 2.0, 1.0], [3.0, 3.0, -1.0], [0.0, -2.0, -1.0]],
    't6': [[[-2.0, 4.0, 2.0], [2.0, 2.0, 4.0], [-6.0, -2.0, 2.0]], [[-0.0, 2.0, -6.0], [-0.0, -2.0, -0.0], [-6.0, -6.0, -6.0]], [[4.0, -0.0, -0.0], [2.0, -4.0, -0.0], [-0.0, -6.0, -2.0]]],
    'p7': [[[2.0, 1.0, 0.0]]],
    't8': [[[4.0, -3.0, -2.0], [0.0, -1.0, -4.0], [8.0, 3.0, -2.0]], [[2.0, -1.0, 6.0], [2.0, 3.0, 0.0], [8.0, 7.0, 6.0]], [[-2.0, 1.0, 0.0], [0.0, 5.0, 0.0], [2.0, 7.0, 2.0]]],
    't9': [-2.0, 6.0, 0.0],
    'x10': [[3.0]],
    't11': [[[-1.0, 6.0, 5.0], [3.0, 4.0, 7.0], [-5.0, 0.0, 5.0]], [[1.0, 4.0, -3.0], [1.0, 0.0, 3.0], [-5.0, -4.0, -3.0]], [[5.0, 2.0, 3.0], [3.0, -2.0, 3.0], [1.0, -4.0, 1.0]]],
    'x12': [[[1.0, -1.0], [3.0, 3.0]]],
    'x13': [[0.0, -1.0, 1.0, -1.0], [3.0, 1.0, 3.0, -2.0], [0.0, -1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 2.0]],
    't14': [[2.0, 0.0], [4.0, 4.0]],
}
EXPECTED_GRADS = {
    'p1': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    't2': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    't3': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    'p7': [[[-2.5, -3.0, -3.5]]],
    't8': [[[-1.0, -0.5, 1.0], [-1.0, -1.0, -1.0], [-0.5, -0.5, -1.0]], [[-0.5, 1.0, 3.0], [1.0, -1.0, 1.0], [1.0, -1.0, -0.5]], [[-2.0, -2.0, -3.0], [1.0, 1.0, -1.0], [-0.5, 1.0, -2.0]]],
    't9': [2.0, 2.0, -1.0],
    't11': [[[1.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.5, 0.5, 1.0]], [[0.5, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, 1.0, 0.5]], [[2.0, 2.0, 2.0], [-1.0, -1.0, 1.0], [0.5, -1.0, 2.0]]],
}

def rows_of(name):
    shape = globals()[name].shape
    return [list(shape.batch), list(shape.output), list(shape.input)]


def compare(what, name, got, want, grad):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    # Every tensor has the reference's rows: leaves are given all their dims, and a computed
    # tensor takes the least shape its operands allow (docs/shape_inference.md).
    got_rows, want_rows = rows_of(name), TYPES[name]
    if got_rows != want_rows:
        FAILURES.append(f"{what}: rows {got_rows} (batch, output, input), expected {want_rows}")
        return
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


FAILURES = []
for name, want in EXPECTED_VALUES.items():
    compare(f"{name}.value", name, globals()[name].value, want, grad=False)
for name, want in EXPECTED_GRADS.items():
    compare(f"{name}.grad", name, globals()[name].grad, want, grad=True)
if __name__ == "__main__":
    print("\n".join(FAILURES) or "no difference")
    raise SystemExit(1 if FAILURES else 0)

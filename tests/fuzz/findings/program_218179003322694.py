# program: ShapeError (…): Shape mismatch in pointwise operation '…' of '…' (…), '…' (…) into '…' (…): input axes: dim N is too small for fixed index N
# "ShapeError (/work/wt/fuzzrun/ocannl_py/shape/logic.py:close): Shape mismatch in pointwise operation 'min' of '-' (2:?,...,3:3->0:3,1:1), '-' (2:?,...,3:3->0:3,1:1) into 'min' (2:3->0:3,1:1): input axes: dim 1 is too small for fixed index 1"
"""fuzz program: seed 20261124, program seed 218179003322694 (float values). Run: python <this file>"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

c1 = oc.ndarray([[[-0.027613557875156403, -0.11582363396883011, 0.524529755115509]], [[-0.8317559361457825, 0.07478418201208115, -0.5389567017555237]], [[0.39407625794410706, -0.04572322964668274, -0.2675975263118744]]], batch_dims=[], input_dims=[3], output_dims=[3, 1])
t2 = 3.0 - c1
t3 = op("a @- b", a=t2, b=t2)
p4 = oc.param("p4", [[-0.42800697684288025, 0.2393251359462738], [1.4258527755737305, -0.05836644768714905], [-0.5028196573257446, -0.8183462023735046]], batch_dims=[], input_dims=[2], output_dims=[3])
p5 = oc.param("p5", [0.0009991765255108476, -0.7781925797462463], batch_dims=[], input_dims=[], output_dims=[2])
t6 = op("a * b", a=p4, b=p5)
t7 = oc.einsum1('... | 1,->2,... => ...|...,', p4)
t8 = oc.einsum1('1... -> 0a=>... -> ', t2)
t9 = oc.add(t6, t6)
w0 = oc.term("w0", batch_dims=[], input_dims=[3], output_dims=[3, 1])
w0.set_value([[[2.0, 1.0, 1.0]], [[0.5, 0.5, -1.0]], [[1.0, 2.0, -1.0]]])
w1 = oc.term("w1", batch_dims=[], input_dims=[], output_dims=[])
w1.set_value(1.0)
w2 = oc.term("w2", batch_dims=[], input_dims=[], output_dims=[])
w2.set_value(-1.0)
w3 = oc.term("w3", batch_dims=[], input_dims=[], output_dims=[3])
w3.set_value([2.0, 0.5, 2.0])
loss = oc.einsum1("...|...->... => ", t3 * w0) + oc.einsum1("...|...->... => ", t7 * w1) + oc.einsum1("...|...->... => ", t8 * w2) + oc.einsum1("...|...->... => ", t9 * w3)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 0.001, 0.001
TYPES = {
    'c1': [[], [3, 1], [3]],
    't2': [[], [3, 1], [3]],
    't3': [[], [3, 1], [3]],
    'p4': [[], [3], [2]],
    'p5': [[], [2], []],
    't6': [[], [3], []],
    't7': [[], [], []],
    't8': [[], [], []],
    't9': [[], [3], []],
}
EXPECTED_VALUES = {
    'c1': [[[-0.027613557875156403, -0.11582363396883011, 0.524529755115509]], [[-0.8317559361457825, 0.07478418201208115, -0.5389567017555237]], [[0.39407625794410706, -0.04572322964668274, -0.2675975263118744]]],
    't2': [[[3.0276135578751564, 3.11582363396883, 2.475470244884491]], [[3.8317559361457825, 2.925215817987919, 3.5389567017555237]], [[2.605923742055893, 3.0457232296466827, 3.2675975263118744]]],
    't3': [[[3.0276135578751564, 3.11582363396883, 2.475470244884491]], [[3.8317559361457825, 2.925215817987919, 3.5389567017555237]], [[2.605923742055893, 3.0457232296466827, 3.2675975263118744]]],
    'p4': [[-0.42800697684288025, 0.2393251359462738], [1.4258527755737305, -0.05836644768714905], [-0.5028196573257446, -0.8183462023735046]],
    'p5': [0.0009991765255108476, -0.7781925797462463],
    't6': [-0.1866686994641682, 0.04684501511847461, 0.6363285367524161],
    't7': -0.8183462023735046,
    't8': 3.11582363396883,
    't9': [-0.3733373989283364, 0.09369003023694922, 1.2726570735048321],
}
EXPECTED_GRADS = {
    'p4': [[0.00399670610204339, -3.1127703189849854], [0.0009991765255108476, -0.7781925797462463], [0.00399670610204339, -2.1127703189849854]],
    'p5': [-2.297453761100769, -2.3744507133960724],
    't6': [4.0, 1.0, 4.0],
    't7': 1.0,
    't9': [2.0, 0.5, 2.0],
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

# program: t.value: N of N cells differ: got [N], expected [N]
# 't5.value: 1 of 1 cells differ: got [-41.13381576538086], expected [-20.566907286643982]\np4.grad: 2 of 12 cells differ: got [8.0, 8.0], expected [4.0, 4.0]'
"""fuzz program: seed 20261124, program seed 157599391168229 (float values). Run: python <this file>"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

x1 = oc.term("x1", batch_dims=[], input_dims=[2], output_dims=[4])
x1.set_value([[0.9215947985649109, 0.7143445014953613], [0.18442054092884064, -1.7782505750656128], [-0.1935017704963684, 0.9874162673950195], [-1.20172119140625, -1.8843756914138794]])
t2 = oc.max(3.0, x1)
t3 = op("neg(a)", a=t2)
p4 = oc.param("p4", [[[-0.24623903632164001, -0.7440598607063293, -0.7361829876899719], [0.5514711141586304, -0.6879690885543823, 0.5377873778343201]], [[-0.32041135430336, 0.5966671109199524, 0.6917489171028137], [0.762013852596283, -0.07449080795049667, 0.1665242612361908]]], batch_dims=[], input_dims=[3], output_dims=[2, 2])
t5 = op('a +++ "b...->a;..v0..|2... -> 1b=> | ..v0..->" b', a=t3, b=p4)
t6 = oc.sub(p4, p4)
t7 = oc.einsum('0 -> ...0; ...0->b => b |  -> ...', t6, x1)
w0 = oc.term("w0", batch_dims=[], input_dims=[], output_dims=[])
w0.set_value(1.0)
w1 = oc.term("w1", batch_dims=[4], input_dims=[], output_dims=[2])
w1.set_value([[0.5, 2.0], [-1.0, -1.0], [-1.0, 1.0], [-1.0, 0.5]])
loss = oc.einsum1("...|...->... => ", t5 * w0) + oc.einsum1("...|...->... => ", t7 * w1)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 0.001, 0.001
TYPES = {
    'x1': [[], [4], [2]],
    't2': [[], [4], [2]],
    't3': [[], [4], [2]],
    'p4': [[], [2, 2], [3]],
    't5': [[], [], []],
    't6': [[], [2, 2], [3]],
    't7': [[4], [2], []],
}
EXPECTED_VALUES = {
    'x1': [[0.9215947985649109, 0.7143445014953613], [0.18442054092884064, -1.7782505750656128], [-0.1935017704963684, 0.9874162673950195], [-1.20172119140625, -1.8843756914138794]],
    't2': [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]],
    't3': [[-3.0, -3.0], [-3.0, -3.0], [-3.0, -3.0], [-3.0, -3.0]],
    'p4': [[[-0.24623903632164001, -0.7440598607063293, -0.7361829876899719], [0.5514711141586304, -0.6879690885543823, 0.5377873778343201]], [[-0.32041135430336, 0.5966671109199524, 0.6917489171028137], [0.762013852596283, -0.07449080795049667, 0.1665242612361908]]],
    't5': -20.566907286643982,
    't6': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    't7': [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
}
EXPECTED_GRADS = {
    'p4': [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 4.0], [0.0, 0.0, 4.0]]],
    't5': 1.0,
    't6': [[[1.6715998202562332, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.8644066900014877, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    't7': [[0.5, 2.0], [-1.0, -1.0], [-1.0, 1.0], [-1.0, 0.5]],
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

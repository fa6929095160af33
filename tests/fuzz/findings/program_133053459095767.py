# program: t.value: N of N cells differ: got [N, N, N, N], expected [N, N, N, N]
# 't5.value: 10 of 15 cells differ: got [0.7286486029624939, 0.6210451722145081, 0.6097456812858582, 0.31310439109802246], expected [-0.33662474155426025, 0.024515565484762192, -0.8118057250976562, 0.4039481282234192]\np1.grad: 10 of 15 cells differ: got [1.25, 1.25, 3.0, 1.5], expected [1.0, 1.0, 2.0, 0.5]\nt2.grad: 10 of 15 cells differ: got [0.5, 0.5, 2.0, 2.0], expected [0.0, 0.0, 0.0, 0.0]\nt5.grad: 5 of 5 cells differ: got [1.5, 6.0, 3.0, 1.5], expected [0.5, 2.0, 1.0, 0.5]'
"""fuzz program: seed 20261124, program seed 133053459095767 (float values). Run: python <this file>"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

p1 = oc.param("p1", [[1.4572972059249878, -0.6673817038536072, -0.6732494831085205], [1.2420903444290161, -0.12976092100143433, 0.049031130969524384], [1.2194913625717163, -0.5238100290298462, -1.6236114501953125], [0.6262087821960449, -0.33246704936027527, 0.8078962564468384], [0.18669432401657104, 0.25664061307907104, 0.06149919331073761]], batch_dims=[], input_dims=[3], output_dims=[5])
t2 = p1 / 2.0
x3 = oc.term("x3", batch_dims=[], input_dims=[3], output_dims=[5])
x3.set_value([[-1.7360835075378418, -1.7674771547317505, -4.720770359039307], [2.5798697471618652, -1.8686928749084473, 0.7204402089118958], [1.044197678565979, 2.3564388751983643, -1.1423600912094116], [2.6239702701568604, -1.7614010572433472, -3.0047829151153564], [0.034867577254772186, -1.2836347818374634, 1.8060576915740967]])
t4 = p1 + x3
t5 = oc.einmax1('2..v0..->a...=>..v0..|a -> ', t2)
w0 = oc.term("w0", batch_dims=[], input_dims=[3], output_dims=[5])
w0.set_value([[1.0, 1.0, -1.0], [2.0, 0.5, -1.0], [0.5, -1.0, 1.0], [2.0, 0.5, 2.0], [-1.0, 0.5, -1.0]])
w1 = oc.term("w1", batch_dims=[], input_dims=[5], output_dims=[])
w1.set_value([0.5, 2.0, 1.0, 0.5, 2.0])
loss = oc.einsum1("...|...->... => ", t4 * w0) + oc.einsum1("...|...->... => ", t5 * w1)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 0.001, 0.001
TYPES = {
    'p1': [[], [5], [3]],
    't2': [[], [5], [3]],
    'x3': [[], [5], [3]],
    't4': [[], [5], [3]],
    't5': [[], [], [5]],
}
EXPECTED_VALUES = {
    'p1': [[1.4572972059249878, -0.6673817038536072, -0.6732494831085205], [1.2420903444290161, -0.12976092100143433, 0.049031130969524384], [1.2194913625717163, -0.5238100290298462, -1.6236114501953125], [0.6262087821960449, -0.33246704936027527, 0.8078962564468384], [0.18669432401657104, 0.25664061307907104, 0.06149919331073761]],
    't2': [[0.7286486029624939, -0.3336908519268036, -0.33662474155426025], [0.6210451722145081, -0.06488046050071716, 0.024515565484762192], [0.6097456812858582, -0.2619050145149231, -0.8118057250976562], [0.31310439109802246, -0.16623352468013763, 0.4039481282234192], [0.09334716200828552, 0.12832030653953552, 0.030749596655368805]],
    'x3': [[-1.7360835075378418, -1.7674771547317505, -4.720770359039307], [2.5798697471618652, -1.8686928749084473, 0.7204402089118958], [1.044197678565979, 2.3564388751983643, -1.1423600912094116], [2.6239702701568604, -1.7614010572433472, -3.0047829151153564], [0.034867577254772186, -1.2836347818374634, 1.8060576915740967]],
    't4': [[-0.278786301612854, -2.4348588585853577, -5.394019842147827], [3.8219600915908813, -1.9984537959098816, 0.7694713398814201], [2.2636890411376953, 1.832628846168518, -2.765971541404724], [3.2501790523529053, -2.0938681066036224, -2.196886658668518], [0.22156190127134323, -1.0269941687583923, 1.8675568848848343]],
    't5': [-0.33662474155426025, 0.024515565484762192, -0.8118057250976562, 0.4039481282234192, 0.030749596655368805],
}
EXPECTED_GRADS = {
    'p1': [[1.0, 1.0, -0.75], [2.0, 0.5, 0.0], [0.5, -1.0, 1.5], [2.0, 0.5, 2.25], [-1.0, 0.5, 0.0]],
    't2': [[0.0, 0.0, 0.5], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.5], [0.0, 0.0, 2.0]],
    't4': [[1.0, 1.0, -1.0], [2.0, 0.5, -1.0], [0.5, -1.0, 1.0], [2.0, 0.5, 2.0], [-1.0, 0.5, -1.0]],
    't5': [0.5, 2.0, 1.0, 0.5, 2.0],
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

# program: t.value: N of N cells differ: got [N], expected [N]
# 't7.value: 1 of 2 cells differ: got [-1.7418889999389648], expected [-0.43487879633903503]\np1.grad: 3 of 6 cells differ: got [1.0, 1.0, 1.0], expected [0.0, 0.0, 0.0]\np4.grad: 3 of 3 cells differ: got [0.0, -3.0, -3.0], expected [1.0, -2.0, -2.0]\nt6.grad: 3 of 6 cells differ: got [-1.0, -1.0, -1.0], expected [0.0, 0.0, 0.0]\nt7.grad: 1 of 1 cells differ: got [-2.0], expected [-1.0]'
"""fuzz program: seed 20261124, program seed 165587135024975 (float values). Run by tests/fuzz/test_findings.py"""
import numpy as np
import ocannl_py as oc
from ocannl_py import Context, op, train

p1 = oc.param("p1", [[[-0.2746961712837219], [-0.05801217257976532]], [[-0.36664140224456787], [0.3074449896812439]], [[-0.5259584188461304], [-0.10971880704164505]]], batch_dims=[], input_dims=[2, 1], output_dims=[3])
x2 = oc.term("x2", batch_dims=[], input_dims=[2], output_dims=[])
x2.set_value([-0.24099749326705933, -0.12568655610084534])
t3 = op("transpose(a)", a=x2)
p4 = oc.param("p4", [-0.341667503118515, 3.893117904663086, -0.6536251902580261], batch_dims=[], input_dims=[], output_dims=[3])
t5 = 2.0 + p4
t6 = -1.5 - p1
t7 = op('a +++ "...|0,...,h2->...,k1;..., | ... -> k1, ...=>h2,...->...," b', a=t6, b=p4)
w0 = oc.term("w0", batch_dims=[], input_dims=[], output_dims=[2])
w0.set_value([1.0, 0.5])
w1 = oc.term("w1", batch_dims=[], input_dims=[], output_dims=[3])
w1.set_value([2.0, -1.0, -1.0])
w2 = oc.term("w2", batch_dims=[], input_dims=[1], output_dims=[])
w2.set_value([-1.0])
loss = oc.einsum1("...|...->... => ", t3 * w0) + oc.einsum1("...|...->... => ", t5 * w1) + oc.einsum1("...|...->... => ", t7 * w2)
ctx = Context("c")
ctx.compile(train.grad_update(loss)).run()

RTOL, ATOL = 0.001, 0.001
TYPES = {
    'p1': [[], [3], [2, 1]],
    'x2': [[], [], [2]],
    't3': [[], [2], []],
    'p4': [[], [3], []],
    't5': [[], [3], []],
    't6': [[], [3], [2, 1]],
    't7': [[], [], [1]],
}
EXPECTED_VALUES = {
    'p1': [[[-0.2746961712837219], [-0.05801217257976532]], [[-0.36664140224456787], [0.3074449896812439]], [[-0.5259584188461304], [-0.10971880704164505]]],
    'x2': [-0.24099749326705933, -0.12568655610084534],
    't3': [-0.24099749326705933, -0.12568655610084534],
    'p4': [-0.341667503118515, 3.893117904663086, -0.6536251902580261],
    't5': [1.658332496881485, 5.893117904663086, 1.3463748097419739],
    't6': [[[-1.225303828716278], [-1.4419878274202347]], [[-1.1333585977554321], [-1.807444989681244]], [[-0.9740415811538696], [-1.390281192958355]]],
    't7': [-0.43487879633903503],
}
EXPECTED_GRADS = {
    'p1': [[[1.0], [0.0]], [[1.0], [0.0]], [[1.0], [0.0]]],
    'p4': [1.0, -2.0, -2.0],
    't5': [2.0, -1.0, -1.0],
    't6': [[[-1.0], [0.0]], [[-1.0], [0.0]], [[-1.0], [0.0]]],
    't7': [-1.0],
}

"""Gradients of every differentiable operation against central finite differences.

For each operation, `loss = sum(op(params) * W)` with fixed random weights `W` (reduced to a
scalar with `einsum1`), gradients come from `train.grad_update(loss)`. The reference is an
independent numpy re-implementation of the same function, differentiated by central finite
differences in float64 at the float32-rounded parameter values.

Tolerances: with step 1e-6 in float64 the finite differences are accurate to about 1e-9
(truncation ~eps² f''' plus rounding ~1e-16/eps). The compiled gradients are float32: each
cell is a sum of at most a few dozen rounded products (relative error about n * 6e-8 of the
magnitudes summed, ~2e-6), plus a few ulp for transcendental functions. `rtol=1e-4` and
`atol=1e-4 * max(1, |grad|_max)` leave ample margin for that, while a wrong formula, a missing
accumulation or a wrong axis is off by O(1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, train

FD_STEP = 1e-6
RTOL = 1e-4


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


Dims = tuple[list[int], list[int], list[int]]  # batch, output, input


def out(*dims: int) -> Dims:
    return ([], list(dims), [])


@dataclass
class Case:
    """`build` makes the tensor from parameter tensors; `ref` computes its value in numpy (axes
    batch, output, input) from float64 arrays; `valid` rejects points near a kink."""

    dims: list[Dims]
    build: Callable[..., oc.Tensor]
    ref: Callable[..., np.ndarray]
    sample: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] = field(
        default=lambda rng, shape: rng.normal(size=shape)
    )
    valid: Callable[..., bool] = field(default=lambda *values: True)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, size=shape)


def unit_range(rng, shape):
    return rng.uniform(-0.5, 1.5, size=shape)


def away_from(*kinks: float, gap: float = 0.05):
    def valid(*values):
        return all(np.all(np.abs(v - k) > gap) for v in values for k in kinks)

    return valid


def distinct(a, b, gap: float = 0.05) -> bool:
    return bool(np.all(np.abs(a - b) > gap))


def unique_max(values: np.ndarray, axis: int, gap: float = 0.05) -> bool:
    top2 = -np.sort(-values, axis=axis).take([0, 1], axis=axis)
    return bool(np.all(np.abs(np.diff(top2, axis=axis)) > gap))


MASK = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])

CASES: dict[str, Case] = {
    "add": Case([out(2, 3), out(2, 3)], lambda a, b: a + b, lambda a, b: a + b),
    "sub": Case([out(2, 3), out(2, 3)], lambda a, b: a - b, lambda a, b: a - b),
    "pointmul": Case([out(2, 3), out(2, 3)], lambda a, b: a * b, lambda a, b: a * b),
    "pointdiv": Case(
        [out(2, 3), out(2, 3)], lambda a, b: a / b, lambda a, b: a / b,
        valid=lambda a, b: bool(np.all(np.abs(b) > 0.3)),
    ),
    "pointpow_constant": Case([out(2, 3)], lambda a: a**3.0, lambda a: a**3),
    "pointpow_square": Case([out(2, 3)], lambda a: a**2, lambda a: a**2),
    # Positive base: the exponent's gradient is v * log(base).
    "pointpow_both": Case(
        [out(2, 3), out(2, 3)], lambda a, b: oc.pointpow(a, b), lambda a, b: a**b,
        sample=positive,
    ),
    "neg": Case([out(2, 3)], lambda a: -a, lambda a: -a),
    "relu": Case([out(2, 3)], oc.relu, lambda a: np.maximum(a, 0), valid=away_from(0.0)),
    "sat01": Case([out(2, 4)], oc.sat01, lambda a: np.clip(a, 0, 1), sample=unit_range,
                  valid=away_from(0.0, 1.0)),
    "exp": Case([out(2, 3)], oc.exp, np.exp),
    "log": Case([out(2, 3)], oc.log, np.log, sample=positive),
    "exp2": Case([out(2, 3)], oc.exp2, np.exp2),
    "log2": Case([out(2, 3)], oc.log2, np.log2, sample=positive),
    "sin": Case([out(2, 3)], oc.sin, np.sin),
    "cos": Case([out(2, 3)], oc.cos, np.cos),
    "sqrt": Case([out(2, 3)], oc.sqrt, np.sqrt, sample=positive),
    "recip": Case([out(2, 3)], oc.recip, lambda a: 1 / a, sample=positive),
    "recip_sqrt": Case([out(2, 3)], oc.recip_sqrt, lambda a: 1 / np.sqrt(a), sample=positive),
    "tanh": Case([out(2, 3)], oc.tanh, np.tanh),
    "erf": Case([out(2, 3)], oc.erf, np.vectorize(math.erf)),
    "identity": Case([out(2, 3)], oc.identity, lambda a: a),
    "max": Case([out(2, 3), out(2, 3)], oc.max, np.maximum, valid=distinct),
    "min": Case([out(2, 3), out(2, 3)], oc.min, np.minimum, valid=distinct),
    "relu_gate": Case(
        [out(2, 3), out(2, 3)], oc.relu_gate, lambda a, b: np.where(a > 0, b, 0.0),
        valid=lambda a, b: away_from(0.0)(a),
    ),
    "where": Case(
        [out(2, 3), out(2, 3)],
        lambda a, b: oc.where(oc.ndarray(MASK, output_dims=[2, 3]), a, b),
        lambda a, b: np.where(MASK != 0, a, b),
    ),
    "fma": Case([out(2, 3)] * 3, oc.fma, lambda a, b, c: a * b + c),
    "compose": Case(
        [([], [2], [3]), ([], [3], [4])], lambda a, b: a @ b, lambda a, b: a @ b
    ),
    "compose_batched_data": Case(
        [([], [4], [3]), ([5], [3], [])], lambda w, x: w @ x, lambda w, x: x @ w.T
    ),
    "transpose": Case([([], [2], [3])], oc.transpose, lambda a: a.T),
    "einsum": Case(
        [out(2, 3), out(3, 4)], lambda a, b: oc.einsum("ab;bc=>ac", a, b),
        lambda a, b: np.einsum("ab,bc->ac", a, b),
    ),
    "einsum_all_rows": Case(
        [([2], [3], [4]), ([2], [5], [3])],
        lambda a, b: oc.einsum("b|i->o; b|o->p => b|i->p", a, b),
        lambda a, b: np.einsum("boi,bpo->bpi", a, b),
    ),
    "einsum1_permute": Case(
        [([2], [3], [2])], lambda a: oc.einsum1("b|i->o => o|b->i", a),
        lambda a: np.einsum("boi->oib", a),
    ),
    "einsum1_reduce": Case(
        [([2], [3], [4])], lambda a: oc.einsum1("...|...->...o => o", a),
        lambda a: a.sum(axis=(0, 2)),
    ),
    "einsum1_diagonal": Case([out(3, 3)], lambda a: oc.einsum1("ii=>i", a), np.diagonal),
    "outer_sum": Case(
        [out(2, 3), out(3, 4)], lambda a, b: oc.outer_sum("ab;bc=>ac", a, b),
        lambda a, b: (a[:, :, None] + b[None]).sum(1),
    ),
    "outer_sum_no_reduction": Case(
        [out(3), out(4)], lambda a, b: oc.outer_sum("a;c=>ac", a, b),
        lambda a, b: a[:, None] + b[None, :],
    ),
    "einmax1": Case(
        [out(3, 4)], lambda a: oc.einmax1("ab=>a", a), lambda a: a.max(1),
        valid=lambda a: unique_max(a, 1),
    ),
    "tropical": Case(
        [out(2, 3), out(3, 4)], lambda a, b: oc.tropical("ab;bc=>ac", a, b),
        lambda a, b: (a[:, :, None] + b[None]).max(1),
        valid=lambda a, b: unique_max(a[:, :, None] + b[None], 1),
    ),
    # Broadcasting: the broadcast operand's gradient sums over the broadcast axis.
    "broadcast_missing_batch": Case(
        [([3], [4], []), out(4)], lambda a, b: a + b, lambda a, b: a + b[None, :]
    ),
    "broadcast_dim1_axis": Case([out(3, 4), out(3, 1)], lambda a, b: a * b, lambda a, b: a * b),
    "broadcast_missing_axis": Case(
        [out(3, 4), out(4)], lambda a, b: a * b, lambda a, b: a * b[None, :]
    ),
    "broadcast_scalar_param": Case(
        [out(2, 3), ([], [], [])], lambda a, b: a - b, lambda a, b: a - b
    ),
    "broadcast_input_row": Case(
        [([], [2], [3]), ([], [2], [])], lambda a, b: a * b, lambda a, b: a * b[:, None]
    ),
    "number_operands": Case(
        [out(2, 3)], lambda a: 2 * a - 10.0 / (a * a + 1), lambda a: 2 * a - 10.0 / (a * a + 1)
    ),
}  # fmt: skip


def make_params(case: Case, rng: np.random.Generator) -> list[np.ndarray]:
    for _ in range(100):
        values = [f32(case.sample(rng, tuple(b + o + i))) for (b, o, i) in case.dims]
        if case.valid(*values):
            return values
    raise AssertionError("could not draw a point away from the kinks")


def weighted_loss(y: oc.Tensor, weights: np.ndarray) -> oc.Tensor:
    w = oc.ndarray(weights, batch_dims=y.shape.batch, output_dims=y.shape.output,
                   input_dims=y.shape.input, label="W")  # fmt: skip
    return oc.einsum1("...|...->... => 0", y * w)


def finite_differences(fn: Callable[..., float], values: list[np.ndarray]) -> list[np.ndarray]:
    grads = []
    for k, v in enumerate(values):
        grad = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus = [x.copy() for x in values]
            minus = [x.copy() for x in values]
            plus[k][idx] += FD_STEP
            minus[k][idx] -= FD_STEP
            grad[idx] = (fn(*plus) - fn(*minus)) / (2 * FD_STEP)
        grads.append(grad)
    return grads


def assert_grad_close(actual, expected, what: str) -> None:
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def check_case(backend: str, name: str, case: Case, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    values = make_params(case, rng)
    params = [
        oc.param(f"p{k}", v, batch_dims=b, output_dims=o, input_dims=i)
        for k, (v, (b, o, i)) in enumerate(zip(values, case.dims, strict=True))
    ]
    y = case.build(*params)
    y_ref = case.ref(*values)
    ctx = Context(backend)
    ctx.forward(y)  # settles y's shape, which the weights take
    np.testing.assert_allclose(y.value, y_ref, rtol=1e-5, atol=1e-5, err_msg=f"{name} value")
    weights = f32(rng.normal(size=y_ref.shape))
    loss = weighted_loss(y, weights)
    ctx.compile(train.grad_update(loss)).run()
    expected = finite_differences(lambda *vs: float(np.sum(case.ref(*vs) * weights)), values)
    for k, (p, g) in enumerate(zip(params, expected, strict=True)):
        assert p.grad is not None and p.grad.shape == g.shape, f"{name}: p{k}.grad shape"
        assert_grad_close(p.grad, g, f"{name}: gradient of operand {k}")
    np.testing.assert_allclose(loss.grad, np.ones_like(loss.grad))


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_vs_finite_differences(backend, name):
    check_case(backend, name, CASES[name])


DIFFERENTIABLE = {
    "add", "sub", "pointmul", "pointdiv", "pointpow", "neg", "relu", "sat01", "exp", "log",
    "exp2", "log2", "sin", "cos", "sqrt", "recip", "recip_sqrt", "tanh", "erf", "identity",
    "max", "min", "relu_gate", "where", "fma", "compose", "transpose", "einsum", "einsum1",
    "outer_sum", "einmax1", "tropical",
}  # fmt: skip


def test_every_differentiable_operation_has_a_case():
    missing = {
        name for name in DIFFERENTIABLE
        if not any(case == name or case.startswith(f"{name}_") for case in CASES)
    }  # fmt: skip
    assert not missing


# ---- what gets a gradient and what does not -----------------------------------------------------


def test_terms_literals_and_numbers_get_no_gradient(backend):
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    lit = oc.op("[1;2;3]")
    nd = oc.ndarray([0.5, 0.5, 0.5], output_dims=[3])
    num = oc.number(2.0)
    w = oc.param("w", [0.1, 0.2, 0.3], output_dims=[3])
    hidden = x * lit + nd
    loss = oc.einsum1("...|...->... => 0", hidden * w * num)
    x.set_value(np.arange(6.0).reshape(2, 3))
    Context(backend).compile(train.grad_update(loss)).run()
    for t in (x, lit, nd, num, hidden):
        assert t.grad is None, t.label
    xs = np.arange(6.0).reshape(2, 3)
    expected = 2 * (xs * [1, 2, 3] + 0.5).sum(0)
    np.testing.assert_allclose(w.grad, expected, rtol=1e-6)


def test_gradients_accumulate_over_several_uses(backend):
    rng = np.random.default_rng(5)
    w_val = f32(rng.normal(size=3))
    weights = f32(rng.normal(size=3))
    w = oc.param("w", w_val, output_dims=[3])
    y = w * w + 3 * w + oc.sin(w) - w / 2
    ctx = Context(backend)
    ctx.forward(y)
    loss = weighted_loss(y, weights)
    step = ctx.compile(train.grad_update(loss))
    step.run()
    expected = weights * (2 * w_val + 3 + np.cos(w_val) - 0.5)
    assert_grad_close(w.grad, expected, "w used four times")
    step.run()  # gradients are zeroed before each backprop, not accumulated across runs
    assert_grad_close(w.grad, expected, "second run")


def test_shared_subexpression_gradient(backend):
    """A tensor used by two consumers (a diamond) receives both contributions."""
    w = oc.param("w", [0.5, -1.0], output_dims=[2])
    h = oc.tanh(w)
    loss = oc.einsum1("i=>0", h * h + h)
    Context(backend).compile(train.grad_update(loss)).run()
    t = np.tanh(f32([0.5, -1.0]))
    assert_grad_close(w.grad, (2 * t + 1) * (1 - t**2), "diamond")
    np.testing.assert_allclose(h.grad, 2 * t + 1, rtol=1e-6)


def test_stop_gradient_blocks(backend):
    w_val = np.array([1.5, -2.0, 0.5])
    w = oc.param("w", w_val, output_dims=[3])
    frozen = oc.stop_gradient(w)
    loss = oc.einsum1("i=>0", w * frozen)
    Context(backend).compile(train.grad_update(loss)).run()
    np.testing.assert_allclose(w.grad, w_val, rtol=1e-6)  # not 2 * w
    assert frozen.grad is None
    np.testing.assert_allclose(loss.value, [np.sum(w_val**2)], rtol=1e-6)


def test_comparisons_have_no_gradient(backend):
    w_val = np.array([0.2, 0.9, -0.4, 0.6])
    w = oc.param("w", w_val, output_dims=[4])
    threshold = oc.ndarray([0.5] * 4, output_dims=[4])
    masks = [oc.lt(w, threshold), oc.eq(w, threshold), oc.ne(w, threshold), oc.not_(w)]
    loss = oc.einsum1("i=>0", w * masks[0] + masks[1] + masks[2] + masks[3])
    Context(backend).compile(train.grad_update(loss)).run()
    for m in masks:
        assert m.grad is None
    np.testing.assert_allclose(w.grad, (f32(w_val) < 0.5).astype(float))


def test_grad_update_needs_a_parameter():
    loss = oc.einsum1("i=>0", oc.ndarray([1.0, 2.0], output_dims=[2]))
    with pytest.raises(ValueError, match="does not depend on any parameter"):
        train.grad_update(loss)


def test_mlp_gradients_vs_finite_differences(backend):
    """A two-layer perceptron on a batch, all of its parameters at once."""
    rng = np.random.default_rng(11)
    x_val = f32(rng.normal(size=(4, 3)))
    w1_val, b1_val = f32(rng.normal(size=(5, 3))), f32(rng.normal(size=5))
    w2_val, b2_val = f32(rng.normal(size=(2, 5))), f32(rng.normal(size=2))
    x = oc.term("x", batch_dims=[4], input_dims=[], output_dims=[3])
    w1 = oc.param("w1", w1_val, output_dims=[5], input_dims=[3])
    b1 = oc.param("b1", b1_val, output_dims=[5], batch_dims=[])
    w2 = oc.param("w2", w2_val, output_dims=[2], input_dims=[5])
    b2 = oc.param("b2", b2_val, output_dims=[2], batch_dims=[])
    y = w2 @ oc.tanh(w1 @ x + b1) + b2
    weights = f32(rng.normal(size=(4, 2)))
    x.set_value(x_val)
    ctx = Context(backend)
    ctx.forward(y)
    loss = weighted_loss(y, weights)
    ctx.compile(train.grad_update(loss)).run()

    def ref(w1, b1, w2, b2):
        return float(np.sum((np.tanh(x_val @ w1.T + b1) @ w2.T + b2) * weights))

    values = [w1_val, b1_val, w2_val, b2_val]
    for p, g in zip((w1, b1, w2, b2), finite_differences(ref, values), strict=True):
        assert_grad_close(p.grad, g, p.label)


# ---- PyTorch, when installed --------------------------------------------------------------------


def test_micrograd_example_vs_torch(backend):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: gradient cross-check")
    a = oc.param("a", -4.0)
    b = oc.param("b", 2.0)
    c = a + b
    d = a * b + b**3
    c = c + c + 1
    c = c + 1 + c + (-a)
    d = d + d * 2 + (b + a).relu()
    d = d + 3 * d + (b - a).relu()
    g = (c - d) ** 2 / 2.0
    g = g + 10.0 / ((c - d) ** 2)
    Context(backend).compile(train.grad_update(g)).run()

    ta = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    tc = ta + tb
    td = ta * tb + tb**3
    tc = tc + tc + 1
    tc = tc + 1 + tc + (-ta)
    td = td + td * 2 + (tb + ta).relu()
    td = td + 3 * td + (tb - ta).relu()
    tg = (tc - td) ** 2 / 2.0
    tg = tg + 10.0 / ((tc - td) ** 2)
    tg.backward()
    assert g.item() == pytest.approx(tg.item(), rel=1e-5)
    assert a.grad.item() == pytest.approx(ta.grad.item(), rel=1e-5)
    assert b.grad.item() == pytest.approx(tb.grad.item(), rel=1e-5)


def test_mlp_and_einsum_model_vs_torch(backend):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: gradient cross-check")
    rng = np.random.default_rng(3)
    x_val = f32(rng.normal(size=(6, 3)))
    w_val = f32(rng.normal(size=(4, 3)))
    v_val = f32(rng.normal(size=(4, 4)))
    x = oc.term("x", batch_dims=[6], input_dims=[], output_dims=[3])
    w = oc.param("w", w_val, output_dims=[4], input_dims=[3])
    v = oc.param("v", v_val, output_dims=[4, 4])
    h = oc.relu(w @ x)
    z = oc.einsum("b|i; ij => b|j", h, v)
    loss = oc.einsum1("...|... => 0", oc.exp(oc.sin(z)) * oc.sqrt(h * h + 1.0))
    x.set_value(x_val)
    Context(backend).compile(train.grad_update(loss)).run()

    tw = torch.tensor(w_val, requires_grad=True, dtype=torch.float64)
    tv = torch.tensor(v_val, requires_grad=True, dtype=torch.float64)
    th = torch.relu(torch.tensor(x_val, dtype=torch.float64) @ tw.T)
    tz = torch.einsum("bi,ij->bj", th, tv)
    tloss = (torch.exp(torch.sin(tz)) * torch.sqrt(th * th + 1.0)).sum()
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)
    assert_grad_close(w.grad, tw.grad.numpy(), "w")
    assert_grad_close(v.grad, tv.grad.numpy(), "v")

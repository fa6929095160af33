"""Softmax and layer norm written with einsum reductions that keep a dim-1 axis, values and
gradients against PyTorch (float64) on every backend (issue 8, item 1)."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, op, train

torch = pytest.importorskip("torch", reason="PyTorch is the reference for these models")

# float32 computation against a float64 reference: sums of a handful of terms with exp, sqrt and
# division, each a few ulp (6e-8) off, stay well below 1e-5; a wrong axis is off by O(1).
RTOL = 1e-5
ATOL = 1e-5


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def weighted_loss(y: oc.Tensor, weights: np.ndarray, batch: list[int]) -> oc.Tensor:
    w = oc.ndarray(weights, batch_dims=batch, output_dims=list(weights.shape[len(batch) :]))
    return oc.einsum1("...|... => 0", y * w)


def softmax(z: oc.Tensor) -> oc.Tensor:
    m = oc.einmax1("...|n => ...|0", z)
    e = oc.exp(z - m)
    return e / oc.einsum1("...|n => ...|0", e)


def layer_norm(x: oc.Tensor, gamma: oc.Tensor, beta: oc.Tensor, eps: float) -> oc.Tensor:
    n = float(np.prod(gamma.shape.output))
    mean = oc.einsum1("...|..d.. => ...|0", x) / n
    centered = x - mean
    var = op('centered *. centered ++ "...|..d.. => ...|0"', centered=centered) / n
    return op("centered *. recip_sqrt(var + eps) *. gamma + beta", centered=centered, var=var,
              eps=oc.number(eps), gamma=gamma, beta=beta)  # fmt: skip


@pytest.mark.parametrize("batch, n", [([3], 5), ([2, 1], 1), ([4], 17)])
def test_softmax(backend, batch, n):
    rng = np.random.default_rng(n)
    z_val = f32(rng.normal(scale=3.0, size=(*batch, n)))
    weights = f32(rng.normal(size=(*batch, n)))
    z = oc.param("z", z_val, batch_dims=batch, input_dims=[], output_dims=[n])
    y = softmax(z)
    loss = weighted_loss(y, weights, batch)
    ctx = Context(backend)
    ctx.compile(train.grad_update(loss)).run()
    ctx.forward(y)

    tz = torch.tensor(z_val, dtype=torch.float64, requires_grad=True)
    ty = torch.softmax(tz, dim=-1)
    (ty * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    assert str(y.shape) == f"{','.join(f'{i}:{d}' for i, d in enumerate(batch))}|0:{n}"
    np.testing.assert_allclose(y.value, ty.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(z.grad, tz.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch, dims", [([4], [6]), ([3], [2, 3]), ([1], [1])])
def test_layer_norm(backend, batch, dims):
    rng = np.random.default_rng(len(dims))
    eps = 1e-5
    x_val = f32(rng.normal(loc=1.0, scale=2.0, size=(*batch, *dims)))
    g_val, b_val = f32(rng.normal(size=dims)), f32(rng.normal(size=dims))
    weights = f32(rng.normal(size=(*batch, *dims)))
    x = oc.param("x", x_val, batch_dims=batch, input_dims=[], output_dims=dims)
    gamma = oc.param("gamma", g_val, input_dims=[], output_dims=dims)
    beta = oc.param("beta", b_val, input_dims=[], output_dims=dims)
    y = layer_norm(x, gamma, beta, eps)
    loss = weighted_loss(y, weights, batch)
    ctx = Context(backend)
    ctx.compile(train.grad_update(loss)).run()
    ctx.forward(y)

    tx, tg, tb = (
        torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x_val, g_val, b_val)
    )
    ty = torch.nn.functional.layer_norm(tx, tuple(dims), tg, tb, eps)
    (ty * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(y.value, ty.detach().numpy(), rtol=RTOL, atol=ATOL)
    for p, t in ((x, tx), (gamma, tg), (beta, tb)):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=p.label)

"""Optimizers against numpy re-implementations of PyTorch's SGD / Adam / AdamW update rules (and
against torch.optim when PyTorch is installed), the `fit` loop, and the half-moons classifier.

The model is a least-squares fit `loss = sum((w @ x + b - y)**2)` on a fixed batch, so the
numpy reference computes the exact gradient in closed form. Values are float32 in the compiled
code and float64 in the reference; over a few steps the parameters agree to ~1e-6 relative, so
`rtol=1e-5` with a matching absolute floor catches any wrong coefficient or ordering.
"""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, train

RTOL = 1e-5

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-1.0, 1.0, 0.75], [0.3, -0.2, 0.1]])
Y = np.array([[1.0, -1.0], [0.5, 2.0], [-0.25, 0.0], [2.0, 1.0]])
W0 = np.array([[0.1, -0.2, 0.3], [0.4, 0.0, -0.1]])
B0 = np.array([0.05, -0.05])


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def least_squares():
    x = oc.term("x", batch_dims=[4], input_dims=[], output_dims=[3])
    y = oc.term("y", batch_dims=[4], input_dims=[], output_dims=[2])
    w = oc.param("w", W0, output_dims=[2], input_dims=[3])
    b = oc.param("b", B0, output_dims=[2], batch_dims=[])
    diff = w @ x + b - y
    loss = oc.einsum1("...|... => 0", diff * diff)
    x.set_value(X)
    y.set_value(Y)
    return loss, w, b


def reference_grads(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    residual = f32(X) @ w.T + b - f32(Y)
    return 2 * residual.T @ f32(X), 2 * residual.sum(0)


def numpy_sgd(steps, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's update (dampening 0): buffer = g on the first step, then
    momentum * buffer + g; Nesterov uses g + momentum * buffer."""
    params = [f32(W0), f32(B0)]
    buffers = [None, None]
    for _ in range(steps):
        grads = reference_grads(*params)
        for k, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g + weight_decay * p
            if momentum:
                buffers[k] = g.copy() if buffers[k] is None else momentum * buffers[k] + g
                g = g + momentum * buffers[k] if nesterov else buffers[k]
            params[k] = p - lr * g
    return params


def numpy_adam(steps, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam (weight_decay=0) / AdamW (decoupled decay `p *= 1 - lr * wd` first)."""
    params = [f32(W0), f32(B0)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = reference_grads(*params)
        for k, g in enumerate(grads):
            p = params[k] * (1 - lr * weight_decay)
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            m_hat, v_hat = m[k] / (1 - beta1**t), v[k] / (1 - beta2**t)
            params[k] = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def run_steps(backend, update, steps):
    loss, w, b = least_squares()
    step = Context(backend).compile(train.grad_update(loss) + update(loss))
    for _ in range(steps):
        step.run()
    return w.value, b.value, loss


def assert_params(got, expected):
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=RTOL * max(1.0, np.abs(e).max()))


def test_reference_gradient_matches_grad_update(backend):
    loss, w, b = least_squares()
    Context(backend).compile(train.grad_update(loss)).run()
    assert_params((w.grad, b.grad), reference_grads(f32(W0), f32(B0)))
    residual = f32(X) @ f32(W0).T + f32(B0) - f32(Y)
    np.testing.assert_allclose(loss.item(), np.sum(residual**2), rtol=RTOL)


SGD_SETTINGS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "weight_decay": {"weight_decay": 0.1},
    "momentum_decay": {"momentum": 0.8, "weight_decay": 0.05},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "nesterov_decay": {"momentum": 0.7, "weight_decay": 0.02, "nesterov": True},
}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", sorted(SGD_SETTINGS))
def test_sgd_update_vs_numpy(backend, name, steps):
    kwargs = SGD_SETTINGS[name]
    w, b, _ = run_steps(backend, lambda loss: train.sgd_update(loss, 0.02, **kwargs), steps)
    assert_params((w, b), numpy_sgd(steps, 0.02, **kwargs))


def test_sgd_one_step_by_hand(backend):
    w, b, _ = run_steps(backend, lambda loss: train.sgd_update(loss, 0.1), 1)
    gw, gb = reference_grads(f32(W0), f32(B0))
    assert_params((w, b), (f32(W0) - 0.1 * gw, f32(B0) - 0.1 * gb))


def test_sgd_learning_rate_tensor(backend):
    lr = oc.term("lr", batch_dims=[], input_dims=[], output_dims=[])
    lr.set_value(0.02)
    w, b, _ = run_steps(backend, lambda loss: train.sgd_update(loss, lr, momentum=0.9), 2)
    assert_params((w, b), numpy_sgd(2, 0.02, momentum=0.9))


def test_sgd_nesterov_needs_momentum():
    loss, _, _ = least_squares()
    with pytest.raises(ValueError, match="nesterov"):
        train.sgd_update(loss, 0.1, nesterov=True)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_update_vs_numpy(backend, steps, weight_decay):
    w, b, _ = run_steps(
        backend, lambda loss: train.adam_update(loss, 0.05, weight_decay=weight_decay), steps
    )
    assert_params((w, b), numpy_adam(steps, 0.05, weight_decay=weight_decay))


def test_adam_custom_betas(backend):
    kwargs = {"beta1": 0.5, "beta2": 0.9, "eps": 1e-3}
    w, b, _ = run_steps(backend, lambda loss: train.adam_update(loss, 0.01, **kwargs), 3)
    assert_params((w, b), numpy_adam(3, 0.01, **kwargs))


def test_training_decreases_the_loss(backend):
    loss, w, b = least_squares()
    step = Context(backend).compile(train.grad_update(loss) + train.sgd_update(loss, 0.01))
    losses = []
    for _ in range(20):
        step.run()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(later <= earlier for earlier, later in zip(losses, losses[1:], strict=False))


# ---- torch.optim, when installed ----------------------------------------------------------------


def torch_params(torch):
    w = torch.tensor(f32(W0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(f32(B0), dtype=torch.float64, requires_grad=True)
    return w, b


def torch_run(torch, optimizer_of, steps):
    w, b = torch_params(torch)
    opt = optimizer_of([w, b])
    x, y = torch.tensor(f32(X), dtype=torch.float64), torch.tensor(f32(Y), dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x @ w.T + b - y) ** 2).sum()
        loss.backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


@pytest.mark.parametrize("name", sorted(SGD_SETTINGS))
def test_sgd_vs_torch(backend, name):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: optimizer cross-check")
    kwargs = SGD_SETTINGS[name]
    expected = torch_run(torch, lambda ps: torch.optim.SGD(ps, lr=0.02, **kwargs), 3)
    w, b, _ = run_steps(backend, lambda loss: train.sgd_update(loss, 0.02, **kwargs), 3)
    assert_params((w, b), expected)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_vs_torch(backend, weight_decay):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: optimizer cross-check")
    expected = torch_run(
        torch, lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=weight_decay), 4
    )
    w, b, _ = run_steps(
        backend, lambda loss: train.adam_update(loss, 0.05, weight_decay=weight_decay), 4
    )
    assert_params((w, b), expected)


# ---- the loop helper ----------------------------------------------------------------------------


def test_fit_runs_batches_and_returns_losses(backend):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(32, 3)).astype(np.float32)
    targets = (features @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    x = oc.term("x", batch_dims=[8], input_dims=[], output_dims=[3])
    y = oc.term("y", batch_dims=[8], input_dims=[], output_dims=[1])
    w = oc.param("w", np.zeros((1, 3)), output_dims=[1], input_dims=[3])
    b = oc.param("b", np.zeros(1), output_dims=[1], batch_dims=[])
    diff = w @ x + b - y
    loss = oc.einsum1("...|... => 0", diff * diff) / 8.0
    step = Context(backend).compile(
        train.grad_update(loss) + train.sgd_update(loss, 0.1, momentum=0.5)
    )
    losses = train.fit(step, {x: features, y: targets}, batch_size=8, epochs=15, loss=loss,
                       progress=False)  # fmt: skip
    assert len(losses) == 15 * 4
    assert all(isinstance(v, float) for v in losses)
    assert np.mean(losses[-4:]) < 0.01 * np.mean(losses[:4])
    np.testing.assert_allclose(w.value, [[1.0, -2.0, 0.5]], atol=0.05)
    np.testing.assert_allclose(b.value, [0.3], atol=0.05)


def test_fit_without_shuffle_visits_batches_in_order(backend):
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[1])
    total = oc.param("total", np.zeros(1), output_dims=[1], batch_dims=[])
    # d loss / d total = -sum(x): an SGD step with lr 1 adds the batch sum to `total`.
    loss = oc.einsum1("...|... => 0", -(x * total))
    step = Context(backend).compile(train.grad_update(loss) + train.sgd_update(loss, 1.0))
    data = np.arange(6.0, dtype=np.float32).reshape(6, 1)
    losses = train.fit(step, {x: data}, batch_size=2, loss=loss, shuffle=False, progress=False)
    np.testing.assert_allclose(total.value, [15.0])
    np.testing.assert_allclose(losses, [0.0, -5.0 * 1, -9.0 * 6])  # loss before each step


def test_fit_checks_its_data():
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[1])
    y = oc.term("y", batch_dims=[2], input_dims=[], output_dims=[1])
    with pytest.raises(ValueError, match="different numbers of examples"):
        train.fit(None, {x: np.zeros((4, 1)), y: np.zeros((6, 1))}, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="do not split"):
        train.fit(None, {x: np.zeros((5, 1))}, batch_size=2, progress=False)


# ---- the half-moons classifier ------------------------------------------------------------------


def test_half_moons_classifier_learns(backend):
    from ocannl_py.cli import train_half_moons

    _, _, losses, accuracy, points, labels, _ = train_half_moons(backend=backend, progress=False)
    assert accuracy >= 0.97
    assert len(points) == len(labels) == 400
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])

"""Shared by the nn tests: run a block and PyTorch's version of it on the same inputs and
weights, and compare values and gradients.

The loss is `sum(y * W)` with fixed random weights `W`, so every cell of `y` matters. Inputs are
parameters (so they get gradients); the block's own parameters keep their initial values, which
are copied into PyTorch, where the reference runs in float64 on the float32-rounded numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, train

torch = pytest.importorskip("torch", reason="PyTorch (the test extra) is the reference here")


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def leaf(name: str, value: np.ndarray, batch: int) -> oc.Tensor:
    """A parameter holding `value`, its first `batch` axes batch axes, the rest output axes."""
    shape = list(np.shape(value))
    return oc.param(name, value, batch_dims=shape[:batch], output_dims=shape[batch:], input_dims=[])


def compare(
    backend: str | Context,
    build: Callable[..., oc.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: dict[str, tuple[np.ndarray, int]],
    *,
    rtol: float = 1e-4,
    seed: int = 0,
) -> oc.Tensor:
    """`build(**leaves)` against `reference(**inputs, params=...)`: the values, the gradients of
    every input and of every parameter (by label). `inputs` maps names to (array, batch axes);
    `atol` is `rtol` times the largest magnitude of what is compared."""
    return compare_routine(backend, build, reference, inputs, rtol=rtol, seed=seed)[0]


def compare_routine(
    backend: str | Context,
    build: Callable[..., oc.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: dict[str, tuple[np.ndarray, int]],
    *,
    rtol: float = 1e-4,
    seed: int = 0,
):
    """`compare` (on a backend's name or a given context), and the routine it compiled."""
    ctx = Context(backend) if isinstance(backend, str) else backend
    oc.set_seed(seed)
    leaves = {name: leaf(name, value, batch) for name, (value, batch) in inputs.items()}
    y = build(**leaves)
    w = oc.term("W")  # its dims are y's, settled when the routine is compiled
    routine = ctx.compile(train.grad_update(y * w))
    weights = np.random.default_rng(seed + 1).normal(size=w.shape.dims())
    w.set_value(weights)
    routine.run()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, np.float64), requires_grad=True)

    torch_inputs = {name: tensor(f32(value)) for name, (value, _) in inputs.items()}
    params = {label: tensor(p.value) for label, p in y.params.items() if label not in inputs}
    expected = reference(**torch_inputs, params=params)
    (expected * torch.tensor(weights)).sum().backward()
    close(y.value, expected.detach().numpy(), rtol, "value")
    for name, t in torch_inputs.items():
        close(leaves[name].grad, t.grad.numpy(), rtol, f"gradient of input {name!r}")
    for label, t in params.items():
        grad = np.zeros_like(t.detach().numpy()) if t.grad is None else t.grad.numpy()
        close(y.params[label].grad, grad, rtol, f"gradient of parameter {label!r}")
    return y, routine


def close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    atol = rtol * max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)

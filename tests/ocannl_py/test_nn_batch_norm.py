"""Batch norm against PyTorch's `F.batch_norm` / `nn.BatchNorm1d/2d`: values and gradients in
training (the batch's statistics), the running statistics after several runs, and evaluation with
them; images are `batch | height, width, channels`, so channels are the last output axis."""

from __future__ import annotations

import numpy as np
import pytest
from torch_reference import compare, f32, torch

import ocannl_py as oc
from ocannl_py import Context, nn, train

F = torch.nn.functional
RNG = np.random.default_rng(0)

# (batch dims, output dims): `b | c` (BatchNorm1d), `b | h, w, c` (BatchNorm2d), two batch axes,
# odd sizes.
SHAPES = [([6], [4]), ([3], [5, 4, 2]), ([2, 3], [3, 17]), ([1], [3, 1, 3]), ([17], [1])]


def to_torch(a: torch.Tensor, outputs: int) -> torch.Tensor:
    """`..b.. | ..s.., c` to PyTorch's `N, C, ..s..` (the batch axes merged into N)."""
    n_batch = a.dim() - outputs
    a = a.reshape(-1, *a.shape[n_batch:])
    return a.movedim(-1, 1)


def from_torch(a: torch.Tensor, batch: list[int]) -> torch.Tensor:
    return a.movedim(1, -1).reshape(*batch, *a.shape[2:], a.shape[1])


def channel_params(c: int) -> dict:
    """A gain and shift other than PyTorch's ones and zeros, so that both are exercised."""
    return {
        "bn.w": oc.param("bn.w", RNG.uniform(0.5, 2.0, c), output_dims=[c], input_dims=[]),
        "bn.b": oc.param("bn.b", RNG.normal(size=c), output_dims=[c], input_dims=[]),
    }


@pytest.mark.parametrize(("batch", "out"), SHAPES)
def test_training_values_and_gradients(backend, batch, out):
    x = RNG.normal(scale=2.0, size=(*batch, *out)) + 1.5

    def reference(x, params):
        y = F.batch_norm(to_torch(x, len(out)), None, None, params["bn.w"], params["bn.b"],
                         training=True, eps=1e-5)  # fmt: skip
        return from_torch(y, batch)

    compare(backend, lambda x: nn.batch_norm(x, "bn", True, params=channel_params(out[-1])),
            reference, {"x": (x, len(batch))})  # fmt: skip


@pytest.mark.parametrize(("batch", "out"), SHAPES[:3])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_running_statistics_and_evaluation(backend, batch, out, momentum):
    """Three training runs on different batches move the running statistics as PyTorch's
    module does (unbiased variance); evaluation then normalises with them."""
    ctx = Context(backend)
    x = oc.term("x", batch_dims=batch, output_dims=out)
    shared: dict = {}
    y = nn.batch_norm(x, "bn", True, momentum=momentum, params=shared)
    assert sorted(nn.state(y)) == ["bn.running_mean", "bn.running_var"]
    assert sorted(y.params) == ["bn.b", "bn.w"]
    module_class = torch.nn.BatchNorm1d if len(out) < 3 else torch.nn.BatchNorm2d
    module = module_class(out[-1], momentum=momentum, dtype=torch.float64)
    routine = ctx.compile(y.forward)
    for run in range(3):
        batch_values = f32(RNG.normal(scale=3.0, size=(*batch, *out)) + run)
        x.set_value(batch_values)
        routine.run()
        expected = module(to_torch(torch.tensor(batch_values), len(out)))
        np.testing.assert_allclose(y.value, from_torch(expected, batch).detach().numpy(),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(shared["bn.running_mean"].value, module.running_mean, rtol=1e-5)
    np.testing.assert_allclose(shared["bn.running_var"].value, module.running_var, rtol=1e-5)
    # Evaluation: another build on the shared state, another batch size.
    module.eval()
    test_values = f32(RNG.normal(scale=3.0, size=(5, *out)))
    x_test = oc.term("x_test", batch_dims=[5], output_dims=out)
    x_test.set_value(test_values)
    y_test = nn.batch_norm(x_test, "bn", False, params=shared)
    ctx.forward(y_test)
    expected = module(to_torch(torch.tensor(test_values), len(out)))
    np.testing.assert_allclose(y_test.value, from_torch(expected, [5]).detach().numpy(),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # Evaluating does not move the running statistics.
    np.testing.assert_allclose(shared["bn.running_mean"].value, module.running_mean, rtol=1e-5)


def test_evaluation_gradients(backend):
    """With train=False the statistics are constants: gradients w.r.t. x, w and b as PyTorch's
    in eval mode with the same (initial) running statistics."""
    x = RNG.normal(size=(4, 3, 5))

    def reference(x, params):
        y = F.batch_norm(to_torch(x, 2), torch.zeros(5, dtype=torch.float64),
                         torch.ones(5, dtype=torch.float64), params["bn.w"], params["bn.b"],
                         training=False, eps=1e-5)  # fmt: skip
        return from_torch(y, [4])

    compare(backend, lambda x: nn.batch_norm(x, "bn", False, params=channel_params(5)),
            reference, {"x": (x, 1)})  # fmt: skip


def test_trains_with_an_optimizer(backend):
    """The gain and shift are parameters that an optimizer moves; the running statistics are
    state that it leaves alone (they change only through the forward runs)."""
    ctx = Context(backend)
    oc.set_seed(0)
    x = oc.term("x", batch_dims=[8], output_dims=[3])
    x.set_value(RNG.normal(size=(8, 3)) * 4 + 2)
    y = nn.batch_norm(x, "bn", True, momentum=1.0)
    target = oc.ndarray(np.array([1.0, -2.0, 0.5]), output_dims=[3])
    loss = oc.einsum1("... | ... => ", (y - target) * (y - target))
    step = ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.05, weight_decay=0.1))
    for _ in range(100):
        step.run()
    np.testing.assert_allclose(y.params["bn.b"].value, [1.0, -2.0, 0.5], atol=0.1)
    state = nn.state(y)
    # momentum 1: the running statistics are exactly the batch's (unbiased variance).
    np.testing.assert_allclose(state["bn.running_mean"].value, f32(x.value).mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["bn.running_var"].value, f32(x.value).var(0, ddof=1),
                               rtol=1e-5)  # fmt: skip


def test_bad_arguments():
    x = oc.term("x", batch_dims=[2], output_dims=[3])
    with pytest.raises(TypeError, match="train must be a bool"):
        nn.batch_norm(x, "bn", 1)
    with pytest.raises(ValueError, match="momentum must be in"):
        nn.batch_norm(x, "bn", True, momentum=1.5)
    with pytest.raises((TypeError, ValueError), match="label"):
        nn.batch_norm(x, "", True)

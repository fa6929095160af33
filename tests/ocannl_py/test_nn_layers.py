"""nn blocks against PyTorch with the same weights: linear, mlp, GELU (both forms), SiLU, layer
and RMS norm, softmax, log-softmax and cross-entropy; values, and gradients w.r.t. the input and
every parameter, on every backend (see torch_reference.py for the loss and the tolerances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import compare, f32, torch

import ocannl_py as oc
from ocannl_py import Context, nn, train

F = torch.nn.functional
RNG = np.random.default_rng(0)


def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
    return RNG.normal(scale=scale, size=shape)


def flat_out(x: torch.Tensor, outputs: int) -> torch.Tensor:
    """Merge the last `outputs` axes (a block's output axes) into one."""
    return x.reshape(*x.shape[: x.dim() - outputs], -1)


# ---- linear and mlp ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "features", "out"),
    [([3], [4], 5), ([2, 3], [4], [2, 3]), ([1], [3, 2], 1), ([17], [17], 3), ([], [6], 4)],
)
def test_linear(backend, batch, features, out):
    out_dims = [out] if isinstance(out, int) else out
    x = normal(*batch, *features)

    def reference(x, params):
        w, b = params["lin.w"], params["lin.b"]
        y = F.linear(flat_out(x, len(features)), w.reshape(math.prod(out_dims), -1), b.flatten())
        return y.reshape(*batch, *out_dims)

    y = compare(backend, lambda x: nn.linear(x, out, "lin"), reference, {"x": (x, len(batch))})
    assert y.params["lin.w"].shape.output == out_dims
    assert y.params["lin.w"].shape.input == features
    assert y.params["lin.b"].shape.output == out_dims


@pytest.mark.parametrize(
    ("hidden", "activation", "torch_activation", "names"),
    [
        (5, oc.relu, F.relu, ["fc", "proj"]),
        ([7, 3], nn.gelu, lambda h: F.gelu(h, approximate="tanh"), ["fc0", "fc1", "proj"]),
        ([], oc.relu, F.relu, ["proj"]),
    ],
)
def test_mlp(backend, hidden, activation, torch_activation, names):
    x = normal(4, 3)

    def reference(x, params):
        h = x
        for name in names:
            h = F.linear(h, params[f"mlp.{name}.w"], params[f"mlp.{name}.b"])
            h = torch_activation(h) if name != "proj" else h
        return h

    y = compare(
        backend, lambda x: nn.mlp(x, hidden, 2, "mlp", activation), reference, {"x": (x, 1)}
    )
    assert sorted(y.params) == sorted([f"mlp.{n}.{p}" for n in names for p in "bw"] + ["x"])


# ---- activations ---------------------------------------------------------------------------------

EXTREMES = np.array([[-30.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0, 30.0]])


@pytest.mark.parametrize(
    ("block", "reference"),
    [
        (nn.gelu, lambda x, params: F.gelu(x, approximate="tanh")),
        (lambda x: nn.gelu(x, exact=True), lambda x, params: F.gelu(x)),
        (nn.silu, lambda x, params: F.silu(x)),
    ],
    ids=["gelu_tanh", "gelu_exact", "silu"],
)
@pytest.mark.parametrize("values", ["normal", "extremes"])
def test_activation(backend, block, reference, values):
    x = normal(3, 17, scale=3.0) if values == "normal" else EXTREMES
    compare(backend, block, reference, {"x": (x, 1)})


# ---- norms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "features", "eps"), [([2, 3], [8], 1e-5), ([5], [3, 4], 1e-1), ([1], [17], 1e-5)]
)
def test_layer_norm(backend, batch, features, eps):
    x = normal(*batch, *features, scale=2.0) + 3.0

    def reference(x, params):
        return F.layer_norm(x, features, params["ln.w"], params["ln.b"], eps)

    y = compare(backend, lambda x: nn.layer_norm(x, "ln", eps), reference, {"x": (x, len(batch))})
    np.testing.assert_array_equal(y.params["ln.w"].value, np.ones(features))
    np.testing.assert_array_equal(y.params["ln.b"].value, np.zeros(features))


@pytest.mark.parametrize(("batch", "features"), [([2, 3], [8]), ([5], [3, 4]), ([1], [17])])
def test_rms_norm(backend, batch, features):
    x = normal(*batch, *features, scale=2.0)

    def reference(x, params):
        return F.rms_norm(x, features, params["rn.w"], 1e-6)

    y = compare(backend, lambda x: nn.rms_norm(x, "rn"), reference, {"x": (x, len(batch))})
    np.testing.assert_array_equal(y.params["rn.w"].value, np.ones(features))


def test_norms_keep_trained_gains(backend):
    """The gain and shift are parameters: after a step they differ from 1 and 0, and the
    reference with those values still agrees."""
    ctx = Context(backend)
    x = oc.param("x", normal(4, 6), batch_dims=[4], output_dims=[6], input_dims=[])
    y = nn.layer_norm(x, "ln")
    loss = oc.einsum1("... | ... => ", y * y * oc.ndarray(normal(6), output_dims=[6]))
    ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.5)).run()
    w, b = y.params["ln.w"].value, y.params["ln.b"].value
    assert not np.allclose(w, 1.0) and not np.allclose(b, 0.0)
    ctx.forward(y)
    expected = F.layer_norm(
        torch.tensor(f32(x.value)), (6,), torch.tensor(f32(w)), torch.tensor(f32(b))
    )
    np.testing.assert_allclose(y.value, expected.numpy(), rtol=1e-4, atol=1e-4)


# ---- softmax, log-softmax, cross-entropy ---------------------------------------------------------

# The API's default spec keeps a size-1 axis (`=> ... | 0`); the empty-row form leaves none. Both
# broadcast back against x.
SPECS = ["default_spec", "... | ..d.. => ... |"]


def _with_spec(block, spec):
    return block if spec == "default_spec" else (lambda x: block(x, spec))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(
    ("batch", "classes"), [([4], [5]), ([2, 3], [17]), ([3], [1]), ([2], [3, 4])]
)
@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_softmax(backend, spec, batch, classes, which):
    x = normal(*batch, *classes, scale=3.0)
    torch_fn = {"softmax": F.softmax, "log_softmax": F.log_softmax}[which]

    def reference(x, params):
        return torch_fn(flat_out(x, len(classes)), dim=-1).reshape(x.shape)

    compare(
        backend,
        _with_spec(getattr(nn, which), spec),
        reference,
        {"x": (x, len(batch))},
    )


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_softmax_is_stable(backend, spec, which):
    """Logits of 1e4 overflow exp in float32 unless the max is subtracted first."""
    x = np.array([[1e4, 1e4 - 1.0, 1e4 - 20.0], [-1e4, -1e4 + 2.0, 0.0]])
    torch_fn = {"softmax": F.softmax, "log_softmax": F.log_softmax}[which]
    y = compare(backend, _with_spec(getattr(nn, which), spec),
                lambda x, params: torch_fn(x, dim=-1), {"x": (x, 1)})  # fmt: skip
    assert np.isfinite(y.value).all()


def test_softmax_over_other_axes(backend):
    """The spec chooses the reduction: here over the batch axis, for each output index."""
    x = normal(5, 3)
    compare(backend, lambda x: nn.softmax(x, "..b.. | ... => | ..."),
            lambda x, params: F.softmax(x, dim=0), {"x": (x, 1)})  # fmt: skip


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[labels]


@pytest.mark.parametrize(("batch", "classes"), [([8], 5), ([2, 3], 4), ([1], 3), ([17], 17)])
@pytest.mark.parametrize("soft", [False, True], ids=["one_hot", "probabilities"])
def test_cross_entropy(backend, batch, classes, soft):
    logits = normal(*batch, classes, scale=2.0)
    if soft:
        targets = RNG.dirichlet(np.ones(classes), size=batch)
    else:
        targets = one_hot(RNG.integers(0, classes, size=batch), classes)
    t = oc.term("targets", batch_dims=batch, input_dims=[], output_dims=[classes])
    t.set_value(targets)

    def reference(logits, params):
        flat = logits.reshape(-1, classes)
        return F.cross_entropy(flat, torch.tensor(f32(targets)).reshape(-1, classes))

    y = compare(backend, lambda logits: nn.cross_entropy(logits, t), reference,
                {"logits": (logits, len(batch))})  # fmt: skip
    assert y.value.shape == ()


def test_cross_entropy_targets_must_match_logits():
    logits = oc.term("logits", batch_dims=[4], input_dims=[], output_dims=[5])
    targets = oc.term("targets", batch_dims=[4], input_dims=[], output_dims=[3])
    with pytest.raises(
        oc.ShapeError, match="targets 'targets' .* must have the shape of the logits"
    ):
        nn.cross_entropy(logits, targets)


def test_bad_arguments_name_the_block():
    x = oc.term("x", batch_dims=[4], input_dims=[], output_dims=[5])
    with pytest.raises(ValueError, match="linear 'l': out_dims: expected a positive int"):
        nn.linear(x, 0, "l")
    with pytest.raises(ValueError, match="linear 'm.fc1': out_dims"):
        nn.mlp(x, [2, -1], 3, "m")
    with pytest.raises(TypeError, match="layer_norm: the label must be a non-empty string"):
        nn.layer_norm(x, "")
    with pytest.raises(ValueError, match="mlp_ratio 0.3 times 5 features is not a positive whole"):
        nn.transformer_block(x, 1, "b", True, mlp_ratio=0.3)


@settings(max_examples=5, deadline=None)
@given(
    batch=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    features=st.integers(1, 9),
    out=st.integers(1, 6),
)
def test_linear_then_layer_norm_sizes(batch, features, out):
    """Hypothesis over sizes: a linear layer then a layer norm, against PyTorch (C backend)."""
    x = np.random.default_rng(len(batch) * 100 + features).normal(size=(*batch, features))

    def reference(x, params):
        h = F.linear(x, params["lin.w"], params["lin.b"])
        return F.layer_norm(h, (out,), params["ln.w"], params["ln.b"])

    compare("c", lambda x: nn.layer_norm(nn.linear(x, out, "lin"), "ln"), reference,
            {"x": (x, len(batch))})  # fmt: skip

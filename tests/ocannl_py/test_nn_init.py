"""Initialisation: `oc.param(init=...)` against the numpy twin of the generator, and each
block's parameters as PyTorch initialises the same layer (ranges, spreads, seeding)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ocannl_py as oc
from arrayjit.threefry import uniform_reference
from ocannl_py import Context, nn


def initialised(t: oc.Tensor) -> None:
    Context("c").initialize(t.subgraph())


def stream(seed: int, k: int) -> int:
    return (seed << 20) + k


def test_param_uniform_init_matches_the_generator():
    oc.set_seed(4)
    w = oc.param("w", batch_dims=[], input_dims=[7], output_dims=[3, 5], init=("uniform", 0.25))
    initialised(w)
    u = uniform_reference(stream(4, 0), np.arange(105.0).reshape(3, 5, 7), np.float64)
    np.testing.assert_array_equal(w.value, (u * 0.5 - 0.25).astype(np.float32))


def test_param_default_init_matches_the_generator_with_large_seeds():
    """Keys of 2^24 and more (here (100 << 20) + k) are exact: in float32 they used to round,
    and the first parameters after `oc.set_seed(100)` all got the same values."""
    oc.set_seed(100)
    params = [oc.param(f"w{k}", batch_dims=[], input_dims=[4], output_dims=[3]) for k in range(4)]
    Context("c").initialize(params)
    cells = np.arange(12.0).reshape(3, 4)
    for k, p in enumerate(params):
        u = uniform_reference(stream(100, k), cells, np.float64)
        np.testing.assert_array_equal(p.value, (u * 1.0 - 0.5).astype(np.float32))


def test_param_normal_init_matches_box_muller():
    oc.set_seed(4)
    w = oc.param("w", batch_dims=[], input_dims=[], output_dims=[1000], init=("normal", 0.02))
    initialised(w)
    counter = np.arange(1000.0)
    u1 = uniform_reference(stream(4, 0), 2 * counter, np.float64)
    u2 = uniform_reference(stream(4, 0), 2 * counter + 1, np.float64)
    expected = 0.02 * np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)
    np.testing.assert_allclose(w.value, expected.astype(np.float32), rtol=1e-6, atol=1e-12)
    # And it is a normal: mean and spread within a few standard errors.
    assert abs(w.value.mean()) < 4 * 0.02 / math.sqrt(1000)
    assert abs(w.value.std() / 0.02 - 1) < 0.1


def test_param_init_scale_may_be_computed_from_dims():
    other = oc.param("other", batch_dims=[], input_dims=[9], output_dims=[2])
    w = oc.param("w", batch_dims=[], input_dims=[], output_dims=[500],
                 init=("uniform", lambda: 1 / math.sqrt(other.shape.input[0])))  # fmt: skip
    initialised(w)
    assert np.abs(w.value).max() <= 1 / 3 and np.abs(w.value).max() > 0.3


def test_param_init_errors():
    with pytest.raises(
        ValueError, match="init must be \\('uniform', bound\\) or \\('normal', std\\)"
    ):
        oc.param("w", output_dims=[2], init=("gaussian", 1.0))
    with pytest.raises(ValueError, match="init must be"):
        oc.param("w", output_dims=[2], init=("normal", -1.0))
    with pytest.raises(ValueError, match="either a value or init="):
        oc.param("w", 1.0, output_dims=[2], init=("normal", 1.0))
    w = oc.param("w", batch_dims=[], input_dims=[], output_dims=[2], init=("normal", lambda: -1))
    with pytest.raises(ValueError, match="normal init's scale must be a non-negative number"):
        initialised(w)


def uniform_within(values: np.ndarray, bound: float) -> None:
    """All within [-bound, bound] and spread as a uniform: std bound/sqrt(3) to 10%."""
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert abs(values.std() / (bound / math.sqrt(3)) - 1) < 0.1


def test_linear_init_is_pytorch_nn_linear():
    """Weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in of the weight (50)."""
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[5, 10])
    y = nn.linear(x, 400, "lin")
    initialised(y)
    bound = 1 / math.sqrt(50)
    uniform_within(y.params["lin.w"].value, bound)
    uniform_within(y.params["lin.b"].value, bound)


def test_init_is_seeded():
    def weights(seed: int) -> np.ndarray:
        oc.set_seed(seed)
        x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
        y = nn.mlp(x, 4, 2, "mlp")
        initialised(y)
        return np.concatenate([p.value.ravel() for _, p in sorted(y.params.items())])

    np.testing.assert_array_equal(weights(1), weights(1))
    assert not np.array_equal(weights(1), weights(2))


@pytest.mark.parametrize("kv_embd", [None, 24], ids=["self", "cross_other_dims"])
def test_attention_init_is_pytorch_multihead_attention(kv_embd):
    """q, k, v: xavier-uniform of the fused (3E, E) input projection, bound sqrt(6 / 4E), or of
    each (E, kdim) projection when keys have other dims; biases 0; o: nn.Linear's range."""
    embd, heads = 64, 4
    x = oc.term("x", batch_dims=[1, 2], input_dims=[], output_dims=[embd])
    kv = (
        None
        if kv_embd is None
        else oc.term("kv", batch_dims=[1, 3], input_dims=[], output_dims=[kv_embd])
    )
    y = nn.multi_head_attention(x, heads, "mha", kv=kv)
    initialised(y)
    p = {label: t.value for label, t in y.params.items()}
    if kv_embd is None:
        q_bound = kv_bound = math.sqrt(6 / (4 * embd))
    else:
        q_bound, kv_bound = math.sqrt(6 / (2 * embd)), math.sqrt(6 / (embd + kv_embd))
    uniform_within(p["mha.q.w"], q_bound)
    uniform_within(p["mha.k.w"], kv_bound)
    uniform_within(p["mha.v.w"], kv_bound)
    uniform_within(p["mha.o.w"], 1 / math.sqrt(embd))
    for name in ("q.b", "k.b", "v.b", "o.b"):
        np.testing.assert_array_equal(p[f"mha.{name}"], 0.0)


def test_transformer_block_norms_start_at_one_and_zero():
    x = oc.term("x", batch_dims=[1, 2], input_dims=[], output_dims=[8])
    y = nn.transformer_block(x, 2, "blk", causal=True)
    initialised(y)
    for norm in ("ln1", "ln2"):
        np.testing.assert_array_equal(y.params[f"blk.{norm}.w"].value, np.ones(8))
        np.testing.assert_array_equal(y.params[f"blk.{norm}.b"].value, np.zeros(8))
    assert y.params["blk.mlp.fc.w"].value.shape == (32, 8)
    assert y.params["blk.mlp.proj.w"].value.shape == (8, 32)


@pytest.mark.parametrize(
    "build",
    [
        lambda x: nn.mlp(x, [5, 7], 3, "mlp"),
        lambda x: nn.rms_norm(nn.silu(nn.layer_norm(x, "ln")), "rn"),
        lambda x: nn.linear(nn.dropout(nn.softmax(nn.gelu(x)), 0.1, True), 2, "out"),
        lambda x: nn.transformer_block(x, 2, "pre", True),
        lambda x: nn.transformer_block(x, 2, "post", False, pre_norm=False),
        lambda x: nn.transformer_block(x, 2, "cached", True, cache=nn.KVCache(4)),
        lambda x: nn.multi_head_attention(x, 4, "cross", kv=nn.linear(x, 6, "memory")),
    ],
    ids=["mlp", "norms", "pointwise", "pre_norm", "post_norm", "kv_cache", "cross"],
)
def test_parameters_have_dims_when_built(build):
    """With the input's dims known, every parameter's dims are known before any compile, so
    `set_value` (e.g. from a checkpoint, by label) can fill it right away."""
    x = oc.term("x", batch_dims=[2, 3], input_dims=[], output_dims=[8])
    y = build(x)
    for label, p in y.params.items():
        assert p.shape.is_solved, f"{label}: {p.shape}"
        p.set_value(np.zeros(p.shape.dims()))

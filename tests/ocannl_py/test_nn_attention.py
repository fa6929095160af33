"""Attention, multi-head attention, the transformer block and the KV cache against PyTorch
(`scaled_dot_product_attention`, `nn.MultiheadAttention`, `nn.TransformerEncoderLayer`, with our
weights passed in through `torch.func.functional_call`): values and gradients w.r.t. the inputs
and every parameter, on every backend (torch_reference.py: loss and tolerances)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import compare, f32, torch

import ocannl_py as oc
from ocannl_py import Context, nn

F = torch.nn.functional
functional_call = torch.func.functional_call
RNG = np.random.default_rng(0)


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


def heads_first(t: torch.Tensor) -> torch.Tensor:
    """Ours `..b.., seq, heads, d` -> PyTorch's `..b.., heads, seq, d`."""
    return t.movedim(-2, -3)


def sdpa(q, k, v, causal: bool, mask=None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        heads_first(q), heads_first(k), heads_first(v), attn_mask=mask, is_causal=causal
    )
    return heads_first(out)


# ---- attention -----------------------------------------------------------------------------------

SIZES = [  # batch axes, query length, key length, heads, head dim, causal
    ([2], 3, 3, 2, 4, False),
    ([2], 3, 3, 2, 4, True),
    ([2, 3], 1, 17, 1, 3, False),
    ([1], 17, 5, 3, 1, True),
    ([3], 5, 5, 2, 17, True),
]


@pytest.mark.parametrize(("batch", "s", "t", "h", "d", "causal"), SIZES)
def test_attention_matches_sdpa(backend, batch, s, t, h, d, causal):
    inputs = {
        "q": (normal(*batch, s, h, d), len(batch) + 1),
        "k": (normal(*batch, t, h, d), len(batch) + 1),
        "v": (normal(*batch, t, h, d), len(batch) + 1),
    }
    compare(
        backend,
        lambda q, k, v: nn.attention(q, k, v, causal=causal),
        lambda q, k, v, params: sdpa(q, k, v, causal),
        inputs,
    )


def _mask(shape: tuple[int, ...]) -> np.ndarray:
    """Random 0/1 with key 0 always visible, so no query has every key masked."""
    mask = (RNG.uniform(size=shape) < 0.6).astype(np.float64)
    mask[..., 0] = 1.0
    return mask


@pytest.mark.parametrize(
    ("mask_batch", "mask_shape", "causal"),
    [([], (4,), True), ([2, 1, 1], (2, 1, 1, 4), False), ([2, 3, 5], (2, 3, 5, 4), True)],
    ids=["query_by_key_causal", "padding", "every_score_causal"],
)
def test_attention_with_mask(backend, mask_batch, mask_shape, causal):
    """`mask` broadcasts against the scores `..b.., heads, s | t` as PyTorch's boolean
    `attn_mask` does against `(..., heads, L, S)` (1 / True: may attend)."""
    batch, s, t, h, d = [2], 5, 4, 3, 2
    values = _mask(mask_shape if mask_batch else (s, t))
    mask = oc.term("mask", batch_dims=mask_batch or [s], input_dims=[], output_dims=[t])
    mask.set_value(values)
    inputs = {
        "q": (normal(*batch, s, h, d), 2),
        "k": (normal(*batch, t, h, d), 2),
        "v": (normal(*batch, t, h, d), 2),
    }
    compare(
        backend,
        lambda q, k, v: nn.attention(q, k, v, causal=causal, mask=mask),
        lambda q, k, v, params: sdpa(
            q, k, v, False, torch.tensor(values.astype(bool)) & _torch_causal(s, t, causal)
        ),
        inputs,
    )


def _torch_causal(s: int, t: int, causal: bool) -> torch.Tensor:
    return torch.ones(s, t, dtype=torch.bool).tril() if causal else torch.ones(s, t, dtype=bool)


@settings(max_examples=5, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    s=st.integers(1, 6),
    t=st.integers(1, 6),
    h=st.integers(1, 3),
    d=st.integers(1, 5),
    causal=st.booleans(),
)
def test_attention_sizes(batch, s, t, h, d, causal):
    """Hypothesis over sizes, causal or not, against scaled_dot_product_attention (C backend)."""
    rng = np.random.default_rng(s * 100 + t * 10 + h)
    inputs = {name: (rng.normal(size=(*batch, n, h, d)), len(batch) + 1)
              for name, n in (("q", s), ("k", t), ("v", t))}  # fmt: skip
    compare(
        "c",
        lambda q, k, v: nn.attention(q, k, v, causal=causal),
        lambda q, k, v, params: sdpa(q, k, v, causal),
        inputs,
    )


# ---- multi-head attention ------------------------------------------------------------------------


def torch_mha_params(params: dict, label: str, embd: int, separate: bool) -> dict:
    """Our labels -> `nn.MultiheadAttention`'s parameter names (the same tensors, reshaped)."""

    def w(name: str) -> torch.Tensor:
        weight = params[f"{label}.{name}.w"]
        return weight.reshape(embd, -1)

    bias = torch.cat([params[f"{label}.{n}.b"].reshape(embd) for n in "qkv"])
    named = {
        "in_proj_bias": bias,
        "out_proj.weight": params[f"{label}.o.w"].reshape(embd, embd),
        "out_proj.bias": params[f"{label}.o.b"],
    }
    if separate:
        named.update({f"{n}_proj_weight": w(n) for n in "qkv"})
    else:
        named["in_proj_weight"] = torch.cat([w(n) for n in "qkv"])
    return named


def torch_mha(x, kv, params, label, heads, causal, batch_axes):
    """`nn.MultiheadAttention` (batch first) with our weights, over flattened batch axes."""
    embd, kv_embd = x.shape[-1], kv.shape[-1]
    module = torch.nn.MultiheadAttention(
        embd, heads, bias=True, batch_first=True, kdim=kv_embd, vdim=kv_embd, dtype=torch.float64
    )
    s, t = x.shape[-2], kv.shape[-2]
    flat_x, flat_kv = x.reshape(-1, s, embd), kv.reshape(-1, t, kv_embd)
    # The mask in the inputs' dtype: torch 2.13 on CPU computes nonsense for a float32 mask with
    # float64 inputs once the sequence is long enough (17 here), with no error.
    mask = torch.full((s, t), -math.inf, dtype=torch.float64).triu(1) if causal else None
    named = torch_mha_params(params, label, embd, kv_embd != embd)
    out, _ = functional_call(module, named, (flat_x, flat_kv, flat_kv),
                             {"attn_mask": mask, "need_weights": False})  # fmt: skip
    return out.reshape(*x.shape[:-1], embd)


@pytest.mark.parametrize(
    ("batch", "seq", "embd", "heads", "causal"),
    [([2], 3, 8, 2, True), ([2, 1], 5, 6, 3, False), ([1], 1, 4, 1, True), ([3], 17, 3, 3, True)],
)
def test_self_attention_matches_torch(backend, batch, seq, embd, heads, causal):
    x = normal(*batch, seq, embd)
    y = compare(
        backend,
        lambda x: nn.multi_head_attention(x, heads, "mha", causal=causal),
        lambda x, params: torch_mha(x, x, params, "mha", heads, causal, len(batch)),
        {"x": (x, len(batch) + 1)},
    )
    d = embd // heads
    shapes = {label: p.value.shape for label, p in y.params.items() if label != "x"}
    assert shapes == {
        "mha.q.w": (heads, d, embd), "mha.k.w": (heads, d, embd), "mha.v.w": (heads, d, embd),
        "mha.q.b": (heads, d), "mha.k.b": (heads, d), "mha.v.b": (heads, d),
        "mha.o.w": (embd, heads, d), "mha.o.b": (embd,),
    }  # fmt: skip


@pytest.mark.parametrize("kv_embd", [8, 5], ids=["same_dims", "other_dims"])
def test_cross_attention_matches_torch(backend, kv_embd):
    """Keys and values from another tensor of another length (and features)."""
    x, memory = normal(2, 3, 8), normal(2, 7, kv_embd)
    compare(
        backend,
        lambda x, m: nn.multi_head_attention(x, 4, "cross", kv=m),
        lambda x, m, params: torch_mha(x, m, params, "cross", 4, False, 1),
        {"x": (x, 2), "m": (memory, 2)},
    )


def test_mha_with_padding_mask(backend):
    """A padding mask over the keys (BERT's attention mask): `batch, 1, 1 | keys`."""
    x, heads = normal(2, 4, 6), 2
    keep = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.float64)
    mask = oc.term("mask", batch_dims=[2, 1, 1], input_dims=[], output_dims=[4])
    mask.set_value(keep.reshape(2, 1, 1, 4))

    def reference(x, params):
        module = torch.nn.MultiheadAttention(6, heads, batch_first=True, dtype=torch.float64)
        out, _ = functional_call(
            module, torch_mha_params(params, "mha", 6, False), (x, x, x),
            {"key_padding_mask": torch.tensor(keep == 0), "need_weights": False},
        )  # fmt: skip
        return out

    compare(backend, lambda x: nn.multi_head_attention(x, heads, "mha", mask=mask), reference,
            {"x": (x, 2)})  # fmt: skip


# ---- transformer block ---------------------------------------------------------------------------


def torch_block_params(params: dict, label: str, embd: int) -> dict:
    named = {
        f"self_attn.{k}": v
        for k, v in torch_mha_params(params, f"{label}.attn", embd, False).items()
    }
    for ours, theirs in (("mlp.fc", "linear1"), ("mlp.proj", "linear2"), ("ln1", "norm1"),
                         ("ln2", "norm2")):  # fmt: skip
        named[f"{theirs}.weight"] = params[f"{label}.{ours}.w"]
        named[f"{theirs}.bias"] = params[f"{label}.{ours}.b"]
    return named


@pytest.mark.parametrize(
    ("pre_norm", "causal"), [(True, True), (False, False)], ids=["pre_norm_causal", "post_norm"]
)
def test_transformer_block_matches_torch(backend, pre_norm, causal):
    """Against `nn.TransformerEncoderLayer` (`norm_first` = pre-norm, exact GELU, no dropout)."""
    batch, seq, embd, heads = 2, 5, 8, 2
    x = normal(batch, seq, embd)

    def reference(x, params):
        layer = torch.nn.TransformerEncoderLayer(
            embd, heads, dim_feedforward=2 * embd, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=pre_norm, dtype=torch.float64,
        )  # fmt: skip
        mask = torch.full((seq, seq), -math.inf, dtype=torch.float64).triu(1) if causal else None
        return functional_call(layer, torch_block_params(params, "blk", embd), (x,),
                               {"src_mask": mask, "is_causal": causal})  # fmt: skip

    def block(x):
        return nn.transformer_block(x, heads, "blk", causal, mlp_ratio=2, pre_norm=pre_norm,
                                    activation=lambda h: nn.gelu(h, exact=True))  # fmt: skip

    y = compare(backend, block, reference, {"x": (x, 2)})
    assert str(y.shape) == "0:2,1:5|0:8"


def test_blocks_share_parameters_through_params(backend):
    """`params=` reuses parameters by label: a second build computes with the same weights."""
    ctx = Context(backend)
    shared: dict = {}
    a = oc.term("a", batch_dims=[2, 3], input_dims=[], output_dims=[4])
    b = oc.term("b", batch_dims=[1, 5], input_dims=[], output_dims=[4])
    values = normal(1, 5, 4)
    a.set_value(np.concatenate([values[:, :3], normal(1, 3, 4)]))
    b.set_value(values)
    ya = nn.transformer_block(a, 2, "blk", True, params=shared)
    yb = nn.transformer_block(b, 2, "blk", True, params=shared)
    assert ya.params.keys() == yb.params.keys() == shared.keys()
    assert all(ya.params[k] is yb.params[k] for k in shared)
    ctx.forward(ya)
    ctx.forward(yb)
    # Causal: the first 3 positions of b see what a's first example sees.
    np.testing.assert_allclose(yb.value[0, :3], ya.value[0], rtol=1e-5, atol=1e-5)


# ---- KV cache ------------------------------------------------------------------------------------


def _decoder(x, cache=None, params=None, layers=2, heads=2):
    h = x
    for i in range(layers):
        h = nn.transformer_block(h, heads, f"layer{i}", True, cache=cache, params=params)
    return h


def test_kv_cache_decoding_equals_full_attention(backend):
    """Two causal transformer blocks: decoding with a KV cache (a prefill of 3 tokens, then one
    compiled routine for every step) gives, at each position, the full forward pass's output;
    after `reset()` the step routine decodes a new sequence from position 0."""
    prefill = 3
    ctx = Context(backend)
    batch, seq, embd = 2, 7, 8
    values = f32(normal(batch, seq, embd))
    shared: dict = {}
    x = oc.term("x", batch_dims=[batch, seq], input_dims=[], output_dims=[embd])
    x.set_value(values)
    full = _decoder(x, params=shared)
    ctx.forward(full)
    cache = nn.KVCache(max_len=9)  # longer than the sequence: unwritten slots are masked
    one = oc.term("one", batch_dims=[batch, 1], input_dims=[], output_dims=[embd])
    step_y = _decoder(one, cache, shared)
    step = ctx.compile(step_y.forward + cache.update(step_y))
    first = oc.term("first", batch_dims=[batch, prefill], input_dims=[], output_dims=[embd])
    first.set_value(values[:, :prefill])
    first_y = _decoder(first, cache, shared)
    ctx.compile(first_y.forward + cache.update(first_y)).run()
    np.testing.assert_allclose(first_y.value, full.value[:, :prefill], rtol=1e-5, atol=1e-5)
    assert cache.position.item() == prefill
    for t in range(prefill, seq):
        one.set_value(values[:, t : t + 1])
        step.run()
        np.testing.assert_allclose(step_y.value[:, 0], full.value[:, t], rtol=1e-5, atol=1e-5,
                                   err_msg=f"position {t}")  # fmt: skip
        assert cache.position.item() == t + 1
    # A new sequence, token by token from the start: each step sees the positions before it.
    cache.reset()
    for t in range(seq):
        one.set_value(values[:, t : t + 1])
        step.run()
        np.testing.assert_allclose(step_y.value[:, 0], full.value[:, t], rtol=1e-5, atol=1e-5,
                                   err_msg=f"after reset, position {t}")  # fmt: skip


def test_kv_cache_past_its_length_gives_nan(backend):
    ctx = Context(backend)
    cache = nn.KVCache(max_len=2)
    x = oc.term("x", batch_dims=[1, 1], input_dims=[], output_dims=[4])
    x.set_value(normal(1, 1, 4))
    y = nn.multi_head_attention(x, 2, "attn", causal=True, cache=cache)
    step = ctx.compile(y.forward + cache.update(y))
    for _ in range(2):
        step.run()
        assert np.isfinite(y.value).all()
    step.run()
    assert np.isnan(y.value).all()


def test_kv_cache_errors():
    x = oc.term("x", batch_dims=[1, 1], input_dims=[], output_dims=[4])
    cache = nn.KVCache(4)
    with pytest.raises(ValueError, match="causal self attention"):
        nn.multi_head_attention(x, 2, "attn", causal=False, cache=cache)
    y = nn.multi_head_attention(x, 2, "other", causal=True)
    with pytest.raises(ValueError, match="does not use this cache"):
        cache.update(y)
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        nn.KVCache(0)


def test_mha_errors():
    x = oc.term("x", batch_dims=[2, 3], input_dims=[], output_dims=[6])
    with pytest.raises(ValueError, match="4 heads do not divide the 6 features of 'x'"):
        nn.multi_head_attention(x, 4, "mha")
    with pytest.raises(ValueError, match="heads must be a positive int"):
        nn.multi_head_attention(x, 0, "mha")
    unknown = oc.term("u")
    with pytest.raises(oc.ShapeError, match="output dims of 'u' must be known"):
        nn.multi_head_attention(unknown, 2, "mha")

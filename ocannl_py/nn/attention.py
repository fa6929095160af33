"""Scaled dot-product attention and multi-head attention, heads being an output axis.

Queries, keys and values are `..b.., seq | heads, d`. The scores are `..b.., heads, s | t`
(query position s, key position t): the key axis is the output axis that softmax reduces, and
the batch axes end with `heads, s`, as PyTorch's `(..., heads, L, S)`, so a mask broadcasts the
same way in both.
"""

from __future__ import annotations

import math

from ocannl_py import operation as ops
from ocannl_py.nn import dims, init
from ocannl_py.nn.linear import affine, check_label
from ocannl_py.nn.softmax import softmax
from ocannl_py.tensor import Tensor

SCORES = "..b.., s | h, d; ..b.., t | h, d => ..b.., h, s | t"
MIX = "..b.., h, s | t; ..b.., t | h, d => ..b.., s | h, d"
SEQ = "..b.., s | ..o.. => s"  # the last batch axis


def attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, mask: Tensor | None = None
) -> Tensor:
    """`softmax(q k^T / sqrt(d)) v` over the keys, per head; `q`, `k`, `v` and the result are
    `..b.., seq | heads, d`. `causal` lets query i see keys 0..i only (PyTorch's `is_causal`);
    `mask` (1: may attend, 0: may not) broadcasts against the scores `..b.., heads, s | t`."""
    return scaled_dot_product(q, k, v, causal, mask)


def scaled_dot_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    mask: Tensor | None,
    offset: Tensor | None = None,
) -> Tensor:
    """`attention`, with the queries at positions `offset + i` when causal (a KV cache's)."""
    scale = dims.constant("1/sqrt(d)", lambda: 1.0 / math.sqrt(q.shape.output[-1]))
    scores = ops.einsum(SCORES, q, k) * scale
    if causal:
        query = dims.positions(q, SEQ, "query_position")
        key = dims.positions(k, SEQ, "key_position")
        behind = ops.outer_sum("s; t => s | t", query, -key)  # how far key t is behind query s
        if offset is not None:
            behind = behind + offset
        scores = ops.where(ops.lt(-0.5, behind), scores, -math.inf)
    if mask is not None:
        scores = ops.where(mask, scores, -math.inf)
    return ops.einsum(MIX, softmax(scores), v)


def multi_head_attention(
    x: Tensor,
    heads: int,
    label: str,
    causal: bool = False,
    kv: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    cache=None,
    params: init.Params = None,
) -> Tensor:
    """Self attention of `x` (`..b.., seq | embd`), or cross attention with keys and values
    from `kv` (`..b.., seq_kv | kv_embd`): `{label}.q`, `.k`, `.v` project to `heads, embd /
    heads`, attention runs per head (`mask` as in `attention`), `{label}.o` projects back to
    x's output dims. Initialised as PyTorch's `nn.MultiheadAttention`. With `cache` (an
    `nn.KVCache`, causal self attention only), the keys and values of earlier calls are used too.
    `params` shares parameters with another build (docs/nn.md)."""
    check_label(label, "multi_head_attention")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(
            f"multi_head_attention {label!r}: heads must be a positive int, got {heads!r}"
        )
    out_dims = dims.required(x, "output", f"multi_head_attention {label!r}")
    embd = math.prod(out_dims)
    if embd % heads:
        raise ValueError(
            f"multi_head_attention {label!r}: {heads} heads do not divide the {embd} features "
            f"of {x.label!r} ({x.shape})"
        )
    source = x if kv is None else kv
    q_init, kv_init = _in_projection_inits(embd, dims.count((source, "output")))
    head_dims = [heads, embd // heads]
    q = affine(x, head_dims, f"{label}.q", weight_init=q_init, zero_bias=True, params=params)
    k = affine(source, head_dims, f"{label}.k", weight_init=kv_init, zero_bias=True, params=params)
    v = affine(source, head_dims, f"{label}.v", weight_init=kv_init, zero_bias=True, params=params)
    if cache is None:
        mixed = scaled_dot_product(q, k, v, causal, mask)
    else:
        if kv is not None or not causal:
            raise ValueError(
                f"multi_head_attention {label!r}: a KV cache is for causal self attention "
                "(causal=True, kv=None)"
            )
        keys, values = cache.extend(label, k, v)
        mixed = cache.guard(scaled_dot_product(q, keys, values, True, mask, cache.position), k)
    return dims.same_shape(affine(mixed, out_dims, f"{label}.o", zero_bias=True, params=params), x)


def _in_projection_inits(embd: int, kv_embd) -> tuple[tuple, tuple]:
    """PyTorch's `nn.MultiheadAttention._reset_parameters`: when keys and values come from
    `embd` features, the fused (3 embd, embd) input projection is xavier-uniform, which gives q,
    k and v the bound sqrt(6 / (4 embd)); otherwise each is xavier-uniform on its own."""

    def fused() -> bool:
        return kv_embd() == embd

    q = init.xavier_uniform(embd, lambda: 3 * embd if fused() else embd)
    kv = init.xavier_uniform(
        lambda: embd if fused() else kv_embd(), lambda: 3 * embd if fused() else embd
    )
    return q, kv

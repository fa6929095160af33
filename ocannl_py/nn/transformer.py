"""The transformer block: attention and an MLP, each with a residual connection and a norm."""

from __future__ import annotations

import math
from collections.abc import Callable

from ocannl_py.nn import dims, init
from ocannl_py.nn.activations import gelu
from ocannl_py.nn.attention import multi_head_attention
from ocannl_py.nn.linear import check_label, mlp
from ocannl_py.nn.norms import layer_norm
from ocannl_py.tensor import Tensor


def transformer_block(
    x: Tensor,
    heads: int,
    label: str,
    causal: bool,
    mlp_ratio: float = 4,
    pre_norm: bool = True,
    *,
    activation: Callable[[Tensor], Tensor] = gelu,
    eps: float = 1e-5,
    mask: Tensor | None = None,
    cache=None,
    params: init.Params = None,
) -> Tensor:
    """Pre-norm (GPT-2): `h = x + attn(ln1(x))`, `h + mlp(ln2(h))`; post-norm (BERT):
    `h = ln1(x + attn(x))`, `ln2(h + mlp(h))`. `{label}.attn` is multi-head attention (`mask`,
    `cache` as there), `{label}.mlp` a `fc` layer of `mlp_ratio` x the features with
    `activation` (tanh GELU by default; BERT's is `gelu(h, exact=True)`) and a `proj` layer back,
    `{label}.ln1` and `{label}.ln2` layer norms with `eps`; `params` shares parameters."""
    check_label(label, "transformer_block")
    out_dims = dims.required(x, "output", f"transformer_block {label!r}")
    width = mlp_ratio * math.prod(out_dims)
    if width != int(width) or width < 1:
        raise ValueError(
            f"transformer_block {label!r}: mlp_ratio {mlp_ratio} times {math.prod(out_dims)} "
            "features is not a positive whole number"
        )

    def attend(h: Tensor) -> Tensor:
        return multi_head_attention(
            h, heads, f"{label}.attn", causal, mask=mask, cache=cache, params=params
        )

    def feed_forward(h: Tensor) -> Tensor:
        return mlp(h, int(width), out_dims, f"{label}.mlp", activation, params=params)

    def residual(h: Tensor, update: Tensor) -> Tensor:
        # The sum has the shape of x: saying so gives the norms' parameters their dims now.
        return dims.same_shape(h + update, x)

    if pre_norm:
        h = residual(x, attend(layer_norm(x, f"{label}.ln1", eps, params=params)))
        return residual(h, feed_forward(layer_norm(h, f"{label}.ln2", eps, params=params)))
    h = layer_norm(residual(x, attend(x)), f"{label}.ln1", eps, params=params)
    return layer_norm(residual(h, feed_forward(h)), f"{label}.ln2", eps, params=params)

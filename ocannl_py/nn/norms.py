"""Layer normalisation and RMS normalisation over the output axes."""

from __future__ import annotations

from ocannl_py import operation as ops
from ocannl_py.nn import dims, init
from ocannl_py.nn.linear import check_label
from ocannl_py.nn.softmax import SPEC
from ocannl_py.tensor import Tensor


def _mean(x: Tensor) -> Tensor:
    """The mean over the output axes of `x`, for each batch (and input) index."""
    count = dims.count((x, "output"))  # a closure over `x` itself would keep `x` stored
    inverse = dims.constant("1/n", lambda: 1.0 / count())
    return ops.einsum1(SPEC, x) * inverse


def _gain(x: Tensor, label: str, value: float, params: init.Params) -> Tensor:
    """A parameter over the output axes of `x`, every cell `value` (dims inferred if unknown)."""
    return init.parameter(params, label, value, batch_dims=[], input_dims=[],
                          output_dims=dims.known(x, "output"))  # fmt: skip


def layer_norm(x: Tensor, label: str, eps: float = 1e-5, *, params: init.Params = None) -> Tensor:
    """`(x - mean) / sqrt(var + eps) * w + b`, mean and (biased) variance over the output axes,
    as PyTorch's `nn.LayerNorm(output dims)`; `{label}.w` starts at ones, `{label}.b` at zeros."""
    check_label(label, "layer_norm")
    centred = x - _mean(x)
    normed = centred * ops.recip_sqrt(_mean(centred * centred) + eps)
    y = normed * _gain(x, f"{label}.w", 1.0, params) + _gain(x, f"{label}.b", 0.0, params)
    return dims.same_shape(y, x)


def rms_norm(x: Tensor, label: str, eps: float = 1e-6, *, params: init.Params = None) -> Tensor:
    """`x / sqrt(mean(x^2) + eps) * w` over the output axes, as PyTorch's `nn.RMSNorm`;
    `{label}.w` starts at ones."""
    check_label(label, "rms_norm")
    y = x * ops.recip_sqrt(_mean(x * x) + eps) * _gain(x, f"{label}.w", 1.0, params)
    return dims.same_shape(y, x)

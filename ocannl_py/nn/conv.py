"""2-D convolution and pooling over images `..b.. | height, width, channels`, written as einsums
with affine axes (`stride*out + dilation*kernel`): no im2col, no hand-written kernel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ocannl_py import operation as ops
from ocannl_py.errors import ShapeError
from ocannl_py.nn import dims, init
from ocannl_py.nn.linear import check_label, dims_list
from ocannl_py.tensor import Tensor

Pair = int | Sequence[int]
PADDINGS = ("valid", "same")


def pair(value: Pair, what: str) -> tuple[int, int]:
    """An int (both axes) or a pair of positive ints, else a ValueError naming `what`."""
    values = dims_list(value, what)
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise ValueError(f"{what}: expected an int or a pair of ints, got {value!r}")
    return values[0], values[1]


def _axis(out: str, window: str, stride: int, dilation: int, padding: str) -> str:
    """`stride*out <+ dilation*window` (valid) or with `=+` (same), the factors left out at 1."""
    scaled = f"{stride}*{out}" if stride != 1 else out
    spread = f"{dilation}*{window}" if dilation != 1 else window
    return f"{scaled}{'<+' if padding == 'valid' else '=+'}{spread}"


def _image_axes(x: Tensor, block: str, required: bool = True) -> list[int] | None:
    """The output dims of the image `x` (None if unknown and not `required`)."""
    out = dims.required(x, "output", block) if required else dims.known(x, "output")
    if out is not None and len(out) < 3:
        raise ShapeError(
            f"{block}: {x.label!r} ({x.shape}) must be an image `batch | height, width, "
            f"channels...`: at least 3 output axes, got {len(out)}"
        )
    return out


def conv2d(
    x: Tensor,
    out_channels: int,
    kernel: Pair,
    label: str,
    stride: Pair = 1,
    padding: str = "valid",
    dilation: Pair = 1,
    *,
    params: init.Params = None,
) -> Tensor:
    """The 2-D convolution (cross-correlation, as PyTorch's) of the image `x` (`..b.. | h, w,
    ic`) with `{label}.w` (`kh, kw, ic -> out_channels`) plus `{label}.b` (`out_channels`); the
    result is `..b.. | oh, ow, out_channels`. `padding="same"` pads with zeros so that `oh =
    ceil(h / stride)` (PyTorch's "same" at stride 1), "valid" does not pad. Both parameters are
    drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = kh kw ic, as `nn.Conv2d`."""
    check_label(label, "conv2d")
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(
            f"conv2d {label!r}: out_channels must be a positive int, got {out_channels!r}"
        )
    kh, kw = pair(kernel, f"conv2d {label!r}: kernel")
    (sh, sw), (dh, dw) = pair(stride, "conv2d: stride"), pair(dilation, "conv2d: dilation")
    if padding not in PADDINGS:
        raise ValueError(f"conv2d {label!r}: padding must be 'valid' or 'same', got {padding!r}")
    channels = _image_axes(x, f"conv2d {label!r}")[2:]
    w = init.parameter(params, f"{label}.w", batch_dims=[], input_dims=[kh, kw, *channels],
                       output_dims=[out_channels])  # fmt: skip
    b = init.parameter(params, f"{label}.b", batch_dims=[], input_dims=[],
                       output_dims=[out_channels],
                       init=init.linear_bias(w))  # fmt: skip
    spec = (
        f"..b.. | {_axis('oh', 'kh', sh, dh, padding)}, {_axis('ow', 'kw', sw, dw, padding)}, "
        "..ic..; kh, kw, ..ic.. -> oc => ..b.. | oh, ow, oc"
    )
    return ops.einsum(spec, x, w) + b


def max_pool2d(x: Tensor, size: Pair, stride: Pair | None = None) -> Tensor:
    """The max over windows of `size` cells of the image `x` (`..b.. | h, w, ..c..`), every
    `stride` cells (by default `size`, as PyTorch), without padding; the gradient goes to the
    maxima."""
    window, strides = _pool_args(x, size, stride, "max_pool2d")
    zeros = ops.ndarray(np.zeros(window), output_dims=list(window), label="window")
    return ops.tropical(_pool_spec(strides), x, zeros)


def avg_pool2d(x: Tensor, size: Pair, stride: Pair | None = None) -> Tensor:
    """The mean over windows of `size` cells of the image `x`, every `stride` cells (by
    default `size`), without padding: PyTorch's `avg_pool2d`."""
    window, strides = _pool_args(x, size, stride, "avg_pool2d")
    weights = np.full(window, 1.0 / (window[0] * window[1]))
    return ops.einsum(_pool_spec(strides), x, ops.ndarray(weights, output_dims=list(window),
                                                           label="window"))  # fmt: skip


def _pool_args(x: Tensor, size: Pair, stride: Pair | None, block: str):
    window = pair(size, f"{block}: size")
    strides = window if stride is None else pair(stride, f"{block}: stride")
    _image_axes(x, block, required=False)
    return window, strides


def _pool_spec(strides: tuple[int, int]) -> str:
    oh, ow = _axis("oh", "wh", strides[0], 1, "valid"), _axis("ow", "ww", strides[1], 1, "valid")
    return f"..b.. | {oh}, {ow}, ..c..; wh, ww => ..b.. | oh, ow, ..c.."

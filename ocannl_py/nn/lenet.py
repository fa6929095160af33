"""OCANNL's LeNet: two convolutions with max pooling, then three linear layers."""

from __future__ import annotations

from collections.abc import Sequence

from ocannl_py import operation as ops
from ocannl_py.nn import init
from ocannl_py.nn.conv import conv2d, max_pool2d
from ocannl_py.nn.linear import check_label, linear
from ocannl_py.tensor import Tensor


def lenet(
    x: Tensor,
    label: str,
    num_classes: int = 10,
    *,
    channels: Sequence[int] = (6, 16),
    padding: str = "same",
    params: init.Params = None,
) -> Tensor:
    """The logits of OCANNL's `lenet` for images `x` (`..b.. | h, w, c`): `{label}.conv1` (5x5,
    `channels[0]`), ReLU, 2x2 max pool, `{label}.conv2` (5x5, `channels[1]`), ReLU, 2x2 max pool,
    then linear layers `{label}.fc1` (120, ReLU), `{label}.fc2` (84, ReLU) and `{label}.logits`
    (`num_classes`); the first takes every output axis of the pooled image (no flattening)."""
    check_label(label, "lenet")
    if len(channels) != 2:
        raise ValueError(f"lenet {label!r}: channels must be two ints, got {channels!r}")
    h = x
    for i, width in enumerate(channels, 1):
        h = conv2d(h, width, 5, f"{label}.conv{i}", padding=padding, params=params)
        h = max_pool2d(ops.relu(h), 2)
    h = ops.relu(linear(h, 120, f"{label}.fc1", params=params))
    h = ops.relu(linear(h, 84, f"{label}.fc2", params=params))
    return linear(h, num_classes, f"{label}.logits", params=params)

"""Linear layers and multi-layer perceptrons."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ocannl_py import operation as ops
from ocannl_py.nn import dims, init
from ocannl_py.tensor import Tensor

Dims = int | Sequence[int]


def dims_list(dims: Dims, what: str) -> list[int]:
    """`dims` as a list of positive ints (an int is one axis), or a ValueError naming `what`."""
    values = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in values):
        raise ValueError(f"{what}: expected a positive int or a list of them, got {dims!r}")
    return values


def check_label(label: str, block: str) -> None:
    if not isinstance(label, str) or not label:
        raise TypeError(f"{block}: the label must be a non-empty string, got {label!r}")


def affine(
    x: Tensor,
    out_dims: Dims,
    label: str,
    *,
    weight_init=None,
    zero_bias: bool = False,
    params: init.Params = None,
) -> Tensor:
    """`w @ x + b` with `w` (`out_dims` -> the output axes of `x`) and `b` (`out_dims`); by
    default initialised as `nn.Linear`, else `w` with `weight_init` and `b` with zeros."""
    check_label(label, "linear")
    out = dims_list(out_dims, f"linear {label!r}: out_dims")
    # The input dims are x's output dims; given when known, so that w has dims when built.
    w = init.parameter(params, f"{label}.w", batch_dims=[], input_dims=dims.known(x, "output"),
                       output_dims=out, init=weight_init)  # fmt: skip
    bias = dict(batch_dims=[], input_dims=[], output_dims=out)
    if zero_bias:
        b = init.parameter(params, f"{label}.b", 0.0, **bias)
    else:
        b = init.parameter(params, f"{label}.b", init=init.linear_bias(w), **bias)
    return dims.with_rows(w @ x + b, output=out)


def linear(x: Tensor, out_dims: Dims, label: str, *, params: init.Params = None) -> Tensor:
    """`w @ x + b`: the output axes of `x` contract with the input axes of `{label}.w` (out_dims
    -> x's output dims); `{label}.b` has `out_dims`. Both are drawn from U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), fan_in being the product of x's output dims, as in PyTorch's nn.Linear.
    `params` (label -> parameter) shares parameters with another build: see docs/nn.md."""
    return affine(x, out_dims, label, params=params)


def mlp(
    x: Tensor,
    hidden: Dims,
    out_dims: Dims,
    label: str,
    activation: Callable[[Tensor], Tensor] = ops.relu,
    *,
    params: init.Params = None,
) -> Tensor:
    """Linear layers of widths `hidden` (an int: one layer), each followed by `activation`, then a
    linear layer to `out_dims`. Layers are `{label}.fc` (one hidden layer) or `{label}.fc0`,
    `{label}.fc1`... (several), and `{label}.proj`."""
    check_label(label, "mlp")
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    names = ["fc"] if len(widths) == 1 else [f"fc{i}" for i in range(len(widths))]
    h = x
    for name, width in zip(names, widths, strict=True):
        h = linear(h, width, f"{label}.{name}", params=params)
        h = dims.same_shape(activation(h), h)  # an activation is pointwise
    return linear(h, out_dims, f"{label}.proj", params=params)

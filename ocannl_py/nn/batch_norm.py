"""Batch normalisation over the batch axes and every output axis but the last (the channels),
with running statistics updated by every training run, as PyTorch's `nn.BatchNorm1d/2d`."""

from __future__ import annotations

from arrayjit import assignments as asg
from ocannl_py import operation as ops
from ocannl_py import shape as shapes
from ocannl_py.code import Code, Fill, Slot
from ocannl_py.nn import dims, init
from ocannl_py.nn.linear import check_label
from ocannl_py.tensor import Tensor

#: Reduce each channel (the last output axis) over the batch axes and the other output axes.
PER_CHANNEL = "..b.. | ..s.., c => | c"

#: The ids (`Tensor.id`, never reused) of the running statistics created so far: they are state,
#: not parameters (see `state`).
_running: set[int] = set()


def batch_norm(
    x: Tensor,
    label: str,
    train: bool,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    params: init.Params = None,
) -> Tensor:
    """`(x - mean) / sqrt(var + eps) * w + b` per channel (the last output axis of `x`). When
    `train`, mean and (biased) variance are the batch's, and every run moves the running
    statistics `{label}.running_mean` and `{label}.running_var` (unbiased) towards them by
    `momentum`; otherwise the running statistics normalise. `{label}.w` starts at ones,
    `{label}.b` at zeros, as in PyTorch."""
    check_label(label, "batch_norm")
    if not isinstance(train, bool):
        raise TypeError(f"batch_norm: train must be a bool, got {train!r}")
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, int | float)
        or not 0 <= momentum <= 1
    ):
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum!r}")
    out = dims.known(x, "output")
    channels = out[-1:] if out is not None else None
    running_mean = _running_stat(params, f"{label}.running_mean", 0.0, channels)
    running_var = _running_stat(params, f"{label}.running_var", 1.0, channels)
    if train:
        # The normalisation reads the batch's statistics through operations that also move the
        # running ones (their values are the batch's, and so are their gradients).
        inverse = dims.constant("1/n", lambda: 1.0 / _count(x))
        mean = _tracking(ops.einsum1(PER_CHANNEL, x) * inverse, running_mean, momentum, 1.0)
        centred = x - mean
        var = ops.einsum1(PER_CHANNEL, centred * centred) * inverse
        unbiased = dims.constant("n/(n-1)", lambda: _count(x) / max(_count(x) - 1, 1))
        var = _tracking(var, running_var, momentum, unbiased)
    else:
        centred, var = x - running_mean, running_var
    gain = _channel_param(params, f"{label}.w", 1.0, channels)
    shift = _channel_param(params, f"{label}.b", 0.0, channels)
    y = centred * ops.recip_sqrt(var + eps) * gain + shift
    return dims.same_shape(y, x)


def state(t: Tensor) -> dict[str, Tensor]:
    """Label -> running statistic of the batch norms that `t` uses: what `t.params` leaves out
    and a checkpoint or an evaluation build (`params={**t.params, **nn.state(t)}`) needs."""
    return {s.label: s for s in t.subgraph() if s.id in _running}


def _count(x: Tensor) -> int:
    """The number of cells each channel's statistics are taken over."""
    channels = x.shape.output[-1] if x.shape.output else 1
    return dims.count((x, "batch"), (x, "output"))() // channels


def _tracking(stat: Tensor, running: Tensor, momentum: float, scale) -> Tensor:
    """`stat`, computed by an operation that also sets `running = (1 - momentum) * running +
    momentum * scale * stat` (`scale` a number or a constant tensor)."""
    keep, move = repr(1.0 - momentum), repr(float(momentum))
    return ops.operation(
        "track", shapes.Pointwise(), [stat, running, scale],
        f"v2 =: {keep} * v2 + {move} * v3 * v1; v =: v1", "g1 =+ g",
    )  # fmt: skip


def _running_stat(params: init.Params, label: str, value: float, channels) -> Tensor:
    if params is not None and label in params:
        return params[label]
    t = Tensor(label, shapes.Shape(label, batch_dims=[], input_dims=[], output_dims=channels),
               differentiable=False)  # fmt: skip
    t.init_code = Code([Fill(Slot(t), asg.Constant(value))])
    _running.add(t.id)
    if params is not None:
        params[label] = t
    return t


def _channel_param(params: init.Params, label: str, value: float, channels) -> Tensor:
    return init.parameter(params, label, value, batch_dims=[], input_dims=[],
                          output_dims=channels)  # fmt: skip

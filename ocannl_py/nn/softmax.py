"""Softmax, log-softmax and cross-entropy. Each is stable: the max is subtracted before `exp`."""

from __future__ import annotations

from ocannl_py import operation as ops
from ocannl_py.errors import ShapeError
from ocannl_py.nn import dims
from ocannl_py.tensor import Tensor

#: Reduce over the output axes for each batch index, leaving a size-1 axis that broadcasts.
SPEC = "... | ..d.. => ... | 0"


def _shifted(x: Tensor, spec: str) -> Tensor:
    # The max only shifts the values; the result does not depend on it, so neither does the
    # gradient (softmax and log-softmax are invariant to a shift).
    return x - ops.stop_gradient(ops.einmax1(spec, x))


def softmax(x: Tensor, spec: str = SPEC) -> Tensor:
    """`exp(x - max) / sum(exp(x - max))`, the max and sum being the reduction `spec` (by
    default over the output axes, for each batch index)."""
    e = ops.exp(_shifted(x, spec))
    return dims.same_shape(e / ops.einsum1(spec, e), x)


def log_softmax(x: Tensor, spec: str = SPEC) -> Tensor:
    """`x - max - log(sum(exp(x - max)))`, reduced as `spec` says (as `softmax`)."""
    z = _shifted(x, spec)
    return dims.same_shape(z - ops.log(ops.einsum1(spec, ops.exp(z))), x)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """`-sum(targets * log_softmax(logits))` over the output axes (the classes), averaged over
    the batch axes: PyTorch's `cross_entropy` with class probabilities (e.g. one-hot) as targets.
    `targets` has the shape of `logits`; the result is a scalar."""
    try:
        dims.same_shape(targets, logits)
    except ShapeError as e:
        raise ShapeError(
            f"cross_entropy: the targets {targets.label!r} ({targets.shape}) must have the shape "
            f"of the logits {logits.label!r} ({logits.shape}): {e}"
        ) from None
    per_class = targets * log_softmax(logits)
    total = ops.einsum1("... | ... => ", per_class)
    inverse_batch = dims.constant("1/batch", lambda: 1.0 / dims.count((logits, "batch"))())
    return -(total * inverse_batch)

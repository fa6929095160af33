"""Softmax, log-softmax and cross-entropy. Each is stable: the max is subtracted before `exp`."""

from __future__ import annotations

from arrayjit import assignments as asg
from ocannl_py import operation as ops
from ocannl_py import shape as shapes
from ocannl_py.code import Code, Fill, Slot
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
    the batch axes: PyTorch's `cross_entropy`. `targets` are class probabilities (e.g. one-hot)
    with the shape of `logits`, or int32 class ids with its batch axes (one class axis); an id
    outside the classes is an error at run time. The result is a scalar."""
    if targets.dtype.name == "int32":
        targets = _one_hot(logits, targets)
    else:
        try:
            dims.same_shape(targets, logits)
        except ShapeError as e:
            raise ShapeError(
                f"cross_entropy: the targets {targets.label!r} ({targets.shape}) must have the "
                f"shape of the logits {logits.label!r} ({logits.shape}): {e}"
            ) from None
    per_class = targets * log_softmax(logits)
    total = ops.einsum1("... | ... => ", per_class)
    inverse_batch = dims.constant("1/batch", lambda: 1.0 / dims.count((logits, "batch"))())
    return -(total * inverse_batch)


def _one_hot(logits: Tensor, ids: Tensor) -> Tensor:
    """1 where the class (the output axis of `logits`) is the id, for each batch index; the ids
    also pick a row of ones (`oc.embed`), whose run-time check rejects an id outside the
    classes."""
    classes = dims.required(logits, "output", "cross_entropy with int32 class ids")
    if len(classes) != 1 or dims.known(ids, "output") not in ([], None):
        raise ShapeError(
            f"cross_entropy: int32 class ids {ids.label!r} ({ids.shape}) need logits "
            f"{logits.label!r} ({logits.shape}) with one output axis (the classes) and ids with "
            "the logits' batch axes and no output axes"
        )
    index = dims.positions(logits, "..b.. | c => c", f"{logits.label} classes")
    rows = Tensor(f"{logits.label} class rows", shapes.Shape(
        f"{logits.label} class rows", batch_dims=[], input_dims=classes, output_dims=[1]),
        differentiable=False)  # fmt: skip
    rows.forward_code = Code([Fill(Slot(rows), asg.Constant(1.0))])
    try:
        return dims.same_shape(ops.eq(ids, index) * ops.embed(rows, ids), logits)
    except ShapeError as e:
        raise ShapeError(
            f"cross_entropy: the class ids {ids.label!r} ({ids.shape}) must have the batch axes "
            f"of the logits {logits.label!r} ({logits.shape}): {e}"
        ) from None

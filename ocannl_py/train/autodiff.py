"""Reverse-mode autodiff as code: the forward code, zeroed gradients, d loss = 1, then each
operation's backward code in reverse topological order."""

from __future__ import annotations

from arrayjit import assignments as asg
from ocannl_py.code import Code, Fill, Slot
from ocannl_py.tensor import Tensor


def _fill(t: Tensor, value: float, grad: bool) -> Code:
    return Code([Fill(Slot(t, grad), asg.Constant(value))])


def grad_update(loss: Tensor) -> Code:
    """Forward, zero the gradients, set d loss = 1, backprop in reverse topological order."""
    if not loss.requires_grad:
        raise ValueError(f"grad_update: {loss.label!r} does not depend on any parameter")
    graph = loss.subgraph()
    zero = Code()
    for t in graph:
        if t.requires_grad:
            zero = zero + _fill(t, 0.0, grad=True)
    backprop = Code()
    for t in reversed(graph):
        backprop = backprop + t.backprop_code
    return (
        Code(label=f"grad_update_{loss.label}")
        + loss.forward
        + zero
        + _fill(loss, 1.0, grad=True)
        + backprop
    )

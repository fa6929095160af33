"""What blocks need from shapes: dims when they are known at build time, and constants and
positions computed from dims that shape inference settles later (when the code is compiled)."""

from __future__ import annotations

import math
from collections.abc import Callable

from arrayjit import assignments as asg
from arrayjit.tnode import MemoryMode
from ocannl_py import shape as shapes
from ocannl_py.code import Code, Fill, Raw, Slot
from ocannl_py.errors import ShapeError
from ocannl_py.tensor import Tensor


def known(t: Tensor, kind: str) -> list[int] | None:
    """The dims of one row of `t` (batch, input or output) if already solved, else None."""
    try:
        return getattr(t.shape, kind)
    except ShapeError:
        return None


def required(t: Tensor, kind: str, block: str) -> list[int]:
    """The dims of one row of `t`, which `block` needs when it is built."""
    dims = known(t, kind)
    if dims is None:
        raise ShapeError(
            f"{block}: the {kind} dims of {t.label!r} must be known when the block is built "
            f"(got {t.shape}); give the dims of the tensors it comes from"
        )
    return dims


def same_shape(t: Tensor, like: Tensor) -> Tensor:
    """`t`, constrained to have exactly the shape of `like` (a block whose result has the shape
    of its input says so, so that later blocks know the dims when they are built)."""
    shapes.propagate(shapes.Pointwise(exact=True), t.shape, [like.shape], op_label=t.label)
    return t


def with_rows(t: Tensor, **rows: list[int]) -> Tensor:
    """`t`, constrained to have exactly these dims in the rows given (e.g. `output=[4]`)."""
    known_rows = {f"{kind}_dims": list(d) for kind, d in rows.items()}
    like = shapes.Shape(f"{t.label} rows", **known_rows)
    shapes.propagate(shapes.Pointwise(exact=True), t.shape, [like], op_label=t.label)
    return t


def count(*rows: tuple[Tensor, str]) -> Callable[[], int]:
    """A function giving the number of cells of the given rows (tensor, kind), once solved."""
    # The shapes, not the tensors: a closure holding a tensor would keep it from being fused.
    held = [(t.shape, kind) for t, kind in rows]
    return lambda: math.prod(d for shape, kind in held for d in getattr(shape, kind))


def constant(label: str, value: Callable[[], float]) -> Tensor:
    """A scalar constant whose value is computed from dims when the code is compiled (e.g. 1/n
    for a mean over axes whose dims are inferred). Like a number, it is computed inline."""
    t = Tensor(label, shapes.Shape(label, batch_dims=[], input_dims=[], output_dims=[]),
               differentiable=False, memory_mode=MemoryMode.VIRTUAL)  # fmt: skip
    t.forward_code = Code(
        [Raw(lambda: asg.Fetch(t.value_node, asg.Constant(float(value()))), (t,))]
    )
    return t


def positions(t: Tensor, spec: str, label: str) -> Tensor:
    """0, 1, ..., n-1 along the one axis of `t` that the einsum `spec` (from `t` to an axis)
    keeps: `positions(q, "..b.., s | ..o.. => s", ...)` numbers the last batch axis of `q`."""
    pos = Tensor(label, shapes.Shape(label), differentiable=False)
    shapes.propagate(shapes.Einsum(spec), pos.shape, [t.shape], op_label=label)
    pos.forward_code = Code([Fill(Slot(pos), asg.RangeOfShape())])
    return pos

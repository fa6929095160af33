"""Projections of a solved update step: the iteration space, and the index of each operand axis.

Axes are listed in memory order: batch, then output, then input. An operand's size-1 axis that
broadcasts against a larger one is read at `Fixed(0)`; a repeated einsum label reads a diagonal.
"""

from __future__ import annotations

from arrayjit.indexing import Fixed, Index, Iterator, Projections, affine
from ocannl_py import einsum as es
from ocannl_py.errors import ShapeError
from ocannl_py.shape import terms as sv
from ocannl_py.shape.logic import (
    AxisRef,
    Compose,
    Concat,
    Einsum,
    Pointwise,
    RowLayout,
    Transpose,
    UpdateStep,
)
from ocannl_py.shape.rows import KINDS, MEMORY_ORDER, Shape


class _Space:
    """The iterators of one step, in order of creation, with their extents."""

    def __init__(self) -> None:
        self.iterators: list[Iterator] = []
        self.extents: list[int] = []
        self.padded = False  # an affine index reads outside its operand

    def new(self, extent: int, name: str) -> Iterator:
        it = Iterator(name=f"{name}{len(self.iterators)}")
        self.iterators.append(it)
        self.extents.append(extent)
        return it


def _check_closed(step: UpdateStep) -> None:
    for shape in (step.result, *step.operands):
        if not shape.is_solved:
            raise ShapeError(
                f"projections of {step.describe()}: the shape of {shape.label!r} is not closed; "
                "call shape.close first"
            )


def derive(step: UpdateStep) -> Projections:
    """Forward projections of `step`: lhs = result, rhs[k] = operands[k]. (Whether the lhs is
    zeroed first is the operation's cd code's business: `=:+`.)"""
    _check_closed(step)
    if isinstance(step.logic, Concat):
        raise ShapeError(f"{step.describe()}: each operand has its own projections (parts)")
    space = _Space()
    if isinstance(step.logic, Einsum):
        lhs, rhs = _einsum(step, space)
    else:
        lhs, rhs = _by_rows(step, space)
    return _checked(step, space, lhs, rhs, step.operands)


def derive_parts(step: UpdateStep) -> list[Projections]:
    """A concatenation's projections, one per operand k: lhs = the result at operand k's range
    of the concatenated axis, rhs[0] = operand k."""
    _check_closed(step)
    logic = step.logic
    assert isinstance(logic, Concat)
    (axis,) = [a for r in (logic.parsed.result.row(k) for k in KINDS) if r for a in r.axes
               if isinstance(a, es.Concat)]  # fmt: skip
    parts = []
    for k, position in enumerate(logic.part_of_operand()):
        space = _Space()
        lhs, rhs = _einsum(step, space, (k, axis, position))
        parts.append(_checked(step, space, lhs, rhs, [step.operands[k]]))
    return parts


def _checked(step, space, lhs, rhs, operands) -> Projections:
    what = step.describe()
    projections = Projections(
        tuple(space.extents),
        tuple(space.iterators),
        tuple(lhs),
        tuple(tuple(r) for r in rhs),
        debug=what,
        guarded=space.padded,
    )
    try:
        projections.check_against(step.result.dims(), [s.dims() for s in operands], what)
    except ValueError as e:
        raise ShapeError(str(e)) from None
    return projections


def _rows(shape: Shape) -> dict[str, list[int]]:
    return {"batch": shape.batch, "input": shape.input, "output": shape.output}


def _aligned(sub_dims: list[int], cur_dims: list[int], cur_its: list[Iterator]) -> list[Index]:
    """Indices of a row broadcast (aligned on the right) into a row iterated by `cur_its`."""
    offset = len(cur_dims) - len(sub_dims)
    indices: list[Index] = []
    for j, dim in enumerate(sub_dims):
        k = offset + j
        if k >= 0 and dim == cur_dims[k]:
            indices.append(cur_its[k])
        elif dim == 1:
            indices.append(Fixed(0))
        else:
            raise ShapeError(f"cannot broadcast dims {sub_dims} into {cur_dims}")
    return indices


def _by_rows(step: UpdateStep, space: _Space) -> tuple[list[Index], list[list[Index]]]:
    """Pointwise, compose and transpose: iterate the result's axes, plus contracted axes."""
    result = _rows(step.result)
    its = {k: [space.new(d, k[0]) for d in result[k]] for k in MEMORY_ORDER}
    lhs = [it for k in MEMORY_ORDER for it in its[k]]
    operands = [_rows(s) for s in step.operands]
    logic = step.logic
    if isinstance(logic, Pointwise):
        # Each kind of each operand broadcasts into the result's axes of the same kind.
        rhs = [
            [i for k in MEMORY_ORDER for i in _aligned(op[k], result[k], its[k])] for op in operands
        ]
    elif isinstance(logic, Compose):
        a, b = operands
        contracted = [space.new(d, "c") for d in a["input"]]
        rhs = [
            _aligned(a["batch"], result["batch"], its["batch"])
            + _aligned(a["output"], result["output"], its["output"])
            + contracted,
            _aligned(b["batch"], result["batch"], its["batch"])
            + _aligned(b["output"], a["input"], contracted)
            + _aligned(b["input"], result["input"], its["input"]),
        ]
    else:
        assert isinstance(logic, Transpose)
        (a,) = operands
        rhs = [
            _aligned(a["batch"], result["batch"], its["batch"])
            + _aligned(a["output"], result["input"], its["input"])
            + _aligned(a["input"], result["output"], its["output"])
        ]
    return lhs, rhs


def _size(d: sv.DimLike) -> int:
    d = sv.resolve_dim(d)
    assert isinstance(d, sv.Dim), "shapes are closed"
    return d.size


def _einsum(
    step: UpdateStep, space: _Space, part: tuple[int, es.Concat, int] | None = None
) -> tuple[list[Index], list[list[Index]]]:
    """One iterator per label, per axis of each row variable, per placeholder. `part`: (k,
    axis, position) for operand k of a concatenation alone, whose part is at `position` of the
    concatenated `axis`."""
    labels: dict[str, Iterator] = {}
    row_var_its: dict[str, list[Iterator]] = {}
    row_var_dims: dict[str, list[int]] = {}
    for name, var in step.row_vars.items():
        sizes = sv.row_sizes(sv.Row((), var, ()))
        assert sizes is not None
        row_var_dims[name] = sizes
        row_var_its[name] = [space.new(d, name[0]) for d in sizes]

    def label(name: str, dim: sv.DimLike) -> Iterator:
        if name not in labels:
            labels[name] = space.new(_size(dim), name)
        return labels[name]

    def axis_index(ref: AxisRef) -> Index:
        if ref.kind == "fixed":
            return Fixed(ref.index)
        if ref.kind == "placeholder":
            return space.new(_size(ref.dim), "p")
        if ref.kind == "affine":
            return affine_index(ref)
        if ref.kind == "concat":
            return concat_index(ref)
        return label(ref.name, ref.dim)

    def concat_index(ref: AxisRef) -> Index:
        assert part is not None and ref.constraint is not None
        _, axis, position = part
        dims = ref.constraint.parts
        offset = sum(_size(d) for d in dims[:position])
        return affine((1, label(axis.parts[position].name, dims[position])), offset=offset)

    def affine_index(ref: AxisRef) -> Index:
        c = ref.constraint
        assert c is not None
        terms = [(c.stride, label(ref.name, c.over))]
        kernel = 1
        if c.kernel is not None:
            kernel = _size(c.kernel)
            its = space.new(kernel, "k") if ref.kernel == "_" else label(ref.kernel, c.kernel)
            terms.append((c.dilation, its))
        offset = c.offset
        if c.padding == "=":
            # Padded as TF's SAME (PyTorch's "same" at stride 1): the padding that makes the
            # windows cover the input, its smaller half before the input.
            size, over = _size(ref.dim), _size(c.over)
            offset -= max(c.stride * (over - 1) + c.span(kernel) - size, 0) // 2
            space.padded = True
        return affine(*terms, offset=offset)

    def row_indices(layout: RowLayout | None, is_result: bool) -> list[Index]:
        if layout is None:
            return []
        indices = [axis_index(r) for r in layout.beg]
        if layout.var_name is not None:
            name = layout.var_name
            if is_result:
                indices.extend(row_var_its[name])
            else:
                own = sv.row_sizes(sv.Row((), layout.var, ()))
                assert own is not None
                indices.extend(_aligned(own, row_var_dims[name], row_var_its[name]))
        indices.extend(axis_index(r) for r in layout.end)
        return indices

    tensors = [*step.layouts]
    if part is not None:
        tensors = [tensors[part[0]], tensors[-1]]
    all_indices = [
        [i for k in MEMORY_ORDER for i in row_indices(layout[k], is_result=(n == len(tensors) - 1))]
        for n, layout in enumerate(tensors)
    ]
    return all_indices[-1], all_indices[:-1]


__all__ = ["derive", "derive_parts"]

"""The shape logic of operations: pointwise, compose, transpose and einsum constraints.

`propagate(logic, result, operands)` adds an operation's constraints and solves what it can at
once (a conflict is a ShapeError right there); `close(shapes)` settles the rest before compiling.
The solver itself is `solver.py`; projections are derived in `projections.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ocannl_py import einsum as es
from ocannl_py.errors import ShapeError
from ocannl_py.shape import solver as sv
from ocannl_py.shape.rows import KINDS, Shape


@dataclass(frozen=True)
class Pointwise:
    """Every operand broadcasts into the result, row by row (numpy-style, on the left).
    With `exact`, the result has exactly the operands' axes (state kept beside a tensor)."""

    exact: bool = False

    def describe(self) -> str:
        return "pointwise operation"


@dataclass(frozen=True)
class Compose:
    """`a * b`: a's input axes contract with b's output axes; the result is
    `batch | b.input -> a.output`."""

    def describe(self) -> str:
        return "compose (`*`, matrix-multiply-like)"


@dataclass(frozen=True)
class Transpose:
    """Swap input and output axes."""

    def describe(self) -> str:
        return "transpose"


@dataclass(frozen=True)
class Einsum:
    """A generalized einsum spec, `rhs1;rhs2=>lhs` or `rhs=>lhs`; parsed (and checked) at once."""

    spec: str
    parsed: es.Spec = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", es.parse_spec(self.spec))

    def describe(self) -> str:
        return f"einsum {self.spec!r}"


Logic = Pointwise | Compose | Transpose | Einsum


@dataclass(frozen=True)
class AxisRef:
    """One axis of a spec after propagation: `kind` is label, placeholder or fixed."""

    kind: str
    dim: sv.DimLike
    name: str = ""
    index: int = 0


@dataclass(frozen=True)
class RowLayout:
    """How a spec row maps onto a tensor's row: axes, then the row variable's part, then axes."""

    beg: tuple[AxisRef, ...]
    var: sv.RowVar | None  # the tensor's own part of the row variable
    shared: sv.RowVar | None  # the spec's row variable (the result's part)
    var_name: str | None
    end: tuple[AxisRef, ...]


@dataclass
class UpdateStep:
    """One operation's constraints, kept to derive its projections once shapes are closed."""

    logic: Logic
    result: Shape
    operands: list[Shape]
    op_label: str = ""
    # Einsum only: per tensor (operands, then the result), per kind, its layout (None: no axes).
    layouts: list[dict[str, RowLayout | None]] = field(default_factory=list)
    row_vars: dict[str, sv.RowVar] = field(default_factory=dict)

    def describe(self) -> str:
        op = f" {self.op_label!r}" if self.op_label else ""
        operands = ", ".join(f"{s.label!r} ({s})" for s in self.operands)
        return (
            f"{self.logic.describe()}{op} of {operands} into {self.result.label!r} ({self.result})"
        )


_COMPOSE_HINT = (
    "hint: `*` in op(...) (`@` on tensors) is compose, contracting the input axes of the left "
    "operand with the output axes of the right one; for pointwise multiplication use `*.` "
    "(`*` on tensors)"
)


def propagate(
    logic: Logic, result: Shape, operands: list[Shape], *, op_label: str = ""
) -> UpdateStep:
    """Add the constraints of `result = logic(operands)`, solve what can be, return the step."""
    operands = list(operands)
    _check_arity(logic, operands)
    step = UpdateStep(logic, result, operands, op_label)
    group = sv.merge([result._group, *(s._group for s in operands)])
    for s in (result, *operands):
        s._group = group
    new: list[sv.Pending] = []

    def where(kind: str, hint: str = "") -> sv.Where:
        return sv.Where(step.describe, kind, hint)

    def broadcast(cur: sv.Row, subr: sv.Row, kind: str) -> None:
        w = where(kind)
        _reporting(w, lambda: new.extend(sv.broadcast_rows(cur, subr, w)))

    def equal(r1: sv.Row, r2: sv.Row, kind: str, hint: str = "") -> None:
        _reporting(where(kind, hint), lambda: sv.unify_rows(r1, r2))

    if isinstance(logic, Pointwise):
        for kind in KINDS:
            for operand in operands:
                if logic.exact:
                    equal(result._rows[kind], operand._rows[kind], kind)
                else:
                    broadcast(result._rows[kind], operand._rows[kind], kind)
    elif isinstance(logic, Compose):
        a, b = operands
        equal(a._rows["input"], b._rows["output"], "input (of the left) vs output", _COMPOSE_HINT)
        for operand in operands:
            broadcast(result._rows["batch"], operand._rows["batch"], "batch")
        broadcast(result._rows["input"], b._rows["input"], "input")
        broadcast(result._rows["output"], a._rows["output"], "output")
    elif isinstance(logic, Transpose):
        (a,) = operands
        broadcast(result._rows["batch"], a._rows["batch"], "batch")
        broadcast(result._rows["input"], a._rows["output"], "input (from output)")
        broadcast(result._rows["output"], a._rows["input"], "output (from input)")
    else:
        _propagate_einsum(step, logic, new, where)
        group.extra_rows.extend(sv.Row((), var, ()) for var in step.row_vars.values())
    w = where("")
    group.pending = _reporting(w, lambda: sv.solve(group.pending + new))
    return step


def _check_arity(logic: Logic, operands: list[Shape]) -> None:
    expected = {Compose: 2, Transpose: 1}.get(type(logic))
    if isinstance(logic, Einsum):
        expected = len(logic.parsed.operands)
    if expected is not None and len(operands) != expected:
        raise ShapeError(
            f"{logic.describe()} takes {expected} operand(s), got {len(operands)}: "
            + ", ".join(repr(s.label) for s in operands)
        )
    if not operands and not isinstance(logic, Pointwise):
        raise ShapeError(f"{logic.describe()} needs at least one operand")


def _reporting(where: sv.Where, action):
    try:
        return action()
    except sv.Mismatch as e:
        raise _shape_error(e, where) from None


def _shape_error(e: sv.Mismatch, fallback: sv.Where) -> ShapeError:
    where = e.where or fallback
    kind = f"{where.kind} axes: " if where.kind else ""
    message = f"Shape mismatch in {where.describe()}: {kind}{e.detail}"
    if where.hint:
        message += f"\n{where.hint}"
    return ShapeError(message)


def _propagate_einsum(step: UpdateStep, logic: Einsum, new: list, where) -> None:
    spec = logic.parsed
    labels: dict[str, sv.DimVar] = {}
    tensors = [*step.operands, step.result]
    shape_specs = [*spec.operands, spec.result]
    for position, (shape, shape_spec) in enumerate(zip(tensors, shape_specs, strict=True)):
        is_result = position == len(tensors) - 1
        layout: dict[str, RowLayout | None] = {}
        for kind in KINDS:
            row_spec = shape_spec.row(kind)
            w = where(kind)
            if row_spec is None:
                # A kind the spec leaves out has no axes (OCANNL: it is not broadcast or reduced).
                _reporting(w, lambda s=shape, k=kind: sv.unify_rows(s._rows[k], sv.Row()))
                layout[kind] = None
                continue
            beg = tuple(_axis_ref(a, labels, logic) for a in row_spec.beg)
            end = tuple(_axis_ref(a, labels, logic) for a in row_spec.end)
            name = row_spec.variable_name(kind)
            shared = own = None
            if name is not None:
                shared = step.row_vars.setdefault(name, sv.RowVar(name))
                own = shared if is_result else sv.RowVar(f"{name}{position + 1}")
                if not is_result:
                    new.append(sv.RowBroadcast(sv.Row((), shared, ()), sv.Row((), own, ()), w))
            spec_row = sv.Row(tuple(r.dim for r in beg), own, tuple(r.dim for r in end))
            _reporting(w, lambda s=shape, k=kind, r=spec_row: sv.unify_rows(s._rows[k], r))
            layout[kind] = RowLayout(beg, own, shared, name, end)
        step.layouts.append(layout)


def _axis_ref(axis: es.AxisSpec, labels: dict[str, sv.DimVar], logic: Einsum) -> AxisRef:
    if isinstance(axis, es.Label):
        return AxisRef("label", labels.setdefault(axis.name, sv.DimVar(axis.name)), axis.name)
    if isinstance(axis, es.Placeholder):
        return AxisRef("placeholder", sv.DimVar("_"))
    if isinstance(axis, es.FixedIndex):
        return AxisRef("fixed", sv.DimVar(min_size=axis.value + 1), index=axis.value)
    what = "affine (convolution) axes" if isinstance(axis, es.AffineAxis) else "concatenation `^`"
    raise ShapeError(
        f"einsum {logic.spec!r}: {what} are parsed but not supported by shape inference yet"
    )


def close(shapes: Iterable[Shape]) -> None:
    """Settle every variable reachable from `shapes`; a parameter left undetermined is an error."""
    groups = {id(g): g for g in (s._group.root() for s in shapes)}
    for group in groups.values():
        members = list(group.shapes)
        try:
            sv.close_group(group)
        except sv.Mismatch as e:
            raise _shape_error(e, sv.Where(lambda: "closing shapes")) from None
        for shape in members:
            if shape.dims_required:
                _check_param(shape)


def _check_param(shape: Shape) -> None:
    for kind in KINDS:
        original = shape._rows[kind]
        undetermined = kind != "batch" and sv._was_defaulted_row(original)
        undetermined = undetermined or any(
            sv._was_defaulted_dim(d) for d in (*original.beg, *original.end)
        )
        row = sv.resolve_row(original)
        undetermined = undetermined or any(sv._was_defaulted_dim(d) for d in (*row.beg, *row.end))
        if undetermined:
            raise ShapeError(
                f"cannot infer the {kind} dims of parameter {shape.label!r} (got {shape}): "
                f"nothing in its uses determines them; specify its dims "
                f"(e.g. {kind}_dims=[...], or `o=[...]`/`i=[...]` in an inline parameter)"
            )


__all__ = [
    "Compose",
    "Einsum",
    "Logic",
    "Pointwise",
    "Shape",
    "Transpose",
    "UpdateStep",
    "close",
    "propagate",
]

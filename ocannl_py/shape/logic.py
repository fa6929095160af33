"""The shape logic of operations: pointwise, compose, transpose and einsum constraints.

`propagate(logic, result, operands)` adds an operation's constraints and solves what it can at
once (a conflict is a ShapeError right there); `close(shapes)` settles the rest before compiling.
The solver itself is `solver.py` (and `closing.py`); projections are derived in `projections.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from ocannl_py import einsum as es
from ocannl_py.errors import ShapeError, SpecSyntaxError
from ocannl_py.shape import solver as sv
from ocannl_py.shape import terms as t
from ocannl_py.shape.closing import Closing
from ocannl_py.shape.rows import KINDS, MEMORY_ORDER, Shape


@dataclass(frozen=True)
class Pointwise:
    """Every operand broadcasts into the result, row by row (numpy-style, on the left).
    With `exact`, the result has exactly the operands' axes (state kept beside a tensor)."""

    exact: bool = False

    def describe(self) -> str:
        return "pointwise operation"


@dataclass(frozen=True)
class Compose:
    """`a * b`: a's input axes contract with b's output axes, which broadcast into them; the
    result is `batch | b.input -> a.output`."""

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


@dataclass(frozen=True)
class Concat(Einsum):
    """An einsum whose result has a concatenated axis (`a^b`): each operand is copied to its
    own range of that axis; each part is a label of exactly one operand, one part per operand."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.part_of_operand()  # checked at once

    def describe(self) -> str:
        return f"concatenation {self.spec!r}"

    def part_of_operand(self) -> list[int]:
        """For each operand, the position of its part in the concatenated axis."""
        spec = self.parsed
        concats = [a for a in _axes(spec.result) if isinstance(a, es.Concat)]
        if len(concats) != 1:
            raise ShapeError(
                f"concatenation {self.spec!r}: the result needs exactly one `^` axis, it has "
                f"{len(concats)}"
            )
        owners: list[int | None] = [None] * len(spec.operands)
        for position, part in enumerate(concats[0].parts):
            holders = [
                k for k, o in enumerate(spec.operands)
                if isinstance(part, es.Label) and part in _axes(o)
            ]  # fmt: skip
            if len(holders) != 1 or owners[holders[0]] is not None:
                raise ShapeError(
                    f"concatenation {self.spec!r}: each part of `^` must be a label of exactly "
                    f"one operand, one part per operand; part {position + 1} is not"
                )
            owners[holders[0]] = position
        missing = [k + 1 for k, p in enumerate(owners) if p is None]
        if missing:
            raise ShapeError(
                f"concatenation {self.spec!r}: operand(s) {missing} have no part in the `^` axis"
            )
        return owners  # type: ignore[return-value]


Logic = Pointwise | Compose | Transpose | Einsum


@dataclass(frozen=True)
class AxisRef:
    """One axis of a spec after propagation: `kind` is label, placeholder, fixed or affine
    (`constraint` relates an affine axis's dim to those of its output and kernel labels)."""

    kind: str
    dim: t.DimLike
    name: str = ""
    index: int = 0
    constraint: sv.AffineDim | sv.ConcatDim | None = None
    kernel: str | None = None  # an affine axis's kernel label


@dataclass(frozen=True)
class RowLayout:
    """How a spec row maps onto a tensor's row: axes, then the row variable's part, then axes."""

    beg: tuple[AxisRef, ...]
    var: t.RowVar | None  # the tensor's own part of the row variable
    shared: t.RowVar | None  # the spec's row variable (the result's part)
    var_name: str | None
    end: tuple[AxisRef, ...]


_step_serials = itertools.count(1)


@dataclass
class UpdateStep:
    """One operation's constraints, kept to derive its projections once shapes are closed."""

    logic: Logic
    result: Shape
    operands: list[Shape]
    op_label: str = ""
    # Einsum only: per tensor (operands, then the result), per kind, its layout (None: no axes).
    layouts: list[dict[str, RowLayout | None]] = field(default_factory=list)
    row_vars: dict[str, t.RowVar] = field(default_factory=dict)
    # Einsum only: the labels of the result that are in no operand, with their dims.
    result_only_labels: dict[str, tuple[es.Label, t.DimVar]] = field(default_factory=dict)
    # Its constraints still pending, and rows of variables no tensor holds, until it is closed.
    scope: sv.Scope = field(default_factory=sv.Scope, repr=False)
    serial: int = field(default_factory=lambda: next(_step_serials), repr=False)

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
    """Add the constraints of `result = logic(operands)`, solve what can be, return the step.
    On a conflict (a ShapeError) the shapes are left as they were."""
    operands = list(operands)
    _check_arity(logic, operands)
    step = UpdateStep(logic, result, operands, op_label)
    # A new result has nothing but this operation to give its dims.
    result_is_new = result.is_fresh()
    tx = sv.Transaction()
    try:
        _constrain(step, tx, result_is_new)
        tx.run()
        if result_is_new:
            if step.result_only_labels:
                _check_result_labels(step, closed=False)
            _settle_own_variables(result, operands, tx)
    except sv.Mismatch as e:
        error = _shape_error(e, sv.Where(step.describe))  # described before the rollback
        tx.rollback()
        raise error from None
    except BaseException:
        tx.rollback()
        raise
    result.open_steps.append(step)
    if result_is_new:
        result.computed = True
    return step


def _constrain(step: UpdateStep, tx: sv.Transaction, result_is_new: bool) -> None:
    logic, result, operands = step.logic, step.result, step.operands

    def where(kind: str, hint: str = "") -> sv.Where:
        return sv.Where(step.describe, kind, hint)

    def broadcast(cur: t.Row, subr: t.Row, kind: str, hint: str = "", **kw) -> None:
        w = sv.Where(step.describe, kind, hint, **kw)
        for constraint in _reporting(w, lambda: tx.broadcast_rows(cur, subr, w)):
            tx.add(constraint, step.scope)

    def equal(r1: t.Row, r2: t.Row, kind: str, hint: str = "") -> None:
        w = where(kind, hint)
        for constraint in _reporting(w, lambda: tx.unify_rows(r1, r2, w)):
            tx.add(constraint, step.scope)

    if isinstance(logic, Pointwise):
        for kind in KINDS:
            for operand in operands:
                if logic.exact:
                    equal(result.original_row(kind), operand.original_row(kind), kind)
                else:
                    broadcast(result.original_row(kind), operand.original_row(kind), kind)
    elif isinstance(logic, Compose):
        a, b = operands
        # The right operand's output broadcasts into the left's input (OCANNL): `m * 2` sums
        # m's input axes, the number's one axis of dim 1 broadcasting over them.
        broadcast(
            a.original_row("input"),
            b.original_row("output"),
            "input (of the left) vs output",
            _COMPOSE_HINT,
            contraction=True,
        )
        for operand in operands:
            broadcast(result.original_row("batch"), operand.original_row("batch"), "batch")
        broadcast(result.original_row("input"), b.original_row("input"), "input")
        broadcast(result.original_row("output"), a.original_row("output"), "output")
    elif isinstance(logic, Transpose):
        (a,) = operands
        broadcast(result.original_row("batch"), a.original_row("batch"), "batch")
        broadcast(result.original_row("input"), a.original_row("output"), "input (from output)")
        broadcast(result.original_row("output"), a.original_row("input"), "output (from input)")
    else:
        _propagate_einsum(step, logic, tx, where, result_is_new)
        step.scope.extra_rows.extend(t.Row((), var, ()) for var in step.row_vars.values())


def _settle_own_variables(result: Shape, operands: list[Shape], tx: sv.Transaction) -> None:
    """A new result is what its operands make it, as in numpy: its variables that no operand
    holds and no constraint waits on take their least value now (a row no more axes, a dim 1 or
    just above a fixed index) rather than growing later to fit a use. A number's axis gives the
    result's row an axis only if no other operand gives that row anything (`2 * m`, not
    `p + 3.0` with p of no output axes)."""
    held = {id(v) for s in operands for k in KINDS for v in t.row_unknowns(s.row(k))}
    # A number written in this expression (no other operation uses it) takes no input axes,
    # since its row gets axes only from a compose in which it is the left operand.
    fewest = _fewest_axes_vars(s for s in operands if s.single_use)
    for kind in KINDS:
        todo = t.row_unknowns(result.row(kind))
        while todo:
            var = todo.pop(0)
            if id(var) in held or var.solution is not None:
                continue
            waiting = [c for c in var.watchers if c.alive and not _waits_on_fewest(c, fewest)]
            weak = [c for c in waiting if sv.is_weak_growth(c)]
            if len(weak) < len(waiting):
                continue  # waited on
            if weak and isinstance(var, t.RowVar) and not var.bounded:
                tx.grow_weak(weak[0])  # type: ignore[arg-type]
                tx.run()
                todo = t.row_unknowns(result.row(kind))
            elif isinstance(var, t.RowVar):
                tx.bind_row(var, t.Row())
            else:
                tx.default_dim(var)
    tx.run()


def _fewest_axes_vars(shapes: Iterable[Shape]) -> set[int]:
    """The ids of the row variables of `shapes` that close to no axes (a parameter's batch row,
    a number's input row) unless an equation gives them some."""
    found = set()
    for shape in shapes:
        for kind in shape.fewest_axes:
            var = shape.row(kind).var
            if var is not None:
                found.add(var.id)
    return found


def _waits_on_fewest(constraint: sv.Constraint, fewest: set[int]) -> bool:
    """Whether `constraint` only waits for a row of `fewest` (`..r.., 3 >= ..n..`, n the input
    row of a number written in the expression): it gives the result nothing, so the result does
    not wait for it."""
    if not isinstance(constraint, sv.RowBroadcast):
        return False
    subr = t.resolve_row(constraint.subr)
    return not subr.beg and not subr.end and subr.var is not None and subr.var.id in fewest


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
    """Run `action`, blaming `where` for a mismatch that does not say where it is."""
    try:
        return action()
    except sv.Mismatch as e:
        if e.where is None:
            e.where = where
        raise


def _shape_error(e: sv.Mismatch, fallback: sv.Where) -> ShapeError:
    where = e.where or fallback
    kind = f"{where.kind} axes: " if where.kind else ""
    message = f"Shape mismatch in {where.describe()}: {kind}{e.detail}"
    if where.hint:
        message += f"\n{where.hint}"
    return ShapeError(message)


def _propagate_einsum(
    step: UpdateStep, logic: Einsum, tx: sv.Transaction, where, result_is_new: bool
) -> None:
    spec = logic.parsed
    labels: dict[str, t.DimVar] = {}
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
                _reporting(w, lambda s=shape, k=kind: tx.unify_rows(s.original_row(k), t.Row()))
                layout[kind] = None
                continue
            # A fixed index makes a new result's axis exactly `index + 1`: it broadcasts like any
            # other axis of dim 1; an operand's axis, or an existing result's, needs a dim above it.
            exact = is_result and result_is_new
            refs = [_axis_ref(a, labels, logic, exact, w, is_result) for a in row_spec.axes]
            for ref in refs:
                if ref.constraint is not None:
                    tx.add(ref.constraint, step.scope)
                    if ref.kind == "affine" and ref.constraint.kernel is not None:
                        # A kernel label may be in no tensor (einmax1 over windows): closing
                        # still settles it.
                        step.scope.extra_rows.append(t.Row((), None, (ref.constraint.kernel,)))
            beg, end = tuple(refs[: len(row_spec.beg)]), tuple(refs[len(row_spec.beg) :])
            name = row_spec.variable_name(kind)
            shared = own = None
            if name is not None:
                shared = step.row_vars.setdefault(name, t.RowVar(name))
                own = shared if is_result else t.RowVar(f"{name}{position + 1}")
                if not is_result:
                    broadcast = sv.RowBroadcast(t.Row((), shared, ()), t.Row((), own, ()), w)
                    tx.add(broadcast, step.scope)
            spec_row = t.Row(tuple(r.dim for r in beg), own, tuple(r.dim for r in end))
            row = shape.original_row(kind)
            for constraint in _reporting(w, lambda r=row, s=spec_row, w=w: tx.unify_rows(r, s, w)):
                tx.add(constraint, step.scope)
            layout[kind] = RowLayout(beg, own, shared, name, end)
        step.layouts.append(layout)
    in_operands = {
        name
        for o in spec.operands
        for a in _axes(o)
        for name in (
            (a.name,) if isinstance(a, es.Label)
            else (a.over, a.kernel) if isinstance(a, es.AffineAxis)
            else ()
        )
    }  # fmt: skip
    for axis in _axes(spec.result):
        if isinstance(axis, es.Label) and axis.name not in in_operands:
            step.result_only_labels[axis.name] = (axis, labels[axis.name])


def _axes(shape_spec: es.ShapeSpec) -> list[es.AxisSpec]:
    rows = (shape_spec.row(kind) for kind in KINDS)
    return [axis for row in rows if row is not None for axis in row.axes]


def _check_result_labels(step: UpdateStep, *, closed: bool) -> None:
    """A result axis whose label is in no operand takes its dim from elsewhere (the result's
    given dims): once the step is solved (`closed`: once its shapes are closed), it must have
    one that no default made up."""
    assert isinstance(step.logic, Einsum)
    for label, dim in step.result_only_labels.values():
        if t.was_defaulted_dim(dim) if closed else not isinstance(t.resolve_dim(dim), t.Dim):
            line, column = label.position or (1, 1)
            raise SpecSyntaxError(
                f"the result axis {label.name!r} is in no operand and nothing gives its dim: "
                "name it in an operand, use a fixed index, or give the result's dims",
                step.logic.spec,
                line,
                column,
            )


def _axis_ref(
    axis: es.AxisSpec,
    labels: dict[str, t.DimVar],
    logic: Einsum,
    exact_fixed: bool,
    where: sv.Where,
    is_result: bool,
) -> AxisRef:
    if isinstance(axis, es.Label):
        return AxisRef("label", labels.setdefault(axis.name, t.DimVar(axis.name)), axis.name)
    if isinstance(axis, es.Placeholder):
        return AxisRef("placeholder", t.DimVar("_"))
    if isinstance(axis, es.FixedIndex):
        dim = t.Dim(axis.value + 1) if exact_fixed else t.DimVar(min_size=axis.value + 1)
        return AxisRef("fixed", dim, index=axis.value)
    if isinstance(axis, es.AffineAxis):
        if is_result:
            raise ShapeError(
                f"einsum {logic.spec!r}: an affine axis ({es.print_spec(logic.parsed)}) indexes "
                "an operand; the result's axes are labels"
            )
        over = labels.setdefault(axis.over, t.DimVar(axis.over))
        kernel = None
        if axis.kernel == "_":
            kernel = t.DimVar("_")
        elif axis.kernel is not None:
            kernel = labels.setdefault(axis.kernel, t.DimVar(axis.kernel))
        dim = t.DimVar(f"{axis.over}_in")
        constraint = sv.AffineDim(
            dim, over, kernel, axis.stride, axis.offset, axis.dilation, axis.padding, where
        )
        return AxisRef("affine", dim, axis.over, constraint=constraint, kernel=axis.kernel)
    if isinstance(logic, Concat) and is_result:
        parts = tuple(labels[p.name] for p in axis.parts)  # checked by Concat
        dim = t.DimVar("concat")
        return AxisRef("concat", dim, constraint=sv.ConcatDim(dim, parts, where))
    raise ShapeError(
        f"einsum {logic.spec!r}: concatenation `^` is not an einsum; use oc.concat(spec, ...)"
    )


def close(shapes: Iterable[Shape]) -> None:
    """Settle every variable of `shapes` and of the operations that produce them, transitively;
    a parameter left undetermined is an error. Operations that none of them reaches (an
    abandoned expression) are left alone. On an error, the shapes are left as they were."""
    reached, steps = _reach(shapes)
    if not steps and all(s.is_solved for s in reached):
        return  # closed already (compiling closes the code's shapes again)
    rows = [s.original_row(k) for s in reached for k in KINDS]
    rows.extend(r for step in steps for r in step.scope.extra_rows)
    leaf_rows = [s.original_row(k) for s in reached if not s.computed for k in KINDS]
    tx = Closing([step.scope for step in steps], _fewest_axes_vars(reached))
    try:
        tx.close(rows, leaf_rows)
        for shape in reached:
            if shape.dims_required:
                _check_param(shape)
        for step in steps:
            if step.result_only_labels:
                _check_result_labels(step, closed=True)
    except sv.Mismatch as e:
        error = _shape_error(e, sv.Where(lambda: "closing shapes"))
        tx.rollback()
        raise error from None
    except BaseException:
        tx.rollback()
        raise
    for step in steps:
        step.scope.extra_rows = []
    for shape in reached:
        shape.open_steps = []


def settle(shape: Shape, dims: tuple[int, ...], what: str) -> None:
    """Give `shape` the dims of an array whose axes are in memory order (batch, output, input):
    the rows it does not know yet take no axes, its unknown dims take the array's. An array that
    does not fit is a ShapeError naming `what`, the rows and both shapes; the shape is then left
    as it was."""
    rows = {kind: shape.row(kind) for kind in KINDS}
    expected = [d for kind in MEMORY_ORDER for d in (*rows[kind].beg, *rows[kind].end)]
    fits = len(expected) == len(dims) and all(
        not isinstance(d, t.Dim) or d.size == n for d, n in zip(expected, dims, strict=False)
    )
    tx = sv.Transaction()
    try:
        if not fits:
            raise sv.Mismatch("")
        for row in rows.values():
            if row.var is not None:
                tx.bind_row(row.var, t.Row())
        for d, n in zip(expected, dims, strict=True):
            tx.unify_dims(d, t.Dim(n))
        tx.run()
    except sv.Mismatch as e:
        given = ", ".join(f"{kind} {_row_text(rows[kind])}" for kind in MEMORY_ORDER)
        open_rows = " (rows not given take no axes)" if any(r.var for r in rows.values()) else ""
        cause = f": {_shape_error(e, sv.Where(lambda: 'settling'))}" if e.detail else ""
        tx.rollback()
        raise ShapeError(
            f"{what} has {given} (shape {shape}), so its array must have shape "
            f"{_expected_text(expected)}{open_rows}; got an array of shape {tuple(dims)}{cause}"
        ) from None


def _row_text(row: t.Row) -> str:
    if row.var is not None and not row.beg and not row.end:
        return "not given"
    dims = [t.dim_str(d) for d in (*row.beg, *row.end)]
    return f"[{', '.join(dims)}{', and more' if row.var is not None else ''}]"


def _expected_text(dims: list[t.DimLike]) -> str:
    inner = ", ".join(t.dim_str(d) for d in dims)
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


def _reach(shapes: Iterable[Shape]) -> tuple[list[Shape], list[UpdateStep]]:
    """The shapes and the open update steps reachable from `shapes` through the steps that
    produce them, each in creation order."""
    seen: dict[int, Shape] = {}
    steps: dict[int, UpdateStep] = {}
    stack = list(shapes)
    while stack:
        shape = stack.pop()
        if id(shape) in seen:
            continue
        seen[id(shape)] = shape
        for step in shape.open_steps:
            if id(step) not in steps:
                steps[id(step)] = step
                stack.extend(step.operands)
    return (
        sorted(seen.values(), key=lambda s: s.serial),
        sorted(steps.values(), key=lambda s: s.serial),
    )


def _check_param(shape: Shape) -> None:
    for kind in KINDS:
        original = shape.original_row(kind)
        undetermined = kind != "batch" and t.was_defaulted_row(original)
        undetermined = undetermined or any(t.was_defaulted_dim(d) for d in t.dim_vars(original))
        row = t.resolve_row(original)
        undetermined = undetermined or any(t.was_defaulted_dim(d) for d in (*row.beg, *row.end))
        if undetermined:
            raise ShapeError(
                f"cannot infer the {kind} dims of parameter {shape.label!r} (got {shape}): "
                f"nothing in its uses determines them; specify its dims "
                f"(e.g. {kind}_dims=[...], or `o=[...]`/`i=[...]` in an inline parameter)"
            )


__all__ = [
    "Compose",
    "Concat",
    "Einsum",
    "Logic",
    "Pointwise",
    "Shape",
    "Transpose",
    "UpdateStep",
    "close",
    "propagate",
    "settle",
]

"""From cd statements (parsed by `dsl.syntax`) to tensor-level code.

Operations bind the slots `v`/`g` (result), `v1`/`g1`, `v2`/`g2`, `v3`/`g3` (operands) and use
the shape update of the operation for projections; the public `cd` binds names by keyword and
builds a shape update per statement from its `~logic`.
"""

from __future__ import annotations

from collections.abc import Callable

from arrayjit import assignments as asg
from ocannl_py import shape as shapes
from ocannl_py.code import Assign, Code, Slot
from ocannl_py.dsl import syntax as syn
from ocannl_py.errors import SpecSyntaxError
from ocannl_py.tensor import Tensor


def logic_of(logic: str | None) -> shapes.Logic:
    if logic in (None, "."):
        return shapes.Pointwise()
    if logic == "@":
        return shapes.Compose()
    if logic == "T":
        return shapes.Transpose()
    return shapes.Einsum(logic)


def rhs_refs(expr: syn.CdExpr) -> list[syn.Ref]:
    """The tensor references of an rhs, left to right."""
    if isinstance(expr, syn.Ref):
        return [expr]
    if isinstance(expr, syn.Number):
        return []
    children = {
        syn.Unop: lambda e: (e.arg,),
        syn.Binop: lambda e: (e.left, e.right),
        syn.Ternop: lambda e: (e.a, e.b, e.c),
    }[type(expr)](expr)
    return [r for c in children for r in rhs_refs(c)]


def rhs_expression(expr: syn.CdExpr, arg_of: Callable[[syn.Ref], int]) -> asg.RhsExpr:
    if isinstance(expr, syn.Ref):
        return asg.Arg(arg_of(expr))
    if isinstance(expr, syn.Number):
        return asg.Lit(expr.value)
    if isinstance(expr, syn.Unop):
        args = (expr.arg,)
    elif isinstance(expr, syn.Binop):
        args = (expr.left, expr.right)
    else:
        args = (expr.a, expr.b, expr.c)
    return asg.Call(expr.op, tuple(rhs_expression(a, arg_of) for a in args))


def _statement(
    stmt: syn.CdStatement,
    resolve: Callable[[syn.Ref], tuple[Slot, int | None] | None],
    step_of: Callable[[syn.CdStatement, list[Slot]], tuple[shapes.UpdateStep, int, list[int]]]
    | None,
    default_step: shapes.UpdateStep | None,
    text: str,
) -> Assign | None:
    """One Assign, or None when the lhs is a gradient that does not exist."""
    lhs = resolve(stmt.lhs)
    if lhs is None:
        return None
    refs = rhs_refs(stmt.rhs)
    operands: list[tuple[Slot, int | None]] = []
    index_of: dict[tuple, int] = {}
    operand_of: dict[int, int] = {}  # id(ref) -> operand index
    for ref in refs:
        resolved = resolve(ref)
        if resolved is None:
            return None  # reads a gradient that does not exist: nothing flows here
        slot, role = resolved
        # One operand per buffer and role: the same tensor in two roles (`x +* "ij;jk=>ik" x`)
        # is read at two different indices. Without a role, each reference is its own operand.
        key = (slot.tensor.id, slot.grad, role) if role is not None else (id(ref),)
        if key not in index_of:
            index_of[key] = len(operands)
            operands.append(resolved)
        operand_of[id(ref)] = index_of[key]

    def arg_of(ref: syn.Ref) -> int:
        return operand_of[id(ref)]

    expr = rhs_expression(stmt.rhs, arg_of)
    slots = [s for s, _ in operands]
    if stmt.logic is None and default_step is not None:
        step, lhs_role, rhs_roles = default_step, lhs[1], [r for _, r in operands]
    else:
        step, lhs_role, rhs_roles = step_of(stmt, [lhs[0], *slots])
    return Assign(
        lhs[0], stmt.accum, stmt.zero_first, expr, tuple(slots), step, lhs_role,
        tuple(rhs_roles), text,
    )  # fmt: skip


def _fresh_step(
    stmt: syn.CdStatement, slots: list[Slot]
) -> tuple[shapes.UpdateStep, int, list[int]]:
    lhs, *rhses = slots
    logic = logic_of(stmt.logic)
    step = shapes.propagate(
        logic, lhs.tensor.shape, [s.tensor.shape for s in rhses], op_label=f"cd {lhs}"
    )
    return step, 0, list(range(1, len(rhses) + 1))


def op_code(
    text: str,
    result: Tensor,
    operands: tuple[Tensor, ...],
    step: shapes.UpdateStep,
    scratch: dict[str, Tensor] | None = None,
) -> Code:
    """The code of an operation: slots bound to the result and operands, projections of `step`;
    `scratch` names buffers shaped like the result (indexed as the result)."""
    statements = syn.parse_cd(text)
    tensors = (result, *operands)
    scratch = scratch or {}

    def resolve(ref: syn.Ref) -> tuple[Slot, int] | None:
        name = ref.name
        if name in scratch and not ref.grad:
            return Slot(scratch[name]), 0
        if name[0] not in "vg" or not (name[1:] == "" or name[1:].isdigit()):
            raise SpecSyntaxError(f"unknown slot {name!r} in an operation's code", text, *ref.pos)
        role = int(name[1:] or 0)
        if role >= len(tensors):
            raise SpecSyntaxError(
                f"slot {name!r}: the operation has {len(operands)} operand(s)", text, *ref.pos
            )
        grad = name[0] == "g" or ref.grad
        tensor = tensors[role]
        if grad and not tensor.requires_grad:
            return None
        return Slot(tensor, grad), role

    out = [_statement(s, resolve, _fresh_step, step, syn.format_cd([s])) for s in statements]
    return Code([a for a in out if a is not None])


def cd(text: str, **names: Tensor) -> Code:
    """Assignment code from OCANNL's %cd syntax, with tensors bound by keyword."""
    if not isinstance(text, str):
        raise TypeError(
            f"cd: argument 'text' must be a string of cd DSL, got {type(text).__name__} {text!r:.60}"
        )
    statements = syn.parse_cd(text)

    def resolve(ref: syn.Ref) -> tuple[Slot, None]:
        if ref.name not in names:
            bound = ", ".join(sorted(names)) or "none"
            raise SpecSyntaxError(f"unbound name {ref.name!r} (bound: {bound})", text, *ref.pos)
        tensor = names[ref.name]
        if not isinstance(tensor, Tensor):
            raise TypeError(f"cd: {ref.name!r} must be a Tensor, got {type(tensor).__name__}")
        if ref.grad and not tensor.requires_grad:
            raise ValueError(
                f"cd: {ref.name}.grad does not exist: {tensor.label!r} has no gradient"
            )
        return Slot(tensor, ref.grad), None

    return Code([_statement(s, resolve, _fresh_step, None, syn.format_cd([s])) for s in statements])

"""Tensor-level assignment code: statements over tensors' value and gradient buffers whose
projections come from shape inference. It turns into arrayjit assignments once shapes are closed
(`Code.lower`), which is why it is kept symbolic until a routine is compiled."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arrayjit import assignments as asg
from arrayjit import indexing, ops
from arrayjit.indexing import Lookup, Projections
from arrayjit.tnode import TNode
from ocannl_py import shape
from ocannl_py.shape import projections

if TYPE_CHECKING:
    from ocannl_py.tensor import Tensor


@dataclass(frozen=True, eq=False)
class Slot:
    """The value buffer of a tensor, or its gradient buffer."""

    tensor: Tensor
    grad: bool = False

    def __post_init__(self) -> None:
        self.tensor.graph_refs += 1

    def __del__(self) -> None:
        self.tensor.graph_refs -= 1

    @property
    def tnode(self) -> TNode:
        return self.tensor.grad_node if self.grad else self.tensor.value_node

    def __str__(self) -> str:
        return f"{self.tensor.label}.grad" if self.grad else self.tensor.label


@dataclass(frozen=True, eq=False)
class Assign:
    """`lhs accum= expr(rhses)` where each operand plays a role in the shape update `step`:
    role 0 is the step's result, role k its operand k; operands with role None are scalars."""

    lhs: Slot
    accum: str | None
    zero_first: bool
    expr: asg.RhsExpr
    rhses: tuple[Slot, ...]
    step: shape.UpdateStep
    lhs_role: int
    rhs_roles: tuple[int, ...]
    text: str = ""
    #: A gather or scatter: `(source, target)` roles, the target's input axis (the only one) is
    #: indexed by the values of the source (int32, with no axes of its own besides the step's)
    #: instead of being iterated over.
    lookup: tuple[int, int] | None = None


@dataclass(frozen=True, eq=False)
class Fill:
    """Fill a buffer from a source: constant, range of shape or values."""

    lhs: Slot
    source: asg.FetchSource


@dataclass(frozen=True, eq=False)
class Raw:
    """arrayjit code built by a callback once shapes are closed (e.g. random initialisation)."""

    build: object  # Callable[[], asg.Assignments]
    tensors: tuple[Tensor, ...]


Statement = Assign | Fill | Raw


class Code:
    """A sequence of tensor-level statements; `a + b` runs `a` then `b`."""

    def __init__(self, statements: Iterable[Statement] = (), label: str = "") -> None:
        self.statements: tuple[Statement, ...] = tuple(statements)
        self.label = label

    def __add__(self, other: Code) -> Code:
        if not isinstance(other, Code):
            return NotImplemented
        return Code(self.statements + other.statements, self.label or other.label)

    def __bool__(self) -> bool:
        return bool(self.statements)

    def tensors(self) -> list[Tensor]:
        """Every tensor the code reads or writes, in order of first appearance."""
        seen: dict[int, Tensor] = {}
        for stmt in self.statements:
            for t in _tensors_of(stmt):
                seen.setdefault(t.id, t)
        return list(seen.values())

    def written(self) -> set[int]:
        """Ids of the tensors some statement writes."""
        ids: set[int] = set()
        for stmt in self.statements:
            if isinstance(stmt, Raw):
                ids.update(t.id for t in stmt.tensors)
            else:
                ids.add(stmt.lhs.tensor.id)
        return ids

    def with_constants(self) -> Code:
        """This code preceded by the definitions of the constants it reads (numbers, literals,
        ranges): they are cheap, and a number is computed inline where it is read."""
        written = self.written()
        constants = Code()
        for t in self.tensors():
            if not t.operands and t.forward_code and t.id not in written:
                constants = constants + t.forward_code
        return constants + self if constants else self

    def lower(self, values: Mapping[int, TNode] | None = None) -> asg.Assignments:
        """Close the shapes involved, then build arrayjit assignments. `values` replaces the
        value buffers of some tensors (by tensor id) with others (`ocannl_py.fusion`)."""
        shape.close([t.shape for t in self.tensors()])
        cache: dict[int, Projections] = {}
        nodes = values or {}
        return asg.seq([_lower_statement(s, cache, nodes) for s in self.statements])

    def __str__(self) -> str:
        return "\n".join(_statement_text(s) for s in self.statements)

    def __repr__(self) -> str:
        return f"Code({len(self.statements)} statements)"


def _tensors_of(stmt: Statement) -> Iterator[Tensor]:
    if isinstance(stmt, Assign):
        yield stmt.lhs.tensor
        for r in stmt.rhses:
            yield r.tensor
    elif isinstance(stmt, Fill):
        yield stmt.lhs.tensor
    else:
        yield from stmt.tensors


def _statement_text(stmt: Statement) -> str:
    if isinstance(stmt, Assign):
        accum = "" if stmt.accum is None else ops.get(stmt.accum).symbol or f"@{stmt.accum}"
        assign = "=" + (":" if stmt.accum is None or stmt.zero_first else "") + accum
        rhs = asg.rhs_string(stmt.expr, [str(r) for r in stmt.rhses], top=True)
        return f"{stmt.lhs} {assign} {rhs}"
    if isinstance(stmt, Fill):
        return f"{stmt.lhs} := {stmt.source}"
    return "<generated code>"


def _role_index(p: Projections, role: int):
    return p.project_lhs if role == 0 else p.project_rhs[role - 1]


def _forward_projections(stmt: Assign, cache: dict) -> tuple[Projections, dict[int, int]]:
    """The projections of the statement's step and where each role's index is in them. A
    concatenation has projections per operand: a statement between the result and operand k
    (`v =: v2`, `g2 =+ g`) takes operand k's, where k is the role 1."""
    key = id(stmt.step)
    if key not in cache:
        if isinstance(stmt.step.logic, shape.Concat):
            cache[key] = projections.derive_parts(stmt.step)
        else:
            cache[key] = projections.derive(stmt.step)
    forward = cache[key]
    if isinstance(forward, Projections):
        return forward, {}
    (operand,) = {stmt.lhs_role, *stmt.rhs_roles} - {0}
    return forward[operand - 1], {operand: 1}


def _node(slot: Slot, nodes: Mapping[int, TNode]) -> TNode:
    return slot.tnode if slot.grad else nodes.get(slot.tensor.id) or slot.tnode


def _lower_statement(stmt: Statement, cache: dict, nodes: Mapping[int, TNode]) -> asg.Assignments:
    if isinstance(stmt, Fill):
        return asg.Fetch(_node(stmt.lhs, nodes), stmt.source)
    if isinstance(stmt, Raw):
        return stmt.build()
    forward, roles = _forward_projections(stmt, cache)
    if stmt.lookup is not None:
        return _lower_lookup(stmt, forward)
    proj = Projections(
        forward.product_space,
        forward.product_iterators,
        _role_index(forward, roles.get(stmt.lhs_role, stmt.lhs_role)),
        tuple(_role_index(forward, roles.get(r, r)) for r in stmt.rhs_roles),
        debug=stmt.text,
        guarded=forward.guarded,
    )
    return asg.Accum(
        _node(stmt.lhs, nodes),
        stmt.accum,
        stmt.expr,
        tuple(_node(r, nodes) for r in stmt.rhses),
        proj,
        stmt.zero_first,
    )


def _lower_lookup(stmt: Assign, forward: Projections) -> asg.Accum:
    """The Accum of a gather or scatter: the iterator over the target's input axis becomes a
    `Lookup` of the source operand, and leaves the iteration space."""
    source, target = stmt.lookup
    looked_up = _role_index(forward, target)[-1]
    if not isinstance(looked_up, indexing.Iterator):
        raise ValueError(f"{stmt.text}: the looked-up axis is not iterated over")
    lookup = Lookup(stmt.rhs_roles.index(source))

    def index(role: int) -> tuple:
        return tuple(lookup if i == looked_up else i for i in _role_index(forward, role))

    keep = [k for k, it in enumerate(forward.product_iterators) if it != looked_up]
    proj = Projections(
        tuple(forward.product_space[k] for k in keep),
        tuple(forward.product_iterators[k] for k in keep),
        index(stmt.lhs_role),
        tuple(index(r) for r in stmt.rhs_roles),
        debug=stmt.text,
    )
    rhses = tuple(r.tnode for r in stmt.rhses)
    return asg.Accum(stmt.lhs.tnode, stmt.accum, stmt.expr, rhses, proj, stmt.zero_first)

"""Assignments: what is computed, before any decision about loops.

`Accum` is the one computing statement: `lhs[p_lhs] accum= op(rhs_1[p_1], ...)` over the
iteration space of its projections. `Fetch` fills a buffer from a source. Codes compose with `+`.
"""

from __future__ import annotations

from collections.abc import Iterator as PyIterator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from arrayjit import ops
from arrayjit.indexing import Lookup, Projections
from arrayjit.tnode import TNode


class Assignments:
    """Base of assignment code; `a + b` runs `a` then `b`."""

    def __add__(self, other: Assignments) -> Assignments:
        if not isinstance(other, Assignments):
            return NotImplemented
        return Seq((*flatten(self), *flatten(other)))

    def __str__(self) -> str:
        return to_string(self)


@dataclass(frozen=True, eq=False)
class Noop(Assignments):
    pass


@dataclass(frozen=True, eq=False)
class Comment(Assignments):
    text: str


@dataclass(frozen=True, eq=False)
class Seq(Assignments):
    items: tuple[Assignments, ...]


@dataclass(frozen=True)
class Arg:
    """Operand `index` of an Accum, read at its projected index."""

    index: int


@dataclass(frozen=True)
class Lit:
    value: float


@dataclass(frozen=True)
class Call:
    """An expression over an Accum's operands, e.g. `g * v1 / (v2 * v2)`, computed per cell."""

    op: str
    args: tuple[Call | Arg | Lit, ...]


RhsExpr = Call | Arg | Lit


def _check_rhs(expr: RhsExpr, n_rhs: int, where: str) -> None:
    if isinstance(expr, Arg):
        if not 0 <= expr.index < n_rhs:
            raise ValueError(f"{where}: operand {expr.index} out of {n_rhs}")
    elif isinstance(expr, Call):
        ops.check_arity(expr.op, len(expr.args))
        for a in expr.args:
            _check_rhs(a, n_rhs, where)
    elif not isinstance(expr, Lit):
        raise TypeError(f"{where}: not an operand expression: {expr!r}")


@dataclass(frozen=True, eq=False)
class Accum(Assignments):
    """`lhs accum= op(rhses)` over `projections`. `accum=None` overwrites (`=:`).

    `op` is an op name applied to the rhses in order, or a `Call` tree over them (`Arg(k)`).
    `zero_first`: fill the lhs with the neutral element of `accum` before accumulating (`=:+`).
    An axis projected by a `Lookup(k)` is indexed by the values of operand `k` (int32): a
    gather when it is an operand's axis, a scatter when it is the lhs's.
    """

    lhs: TNode
    accum: str | None
    op: str | Call
    rhses: tuple[TNode, ...]
    projections: Projections
    zero_first: bool = False

    @property
    def rhs_expr(self) -> RhsExpr:
        if isinstance(self.op, str):
            return Call(self.op, tuple(Arg(k) for k in range(len(self.rhses))))
        return self.op

    def __post_init__(self) -> None:
        if not isinstance(self.lhs, TNode) or not all(isinstance(r, TNode) for r in self.rhses):
            raise TypeError("Accum: lhs and rhses must be TNodes")
        if isinstance(self.op, str):
            ops.check_arity(self.op, len(self.rhses))
        else:
            _check_rhs(self.op, len(self.rhses), f"Accum into {self.lhs.label!r}")
        if self.accum is not None:
            ops.check_arity(self.accum, 2)
            ops.neutral(self.accum, self.lhs.dtype)
        elif self.zero_first:
            raise ValueError("Accum: zero_first needs an accumulate op")
        if len(self.projections.project_rhs) != len(self.rhses):
            raise ValueError(
                f"Accum into {self.lhs.label!r}: {len(self.rhses)} operands but projections for "
                f"{len(self.projections.project_rhs)}"
            )
        self.projections.check_against(
            self.lhs.dims, [r.dims for r in self.rhses], f"Accum into {self.lhs.label!r}"
        )
        p = self.projections
        for index in (*p.project_lhs, *(i for proj in p.project_rhs for i in proj)):
            if isinstance(index, Lookup) and self.rhses[index.operand].dtype.name != "int32":
                raise TypeError(
                    f"Accum into {self.lhs.label!r}: indices are read from "
                    f"{self.rhses[index.operand].label!r}, which holds "
                    f"{self.rhses[index.operand].dtype} values, not int32"
                )
        if self.accum is None and self.projections.reduction_iterators:
            raise ValueError(
                f"Accum into {self.lhs.label!r}: overwriting (=:) while iterating over "
                f"{', '.join(map(str, self.projections.reduction_iterators))} that the lhs does "
                "not use; use an accumulate op (=:+) to reduce"
            )


@dataclass(frozen=True)
class Constant:
    value: float


@dataclass(frozen=True)
class RangeOfShape:
    """Each cell holds its row-major offset; on a one-axis buffer this is 0..n-1."""


@dataclass(frozen=True, eq=False)
class Values:
    array: np.ndarray


FetchSource = Constant | RangeOfShape | Values


@dataclass(frozen=True, eq=False)
class Fetch(Assignments):
    lhs: TNode
    source: FetchSource

    def __post_init__(self) -> None:
        if isinstance(self.source, Values) and self.source.array.size != self.lhs.size:
            raise ValueError(
                f"Fetch into {self.lhs.label!r}: {self.source.array.size} values for "
                f"{self.lhs.size} cells (dims {self.lhs.dims})"
            )


def flatten(code: Assignments) -> PyIterator[Assignments]:
    if isinstance(code, Seq):
        for item in code.items:
            yield from flatten(item)
    elif not isinstance(code, Noop):
        yield code


def seq(codes: Sequence[Assignments]) -> Assignments:
    items = tuple(c for code in codes for c in flatten(code))
    return Seq(items) if items else Noop()


def _index_str(proj) -> str:
    return "[" + ", ".join(map(str, proj)) + "]"


def statement_string(stmt: Assignments) -> str:
    if isinstance(stmt, Comment):
        return f"# {stmt.text}"
    if isinstance(stmt, Fetch):
        src = stmt.source
        desc = (
            f"{src.value}"
            if isinstance(src, Constant)
            else "range_of_shape"
            if isinstance(src, RangeOfShape)
            else f"values{list(src.array.shape)}"
        )
        return f"{stmt.lhs.name} := {desc}"
    if isinstance(stmt, Accum):
        p = stmt.projections
        lhs = stmt.lhs.name + _index_str(p.project_lhs)
        args = [r.name + _index_str(idx) for r, idx in zip(stmt.rhses, p.project_rhs, strict=True)]
        rhs = rhs_string(stmt.rhs_expr, args, top=True)
        assign = (
            "=:"
            if stmt.accum is None
            else "=" + (":" if stmt.zero_first else "") + (ops.get(stmt.accum).symbol or stmt.accum)
        )
        space = ", ".join(
            f"{it}<{n}" for it, n in zip(p.product_iterators, p.product_space, strict=True)
        )
        return f"{lhs} {assign} {rhs}    for {space}" if space else f"{lhs} {assign} {rhs}"
    raise TypeError(f"not a statement: {stmt!r}")


def rhs_string(expr: RhsExpr, args: list[str], top: bool = False) -> str:
    if isinstance(expr, Arg):
        return args[expr.index]
    if isinstance(expr, Lit):
        return f"{expr.value:g}"
    parts = [rhs_string(a, args) for a in expr.args]
    op = ops.get(expr.op)
    if expr.op == "identity":
        return parts[0]
    if op.arity == 2 and op.symbol:
        text = f"{parts[0]} {op.symbol} {parts[1]}"
        return text if top else f"({text})"
    if op.arity == 1 and op.symbol:
        return f"{op.symbol}{parts[0]}"
    return f"{expr.op}({', '.join(parts)})"


def to_string(code: Assignments) -> str:
    """A readable listing, one statement per line."""
    return "\n".join(statement_string(s) for s in flatten(code))

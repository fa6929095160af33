"""The terms of shape inference: solved dims, dim and row variables, rows, and their resolution.

A row is `beg + row_var + end` (or just `end` when it has no row variable). A variable is solved
by binding it (`var.solution`); `resolve_dim` and `resolve_row` follow the bindings. Bindings are
made by the solver (`solver.py`), which records them so that they can be undone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_ids = itertools.count(1)


@dataclass(frozen=True)
class Dim:
    """A solved axis. `weak`: a number's axis of dim 1, which broadcasts into any row, even one
    without axes, and gives a result an axis only when nothing else gives that row any; it is
    the number's own (a variable bound to it gets a plain dim 1)."""

    size: int
    label: str | None = None
    weak: bool = field(default=False, compare=False)

    def plain(self) -> Dim:
        return Dim(self.size, self.label) if self.weak else self

    def __str__(self) -> str:
        return f"{self.label}={self.size}" if self.label else str(self.size)


class DimVar:
    """An unknown dim. `min_size`: a fixed index `i` on this axis needs a dim above `i`."""

    def __init__(self, name: str = "", min_size: int = 1) -> None:
        self.id = next(_ids)
        self.name = name
        self.min_size = min_size
        self.solution: DimVar | Dim | None = None
        self.defaulted = False  # closed by default, not by a constraint
        self.bounded = False  # a known dim broadcasts into it: closing it to 1 is not a guess
        self.watchers: list = []  # pending constraints to look at again once it is bound

    def __repr__(self) -> str:
        return f"${self.name or self.id}"


class RowVar:
    """An unknown sequence of axes."""

    def __init__(self, name: str = "") -> None:
        self.id = next(_ids)
        self.name = name
        self.solution: Row | None = None
        self.defaulted = False
        self.bounded = False  # a row of known length broadcasts into it
        self.axes_around = 0  # axes that every row holding it has besides it
        self.watchers: list = []

    def __repr__(self) -> str:
        return f"..{self.name or self.id}.."


DimLike = Dim | DimVar
Var = DimVar | RowVar


@dataclass(frozen=True)
class Row:
    beg: tuple[DimLike, ...] = ()
    var: RowVar | None = None
    end: tuple[DimLike, ...] = ()

    def __post_init__(self) -> None:
        if self.var is None and self.beg:
            object.__setattr__(self, "end", self.beg + self.end)
            object.__setattr__(self, "beg", ())

    @property
    def closed(self) -> bool:
        return self.var is None

    def __str__(self) -> str:
        items = [dim_str(d) for d in self.beg]
        if self.var is not None:
            items.append("...")
        items.extend(dim_str(d) for d in self.end)
        return ",".join(items)


def dim_str(d: DimLike) -> str:
    """A dim as printed in a shape: its size, or `?` while unknown."""
    return str(d) if isinstance(d, Dim) else "?"


def closed_row(dims: Iterable[int]) -> Row:
    return Row((), None, tuple(Dim(int(d)) for d in dims))


def resolve_dim(d: DimLike) -> DimLike:
    while isinstance(d, DimVar) and d.solution is not None:
        d = d.solution
    return d


#: How many transactions have been undone: a solution seen before may be gone since.
_undone = itertools.count()
_undone_now = 0


def note_undone() -> None:
    """Record that a transaction undid its bindings (cached solutions become stale)."""
    global _undone_now
    _undone_now = next(_undone) + 1


def undone() -> int:
    return _undone_now


def resolve_row(row: Row) -> Row:
    if row.var is None or row.var.solution is None:
        # Common case: nothing to substitute but solved dim variables, often none at all.
        for d in row.beg + row.end:
            if isinstance(d, DimVar) and d.solution is not None:
                break
        else:
            return row
    beg, var, end = list(row.beg), row.var, list(row.end)
    while var is not None and var.solution is not None:
        sol = var.solution
        beg.extend(sol.beg)
        end[:0] = sol.end
        var = sol.var
    return Row(tuple(resolve_dim(d) for d in beg), var, tuple(resolve_dim(d) for d in end))


def is_solved(row: Row) -> bool:
    row = resolve_row(row)
    return row.closed and all(isinstance(d, Dim) for d in row.end)


def row_sizes(row: Row) -> list[int] | None:
    row = resolve_row(row)
    if not row.closed or not all(isinstance(d, Dim) for d in row.end):
        return None
    return [d.size for d in row.end]  # type: ignore[union-attr]


def dim_vars(row: Row) -> Iterator[DimVar]:
    """The dim variables of a row as it is written (resolve it first for the unknown ones)."""
    for d in (*row.beg, *row.end):
        if isinstance(d, DimVar):
            yield d


def row_unknowns(row: Row) -> list[Var]:
    """The variables a resolved row still waits on: its row variable first, then its dims."""
    found: list[Var] = [] if row.var is None else [row.var]
    found.extend(dim_vars(row))
    return found


def was_defaulted_dim(d: DimLike) -> bool:
    """Whether closing guessed this dim (or a variable it was bound through)."""
    while isinstance(d, DimVar):
        if d.defaulted:
            return True
        if d.solution is None:
            return False
        d = d.solution
    return False


def was_defaulted_row(row: Row) -> bool:
    """Whether closing guessed the row variable of this row (or one it was bound through)."""
    var = row.var
    while var is not None:
        if var.defaulted:
            return True
        if var.solution is None:
            return False
        var = var.solution.var
    return False


__all__ = [
    "Dim",
    "DimLike",
    "DimVar",
    "Row",
    "RowVar",
    "Var",
    "closed_row",
    "dim_str",
    "dim_vars",
    "is_solved",
    "resolve_dim",
    "resolve_row",
    "row_sizes",
    "row_unknowns",
    "was_defaulted_dim",
    "was_defaulted_row",
]

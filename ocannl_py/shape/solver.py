"""The shape constraint solver: dim and row variables, equations, broadcasts, and closing.

A row is `beg + row_var + end` (or just `end` when it has no row variable). Variables are solved by
binding them (`var.solution`); equations are solved at once, broadcasts (`cur >= subr`: the subr
row/dim broadcasts into cur) as soon as they are decided and otherwise kept pending. Closing picks
the greatest solution for a pending subr (a parameter takes the shape its use demands), then
defaults what nothing constrains: a dim to 1, a row to no axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

_ids = itertools.count(1)


class Mismatch(Exception):
    """Raised by the solver with what disagrees; shape.py adds which tensors and which operation."""

    def __init__(self, detail: str, where: Where | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.where = where


@dataclass(frozen=True)
class Dim:
    """A solved axis."""

    size: int
    label: str | None = None

    def __str__(self) -> str:
        return f"{self.label}={self.size}" if self.label else str(self.size)


@dataclass(frozen=True)
class Origin:
    """Which tensor's row a variable was created for: for errors and the parameter check."""

    shape: object  # ocannl_py.shape.Shape; kept untyped to avoid a cycle
    kind: str


class DimVar:
    """An unknown dim. `min_size`: a fixed index `i` on this axis needs a dim above `i`."""

    def __init__(self, name: str = "", min_size: int = 1) -> None:
        self.id = next(_ids)
        self.name = name
        self.min_size = min_size
        self.solution: DimVar | Dim | None = None
        self.origins: list[Origin] = []
        self.defaulted = False  # closed by default, not by a constraint
        self.bounded = False  # a known dim broadcasts into it: closing it to 1 is not a guess

    def __repr__(self) -> str:
        return f"${self.name or self.id}"


class RowVar:
    """An unknown sequence of axes."""

    def __init__(self, name: str = "", origin: Origin | None = None) -> None:
        self.id = next(_ids)
        self.name = name
        self.solution: Row | None = None
        self.origins: list[Origin] = [origin] if origin else []
        self.defaulted = False
        self.bounded = False  # a row of known length broadcasts into it

    def __repr__(self) -> str:
        return f"..{self.name or self.id}.."


DimLike = Dim | DimVar


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
        items = [_dim_str(d) for d in self.beg]
        if self.var is not None:
            items.append("...")
        items.extend(_dim_str(d) for d in self.end)
        return ",".join(items)


def _dim_str(d: DimLike) -> str:
    return str(d) if isinstance(d, Dim) else "?"


def closed_row(dims: Iterable[int]) -> Row:
    return Row((), None, tuple(Dim(int(d)) for d in dims))


# ---------------------------------------------------------------------------------------------
# Resolution


def resolve_dim(d: DimLike) -> DimLike:
    while isinstance(d, DimVar) and d.solution is not None:
        d = d.solution
    return d


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


def _bind_dim(var: DimVar, value: DimLike) -> None:
    if isinstance(value, Dim) and value.size < var.min_size:
        raise Mismatch(f"dim {value.size} is too small for fixed index {var.min_size - 1}")
    if isinstance(value, DimVar):
        value.min_size = max(value.min_size, var.min_size)
        value.origins.extend(var.origins)
        value.bounded = value.bounded or var.bounded
    var.solution = value


def _bind_row(var: RowVar, value: Row) -> None:
    if value.var is var:
        raise Mismatch("a row variable would contain itself")
    if value.var is not None:
        value.var.origins.extend(var.origins)
        value.var.bounded = value.var.bounded or var.bounded
    for d in (*value.beg, *value.end):
        if isinstance(d, DimVar):
            d.origins.extend(var.origins)
    var.solution = value


# ---------------------------------------------------------------------------------------------
# Constraints


@dataclass
class Where:
    """What a constraint is about, for error messages."""

    describe: Callable[[], str]
    kind: str = ""
    hint: str = ""


@dataclass
class DimBroadcast:
    """`subr` equals `cur`, or is 1."""

    cur: DimLike
    subr: DimLike
    where: Where


@dataclass
class RowBroadcast:
    """`subr` is aligned on the right with `cur`; each of its dims broadcasts into cur's."""

    cur: Row
    subr: Row
    where: Where


Pending = DimBroadcast | RowBroadcast


def unify_dims(a: DimLike, b: DimLike) -> None:
    a, b = resolve_dim(a), resolve_dim(b)
    if a is b:
        return
    if isinstance(a, DimVar):
        _bind_dim(a, b)
    elif isinstance(b, DimVar):
        _bind_dim(b, a)
    elif a.size != b.size:
        raise Mismatch(f"dims {a.size} vs {b.size}")
    elif a.label and b.label and a.label != b.label:
        raise Mismatch(f"axis labels {a.label!r} vs {b.label!r}")


def unify_rows(r1: Row, r2: Row) -> None:
    r1, r2 = resolve_row(r1), resolve_row(r2)
    if r1.closed and r2.closed:
        if len(r1.end) != len(r2.end):
            raise Mismatch(f"{len(r1.end)} axes ({r1}) vs {len(r2.end)} axes ({r2})")
        for a, b in zip(r1.end, r2.end, strict=True):
            unify_dims(a, b)
        return
    if r1.closed:
        r1, r2 = r2, r1
    assert r1.var is not None
    if r2.closed:
        dims = r2.end
        if len(dims) < len(r1.beg) + len(r1.end):
            raise Mismatch(
                f"{len(dims)} axes ({r2}) vs at least {len(r1.beg) + len(r1.end)} ({r1})"
            )
        for a, b in zip(r1.beg, dims, strict=False):
            unify_dims(a, b)
        for a, b in zip(reversed(r1.end), reversed(dims), strict=False):
            unify_dims(a, b)
        middle = dims[len(r1.beg) : len(dims) - len(r1.end)]
        _bind_row(r1.var, Row((), None, tuple(middle)))
        return
    assert r2.var is not None
    k = min(len(r1.beg), len(r2.beg))
    for a, b in zip(r1.beg[:k], r2.beg[:k], strict=True):
        unify_dims(a, b)
    m = min(len(r1.end), len(r2.end))
    for a, b in zip(r1.end[len(r1.end) - m :], r2.end[len(r2.end) - m :], strict=True):
        unify_dims(a, b)
    b1, b2 = r1.beg[k:], r2.beg[k:]
    e1, e2 = r1.end[: len(r1.end) - m], r2.end[: len(r2.end) - m]
    if r1.var is r2.var:
        if b1 or b2 or e1 or e2:
            raise Mismatch(f"the same row variable with different axes around it: {r1} vs {r2}")
        return
    if not b1 and not e1:
        _bind_row(r1.var, Row(b2, r2.var, e2))
    elif not b2 and not e2:
        _bind_row(r2.var, Row(b1, r1.var, e1))
    else:
        fresh = RowVar()
        if not b1:  # r1.var + e1 == b2 + r2.var
            _bind_row(r1.var, Row(b2, fresh, ()))
            _bind_row(r2.var, Row((), fresh, e1))
        else:  # b1 + r1.var == r2.var + e2
            _bind_row(r2.var, Row(b1, fresh, ()))
            _bind_row(r1.var, Row((), fresh, e2))


def broadcast_dims(cur: DimLike, subr: DimLike, where: Where) -> list[Pending]:
    tainted = _was_defaulted_dim(cur)
    cur, subr = resolve_dim(cur), resolve_dim(subr)
    if isinstance(subr, Dim) and isinstance(cur, DimVar):
        cur.bounded = True
    if cur is subr or (isinstance(subr, Dim) and subr.size == 1):
        return []
    if isinstance(cur, Dim) and isinstance(subr, Dim):
        if cur.size != subr.size:
            raise Mismatch(f"dims {subr.size} vs {cur.size} (an operand's dim must match or be 1)")
        return []
    if isinstance(cur, DimVar) and isinstance(subr, Dim):
        _bind_dim(cur, subr)
        return []
    if isinstance(cur, Dim) and cur.size == 1:
        assert isinstance(subr, DimVar)
        _bind_dim(subr, cur)
        subr.defaulted = tainted
        return []
    return [DimBroadcast(cur, subr, where)]


def broadcast_rows(cur: Row, subr: Row, where: Where) -> list[Pending]:
    """Solve `cur >= subr` as far as it is decided; returns what is left pending."""
    tainted = _was_defaulted_row(cur)
    cur, subr = resolve_row(cur), resolve_row(subr)
    if cur == subr:
        # A tensor updated from itself (`p =- lr * p.grad`): no constraint.
        return []
    if len(subr.end) > len(cur.end):
        if cur.closed:
            raise Mismatch(
                f"an operand has at least {len(subr.end)} axes ({subr}) where the result has "
                f"{len(cur.end)} ({cur})"
            )
        if cur.beg:
            return [RowBroadcast(cur, subr, where)]
        assert cur.var is not None
        extra = tuple(DimVar() for _ in range(len(subr.end) - len(cur.end)))
        rest = RowVar()
        rest.bounded = subr.closed
        _bind_row(cur.var, Row((), rest, extra))
        cur = resolve_row(cur)
    pending: list[Pending] = []
    m = len(subr.end)
    for c, s in zip(cur.end[len(cur.end) - m :], subr.end, strict=True):
        pending.extend(broadcast_dims(c, s, where))
    cur_rest = Row(cur.beg, cur.var, cur.end[: len(cur.end) - m])
    subr_rest = Row(subr.beg, subr.var, ())
    if subr_rest.closed and cur_rest.var is not None:
        cur_rest.var.bounded = True
    if subr_rest.closed or (not cur_rest.beg and not cur_rest.end and cur_rest.var is None):
        if not subr_rest.closed:  # the result has no more axes: neither has the operand
            var = subr_rest.var
            unify_rows(Row((), None, ()), Row(subr_rest.beg, var, ()))
            var.defaulted = tainted
        return pending
    pending.append(RowBroadcast(cur_rest, subr_rest, where))
    return pending


def step(constraint: Pending) -> list[Pending] | None:
    """Try to solve a pending constraint; None when nothing changed."""
    if isinstance(constraint, DimBroadcast):
        result = broadcast_dims(constraint.cur, constraint.subr, constraint.where)
        if len(result) == 1 and _same_dim_constraint(result[0], constraint):
            return None
        return result
    before = (resolve_row(constraint.cur), resolve_row(constraint.subr))
    result = broadcast_rows(constraint.cur, constraint.subr, constraint.where)
    if (
        len(result) == 1
        and isinstance(result[0], RowBroadcast)
        and (resolve_row(result[0].cur), resolve_row(result[0].subr)) == before
    ):
        return None
    return result


def _same_dim_constraint(a: Pending, b: DimBroadcast) -> bool:
    return (
        isinstance(a, DimBroadcast)
        and resolve_dim(a.cur) is resolve_dim(b.cur)
        and resolve_dim(a.subr) is resolve_dim(b.subr)
    )


def _with_where(where: Where, action: Callable[[], list[Pending] | None]) -> list[Pending] | None:
    try:
        return action()
    except Mismatch as e:
        if e.where is None:
            e.where = where
        raise


def solve(pending: list[Pending]) -> list[Pending]:
    """Run the pending constraints to a fixpoint; returns those still undecided."""
    changed = True
    while changed:
        changed = False
        remaining: list[Pending] = []
        for constraint in pending:
            result = _with_where(constraint.where, lambda c=constraint: step(c))
            if result is None:
                remaining.append(constraint)
            else:
                changed = True
                remaining.extend(result)
        pending = remaining
    return pending


# ---------------------------------------------------------------------------------------------
# Constraint groups: shapes that share constraints, merged as operations connect them


@dataclass(eq=False)
class Group:
    shapes: list = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    # Rows of variables that no shape holds (an einsum's row variables), closed with the group.
    extra_rows: list[Row] = field(default_factory=list)
    parent: Group | None = None

    def root(self) -> Group:
        group = self
        while group.parent is not None:
            group = group.parent
        return group


def merge(groups: Iterable[Group]) -> Group:
    roots: list[Group] = []
    for g in groups:
        r = g.root()
        if all(r is not x for x in roots):
            roots.append(r)
    roots.sort(key=lambda g: len(g.shapes) + len(g.pending), reverse=True)
    main = roots[0]
    for other in roots[1:]:
        main.shapes.extend(other.shapes)
        main.pending.extend(other.pending)
        main.extra_rows.extend(other.extra_rows)
        other.shapes, other.pending, other.extra_rows, other.parent = [], [], [], main
    return main


# ---------------------------------------------------------------------------------------------
# Closing


def _dim_vars(row: Row) -> Iterator[DimVar]:
    for d in (*row.beg, *row.end):
        if isinstance(d, DimVar):
            yield d


def _was_defaulted_dim(d: DimLike) -> bool:
    while isinstance(d, DimVar):
        if d.defaulted:
            return True
        if d.solution is None:
            return False
        d = d.solution
    return False


def _was_defaulted_row(row: Row) -> bool:
    var = row.var
    while var is not None:
        if var.defaulted:
            return True
        if var.solution is None:
            return False
        var = var.solution.var
    return False


def _take_greatest(constraint: Pending, rows_of_params_batch: set[int]) -> bool:
    """Solve a pending broadcast whose cur is known by giving the subr all of cur."""
    if isinstance(constraint, DimBroadcast):
        cur, subr = resolve_dim(constraint.cur), resolve_dim(constraint.subr)
        if isinstance(cur, Dim) and isinstance(subr, DimVar):
            _bind_dim(subr, cur)
            subr.defaulted = _was_defaulted_dim(constraint.cur)
            return True
        return False
    cur, subr = resolve_row(constraint.cur), resolve_row(constraint.subr)
    if not is_solved(cur) or subr.var is None:
        return False
    var = subr.var
    if var.id in rows_of_params_batch:
        _bind_row(var, Row())
    else:
        rest = cur.end[len(subr.beg) :]
        _bind_row(var, Row((), None, rest))
        var.defaulted = not rest and _was_defaulted_row(constraint.cur)
    return True


def close_group(group: Group) -> None:
    """Close every variable of the group: greatest solutions for pending broadcasts first, then
    defaults (dim 1, no axes) for what nothing constrains."""
    group = group.root()
    rows = [r for shape in group.shapes for r in shape.rows()] + group.extra_rows
    params_batch = set()
    for shape in group.shapes:
        if shape.is_param:
            var = resolve_row(shape.row("batch")).var
            if var is not None:
                params_batch.add(var.id)
    pending = group.pending
    while True:
        pending = solve(pending)
        progress = False
        for constraint in list(pending):
            if _with_where(constraint.where, lambda c=constraint: _take_greatest(c, params_batch)):
                progress = True
                break
        if progress:
            continue
        subr_vars = set()
        for c in pending:
            if isinstance(c, DimBroadcast):
                subr_vars.add(id(resolve_dim(c.subr)))
            else:
                sub = resolve_row(c.subr)
                if sub.var is not None:
                    subr_vars.add(id(sub.var))
                subr_vars.update(id(d) for d in _dim_vars(sub))
        _propagate_bounds(pending)
        candidates = _unresolved(rows, pending)
        if not candidates:
            break
        # Close first what has a known lower bound and bounds nothing unknown, last the guesses.
        free = [v for v in candidates if id(v) not in subr_vars]
        chosen = [v for v in free if v.bounded] or free or candidates
        for v in chosen[:1] if pending else chosen:
            if isinstance(v, RowVar):
                _bind_row(v, Row())
            else:
                v.solution = Dim(v.min_size)
            v.defaulted = not v.bounded
    group.pending = []
    group.extra_rows = []


def _propagate_bounds(pending: list[Pending]) -> None:
    """A cur is bounded below when one of its subrs is."""
    changed = True
    while changed:
        changed = False
        for c in pending:
            if isinstance(c, DimBroadcast):
                cur, subr = resolve_dim(c.cur), resolve_dim(c.subr)
                known = isinstance(subr, Dim) or subr.bounded
            else:
                cur_row, subr_row = resolve_row(c.cur), resolve_row(c.subr)
                cur, sub_var = cur_row.var, subr_row.var
                known = sub_var is None or sub_var.bounded
            if isinstance(cur, DimVar | RowVar) and known and not cur.bounded:
                cur.bounded = changed = True


def _unresolved(rows: list[Row], pending: list[Pending]) -> list[DimVar | RowVar]:
    found: dict[int, DimVar | RowVar] = {}
    all_rows = list(rows)
    for c in pending:
        if isinstance(c, RowBroadcast):
            all_rows.extend((c.cur, c.subr))
        else:
            for d in (c.cur, c.subr):
                d = resolve_dim(d)
                if isinstance(d, DimVar):
                    found.setdefault(id(d), d)
    for row in all_rows:
        row = resolve_row(row)
        if row.var is not None:
            found.setdefault(id(row.var), row.var)
        for d in _dim_vars(row):
            found.setdefault(id(d), d)
    return list(found.values())


__all__ = [
    "Dim",
    "DimBroadcast",
    "DimLike",
    "DimVar",
    "Group",
    "Mismatch",
    "Origin",
    "Row",
    "RowBroadcast",
    "RowVar",
    "Where",
    "broadcast_dims",
    "broadcast_rows",
    "close_group",
    "closed_row",
    "is_solved",
    "merge",
    "resolve_dim",
    "resolve_row",
    "row_sizes",
    "solve",
    "unify_dims",
    "unify_rows",
]

"""The shape constraint solver: equations, broadcasts, and a worklist of pending constraints.

Equations are solved at once. A broadcast (`cur >= subr`: the subr row or dim broadcasts into
cur) is solved as soon as it is decided; otherwise it waits on the variables it mentions (each
variable lists its `watchers`) and is looked at again only when one of them is bound. So an
operation re-examines only the constraints that touch what it bound; `closing.py` settles the
rest. Every change goes through a `Transaction`, which records it so that an operation that fails
leaves the shapes as they were (`rollback`).
"""

from __future__ import annotations

import itertools
from collections import deque

from ocannl_py.shape import terms
from ocannl_py.shape.constraints import (
    AffineDim,
    ConcatDim,
    Constraint,
    DimBroadcast,
    Mismatch,
    RowBroadcast,
    RowEquation,
    Scope,
    Where,
    unknowns,
)
from ocannl_py.shape.terms import (
    Dim,
    DimLike,
    DimVar,
    Row,
    RowVar,
    Var,
    resolve_dim,
    resolve_row,
    was_defaulted_dim,
    was_defaulted_row,
)

_keys = itertools.count()

# numpy's limit on the number of axes of an array. A row that grows past it can only come from
# broadcasts that feed each other more axes without end (`..v.. >= ..v.., a`).
MAX_AXES = 64


class Transaction:
    """One unit of solving: the bindings it makes (undone together by `rollback`) and the queue of
    constraints woken by them. `reached`: when given, only the constraints of those scopes are
    looked at (closing one routine's shapes leaves other graphs' constraints alone)."""

    def __init__(self, reached: set[Scope] | None = None) -> None:
        # Undo records: a function and its arguments (tuples, not closures: fewer objects).
        self._trail: list[tuple] = []
        self._queue: deque[Constraint] = deque()
        self._queued: set[int] = set()
        self._reached = reached

    # ---- recording -----------------------------------------------------------------------

    def _set(self, obj: object, name: str, value: object) -> None:
        old = getattr(obj, name)
        self._trail.append((setattr, obj, name, old))
        setattr(obj, name, value)

    def rollback(self) -> None:
        """Undo everything this transaction did, latest first."""
        if self._trail:
            terms.note_undone()
        while self._trail:
            undo, *args = self._trail.pop()
            undo(*args)
        self._queue.clear()
        self._queued.clear()

    def mark_bounded(self, var: Var) -> None:
        if not var.bounded:
            self._set(var, "bounded", True)
            self.on_bounded(var)

    def mark_defaulted(self, var: Var, defaulted: bool) -> None:
        if var.defaulted != defaulted:
            self._set(var, "defaulted", defaulted)

    # Hooks for closing, which keeps its own indexes of what is pending.
    def on_bounded(self, var: Var) -> None:
        pass

    def on_bound(self, var: Var) -> None:
        pass

    def on_registered(self, constraint: Constraint) -> None:
        pass

    def on_retired(self, constraint: Constraint) -> None:
        pass

    # ---- binding -------------------------------------------------------------------------

    def _wake(self, var: Var) -> None:
        if var.watchers:
            for constraint in var.watchers:
                self._enqueue(constraint)
            self._set(var, "watchers", [])

    def bind_dim(self, var: DimVar, value: DimLike) -> None:
        if isinstance(value, Dim):
            if value.size < var.min_size:
                raise Mismatch(f"dim {value.size} is too small for fixed index {var.min_size - 1}")
            value = value.plain()
        if isinstance(value, DimVar):
            if var.min_size > value.min_size:
                self._set(value, "min_size", var.min_size)
            if var.bounded:
                self.mark_bounded(value)
        self._set(var, "solution", value)
        self._wake(var)
        self.on_bound(var)

    def default_dim(self, var: DimVar) -> None:
        """Close an unconstrained dim to the least it can be."""
        self._set(var, "solution", Dim(var.min_size))
        self._wake(var)
        self.on_bound(var)

    def bind_row(self, var: RowVar, value: Row) -> None:
        if value.var is var:
            raise Mismatch("a row variable would contain itself")
        if any(isinstance(d, Dim) and d.weak for d in value.end):
            value = Row(value.beg, value.var, tuple(_plain(d) for d in value.end))
        if value.var is not None:
            if var.bounded:
                self.mark_bounded(value.var)
            around = var.axes_around + _length(value)
            if around > MAX_AXES:
                raise Mismatch(
                    f"a row would have more than {MAX_AXES} axes: the operations make it grow "
                    "without end (rows broadcast into each other in a cycle that adds axes)"
                )
            if around > value.var.axes_around:
                self._set(value.var, "axes_around", around)
        self._set(var, "solution", value)
        self._wake(var)
        self.on_bound(var)

    # ---- equations -----------------------------------------------------------------------

    def unify_dims(self, a: DimLike, b: DimLike) -> None:
        a, b = resolve_dim(a), resolve_dim(b)
        if a is b:
            return
        if isinstance(a, DimVar):
            self.bind_dim(a, b)
        elif isinstance(b, DimVar):
            self.bind_dim(b, a)
        elif a.size != b.size:
            raise Mismatch(f"dims {a.size} vs {b.size}")
        elif a.label and b.label and a.label != b.label:
            raise Mismatch(f"axis labels {a.label!r} vs {b.label!r}")

    def unify_rows(self, r1: Row, r2: Row, where: Where | None = None) -> list[Constraint]:
        """Solve `r1 == r2` as far as it is decided; returns what is left pending (an equation
        whose axes may or may not overlap: `where` names it)."""
        r1, r2 = resolve_row(r1), resolve_row(r2)
        if r1.closed and r2.closed:
            if len(r1.end) != len(r2.end):
                raise Mismatch(f"{len(r1.end)} axes ({r1}) vs {len(r2.end)} axes ({r2})")
            for a, b in zip(r1.end, r2.end, strict=True):
                self.unify_dims(a, b)
            return []
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
                self.unify_dims(a, b)
            for a, b in zip(reversed(r1.end), reversed(dims), strict=False):
                self.unify_dims(a, b)
            middle = dims[len(r1.beg) : len(dims) - len(r1.end)]
            self.bind_row(r1.var, Row((), None, tuple(middle)))
            return []
        assert r2.var is not None
        k = min(len(r1.beg), len(r2.beg))
        for a, b in zip(r1.beg[:k], r2.beg[:k], strict=True):
            self.unify_dims(a, b)
        m = min(len(r1.end), len(r2.end))
        for a, b in zip(r1.end[len(r1.end) - m :], r2.end[len(r2.end) - m :], strict=True):
            self.unify_dims(a, b)
        b1, b2 = r1.beg[k:], r2.beg[k:]
        e1, e2 = r1.end[: len(r1.end) - m], r2.end[: len(r2.end) - m]
        if r1.var is r2.var:
            if b1 or b2 or e1 or e2:
                raise Mismatch(f"the same row variable with different axes around it: {r1} vs {r2}")
            return []
        if not b1 and not e1:
            self.bind_row(r1.var, Row(b2, r2.var, e2))
            return []
        if not b2 and not e2:
            self.bind_row(r2.var, Row(b1, r1.var, e1))
            return []
        # `..x.., tail == head, ..y..`: the tail's first axes may be the head's last ones.
        x, tail, head, y = (r1.var, e1, b2, r2.var) if not b1 else (r2.var, e2, b1, r1.var)
        if any(_may_overlap(tail, head, o) for o in range(1, min(len(tail), len(head)) + 1)):
            if where is None:
                raise Mismatch(f"rows {r1} and {r2} can be equal in more than one way")
            return [RowEquation(Row((), x, tail), Row(head, y, ()), where)]
        self.equate_overlapping(x, tail, head, y, 0)
        return []

    def equate_overlapping(
        self, x: RowVar, tail: tuple[DimLike, ...], head: tuple[DimLike, ...], y: RowVar, o: int
    ) -> None:
        """Solve `..x.., tail == head, ..y..` with the first `o` axes of the tail being the last
        `o` of the head; with `o == 0`, any axes may lie between them."""
        if o == 0:
            between = RowVar()
            self.bind_row(x, Row(head, between, ()))
            self.bind_row(y, Row((), between, tail))
            return
        for a, b in zip(tail[:o], head[len(head) - o :], strict=True):
            self.unify_dims(a, b)
        self.bind_row(x, Row((), None, head[: len(head) - o]))
        self.bind_row(y, Row((), None, tail[o:]))

    def settle_equation(self, constraint: RowEquation) -> None:
        """Closing: the most overlap the dims allow (the fewest axes)."""
        r1, r2 = resolve_row(constraint.r1), resolve_row(constraint.r2)
        assert r1.var is not None and r2.var is not None and not r1.beg and not r2.end
        tail, head = r1.end, r2.beg
        o = next(
            (o for o in range(min(len(tail), len(head)), 0, -1) if _may_overlap(tail, head, o)), 0
        )
        self.equate_overlapping(r1.var, tail, head, r2.var, o)

    # ---- broadcasts ----------------------------------------------------------------------

    def broadcast_dims(self, cur: DimLike, subr: DimLike, where: Where) -> list[Constraint]:
        """Solve `cur >= subr` if it is decided; returns what is left pending (unregistered)."""
        tainted = was_defaulted_dim(cur)
        cur, subr = resolve_dim(cur), resolve_dim(subr)
        if isinstance(subr, Dim) and isinstance(cur, DimVar):
            self.mark_bounded(cur)
        if cur is subr or (isinstance(subr, Dim) and subr.size == 1):
            return []
        if isinstance(cur, Dim) and isinstance(subr, Dim):
            if cur.size != subr.size:
                if where.contraction:
                    raise Mismatch(
                        f"dims {cur.size} vs {subr.size} (the right operand's dim must match "
                        "the left's or be 1)"
                    )
                raise Mismatch(
                    f"dims {subr.size} vs {cur.size} (an operand's dim must match or be 1)"
                )
            if cur.label and subr.label and cur.label != subr.label:
                first, second = (cur, subr) if where.contraction else (subr, cur)
                raise Mismatch(
                    f"axis labels {first.label!r} vs {second.label!r} ({first} vs {second})"
                )
            return []
        if isinstance(cur, DimVar) and isinstance(subr, Dim):
            self.bind_dim(cur, subr)
            return []
        if isinstance(cur, Dim) and cur.size == 1:
            assert isinstance(subr, DimVar)
            self.bind_dim(subr, cur)
            self.mark_defaulted(subr, tainted)
            return []
        return [DimBroadcast(cur, subr, where)]

    def broadcast_rows(
        self, cur: Row, subr: Row, where: Where, grow_weak: bool = False
    ) -> list[Constraint]:
        """Solve `cur >= subr` as far as it is decided; returns what is left pending. A number's
        axes (weak) that cur may not have wait: they give cur axes only by `grow_weak`."""
        tainted = was_defaulted_row(cur)
        cur, subr = resolve_row(cur), resolve_row(subr)
        if cur == subr:
            # A tensor updated from itself (`p =- lr * p.grad`): no constraint.
            return []
        if len(subr.end) > len(cur.end):
            if cur.closed:
                extra = len(subr.end) - len(cur.end)
                if where.contraction:
                    detail = (
                        f"{len(cur.end)} axes ({cur}) vs at least {len(subr.end)} axes ({subr}): "
                        "the right operand's output has more axes than the left operand's input"
                    )
                else:
                    detail = (
                        f"an operand has at least {len(subr.end)} axes ({subr}) where the result "
                        f"has {len(cur.end)} ({cur})"
                    )
                self._squeeze((*subr.beg, *subr.end[:extra]), subr.var, detail)
                subr = Row((), None, subr.end[extra:])
            elif cur.beg or (not grow_weak and _weak_excess(cur, subr)):
                return [RowBroadcast(cur, subr, where)]
            else:
                assert cur.var is not None
                extra_dims = tuple(DimVar() for _ in range(len(subr.end) - len(cur.end)))
                rest = RowVar()
                rest.bounded = subr.closed
                self.bind_row(cur.var, Row((), rest, extra_dims))
                cur = resolve_row(cur)
        pending: list[Constraint] = []
        m = len(subr.end)
        for c, s in zip(cur.end[len(cur.end) - m :], subr.end, strict=True):
            pending.extend(self.broadcast_dims(c, s, where))
        cur_rest = Row(cur.beg, cur.var, cur.end[: len(cur.end) - m])
        subr_rest = Row(subr.beg, subr.var, ())
        if subr_rest.closed and cur_rest.var is not None:
            self.mark_bounded(cur_rest.var)
        if subr_rest.closed or (not cur_rest.beg and not cur_rest.end and cur_rest.var is None):
            if not subr_rest.closed:  # the result has no more axes: neither has the operand
                var = subr_rest.var
                detail = f"0 axes () vs at least {len(subr_rest.beg)} ({subr_rest})"
                self._squeeze(subr_rest.beg, var, detail)
                self.mark_defaulted(var, tainted)
            return pending
        pending.append(RowBroadcast(cur_rest, subr_rest, where))
        return pending

    def grow_weak(self, constraint: RowBroadcast) -> None:
        """Give cur the number's axes it waits on: nothing else gives its row any."""
        derived = self.broadcast_rows(
            constraint.cur, constraint.subr, constraint.where, grow_weak=True
        )
        self.retire(constraint)
        for i, pending in enumerate(derived):
            self.add(pending, constraint.scope, (*constraint.key, i))  # type: ignore[arg-type]

    def _squeeze(self, dims: tuple[DimLike, ...], var: RowVar | None, detail: str) -> None:
        """Axes of an operand that the result does not have: each must be of dim 1, which
        broadcasts into no axis at all (a number's one axis into a scalar); a row variable among
        them stands for no axes."""
        if any(isinstance(d, Dim) and d.size != 1 for d in dims):
            raise Mismatch(detail)
        for d in dims:
            d = resolve_dim(d)
            if isinstance(d, DimVar):
                self.bind_dim(d, Dim(1))
        if var is not None:
            self.bind_row(var, Row())

    def affine(self, constraint: AffineDim) -> bool:
        """Solve an affine axis once what it needs is known: the output dim from the input's
        and the kernel's; with both given, check that they agree. False while it waits."""
        input_, over = resolve_dim(constraint.input), resolve_dim(constraint.over)
        kernel = resolve_dim(constraint.kernel) if constraint.kernel is not None else Dim(1)
        if isinstance(input_, DimVar) or (isinstance(kernel, DimVar) and constraint.padding != "="):
            return False
        size = 1 if isinstance(kernel, DimVar) else kernel.size
        if isinstance(over, DimVar):
            self.bind_dim(over, Dim(constraint.output(input_.size, size)))
        elif constraint.padding == "":
            if constraint.least_input(over.size, size) > input_.size:
                raise Mismatch(
                    f"input dim {input_.size} is too small for {over.size} output cells of "
                    f"stride {constraint.stride} and kernel {size} (needs "
                    f"{constraint.least_input(over.size, size)})"
                )
        elif constraint.output(input_.size, size) != over.size:
            raise Mismatch(
                f"input dim {input_.size} gives {constraint.output(input_.size, size)} output "
                f"cells, not {over.size}"
            )
        return True

    def concat(self, constraint: ConcatDim) -> bool:
        """The total of known parts; a part from the total and the other parts. False while it
        waits."""
        parts = [resolve_dim(d) for d in constraint.parts]
        total = resolve_dim(constraint.total)
        unknown = [d for d in parts if isinstance(d, DimVar)]
        known = sum(d.size for d in parts if isinstance(d, Dim))
        if not unknown:
            self.unify_dims(total, Dim(known))
            return True
        if isinstance(total, Dim) and len(unknown) == 1:
            if total.size <= known:
                raise Mismatch(
                    f"the concatenated axis has dim {total.size}, its other parts already "
                    f"{known}: nothing is left for the last one"
                )
            self.bind_dim(unknown[0], Dim(total.size - known))
            return True
        return False

    def step(self, constraint: Constraint) -> list[Constraint] | None:
        """Try to solve a pending constraint; None when nothing changed."""
        if isinstance(constraint, ConcatDim):
            return [] if self.concat(constraint) else None
        if isinstance(constraint, AffineDim):
            return [] if self.affine(constraint) else None
        if isinstance(constraint, DimBroadcast):
            result = self.broadcast_dims(constraint.cur, constraint.subr, constraint.where)
            if len(result) == 1 and _same_dims(result[0], constraint):
                return None
            return result
        if isinstance(constraint, RowEquation):
            before = (resolve_row(constraint.r1), resolve_row(constraint.r2))
            result = self.unify_rows(constraint.r1, constraint.r2, constraint.where)
            if len(result) == 1 and (result[0].r1, result[0].r2) == before:  # type: ignore[union-attr]
                return None
            return result
        before = (resolve_row(constraint.cur), resolve_row(constraint.subr))
        result = self.broadcast_rows(constraint.cur, constraint.subr, constraint.where)
        if (
            len(result) == 1
            and isinstance(result[0], RowBroadcast)
            and (resolve_row(result[0].cur), resolve_row(result[0].subr)) == before
        ):
            return None
        return result

    # ---- the worklist --------------------------------------------------------------------

    def _enqueue(self, constraint: Constraint) -> None:
        if id(constraint) not in self._queued:
            self._queued.add(id(constraint))
            self._queue.append(constraint)

    def add(self, constraint: Constraint, scope: Scope, key: tuple[int, ...] | None = None) -> None:
        """Keep `constraint` pending in `scope`; it is looked at again by `run`."""
        constraint.scope = scope
        constraint.key = (next(_keys),) if key is None else key
        scope.pending[constraint] = None
        self._trail.append((dict.pop, scope.pending, constraint, None))
        self._trail.append((setattr, constraint, "alive", False))
        self._enqueue(constraint)

    def retire(self, constraint: Constraint) -> None:
        self._set(constraint, "alive", False)
        scope = constraint.scope
        assert scope is not None
        del scope.pending[constraint]
        self._trail.append((dict.__setitem__, scope.pending, constraint, None))
        self.on_retired(constraint)

    def _register(self, constraint: Constraint) -> None:
        """Make `constraint` wait on the variables it mentions now."""
        cur, subr = unknowns(constraint)
        now = (*cur, *subr)
        for var in now:
            if var not in constraint.watching:
                var.watchers.append(constraint)
                self._trail.append((list.pop, var.watchers))
        self._set(constraint, "watching", now)
        self.on_registered(constraint)

    def accepts(self, constraint: Constraint) -> bool:
        return constraint.alive and (self._reached is None or constraint.scope in self._reached)

    def run(self) -> None:
        """Look at the queued constraints until none is left: a fixpoint."""
        while self._queue:
            constraint = self._queue.popleft()
            self._queued.discard(id(constraint))
            if not self.accepts(constraint):
                continue
            try:
                result = self.step(constraint)
            except Mismatch as e:
                if e.where is None:
                    e.where = constraint.where
                raise
            if result is None:
                self._register(constraint)
                continue
            self.retire(constraint)
            for i, derived in enumerate(result):
                self.add(derived, constraint.scope, (*constraint.key, i))  # type: ignore[arg-type]


def _plain(d: DimLike) -> DimLike:
    return d.plain() if isinstance(d, Dim) else d


def _weak_excess(cur: Row, subr: Row) -> bool:
    """Whether the axes of `subr` beyond those of `cur` are all a number's (weak)."""
    extra = len(subr.end) - len(cur.end)
    return (
        subr.closed and extra > 0 and all(isinstance(d, Dim) and d.weak for d in subr.end[:extra])
    )


def is_weak_growth(constraint: Constraint) -> bool:
    """Whether `constraint` waits only to decide if a number's axes give its cur row axes."""
    if not isinstance(constraint, RowBroadcast):
        return False
    cur, subr = resolve_row(constraint.cur), resolve_row(constraint.subr)
    return cur.var is not None and not cur.beg and _weak_excess(cur, subr)


def _may_overlap(tail: tuple[DimLike, ...], head: tuple[DimLike, ...], o: int) -> bool:
    """Whether the first `o` axes of `tail` can be the last `o` of `head`: no known dims differ."""
    for a, b in zip(tail[:o], head[len(head) - o :], strict=True):
        a, b = resolve_dim(a), resolve_dim(b)
        if isinstance(a, Dim) and isinstance(b, Dim):
            if a.size != b.size or (a.label and b.label and a.label != b.label):
                return False
    return True


def _length(row: Row) -> int:
    return len(row.beg) + len(row.end)


def _same_dims(a: Constraint, b: DimBroadcast) -> bool:
    return (
        isinstance(a, DimBroadcast)
        and resolve_dim(a.cur) is resolve_dim(b.cur)
        and resolve_dim(a.subr) is resolve_dim(b.subr)
    )


__all__ = [
    "AffineDim",
    "ConcatDim",
    "Constraint",
    "DimBroadcast",
    "Mismatch",
    "RowBroadcast",
    "RowEquation",
    "Scope",
    "Transaction",
    "Where",
    "is_weak_growth",
    "unknowns",
]

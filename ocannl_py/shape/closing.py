"""Closing the shapes of a routine before it is compiled: every variable gets a value.

1. A variable that no pending broadcast bounds below any more takes its least value (a row no
   axes, a dim 1 or above a fixed index) if it is a computed tensor's (not in a leaf's rows) or
   a row that closes to no axes (a parameter's batch row, a number's input row): a computed
   tensor is what its operands make it, however it is used.
2. Otherwise a pending broadcast whose cur side is known gives the subr all of it (the greatest
   solution): a parameter takes the shape its use demands, and a computed tensor that waits on
   it passes that on. The constraints are taken in the order they were created. Back to 1.
3. Otherwise an equation of rows whose axes may or may not overlap (`..v.., 5 = b, ..w..`)
   takes the most overlap the dims allow (the fewest axes); a row that a number's axis waits on
   takes it if nothing else gives the row axes. Then back to 1.
4. When none is left, one variable is closed by default (a row to no axes, a dim to 1, or above
   a fixed index): first one that has a known lower bound and bounds nothing unknown, last the
   guesses. Then back to 1.

Only the constraints of the scopes given are looked at, and each step is found through indexes
kept up to date as variables are bound, so closing is linear in the size of the routine.
"""

from __future__ import annotations

import heapq
import itertools

from ocannl_py.shape.constraints import (
    AffineDim,
    ConcatDim,
    Constraint,
    DimBroadcast,
    Mismatch,
    RowBroadcast,
    RowEquation,
    Scope,
    unknowns,
)
from ocannl_py.shape.solver import Transaction, is_weak_growth
from ocannl_py.shape.terms import (
    Dim,
    DimVar,
    Row,
    RowVar,
    Var,
    is_solved,
    resolve_dim,
    resolve_row,
    row_unknowns,
    was_defaulted_dim,
    was_defaulted_row,
)

# Classes of variables to close by default, best first.
_FREE_AND_BOUNDED, _FREE, _BOUNDS_OTHERS = 0, 1, 2


class Closing(Transaction):
    """Closes the variables of some rows and of the pending constraints of some scopes."""

    def __init__(self, scopes: list[Scope], fewest_axes: set[int]) -> None:
        super().__init__(reached=set(scopes))
        self._scopes = scopes
        self._fewest_axes = fewest_axes  # ids of row variables that close to no axes
        self._seq = itertools.count()
        self._greatest: list[tuple[tuple[int, ...], int, Constraint]] = []
        self._order: dict[int, tuple[int, ...]] = {}  # variable id -> where it was first seen
        self._candidates: list[tuple[int, bool, tuple[int, ...], int, Var]] = []
        self._subr_count: dict[int, int] = {}
        # constraint id -> its subr variables, and those it bounds below (held)
        self._counted: dict[int, tuple[tuple[Var, ...], tuple[Var, ...]]] = {}
        self._held_count: dict[int, int] = {}
        self._leaf: set[int] = set()  # ids of the variables in the rows of leaves
        self._least: list[Var] = []  # variables that may now close to their least value
        self._subr_of: dict[int, list[Constraint]] = {}
        self._bounds_todo: list[Constraint] = []
        self._equations: list[tuple[tuple[int, ...], int, RowEquation]] = []
        self._weak: list[tuple[tuple[int, ...], int, RowBroadcast]] = []

    def close(self, rows: list[Row], leaf_rows: list[Row]) -> None:
        """Close `rows`; `leaf_rows` are the rows of leaves (their variables take the greatest
        solution), the others are computed (theirs take the least)."""
        for row in leaf_rows:
            self._leaf.update(id(var) for var in row_unknowns(resolve_row(row)))
        for i, row in enumerate(rows):
            for j, var in enumerate(row_unknowns(resolve_row(row))):
                self._know(var, (0, i, j))
        pending = [c for scope in self._scopes for c in scope.pending]
        for constraint in sorted(pending, key=lambda c: c.key):
            self._enqueue(constraint)
        while True:
            self.run()
            if self._take_least() or self._take_greatest() or self._settle_equation():
                continue
            self._propagate_bounds()
            if self._grow_weak():
                continue
            var = self._pick_default()
            if var is None:
                break
            if isinstance(var, RowVar):
                self.bind_row(var, Row())
            else:
                self.default_dim(var)
            self.mark_defaulted(var, not var.bounded)
        assert not any(scope.pending for scope in self._scopes), "closing left constraints"

    # ---- variables to close by default ---------------------------------------------------

    def _know(self, var: Var, order: tuple[int, ...]) -> None:
        if id(var) not in self._order:
            self._order[id(var)] = order
            self._push_candidate(var)

    def _class(self, var: Var) -> int:
        if self._subr_count.get(id(var), 0):
            return _BOUNDS_OTHERS
        return _FREE_AND_BOUNDED if var.bounded else _FREE

    def _push_candidate(self, var: Var) -> None:
        order = self._order.get(id(var))
        if order is not None and var.solution is None:
            entry = (self._class(var), isinstance(var, RowVar), order, next(self._seq), var)
            heapq.heappush(self._candidates, entry)

    def _pick_default(self) -> Var | None:
        while self._candidates:
            var_class, _, _, _, var = self._candidates[0]
            if var.solution is not None or var_class != self._class(var):
                heapq.heappop(self._candidates)  # stale: a newer entry says where it stands
                continue
            return var
        return None

    def on_bound(self, var: Var) -> None:
        if isinstance(var, DimVar):
            found = resolve_dim(var)
            news = [found] if isinstance(found, DimVar) else []
        else:
            news = row_unknowns(resolve_row(Row((), var, ())))
        if id(var) in self._leaf:
            self._leaf.update(id(new) for new in news)
        order = self._order.get(id(var))
        if order is None:
            return
        for i, new in enumerate(news):
            self._know(new, (*order, i))

    def on_bounded(self, var: Var) -> None:
        self._push_candidate(var)
        self._bounds_todo.extend(self._subr_of.get(id(var), ()))

    # ---- pending constraints -------------------------------------------------------------

    def _uncount(self, constraint: Constraint) -> None:
        subr, held = self._counted.pop(id(constraint), ((), ()))
        for var in subr:
            self._subr_count[id(var)] -= 1
            self._push_candidate(var)
        for var in held:
            self._held_count[id(var)] -= 1
            if not self._held_count[id(var)]:
                self._least.append(var)

    def on_registered(self, constraint: Constraint) -> None:
        self._uncount(constraint)
        cur, subr = unknowns(constraint)
        for i, var in enumerate((*cur, *subr)):
            self._know(var, (1, *constraint.key, i))
        for var in subr:
            self._subr_count[id(var)] = self._subr_count.get(id(var), 0) + 1
            self._subr_of.setdefault(id(var), []).append(constraint)
            self._push_candidate(var)  # its class changed: its older entry is stale
        # A broadcast bounds its cur below; an affine or concatenated axis ties all its dims.
        broadcast = isinstance(constraint, DimBroadcast | RowBroadcast)
        held = cur if broadcast else [*cur, *subr]
        for var in held:
            self._held_count[id(var)] = self._held_count.get(id(var), 0) + 1
        if broadcast:
            self._least.extend(subr)
        self._counted[id(constraint)] = (tuple(subr), tuple(held))
        self._bounds_todo.append(constraint)
        if _has_greatest(constraint):
            heapq.heappush(self._greatest, (constraint.key, next(self._seq), constraint))
        if isinstance(constraint, RowEquation):
            heapq.heappush(self._equations, (constraint.key, next(self._seq), constraint))
        elif is_weak_growth(constraint):
            heapq.heappush(self._weak, (constraint.key, next(self._seq), constraint))  # type: ignore[arg-type]

    def on_retired(self, constraint: Constraint) -> None:
        self._uncount(constraint)

    def _propagate_bounds(self) -> None:
        """A cur is bounded below when one of its subrs is."""
        while self._bounds_todo:
            constraint = self._bounds_todo.pop()
            if not constraint.alive or isinstance(constraint, AffineDim | ConcatDim | RowEquation):
                continue
            if isinstance(constraint, DimBroadcast):
                cur, subr = resolve_dim(constraint.cur), resolve_dim(constraint.subr)
                known = isinstance(subr, Dim) or subr.bounded
                if isinstance(cur, DimVar) and known:
                    self.mark_bounded(cur)
            else:
                cur_var = resolve_row(constraint.cur).var
                subr_var = resolve_row(constraint.subr).var
                if is_weak_growth(constraint):
                    continue  # a number's axes bound nothing
                if cur_var is not None and (subr_var is None or subr_var.bounded):
                    self.mark_bounded(cur_var)

    def _take_least(self) -> bool:
        """Close a variable that nothing bounds below any more to its least value (a row to no
        axes, a dim to 1 or above a fixed index) before a broadcast could give it the greatest
        one: a computed tensor is what its operands make it, and so is a row that closes to no
        axes (a number's input row) when no equation or compose gives it axes."""
        while self._least:
            var = self._least.pop()
            if (
                var.solution is not None
                or self._held_count.get(id(var), 0)
                or (id(var) in self._leaf and var.id not in self._fewest_axes)
            ):
                continue
            if isinstance(var, RowVar):
                self.bind_row(var, Row())
            else:
                self.default_dim(var)
            self.mark_defaulted(var, not var.bounded)
            return True
        return False

    def _take_greatest(self) -> bool:
        """Solve the oldest pending broadcast whose cur is known by giving the subr all of cur."""
        while self._greatest:
            _, _, constraint = heapq.heappop(self._greatest)
            if not self.accepts(constraint) or not _has_greatest(constraint):
                continue
            try:
                self._give_greatest(constraint)
            except Mismatch as e:
                if e.where is None:
                    e.where = constraint.where
                raise
            return True
        return False

    def _settle_equation(self) -> bool:
        """Settle the oldest pending equation of rows whose axes may overlap: the most overlap
        that the dims allow, before any variable of it is guessed."""
        while self._equations:
            _, _, constraint = heapq.heappop(self._equations)
            if not self.accepts(constraint):
                continue
            try:
                self.settle_equation(constraint)
            except Mismatch as e:
                if e.where is None:
                    e.where = constraint.where
                raise
            return True
        return False

    def _grow_weak(self) -> bool:
        """Give a row the number's axes it waits on when nothing else gives it any (`2 *. {hey}`
        has one output axis); a row that a known one is broadcast into closes without them."""
        while self._weak:
            _, _, constraint = heapq.heappop(self._weak)
            if not self.accepts(constraint) or not is_weak_growth(constraint):
                continue
            var = resolve_row(constraint.cur).var
            if var is not None and not var.bounded:
                self.grow_weak(constraint)
                return True
        return False

    def _give_greatest(self, constraint: Constraint) -> None:
        if isinstance(constraint, AffineDim):
            # An input whose output and kernel are known: the fewest cells that give them.
            over, kernel = resolve_dim(constraint.over), _kernel_size(constraint)
            assert isinstance(over, Dim) and kernel is not None
            self.bind_dim(
                resolve_dim(constraint.input), Dim(constraint.least_input(over.size, kernel))
            )
            return
        if isinstance(constraint, DimBroadcast):
            cur, subr = resolve_dim(constraint.cur), resolve_dim(constraint.subr)
            assert isinstance(cur, Dim) and isinstance(subr, DimVar)
            self.bind_dim(subr, cur)
            self.mark_defaulted(subr, was_defaulted_dim(constraint.cur))
            return
        cur, subr = resolve_row(constraint.cur), resolve_row(constraint.subr)
        var = subr.var
        assert var is not None
        if var.id in self._fewest_axes:
            self.bind_row(var, Row())
            return
        rest = cur.end[len(subr.beg) :]
        self.bind_row(var, Row((), None, rest))
        self.mark_defaulted(var, not rest and was_defaulted_row(constraint.cur))


def _kernel_size(constraint: AffineDim) -> int | None:
    if constraint.kernel is None:
        return 1
    kernel = resolve_dim(constraint.kernel)
    return kernel.size if isinstance(kernel, Dim) else None


def _has_greatest(constraint: Constraint) -> bool:
    if isinstance(constraint, ConcatDim | RowEquation):
        return False
    if isinstance(constraint, AffineDim):
        input_, over = resolve_dim(constraint.input), resolve_dim(constraint.over)
        return (
            isinstance(input_, DimVar)
            and isinstance(over, Dim)
            and _kernel_size(constraint) is not None
        )
    if isinstance(constraint, DimBroadcast):
        cur, subr = resolve_dim(constraint.cur), resolve_dim(constraint.subr)
        return isinstance(cur, Dim) and isinstance(subr, DimVar)
    assert isinstance(constraint, RowBroadcast)
    return is_solved(constraint.cur) and resolve_row(constraint.subr).var is not None


__all__ = ["Closing"]

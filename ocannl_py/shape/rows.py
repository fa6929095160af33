"""The shape of one tensor: three rows of axes (batch | input -> output), each a row of the solver
with dims and an optional row variable."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ocannl_py.errors import ShapeError
from ocannl_py.shape import terms

_serials = itertools.count(1)

KINDS = ("batch", "input", "output")
MEMORY_ORDER = ("batch", "output", "input")


# A given dim: its size, or a label and its size (`("d", 64)`); axes of equal size whose labels
# differ do not match.
DimSpec = int | tuple[str, int]


def given_dim(item: object) -> terms.Dim | None:
    """The dim an item of a `*_dims` list gives, or None if it is not a valid one."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0]:
        label, size = item
    else:
        label, size = None, item
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    return terms.Dim(int(size), label)


class Shape:
    """The axes of one tensor. A row given as a list of dims is known; None means inferred."""

    def __init__(
        self,
        label: str,
        *,
        batch_dims: Sequence[DimSpec] | None = None,
        input_dims: Sequence[DimSpec] | None = None,
        output_dims: Sequence[DimSpec] | None = None,
        is_param: bool = False,
        dims_required: bool = True,
        fewest_axes: Sequence[str] = (),
        weak_axes: Sequence[str] = (),
    ) -> None:
        self.label = label
        self.serial = next(_serials)  # creation order: closing takes shapes in this order
        self.is_param = is_param
        # A parameter whose values fit any dims (a scalar initial value) may close to defaults.
        self.dims_required = is_param and dims_required
        # Rows not given that close to no axes rather than to what a use offers (a parameter's
        # batch row, a number's input row); an equation can still give them axes.
        self.fewest_axes = ("batch", *fewest_axes) if is_param else tuple(fewest_axes)
        self._rows: dict[str, terms.Row] = {}
        for kind, dims in (("batch", batch_dims), ("input", input_dims), ("output", output_dims)):
            if dims is None:
                self._rows[kind] = terms.Row((), terms.RowVar(f"{label}.{kind}"), ())
            else:
                given = [given_dim(d) for d in dims]
                if None in given:
                    raise ShapeError(
                        f"tensor {label!r}: {kind} dims must be positive ints or (label, int) "
                        f"pairs, got {list(dims)!r}"
                    )
                if kind in weak_axes:  # a number's axes (terms.Dim.weak)
                    given = [terms.Dim(d.size, d.label, weak=d.size == 1) for d in given]
                self._rows[kind] = terms.Row((), None, tuple(given))  # type: ignore[arg-type]
        # The update steps that produce this shape and are not closed yet (shape/logic.py).
        self.open_steps: list = []
        # The result of an operation (not a leaf): it closes to the least shape its operands
        # allow, where a leaf whose dims are inferred takes the greatest its uses allow.
        self.computed = False
        # A number written in an expression: only the operation it is written in uses it.
        self.single_use = False
        # (terms.undone() when seen, sizes per kind) once every row is solved: a solution stays
        # unless a transaction is undone, and compiling reads the sizes many times.
        self._solved: tuple[int, dict[str, list[int]]] | None = None

    def row(self, kind: str) -> terms.Row:
        """The row of `kind` as solved so far."""
        return terms.resolve_row(self._rows[kind])

    def original_row(self, kind: str) -> terms.Row:
        """The row of `kind` as created, before any binding (to see how it was solved)."""
        return self._rows[kind]

    def is_fresh(self) -> bool:
        """Whether no operation has touched it yet: all its rows unknown, nothing waiting on
        them, and nothing producing it."""
        return not self.open_steps and all(
            row.var is not None and row.var.solution is None and not row.var.watchers
            for row in self._rows.values()
        )

    def rows(self) -> list[terms.Row]:
        return [self.row(k) for k in KINDS]

    def _solved_sizes(self) -> dict[str, list[int]] | None:
        """The sizes of every row, or None while one is not solved."""
        cached = self._solved
        if cached is not None and cached[0] == terms.undone():
            return cached[1]
        sizes = {k: terms.row_sizes(self._rows[k]) for k in KINDS}
        if any(v is None for v in sizes.values()):
            return None
        self._solved = (terms.undone(), sizes)  # type: ignore[assignment]
        return sizes  # type: ignore[return-value]

    def _sizes(self, kind: str) -> list[int]:
        solved = self._solved_sizes()
        if solved is not None:
            return list(solved[kind])
        sizes = terms.row_sizes(self._rows[kind])
        if sizes is None:
            raise ShapeError(
                f"the {kind} dims of tensor {self.label!r} are not known yet ({self}); they are "
                "settled when the code using it is compiled (shape.close)"
            )
        return sizes

    @property
    def batch(self) -> list[int]:
        return self._sizes("batch")

    @property
    def input(self) -> list[int]:
        return self._sizes("input")

    @property
    def output(self) -> list[int]:
        return self._sizes("output")

    @property
    def is_solved(self) -> bool:
        return self._solved_sizes() is not None

    def dims(self) -> tuple[int, ...]:
        """Memory order: batch dims, then output dims, then input dims."""
        solved = self._solved_sizes()
        if solved is not None:
            return (*solved["batch"], *solved["output"], *solved["input"])
        return tuple(self.batch + self.output + self.input)

    def __str__(self) -> str:
        """OCANNL style: axes numbered from 0 in batch and in output, inputs after the outputs."""
        rows = {k: self.row(k) for k in KINDS}

        def show(kind: str, first: int) -> str:
            row = rows[kind]
            items = [f"{first + i}:{terms.dim_str(d)}" for i, d in enumerate(row.beg)]
            if row.var is not None:
                items.append("...")
            start = first + len(row.beg)
            items.extend(f"{start + i}:{terms.dim_str(d)}" for i, d in enumerate(row.end))
            return ",".join(items)

        n_output = len(rows["output"].beg) + len(rows["output"].end)
        batch, inputs, output = show("batch", 0), show("input", n_output), show("output", 0)
        if not batch and not inputs:
            return output
        if not batch:
            return f"{inputs}->{output}"
        if not inputs:
            return f"{batch}|{output}"
        return f"{batch}|{inputs}->{output}"

    def __repr__(self) -> str:
        return f"Shape({self.label!r}, {self})"

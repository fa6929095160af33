"""What the shape solver works on: its constraints (broadcasts of dims and rows, affine and
concatenated dims, row equations that may overlap), where each comes from, and the error it
raises. The solving is `solver.Transaction`'s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ocannl_py.shape.terms import (
    DimLike,
    DimVar,
    Row,
    Var,
    resolve_dim,
    resolve_row,
    row_unknowns,
)


class Mismatch(Exception):
    """Raised by the solver with what disagrees; the shape logic adds which tensors and where."""

    def __init__(self, detail: str, where: Where | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.where = where


@dataclass
class Where:
    """What a constraint is about, for error messages."""

    describe: Callable[[], str]
    kind: str = ""
    hint: str = ""
    # The contraction of a compose: cur is the left operand's input, subr the right's output.
    contraction: bool = False


class Scope:
    """The pending constraints and the extra rows (variables no tensor holds, such as an einsum's
    row variables) of one operation, kept until its shapes are closed."""

    def __init__(self) -> None:
        self.pending: dict[Constraint, None] = {}  # insertion-ordered set
        self.extra_rows: list[Row] = []


@dataclass(eq=False, kw_only=True)
class Pending:
    """What the worklist keeps on every constraint: its operation's scope, its order of creation
    (`key`; derived constraints take their parent's), whether it still waits, and the variables
    it waits on."""

    scope: Scope | None = None
    key: tuple[int, ...] = ()
    alive: bool = True
    watching: tuple[Var, ...] = field(default=(), repr=False)


@dataclass(eq=False)
class DimBroadcast(Pending):
    """`subr` equals `cur`, or is 1."""

    cur: DimLike
    subr: DimLike
    where: Where


@dataclass(eq=False)
class RowBroadcast(Pending):
    """`subr` is aligned on the right with `cur`; each of its dims broadcasts into cur's."""

    cur: Row
    subr: Row
    where: Where


@dataclass(eq=False)
class AffineDim(Pending):
    """An operand axis read at `stride*over + offset + dilation*kernel` (a convolution or a
    pooling): `input` is that axis's dim, `over` the output's, `kernel` the kernel's (None: no
    kernel term). `padding` "<" (valid): `over` takes the windows that fit in `input`; "=": padded
    so that `over = ceil(input / stride)`; "": `input` must hold the `over` windows."""

    input: DimLike
    over: DimLike
    kernel: DimLike | None
    stride: int
    offset: int
    dilation: int
    padding: str
    where: Where

    def span(self, kernel: int) -> int:
        """The input cells one output cell's window spans, offset included."""
        return self.offset + self.dilation * (kernel - 1) + 1

    def least_input(self, over: int, kernel: int) -> int:
        """The fewest input cells that give `over` output cells."""
        if self.padding == "=":
            return self.stride * (over - 1) + 1
        return self.stride * (over - 1) + self.span(kernel)

    def output(self, input_: int, kernel: int) -> int:
        """The output dim that `input_` cells give; raises Mismatch when no window fits."""
        if self.padding == "=":
            return -(-input_ // self.stride)
        span = self.span(kernel)
        if span > input_:
            dilated = f" (dilation {self.dilation})" if self.dilation != 1 else ""
            shift = f" after the offset {self.offset}" if self.offset else ""
            raise Mismatch(
                f"the kernel of dim {kernel}{dilated} spans {span - self.offset} cells, more "
                f"than the input's {input_}{shift} (a valid convolution, `<+`, has no padding; "
                "`=+` pads)"
            )
        return (input_ - span) // self.stride + 1


@dataclass(eq=False)
class ConcatDim(Pending):
    """A concatenated axis (`a^b^c`): `total` is the sum of the `parts`."""

    total: DimLike
    parts: tuple[DimLike, ...]
    where: Where


@dataclass(eq=False)
class RowEquation(Pending):
    """`r1` equals `r2`, each with a row variable and axes on opposite sides of it
    (`..v.., 5 = b, ..w..`): the axes may be one (`b` is 5) or distinct (`b, 5`), which waits
    until more is known; closing takes the most overlap their dims allow (the fewest axes)."""

    r1: Row
    r2: Row
    where: Where


Constraint = DimBroadcast | RowBroadcast | AffineDim | ConcatDim | RowEquation


def unknowns(constraint: Constraint) -> tuple[list[Var], list[Var]]:
    """The unknown variables of the cur side and of the subr side, as they are now."""
    if isinstance(constraint, ConcatDim):
        parts = [resolve_dim(d) for d in constraint.parts]
        total = resolve_dim(constraint.total)
        return [d for d in parts if isinstance(d, DimVar)], (
            [total] if isinstance(total, DimVar) else []
        )
    if isinstance(constraint, AffineDim):
        # The kernel is closed first (a window nothing gives is 1); the input and output dims
        # wait for it, as an operand waits on its result.
        kernel = resolve_dim(constraint.kernel) if constraint.kernel is not None else None
        dims = [resolve_dim(d) for d in (constraint.input, constraint.over)]
        return ([kernel] if isinstance(kernel, DimVar) else []), [
            d for d in dims if isinstance(d, DimVar)
        ]
    if isinstance(constraint, DimBroadcast):
        cur, subr = resolve_dim(constraint.cur), resolve_dim(constraint.subr)
        return ([cur] if isinstance(cur, DimVar) else []), (
            [subr] if isinstance(subr, DimVar) else []
        )
    if isinstance(constraint, RowEquation):
        # Neither side bounds the other: both count as the cur side.
        r1, r2 = resolve_row(constraint.r1), resolve_row(constraint.r2)
        return [*row_unknowns(r1), *row_unknowns(r2)], []
    return row_unknowns(resolve_row(constraint.cur)), row_unknowns(resolve_row(constraint.subr))

"""Index expressions and projections: the iteration space of an assignment and, for each operand,
the index of each of its axes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

_iterator_ids = itertools.count()


@dataclass(frozen=True)
class Iterator:
    """A loop variable. Identity is by `id`; `name` is only for printing."""

    id: int = field(default_factory=lambda: next(_iterator_ids))
    name: str = ""

    def __str__(self) -> str:
        return self.name or f"i{self.id}"


@dataclass(frozen=True)
class Fixed:
    """A constant index, e.g. 0 for a broadcast size-1 axis."""

    value: int

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Affine:
    """`sum(coeff * iterator) + offset`, e.g. `stride*out + kernel` for convolutions."""

    terms: tuple[tuple[int, Iterator], ...]
    offset: int = 0

    def __str__(self) -> str:
        parts = [f"{c}*{it}" if c != 1 else str(it) for c, it in self.terms]
        if self.offset or not parts:
            parts.append(str(self.offset))
        return " + ".join(parts)


Index = Iterator | Fixed | Affine


@dataclass(frozen=True)
class Lookup:
    """In projections only: the index is the value of operand `operand` (an int32 buffer) read
    at that operand's own projected index, e.g. a token id selecting a row of an embedding table.
    Lowering turns it into a checked `arrayjit.loop_ir.Dynamic` index."""

    operand: int

    def __str__(self) -> str:
        return f"rhs{self.operand + 1}[..]"


#: The index of one axis in projections.
ProjectedIndex = Index | Lookup


def affine(*terms: tuple[int, Iterator], offset: int = 0) -> Index:
    """Build the simplest index equal to `sum(c * it) + offset`, merging repeated iterators."""
    merged: dict[Iterator, int] = {}
    for coeff, it in terms:
        merged[it] = merged.get(it, 0) + coeff
    kept = tuple((c, it) for it, c in merged.items() if c != 0)
    if not kept:
        return Fixed(offset)
    if len(kept) == 1 and kept[0][0] == 1 and offset == 0:
        return kept[0][1]
    return Affine(kept, offset)


def as_affine(index: Index) -> tuple[tuple[tuple[int, Iterator], ...], int]:
    """The (terms, offset) form of any affine index."""
    if isinstance(index, Iterator):
        return ((1, index),), 0
    if isinstance(index, Fixed):
        return (), index.value
    if isinstance(index, Affine):
        return index.terms, index.offset
    raise TypeError(f"index {index} is computed at run time, not an affine function of iterators")


def substitute(index: Index, env: Mapping[Iterator, Index]) -> Index:
    """Replace iterators by indices; affine indices are closed under this."""
    terms, offset = as_affine(index)
    out: list[tuple[int, Iterator]] = []
    for coeff, it in terms:
        sub_terms, sub_offset = as_affine(env.get(it, it))
        out.extend((coeff * c, i) for c, i in sub_terms)
        offset += coeff * sub_offset
    return affine(*out, offset=offset)


def iterators_of(index: ProjectedIndex) -> tuple[Iterator, ...]:
    """The iterators of an affine index; none for a lookup (its operand has its own index)."""
    if isinstance(index, Lookup):
        return ()
    return tuple(it for _, it in as_affine(index)[0])


def row_major_offset(dims: tuple[int, ...], index: tuple[Index, ...]) -> Index:
    """The offset of `index` in a row-major buffer of `dims`, as one affine index."""
    strides = [1] * len(dims)
    for axis in range(len(dims) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * dims[axis + 1]
    terms = []
    offset = 0
    for stride, idx in zip(strides, index, strict=True):
        if isinstance(idx, Fixed):
            offset += int(stride) * idx.value
        else:
            its, off = as_affine(idx)
            terms.extend((int(stride) * c, it) for c, it in its)
            offset += int(stride) * off
    return affine(*terms, offset=offset)


def index_range(index: Index, bounds: Mapping[Iterator, int]) -> tuple[int, int]:
    """The smallest and largest value `index` takes over the iteration space `bounds`."""
    terms, offset = as_affine(index)
    low = high = offset
    for coeff, it in terms:
        extreme = coeff * (bounds[it] - 1)
        low += min(0, extreme)
        high += max(0, extreme)
    return low, high


@dataclass(frozen=True)
class Projections:
    """The iteration space of an assignment and how each operand is indexed in it.

    `product_space[k]` is the extent of `product_iterators[k]`. `project_lhs[a]` is the index of
    the lhs's axis `a`; `project_rhs[r][a]` the index of axis `a` of operand `r`. Iterators that do
    not occur in `project_lhs` (nor in the index of an operand that a `Lookup` of the lhs reads)
    are reductions.
    """

    product_space: tuple[int, ...]
    product_iterators: tuple[Iterator, ...]
    project_lhs: tuple[ProjectedIndex, ...]
    project_rhs: tuple[tuple[ProjectedIndex, ...], ...]
    debug: str = ""

    def __post_init__(self) -> None:
        if len(self.product_space) != len(self.product_iterators):
            raise ValueError(
                f"projections: {len(self.product_space)} extents for "
                f"{len(self.product_iterators)} iterators"
            )
        if len(set(self.product_iterators)) != len(self.product_iterators):
            raise ValueError("projections: an iterator occurs twice in the product space")
        for extent in self.product_space:
            if not isinstance(extent, int) or extent < 1:
                raise ValueError(
                    f"projections: iteration extent must be a positive int: {extent!r}"
                )
        known = set(self.product_iterators)
        for index in (*self.project_lhs, *itertools.chain.from_iterable(self.project_rhs)):
            for it in iterators_of(index):
                if it not in known:
                    raise ValueError(
                        f"projections: index {index} uses {it}, not in the product space"
                    )
            if isinstance(index, Lookup):
                self._check_lookup(index)

    def _check_lookup(self, lookup: Lookup) -> None:
        if not 0 <= lookup.operand < len(self.project_rhs):
            raise ValueError(
                f"projections: a lookup reads operand {lookup.operand + 1} of "
                f"{len(self.project_rhs)}"
            )
        if any(isinstance(i, Lookup) for i in self.project_rhs[lookup.operand]):
            raise ValueError("projections: a lookup reads an operand that is itself looked up")

    def lookup_iterators(self) -> set[Iterator]:
        """The iterators at which the lookups of the lhs read their operands."""
        return {
            it
            for index in self.project_lhs
            if isinstance(index, Lookup)
            for i in self.project_rhs[index.operand]
            for it in iterators_of(i)
        }

    @property
    def bounds(self) -> dict[Iterator, int]:
        return dict(zip(self.product_iterators, self.product_space, strict=True))

    @property
    def reduction_iterators(self) -> tuple[Iterator, ...]:
        """Iterators the lhs cell does not depend on: their values are accumulated into it. (The
        operand of a lookup in the lhs picks the cell: those iterators are reductions too, since
        several of their values may pick one cell.)"""
        used = {it for index in self.project_lhs for it in iterators_of(index)}
        return tuple(it for it in self.product_iterators if it not in used)

    def check_against(
        self, lhs_dims: Sequence[int], rhs_dims: Sequence[Sequence[int]], what: str
    ) -> None:
        """Raise ValueError unless every index stays inside the dims of its operand."""
        bounds = self.bounds
        operands: Iterable[tuple[str, Sequence[int], Sequence[Index]]] = [
            ("lhs", lhs_dims, self.project_lhs),
            *(
                (f"rhs{r + 1}", dims, proj)
                for r, (dims, proj) in enumerate(zip(rhs_dims, self.project_rhs, strict=True))
            ),
        ]
        for name, dims, proj in operands:
            if len(dims) != len(proj):
                raise ValueError(
                    f"{what}: {name} has {len(dims)} axes but its projection gives {len(proj)} indices"
                )
            for axis, (dim, index) in enumerate(zip(dims, proj, strict=True)):
                if isinstance(index, Lookup):
                    continue  # checked when the code runs
                low, high = index_range(index, bounds)
                if low < 0 or high >= dim:
                    raise ValueError(
                        f"{what}: {name} axis {axis} has dim {dim} but index {index} ranges over "
                        f"{low}..{high}"
                    )

    def __str__(self) -> str:
        space = ", ".join(
            f"{it}<{n}" for it, n in zip(self.product_iterators, self.product_space, strict=True)
        )
        lhs = ",".join(map(str, self.project_lhs))
        rhs = "; ".join(",".join(map(str, p)) for p in self.project_rhs)
        return f"[{space}] lhs[{lhs}] rhs[{rhs}]"


def identity_projections(dims: Sequence[int], n_rhs: int) -> Projections:
    """Pointwise over `dims` with every operand of the same dims."""
    its = tuple(Iterator(name=f"i{k}") for k in range(len(dims)))
    return Projections(tuple(dims), its, its, tuple(its for _ in range(n_rhs)))

"""Weight-name maps from Hugging Face checkpoints to our parameter labels: one table per model,
each row a name pair and an axis rearrangement (`"(h k) e -> h k e"`) from their layout to ours,
applied with strict checks (a missing, extra or misshaped tensor names the file and tensor)."""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ocannl_py.persistence import CheckpointError

_GROUP = re.compile(r"\(([^()]*)\)|(\S+)")


def _parse_side(text: str) -> list[list[str]]:
    """`"(h k) e"` -> `[["h", "k"], ["e"]]`: each axis of the array, as the names it merges."""
    groups = []
    for match in _GROUP.finditer(text):
        group, single = match.groups()
        names = group.split() if group is not None else [single]
        if not names or any(not n.isidentifier() for n in names):
            raise ValueError(f"bad axis group in layout {text!r}")
        groups.append(names)
    return groups


@dataclass(frozen=True)
class Layout:
    """An axis rearrangement `"left -> right"` in einops' notation: names are axes, parentheses
    merge axes into one (row-major). The left side describes their array, the right side ours."""

    text: str

    def __post_init__(self) -> None:
        left, right = self._sides()
        flat_left = [n for g in left for n in g]
        flat_right = [n for g in right for n in g]
        if sorted(flat_left) != sorted(flat_right) or len(set(flat_left)) != len(flat_left):
            raise ValueError(f"layout {self.text!r}: both sides must name the same axes once")

    def _sides(self) -> tuple[list[list[str]], list[list[str]]]:
        left, sep, right = self.text.partition("->")
        if not sep:
            raise ValueError(f"layout {self.text!r} has no '->'")
        return _parse_side(left), _parse_side(right)

    def shape(self, sizes: Mapping[str, int], side: str = "left") -> tuple[int, ...]:
        groups = self._sides()[0 if side == "left" else 1]
        return tuple(int(np.prod([sizes[n] for n in g], dtype=np.int64)) for g in groups)

    def apply(self, array: np.ndarray, sizes: Mapping[str, int]) -> np.ndarray:
        """Their `array` (of the left side's shape) rearranged into ours."""
        left, right = self._sides()
        flat_left = [n for g in left for n in g]
        flat_right = [n for g in right for n in g]
        expanded = array.reshape([sizes[n] for n in flat_left])
        moved = expanded.transpose([flat_left.index(n) for n in flat_right])
        return np.ascontiguousarray(moved.reshape(self.shape(sizes, "right")))


@dataclass(frozen=True)
class Entry:
    """One row of a weight map. `ours` and `theirs` may hold `{i}` (the layer). Ours is in
    memory order, output axes then its last `inputs` axes as input axes (no batch axes). `part`
    selects one slice of the leading axis of ours after rearranging (a fused q/k/v weight); an
    `optional` tensor (BERT's pooler) is dropped when the model being filled has no such
    parameter."""

    ours: str
    theirs: str
    layout: str
    inputs: int = 0
    part: int | None = None
    optional: bool = False


def expand(table: list[Entry], layers: int) -> Iterator[tuple[str, str, Entry]]:
    """Each row of `table` with `{i}` filled, layer by layer (the rows before the first layer
    row, then each layer, then the rest): (our label, their name, row)."""
    per_layer = [e for e in table if "{i}" in e.theirs]
    first = table.index(per_layer[0]) if per_layer else len(table)
    for entry in table[:first]:
        yield entry.ours, entry.theirs, entry
    for i in range(layers):
        for entry in per_layer:
            yield entry.ours.format(i=i), entry.theirs.format(i=i), entry
    for entry in table[first:]:
        if "{i}" not in entry.theirs:
            yield entry.ours, entry.theirs, entry


def our_rows(table: list[Entry], layers: int, sizes: Mapping[str, int]) -> dict[str, dict]:
    """Our label -> its batch/input/output dims (what `oc.load` settles a parameter's dims
    from when shape inference has not)."""
    out = {}
    for ours, _, entry in expand(table, layers):
        shape = list(Layout(entry.layout).shape(sizes, "right"))
        if entry.part is not None:
            shape = shape[1:]
        cut = len(shape) - entry.inputs
        out[ours] = {"batch": [], "output": shape[:cut], "input": shape[cut:]}
    return out


class TensorSource(Mapping[str, np.ndarray]):
    """What a weight map reads: names, shapes without reading data, arrays on demand, and where
    each name comes from (for messages)."""

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]: ...

    @abstractmethod
    def where(self, name: str | None) -> str:
        """The file holding `name`; with None, the checkpoint as a whole."""


def map_weights(
    table: list[Entry],
    source: TensorSource,
    *,
    layers: int,
    sizes: Mapping[str, int],
    ignored: Callable[[str], object],
    prefixes: tuple[str, ...],
    what: str,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Our label -> array for every row of `table`: every name of `source` is used (or
    `ignored`), every expected name is present with the shape the config implies."""
    from tqdm.auto import tqdm

    rows = list(expand(table, layers))
    prefix = _prefix(rows, source, prefixes, what)
    used: set[str] = set()
    for ours, theirs, entry in rows:
        name = prefix + theirs
        if name not in source:
            if entry.optional:
                continue
            raise CheckpointError(
                f"{what}: no tensor {name!r} (for our {ours!r}) in {source.where(None)}"
            )
        expected = Layout(entry.layout).shape(sizes)
        found = source.shape(name)
        if tuple(found) != expected:
            raise CheckpointError(
                f"{what}: tensor {name!r} in {source.where(name)} has shape {tuple(found)}, "
                f"expected {expected} from the config ({_sizes_text(entry.layout, sizes)})"
            )
        used.add(name)
    extra = [n for n in source if n not in used and not ignored(n)]
    if extra:
        shown = ", ".join(repr(n) for n in sorted(extra)[:8])
        more = f" and {len(extra) - 8} more" if len(extra) > 8 else ""
        raise CheckpointError(
            f"{what}: {source.where(None)} holds tensors the model does not have: {shown}{more}"
        )
    out: dict[str, np.ndarray] = {}
    rearranged: dict[str, np.ndarray] = {}
    for ours, theirs, entry in tqdm(rows, desc=f"reading {what}", unit="tensor", delay=1.0,
                                    disable=not progress):  # fmt: skip
        name = prefix + theirs
        if name not in used:
            continue
        if name not in rearranged:  # a fused tensor is read and rearranged once for its parts
            rearranged = {name: Layout(entry.layout).apply(source[name], sizes)}
        array = rearranged[name]
        out[ours] = array[entry.part].copy() if entry.part is not None else array
    return out


def _prefix(rows, source: TensorSource, prefixes: tuple[str, ...], what: str) -> str:
    """The prefix the checkpoint puts before every name (`bert.`, `transformer.` or none)."""
    required = [theirs for _, theirs, entry in rows if not entry.optional]
    for prefix in prefixes:
        if any(prefix + name in source for name in required):
            return prefix
    raise CheckpointError(
        f"{what}: {source.where(None)} holds none of the tensors expected (e.g. "
        f"{prefixes[0] + required[0]!r}); is it a checkpoint of this kind of model?"
    )


def _sizes_text(layout: str, sizes: Mapping[str, int]) -> str:
    names = sorted(set(re.findall(r"[A-Za-z_]\w*", layout.partition("->")[0])))
    return ", ".join(f"{n}={sizes[n]}" for n in names)

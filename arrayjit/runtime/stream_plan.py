"""The plan of a streamed run (NNL's computation table): where every buffer of every stage lives
in one device allocation of at most `budget` bytes, and the steps that copy stage weights in,
compute the stages and release their slots, built once and replayed by every run.

Buffers come in three kinds. *Weights* are read by a stage and written by none: they live in host
memory and are copied in. *Activations* are written by some stage (outputs, hidden states, a KV
cache): they stay resident for the plan's life, so values flow between stages and between runs.
*Scratch* buffers belong to one stage's compiled routine: one region, as large as the largest
stage's scratch, serves every stage in turn (stages run one after the other).

The budget rule: activations + scratch + the weights of the stages kept resident + `slots` ring
slots of the largest streamed stage's weights <= budget. Stages are kept resident largest first
while the rest still fit (among equal stages, the streamed ones spread evenly); the others stream through the ring, streamed stage `j` in slot
`j % slots`, so the copy of stage `j + 1` runs while stage `j` computes. Slots are fixed-size
regions at fixed offsets: no allocation happens after the plan is built, so a long run cannot
fragment memory. A budget that cannot hold one stage (with the activations and scratch) is a
`StreamBudgetError` at plan time naming that stage and the bytes it needs.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from arrayjit.tnode import MemoryMode, TNode

#: Every region starts at a multiple of this many bytes (the GPU's preferred alignment).
ALIGN = 256

_SCRATCH = (MemoryMode.LOCAL, MemoryMode.VIRTUAL)

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


class StreamBudgetError(ValueError):
    """The budget cannot hold a stage."""


def parse_bytes(size: int | str) -> int:
    """Bytes from an int or a text such as "2GiB", "512 MiB", "1.5GB"."""
    if isinstance(size, bool):
        raise TypeError(f"a size in bytes must be an int or a text like '2GiB', got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"a size in bytes must be positive, got {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"a size in bytes must be an int or a text like '2GiB', got {size!r}")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", size)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read {size!r} as a size: expected a number and a unit "
            f"({', '.join(u for u in _UNITS if u)}), e.g. '2GiB'"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a size in bytes must be positive, got {size!r}")
    return value


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def nbytes(t: TNode) -> int:
    return t.size * t.dtype.itemsize


@dataclass(frozen=True)
class StageBuffers:
    """The buffers of one compiled stage, by kind."""

    name: str
    weights: tuple[TNode, ...]
    activations: tuple[TNode, ...]
    scratch: tuple[TNode, ...]
    #: The buffers the stage writes (empty: taken to write its activations before reading them).
    writes: tuple[TNode, ...] = ()


@dataclass(frozen=True)
class Step:
    """One row of the table: `copy` the streamed weights of `stage` into `slot`; `compute`
    `stage`; `release` `slot` once the compute of `stage` is done."""

    kind: str
    stage: int
    slot: int | None = None

    def __str__(self) -> str:
        where = "" if self.slot is None else f" slot {self.slot}"
        return f"{self.kind} {self.stage}{where}"


@dataclass
class StreamPlan:
    """Offsets (bytes from the start of the plan's one allocation) of every buffer, and steps."""

    budget: int
    stages: list[StageBuffers]
    #: Activations kept for the plan's life and the weights of resident stages.
    resident: dict[TNode, int] = field(default_factory=dict)
    #: Scratch buffers and transient activations, placed by live range.
    shared: dict[TNode, int] = field(default_factory=dict)
    #: Per stage: its slot in the ring, None when its weights are resident.
    slot_of: list[int | None] = field(default_factory=list)
    #: Per stage: its streamed weights' offsets within its slot.
    in_slot: list[dict[TNode, int]] = field(default_factory=list)
    slot_offsets: list[int] = field(default_factory=list)
    slot_bytes: int = 0
    total_bytes: int = 0
    steps: list[Step] = field(default_factory=list)

    @property
    def streamed(self) -> list[int]:
        return [i for i, slot in enumerate(self.slot_of) if slot is not None]

    def offset(self, stage: int, t: TNode) -> int:
        """Where `t` lives while `stage` runs."""
        if t in self.resident:
            return self.resident[t]
        if t in self.shared:
            return self.shared[t]
        return self.slot_offsets[self.slot_of[stage]] + self.in_slot[stage][t]

    def streamed_bytes(self) -> int:
        """Weight bytes copied by one run."""
        return sum(nbytes(t) for weights in self.in_slot for t in weights)

    def table(self) -> str:
        return "\n".join(str(s) for s in self.steps)


def classify(
    name: str, tnodes: Sequence[TNode], written: set[TNode], writes: Sequence[TNode] = ()
) -> StageBuffers:
    """Split a stage's buffers into weights, activations and scratch; `written`: the buffers
    some stage writes; `writes`: those this stage writes."""
    scratch = tuple(t for t in tnodes if t.memory_mode in _SCRATCH)
    rest = [t for t in tnodes if t not in scratch]
    return StageBuffers(
        name,
        tuple(t for t in rest if t not in written),
        tuple(t for t in rest if t in written),
        scratch,
        tuple(writes),
    )


def _pack(tnodes: Sequence[TNode], start: int = 0) -> tuple[dict[TNode, int], int]:
    """Consecutive aligned offsets from `start`, and the end."""
    offsets = {}
    end = start
    for t in tnodes:
        if t not in offsets:
            offsets[t] = end
            end += aligned(nbytes(t))
    return offsets, end


def plan(
    stages: Sequence[StageBuffers],
    budget: int,
    slots: int = 2,
    keep_resident: bool = True,
    transient: Collection[TNode] = (),
) -> StreamPlan:
    """Lay out `stages` in `budget` bytes with a ring of up to `slots` slots (1: each copy
    waits for the previous stage's compute, the no-overlap baseline), and build the table.
    Activations in `transient` (and every stage's scratch) share memory by live range."""
    if slots < 1:
        raise ValueError(f"a streaming plan needs at least one slot, got slots={slots}")
    live = _live_ranges(stages, set(transient))
    activations = [
        t for t in dict.fromkeys(t for s in stages for t in s.activations) if t not in live
    ]
    activation_bytes = sum(aligned(nbytes(t)) for t in activations)
    shared, shared_bytes = _pack_by_live_range(live)
    weight_bytes = [_pack(s.weights)[1] for s in stages]
    fixed = activation_bytes + shared_bytes
    needs = [fixed + w for w in weight_bytes]
    worst = max(range(len(stages)), key=lambda i: needs[i])
    if needs[worst] > budget:
        raise StreamBudgetError(
            f"the budget of {budget} bytes cannot hold stage {worst} ({stages[worst].name!r}): it "
            f"needs {needs[worst]} bytes ({weight_bytes[worst]} of weights, {shared_bytes} of "
            f"scratch and activations shared by live range, {activation_bytes} of activations "
            "kept resident for the whole plan)"
        )
    available = budget - fixed
    largest = max(weight_bytes, default=0)
    ring = min(slots, available // largest) if largest else slots
    resident_stages = _choose_resident(stages, available, ring) if keep_resident else set()
    resident_weights = list(
        dict.fromkeys(t for i in sorted(resident_stages) for t in stages[i].weights)
    )
    layout = StreamPlan(budget, list(stages))
    layout.resident, end = _pack([*activations, *resident_weights])
    layout.shared = {t: end + offset for t, offset in shared.items()}
    end += shared_bytes
    in_slot = []
    for i, s in enumerate(stages):
        streamed = [t for t in s.weights if t not in layout.resident]
        in_slot.append(_pack(streamed)[0] if i not in resident_stages and streamed else {})
    layout.in_slot = in_slot
    streamed_stages = [i for i in range(len(stages)) if in_slot[i]]
    layout.slot_bytes = max((_pack(list(in_slot[i]))[1] for i in streamed_stages), default=0)
    count = min(ring, len(streamed_stages))
    layout.slot_offsets = [end + k * layout.slot_bytes for k in range(count)]
    layout.total_bytes = end + count * layout.slot_bytes
    assert layout.total_bytes <= budget
    slot_index = {i: j % count for j, i in enumerate(streamed_stages)}
    layout.slot_of = [slot_index.get(i) for i in range(len(stages))]
    layout.steps = _steps(len(stages), streamed_stages, count)
    return layout


def _live_ranges(
    stages: Sequence[StageBuffers], transient: set[TNode]
) -> dict[TNode, tuple[int, int]]:
    """First and last stage of every scratch buffer and of every transient activation that is
    written by the first stage that touches it (one read earlier would see an older run's
    values: it stays resident)."""
    live: dict[TNode, tuple[int, int]] = {}
    first_write: dict[TNode, int] = {}
    for i, s in enumerate(stages):
        for t in s.writes:
            first_write.setdefault(t, i)
        for t in (*s.scratch, *(t for t in s.activations if t in transient)):
            first, _ = live.get(t, (i, i))
            live[t] = (first, i)
    return {
        t: span
        for t, span in live.items()
        if t.memory_mode in _SCRATCH or first_write.get(t, span[0]) == span[0]
    }


def _pack_by_live_range(
    live: dict[TNode, tuple[int, int]],
) -> tuple[dict[TNode, int], int]:
    """Offsets where buffers whose live ranges overlap never overlap (largest first, each at
    the lowest offset that fits), and the bytes it takes."""
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first stage, last stage
    offsets = {}
    for t in sorted(live, key=lambda t: (-nbytes(t), live[t])):
        first, last = live[t]
        size = aligned(nbytes(t))
        busy = sorted(
            (start, end) for start, end, since, until in placed if since <= last and first <= until
        )
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        offsets[t] = offset
        placed.append((offset, offset + size, first, last))
    return offsets, max((e for _, e, _, _ in placed), default=0)


def _choose_resident(stages: Sequence[StageBuffers], available: int, ring: int) -> set[int]:
    """Stages whose weights stay resident: largest first, each kept while the resident weights
    and a ring of `ring` slots of the largest remaining stage still fit in `available`."""

    def fits(resident: set[int]) -> bool:
        kept = {t for i in resident for t in stages[i].weights}
        kept_bytes = sum(aligned(nbytes(t)) for t in kept)
        rest = [
            sum(aligned(nbytes(t)) for t in dict.fromkeys(stages[i].weights) if t not in kept)
            for i in range(len(stages))
            if i not in resident
        ]
        return kept_bytes + ring * max(rest, default=0) <= available

    order = sorted(
        range(len(stages)), key=lambda i: -sum(aligned(nbytes(t)) for t in stages[i].weights)
    )
    resident: set[int] = set()
    for i in order:
        if fits(resident | {i}):
            resident.add(i)
    spread = _spread(stages, resident)
    return spread if fits(spread) else resident


def _spread(stages: Sequence[StageBuffers], resident: set[int]) -> set[int]:
    """`resident` with, among stages of equal weight bytes (a model's layers), the streamed ones
    spread evenly rather than last: each streamed stage's copy then runs while the resident
    stages before it compute, and the copy stream is not left idle while a run of resident
    stages computes (same bytes resident, so the budget holds)."""
    groups: dict[int, list[int]] = {}
    for i, stage in enumerate(stages):
        groups.setdefault(sum(aligned(nbytes(t)) for t in stage.weights), []).append(i)
    spread = set(resident)
    for members in groups.values():
        streamed = [i for i in members if i not in resident]
        if not streamed or len(streamed) == len(members):
            continue
        step = len(members) / len(streamed)
        chosen = {
            members[min(len(members) - 1, int((k + 0.5) * step))] for k in range(len(streamed))
        }
        spread -= set(members)
        spread |= set(members) - chosen
    return spread


def _steps(stage_count: int, streamed: list[int], slots: int) -> list[Step]:
    """Copy the first `slots` streamed stages ahead; after each streamed stage's compute,
    release its slot and copy the streamed stage that comes `slots` later into it."""
    steps = [Step("copy", i, j % slots) for j, i in enumerate(streamed[:slots])]
    position = {i: j for j, i in enumerate(streamed)}
    for i in range(stage_count):
        j = position.get(i)
        steps.append(Step("compute", i, None if j is None else j % slots))
        if j is None:
            continue
        steps.append(Step("release", i, j % slots))
        if j + slots < len(streamed):
            steps.append(Step("copy", streamed[j + slots], j % slots))
    return steps

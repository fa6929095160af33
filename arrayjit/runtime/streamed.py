"""A streamed executable: stages compiled as bound routines (`Runtime.compile(..., bound=True)`)
placed by a `StreamPlan` into one allocation of at most `budget` bytes, and run by replaying the
plan's table on the backend's streams (`CudaStreams`, or `HostStreams` on C).

Weights come from their sources: an array given for the tnode (e.g. a view into a safetensors
file's memory map, `arrayjit.runtime.mapped.map_safetensors`; taken to be constant) or the tnode's
host array (copied again after `set_host` changes it). A source of another dtype is converted to
the tnode's dtype as it is copied, so bf16 or fp16 weight tnodes stream half the bytes of fp32
ones whatever the file holds. Activations are places of their tnodes' residency: reading one
after a run fetches it, and setting its host values sends them before the next run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from arrayjit.runtime import index_checks, residency
from arrayjit.runtime.executable import Executable
from arrayjit.runtime.stream_plan import StreamPlan, classify, nbytes, plan
from arrayjit.tnode import TNode

log = logging.getLogger("arrayjit")


@dataclass
class StreamStats:
    """What the plan holds and what its last run did. Times are seconds (CUDA: from events)."""

    #: The plan's one device allocation: the most device memory it ever holds.
    peak_device_bytes: int
    budget: int
    resident_stages: int
    streamed_stages: int
    slots: int
    runs: int = 0
    #: Weight bytes copied by the last run (streamed stages, and resident ones when stale).
    bytes_copied: int = 0
    #: Copy time of the last run, and the part of it during which a stage was computing.
    copy_seconds: float = 0.0
    hidden_copy_seconds: float = 0.0
    #: From the first step of the last run to the end of its last stage.
    run_seconds: float = 0.0
    total_bytes_copied: int = 0

    @property
    def hidden_share(self) -> float:
        """The share of copy time hidden behind compute (1.0 when nothing was copied)."""
        return self.hidden_copy_seconds / self.copy_seconds if self.copy_seconds > 0 else 1.0


_COPY, _COMPUTE, _RELEASE = object(), object(), object()
_KINDS = {"copy": _COPY, "compute": _COMPUTE, "release": _RELEASE}


class PlanPlace:
    """An activation's region of the plan's memory, as a place of its tnode's residency."""

    def __init__(self, streams, address: int, tnode: TNode) -> None:
        self.streams, self.address, self.tnode = streams, address, tnode

    def fetch(self, host: np.ndarray) -> None:
        self.streams.synchronize()
        self.streams.download(self.address, self.tnode, host)


def make_streams(backend, host_memory: str):
    if backend.name == "cuda":
        from arrayjit.backends.cuda.streams import CudaStreams

        return CudaStreams(backend, host_memory)
    from arrayjit.runtime.host_streams import HostStreams

    return HostStreams()


class StreamedExecutable:
    """Stages run in order within a device memory budget; `run()` replays the plan's table."""

    def __init__(
        self,
        executables: Sequence[Executable],
        budget: int,
        weights: Mapping[TNode, np.ndarray] | None = None,
        slots: int = 2,
        keep_resident: bool = True,
        host_memory: str = "pinned",
        keep: Collection[TNode] | None = None,
    ) -> None:
        self.executables = list(executables)
        self._run_lock = threading.Lock()
        self.backend = self.executables[0].runtime.backend
        written = {t for e in self.executables for t in e.compiled.written}
        stages = [
            classify(e.name, e.compiled.tnodes, written, e.compiled.written)
            for e in self.executables
        ]
        # Without `keep`, every activation stays; with it, the others share memory by live range.
        # The error buffers of index checks stay too: they are read after the run.
        errors = {c.errors for e in self.executables for c in e.checks}
        transient = () if keep is None else written - set(keep) - errors
        self.plan: StreamPlan = plan(stages, budget, slots, keep_resident, transient)
        self.streams = make_streams(self.backend, host_memory)
        self.base = self.streams.allocate(self.plan.total_bytes)
        sources = dict(weights or {})
        for t, source in sources.items():
            if np.shape(source) != t.dims:
                raise ValueError(
                    f"the weights given for {t.label!r} have shape {np.shape(source)}, but the "
                    f"tnode's dims are {t.dims}"
                )
        all_weights = list(dict.fromkeys(t for s in stages for t in s.weights))
        # Weights read from their tnodes' host arrays, and the version each copy holds.
        self.host_states = [(t, residency.of(t)) for t in all_weights if t not in sources]
        self.versions = [state.latest for _, state in self.host_states]
        self.sources = {t: sources[t] if t in sources else t.host() for t in all_weights}
        for stage, e in enumerate(self.executables):
            for t in e.compiled.tnodes:
                e.bind(t, self.base + self.plan.offset(stage, t))
        self.loads = {}
        self.uses: dict[TNode, list[tuple[int, int]]] = {}  # weight -> (stage, part) of loads
        for i in self.plan.streamed:
            parts = []
            for k, t in enumerate(self.plan.in_slot[i]):
                address = self.base + self.plan.slot_offsets[self.plan.slot_of[i]]
                parts.append((address + self.plan.in_slot[i][t], t, self.sources[t]))
                self.uses.setdefault(t, []).append((i, k))
            self.loads[i] = self.streams.load(parts)
        self.resident_weights = [t for t in all_weights if t in self.plan.resident]
        self.stale = set(self.resident_weights)  # copied by the first run
        self.places = {}
        for t in dict.fromkeys(t for s in stages for t in s.activations):
            if t not in self.plan.resident:
                continue  # transient: its memory holds other buffers after its last stage
            place = PlanPlace(self.streams, self.base + self.plan.resident[t], t)
            state = residency.of(t)
            state.add_place(place, holds_newest=state.latest == 0 and not t.has_host)
            self.places[t] = place
        # Every activation is written by some stage: after a run, the plan holds its newest.
        self.written = [(residency.of(t), place) for t, place in self.places.items()]
        # The plan's steps with what each one runs.
        self.table = [
            (
                _KINDS[step.kind],
                step.stage,
                step.slot,
                self.loads[step.stage]
                if step.kind == "copy"
                else self.executables[step.stage].compiled.run,
            )
            for step in self.plan.steps
        ]
        # Slots free once the last compute that used them is done (kept across runs).
        self.free: list = [None] * len(self.plan.slot_offsets)
        # The copies before the first compute: issued at the end of a run for the next one (the
        # same weights), so the copy stream works while the host takes the results and starts
        # the next run. Table index -> the copy's (begin, end) events, until that run uses it.
        first = next((k for k, row in enumerate(self.table) if row[0] is _COMPUTE), 0)
        self.leading = [k for k in range(first) if self.table[k][0] is _COPY]
        self.ahead: dict[int, tuple] = {}
        # The stages' checks of indices read from data (error buffers are activations of the
        # plan: reading them after the run waits for it and fetches them).
        self.checks = [c for e in self.executables for c in e.checks]
        self._events: tuple | None = None
        self._stats = StreamStats(
            self.plan.total_bytes,
            budget,
            sum(1 for s in self.plan.slot_of if s is None),
            len(self.plan.streamed),
            len(self.plan.slot_offsets),
        )

    def run(self) -> None:
        # Runs from several threads take turns: the slots and the replay table are shared.
        with self._run_lock:
            self._run()

    def _run(self) -> None:
        streams = self.streams
        copied, changed = self._refresh()
        ahead = {k: v for k, v in self.ahead.items() if self.table[k][1] not in changed}
        self.ahead = {}
        start = streams.record_compute()
        ready: list = [None] * len(self.free)
        done: list = [None] * len(self.executables)
        copies, computes = [], []
        free, previous = self.free, start
        record_copy, record_compute = streams.record_copy, streams.record_compute
        for k, (kind, stage, slot, work) in enumerate(self.table):
            if kind is _COPY and k in ahead:  # copied at the end of the last run
                begin, ready[slot] = ahead[k]
                copies.append((begin, ready[slot]))
                copied += work.nbytes
            elif kind is _COPY:
                if free[slot] is not None:
                    streams.copy_waits(free[slot])
                begin = record_copy()
                streams.copy(work)
                ready[slot] = end = record_copy()
                copies.append((begin, end))
                copied += work.nbytes
            elif kind is _COMPUTE:
                if slot is not None:
                    streams.compute_waits(ready[slot])
                begin = record_compute()
                work()
                done[stage] = previous = record_compute()
                computes.append((begin, previous))
            else:
                free[slot] = done[stage]
        for k in self.leading:
            _, _, slot, work = self.table[k]
            streams.copy_waits(free[slot])
            begin = record_copy()
            streams.copy(work)
            self.ahead[k] = (begin, record_copy())
        for state, place in self.written:
            state.write_at(place)
        self._events = (start, previous, copies, computes)
        stats = self._stats
        stats.runs += 1
        stats.bytes_copied = copied
        stats.total_bytes_copied += copied
        if self.checks:
            index_checks.raise_errors(self.checks)

    def _refresh(self) -> tuple[int, set[int]]:
        """Bring host-sourced weights whose tnodes changed into the loads, send stale
        activations and resident weights; the bytes of weights sent, and the stages whose
        streamed weights changed."""
        streams = self.streams
        changed: set[int] = set()
        for k, (t, state) in enumerate(self.host_states):
            if state.latest != self.versions[k]:
                self.versions[k] = state.latest
                source = self.sources[t] = t.host()
                for stage, part in self.uses.get(t, ()):
                    self.loads[stage].refresh(part, source)
                    changed.add(stage)
                if t in self.plan.resident:
                    self.stale.add(t)
        for state, place in self.written:
            if state.held.get(place) != state.latest:
                streams.upload(place.address, place.tnode, place.tnode.host())
                state.copied_to(place)
        sent = 0
        for t in self.stale:
            streams.upload(self.base + self.plan.resident[t], t, self.sources[t])
            sent += nbytes(t)
        self.stale.clear()
        return sent, changed

    @property
    def stats(self) -> StreamStats:
        """The plan's figures and the last run's (waits for the run to finish)."""
        if self._events is not None:
            self.streams.synchronize()
            start, end, copies, computes = self._events
            seconds = self.streams.seconds

            def spans(events: list) -> list[tuple[float, float]]:
                return [(seconds(start, b), seconds(start, e)) for b, e in events]

            copy_spans, compute_spans = spans(copies), spans(computes)
            stats = self._stats
            stats.copy_seconds = sum(e - b for b, e in copy_spans)
            stats.hidden_copy_seconds = overlap(copy_spans, compute_spans)
            stats.run_seconds = seconds(start, end)
            self._events = None
        return self._stats

    def synchronize(self) -> None:
        self.streams.synchronize()

    def __repr__(self) -> str:
        p = self.plan
        return (
            f"StreamedExecutable({len(self.executables)} stages, {len(p.streamed)} streamed "
            f"through {len(p.slot_offsets)} slots, {p.total_bytes} of {p.budget} bytes)"
        )


def overlap(spans: list[tuple[float, float]], busy: list[tuple[float, float]]) -> float:
    """Total time of `spans` that falls within `busy` (disjoint intervals in order)."""
    total, k = 0.0, 0
    for begin, end in sorted(spans):
        while k < len(busy) and busy[k][1] <= begin:
            k += 1
        m = k
        while m < len(busy) and busy[m][0] < end:
            total += min(end, busy[m][1]) - max(begin, busy[m][0])
            m += 1
    return total

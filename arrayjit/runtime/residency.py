"""Residency: which places hold a copy of each buffer, and which of them hold its newest values.

A place is the host array (`HOST`) or any device memory that holds a copy: a device buffer of a
backend on one GPU, or later a slot of a streaming plan. Each place holds a version of the buffer;
the buffer's `latest` version is the newest, and a place is current when it holds it. Writing at
a place makes a new version there, so every other place is stale until it copies from a current
one. Reading the host array (`TNode.host()`) first brings the host up to date from a current
place. With one backend per device, N devices are N places of one buffer.

A `TNode` only describes a buffer and owns its host array; this module keeps the rest, keyed by
the tnode (weakly: the state goes with the tnode).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from arrayjit.tnode import TNode


class Place(Protocol):
    """Device memory that holds a copy of one buffer."""

    def fetch(self, host: np.ndarray) -> None:
        """Copy this place's values into the host array `host`."""


#: The place of a buffer's host array.
HOST = "host"


class Residency:
    """The versions held by the places of one buffer, and whether it was ever given values."""

    __slots__ = ("latest", "held", "computed", "__weakref__")

    #: Places other than the host registered so far in the process: while there are none, a
    #: host-only backend has no bookkeeping to do.
    device_places: ClassVar[int] = 0
    #: Writes at places other than the host so far in the process: a host-only backend whose
    #: buffers were current when this count was last seen need not look at them again.
    device_writes: ClassVar[int] = 0

    def __init__(self) -> None:
        self.latest = 0
        self.held: dict[object, int] = {HOST: 0}
        # Set by a routine that writes the buffer, or by `TNode.set_host`.
        self.computed = False

    def is_current(self, place: object) -> bool:
        return self.held.get(place) == self.latest

    def add_place(self, place: Place, holds_newest: bool) -> None:
        """Register device memory for this buffer; `holds_newest` when its initial contents (zeros)
        are the buffer's newest values."""
        self.held[place] = self.latest if holds_newest else -1
        Residency.device_places += 1

    def write_at(self, place: object) -> None:
        """`place` now holds new values; every other place is stale."""
        self.latest += 1
        self.held[place] = self.latest
        self.computed = True
        if place is not HOST:
            Residency.device_writes += 1

    def copied_to(self, place: object) -> None:
        """`place` received the newest values from a current place."""
        self.held[place] = self.latest

    def current_places(self) -> list[object]:
        return [place for place, version in self.held.items() if version == self.latest]


_states: weakref.WeakKeyDictionary[TNode, Residency] = weakref.WeakKeyDictionary()


def of(tnode: TNode) -> Residency:
    """The residency of `tnode`, created on first use."""
    state = _states.get(tnode)
    if state is None:
        state = _states[tnode] = Residency()
    return state


def computed(tnode: TNode) -> bool:
    """Whether `tnode` was given values: written by a routine or by `set_host`."""
    state = _states.get(tnode)
    return state is not None and state.computed


def refresh_host(tnode: TNode, host: np.ndarray) -> None:
    """Bring the host array `host` of `tnode` up to date if another place holds newer values."""
    state = _states.get(tnode)
    if state is None or state.held[HOST] == state.latest:
        return
    source = next(p for p in state.current_places() if p is not HOST)
    source.fetch(host)
    state.held[HOST] = state.latest


def host_written(tnode: TNode) -> None:
    """The host array of `tnode` was overwritten: it holds the newest values."""
    of(tnode).write_at(HOST)

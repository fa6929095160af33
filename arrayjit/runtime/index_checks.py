"""Run-time checks of data-dependent indices (gathers and scatters).

An `Accum` whose projections hold a `Lookup` reads an index from data. Its generated code checks
every such index against its axis (`ocannl_index` in `arrayjit.codegen.c_syntax`): an index
outside is never used (row 0 is read or written instead) but recorded, with which lookup it was,
in the Accum's error buffer. After each run the runtime reads the error buffers of the routine
and raises `IndexOutOfRange` naming the buffer the index came from, the index and the axis. On a
GPU this read waits for the routine to finish.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from arrayjit import assignments as asg
from arrayjit.dtypes import int32
from arrayjit.indexing import Lookup
from arrayjit.tnode import MemoryMode, TNode


class IndexOutOfRange(IndexError):
    """An index read from data lies outside the axis it indexes."""


@dataclass(frozen=True)
class Site:
    """One lookup of an Accum: the buffer the index comes from, the buffer and axis it indexes."""

    source: TNode
    target: str
    axis: int
    bound: int

    def where(self) -> str:
        """The cells of the source holding indices outside the axis, as `ids[0, 2]` (the first
        few), or "" when the source no longer holds one (it was written since)."""
        values = self.source.host()
        bad = np.argwhere((values < 0) | (values >= self.bound))[:3]
        cells = [f"{self.source.label}[{', '.join(map(str, cell))}]" for cell in bad]
        return f" (at {', '.join(cells)})" if cells else ""


@dataclass(frozen=True, eq=False)
class Check:
    """The error buffer of one Accum (cells: the site, from 1, and the index) and its sites."""

    errors: TNode
    sites: tuple[Site, ...]


_checks: weakref.WeakKeyDictionary[asg.Accum, Check] = weakref.WeakKeyDictionary()


def lookups(accum: asg.Accum) -> list[tuple[TNode, int, Lookup]]:
    """The lookups of an Accum: (the buffer indexed, its axis, the lookup), lhs first."""
    p = accum.projections
    found = [(accum.lhs, axis, i) for axis, i in enumerate(p.project_lhs) if isinstance(i, Lookup)]
    for r, proj in zip(accum.rhses, p.project_rhs, strict=True):
        found += [(r, axis, i) for axis, i in enumerate(proj) if isinstance(i, Lookup)]
    return found


def check_of(accum: asg.Accum) -> Check:
    """The check of an Accum with lookups: one per Accum, so code compiled again (or found in
    the cache) writes the same buffer."""
    check = _checks.get(accum)
    if check is None:
        sites = tuple(
            Site(accum.rhses[lookup.operand], target.label, axis, target.dims[axis])
            for target, axis, lookup in lookups(accum)
        )
        errors = TNode("index_check", (2,), int32, MemoryMode.HOST)
        check = _checks[accum] = Check(errors, sites)
    return check


def site_number(accum: asg.Accum, target: TNode, axis: int) -> int:
    """The number (from 1) of the lookup of `target`'s axis `axis` in `accum`'s check."""
    for n, (t, a, _) in enumerate(lookups(accum), 1):
        if t is target and a == axis:
            return n
    raise KeyError((target.label, axis))


def checks_in(code: asg.Assignments) -> list[Check]:
    """The checks of every Accum of `code` that has lookups, in order."""
    return [check_of(s) for s in asg.flatten(code) if isinstance(s, asg.Accum) and lookups(s)]


def raise_errors(checks: Iterable[Check]) -> None:
    """Raise `IndexOutOfRange` for the first check whose buffer recorded an index outside its
    axis (clearing them all, so the next run starts clean)."""
    found: list[tuple[Site, int]] = []
    for check in checks:
        cells = check.errors.host()
        if cells[0] != 0:
            found.append((check.sites[int(cells[0]) - 1], int(cells[1])))
            check.errors.set_host(np.zeros(2, np.int32))
    if found:
        site, index = found[0]
        raise IndexOutOfRange(
            f"index {index} read from {site.source.label!r}{site.where()} is outside "
            f"[0, {site.bound}): it indexes axis {site.axis} of {site.target!r}, which has "
            f"{site.bound} cells. Nothing was read or written outside {site.target!r}, but the "
            "results of this run are not valid"
        )

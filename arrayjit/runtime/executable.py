"""Executable: compiled code bound to its buffers; `run()` executes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrayjit import assignments as asg
from arrayjit import loop_ir as ir
from arrayjit.backends.base import Compiled
from arrayjit.runtime import residency

if TYPE_CHECKING:
    from arrayjit.runtime.runtime import Runtime


class Executable:
    """Compiled code bound to its buffers; `run()` executes it."""

    def __init__(
        self, runtime: Runtime, code: asg.Code, stmt: ir.Stmt, compiled: Compiled, name: str
    ):
        self.runtime = runtime
        self.code = code
        self.ir = stmt
        self.compiled = compiled
        self.name = name
        # Marked computed by the first run (a buffer never becomes uncomputed).
        self._unmarked = sorted(ir.written_tnodes(stmt), key=lambda t: t.id)

    @property
    def source_path(self) -> str:
        return self.compiled.source_path

    def run(self) -> None:
        self.compiled.run()
        if self._unmarked:
            for t in self._unmarked:
                residency.of(t).computed = True
            self._unmarked = []

    def __repr__(self) -> str:
        return f"Executable({self.name!r}, {len(self.compiled.tnodes)} buffers, source={self.source_path})"

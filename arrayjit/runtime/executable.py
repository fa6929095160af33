"""Executable: compiled code bound to its buffers; `run()` executes it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from arrayjit import assignments as asg
from arrayjit import loop_ir as ir
from arrayjit.backends.base import Compiled
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime import index_checks, residency
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.runtime.runtime import Runtime


class Executable:
    """Compiled code bound to its buffers; `run()` executes it. `ir` is the optimized loop IR,
    lowered again on first use when the routine came from the cache by its structure. Runs (and
    binds) from several threads take turns: the compiled code's scratch buffers are its own."""

    def __init__(
        self,
        runtime: Runtime,
        code: asg.Assignments,
        compiled: Compiled,
        name: str,
        stmt: ir.Stmt | None = None,
    ) -> None:
        self.runtime = runtime
        self.compiled = compiled
        self.name = name
        self._code = code
        self._ir = stmt
        compiled.ir_source = lambda: self.ir
        # Marked computed by the first run (a buffer never becomes uncomputed).
        self._unmarked = list(compiled.written)
        self._positions = {t: k for k, t in enumerate(compiled.tnodes)}
        self._lock = threading.Lock()
        # Where the routine records indices read from data that fall outside their axis.
        self.checks = index_checks.checks_in(code)

    @property
    def ir(self) -> ir.Stmt:
        if self._ir is None:
            backend = self.runtime.backend
            self._ir = compile_to_ir(self._code, backend.reductions_innermost, backend.cpu_target())
        return self._ir

    @property
    def source_path(self) -> str:
        return self.compiled.source_path

    def bind(self, tnode: TNode, address: int) -> None:
        """Run over `tnode`'s values at device address `address` (host address on C) from now
        on; for an executable compiled with `bound=True`, which owns no buffers."""
        position = self._positions.get(tnode)
        if position is None:
            raise KeyError(f"routine {self.name!r} has no buffer {tnode!r}")
        with self._lock:
            self.compiled.bind(position, address)

    def run(self) -> None:
        """Run the routine; an index read from data outside its axis raises `IndexOutOfRange`
        after the run (on a GPU, reading the check waits for the routine). With
        `Runtime.defer_index_checks`, the check is read later: a run first raises for its
        previous run's bad index, and then does not run."""
        # ctypes releases the GIL while the code runs: without the lock, two threads would
        # share the scratch buffers (wrong values, no error).
        with self._lock:
            self._raise_pending()
            self.compiled.run()
            if self._unmarked:
                for t in self._unmarked:
                    residency.of(t).computed = True
                self._unmarked = []
            if not self.checks:
                return
            if self.runtime.defer_index_checks:
                self.runtime.pending_checks.add(self)
            else:
                index_checks.raise_errors(self.checks)

    def raise_index_errors(self) -> None:
        """Read the checks of the last run if they were deferred (`Runtime.defer_index_checks`)."""
        with self._lock:
            self._raise_pending()

    def _raise_pending(self) -> None:
        if self in self.runtime.pending_checks:
            self.runtime.pending_checks.discard(self)
            index_checks.raise_errors(self.checks)

    def __repr__(self) -> str:
        return f"Executable({self.name!r}, {len(self.compiled.tnodes)} buffers, source={self.source_path})"

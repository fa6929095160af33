"""What a backend provides to a `Context`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from arrayjit import loop_ir as ir
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.schedule.cpu_target import CpuTarget


class Compiled(ABC):
    """A compiled routine: runs over buffers given in the order of `tnodes`."""

    tnodes: Sequence[TNode]
    source_path: str

    @abstractmethod
    def run(self) -> None: ...


class Backend(ABC):
    name: str
    #: Lower with every reduction loop innermost (one thread per result cell on a GPU).
    reductions_innermost: bool = False

    def cpu_target(self) -> CpuTarget | None:
        """The CPU the code is scheduled for (threads, packed products, vector loops); None
        for backends that schedule otherwise."""
        return None

    @abstractmethod
    def compile(self, stmt: ir.Stmt, name: str) -> Compiled:
        """Generate code for `stmt`, compile it (or take it from the cache) and bind buffers."""

    def synchronize(self) -> None:  # noqa: B027 - a no-op where work is synchronous
        """Wait until the work submitted so far is done."""

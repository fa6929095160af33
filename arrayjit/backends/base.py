"""What a backend provides to a `Runtime`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from arrayjit import loop_ir as ir
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.schedule.cpu_target import CpuTarget


class Compiled(ABC):
    """A compiled routine: runs over buffers given in the order of `tnodes`. `plan` says where
    its compiled pieces are (JSON data, buffers by position in `tnodes`), for `Backend.load`."""

    tnodes: Sequence[TNode]
    #: The buffers the routine writes.
    written: Sequence[TNode]
    source_path: str
    plan: dict[str, Any]
    #: The routine's loop IR on demand (set by the executable; for inspection only).
    ir_source: Callable[[], ir.Stmt] | None = None
    #: Compiled with `bound=True`: it owns no buffers and keeps no residency; the caller places
    #: every buffer with `bind` before running it (a streaming plan's slots).
    bound: bool = False

    @abstractmethod
    def run(self) -> None: ...

    @abstractmethod
    def bind(self, position: int, address: int) -> None:
        """Run the buffer at `position` of `tnodes` at device address `address` from now on."""


class Backend(ABC):
    name: str
    #: Lower with every reduction loop innermost (one thread per result cell on a GPU).
    reductions_innermost: bool = False

    def cpu_target(self) -> CpuTarget | None:
        """The CPU the code is scheduled for (threads, packed products, vector loops); None
        for backends that schedule otherwise."""
        return None

    @abstractmethod
    def identity(self) -> str:
        """Everything besides the code that determines the compiled result (compiler, flags,
        versions, options): part of every cache key."""

    def routine_identity(self, tnodes: Sequence[TNode]) -> str:
        """`identity()`, with whatever else decides the compiled form of code over `tnodes`."""
        return self.identity()

    @abstractmethod
    def compile(self, stmt: ir.Stmt, name: str, bound: bool = False) -> Compiled:
        """Generate code for `stmt`, compile it (or take it from the cache) and bind buffers
        (`bound`: leave every buffer to `Compiled.bind`)."""

    @abstractmethod
    def load(
        self, plan: dict[str, Any], tnodes: list[TNode], bound: bool = False
    ) -> Compiled | None:
        """Bind the compiled pieces named by `plan` to `tnodes`; None when one is missing or
        damaged (then the routine is compiled again)."""

    def synchronize(self) -> None:  # noqa: B027 - a no-op where work is synchronous
        """Wait until the work submitted so far is done."""

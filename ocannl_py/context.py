"""Compiling and running tensor code: `Context` holds an arrayjit `Runtime` and compiles tensor code
with it."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from arrayjit import assignments as asg
from arrayjit.backends.base import Backend
from arrayjit.runtime import residency
from arrayjit.runtime.executable import Executable
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode
from ocannl_py import fusion
from ocannl_py import shape as shapes
from ocannl_py.code import Code
from ocannl_py.tensor import Tensor

log = logging.getLogger("ocannl_py")


class Routine:
    """A compiled unit of code; `run()` executes it. Its intermediates are fused
    (`ocannl_py.fusion`); it is compiled again before a run when one of them has become kept."""

    def __init__(self, context: Context, code: Code, name: str) -> None:
        self.context = context
        self.code = code
        self.name = name
        self.build()

    def build(self) -> None:
        context, code = self.context, self.code
        self.fused = fusion.fused(code, context.read_elsewhere)
        self.generation = fusion.generation()
        lowered = code.lower(fusion.private_values(code, self.fused))
        context.initialize(code.tensors())
        written = code.written()
        # What the code reads without computing it: data (terms) and results of other routines.
        self.inputs: list[Tensor] = [
            t for t in code.tensors()
            if t.id not in written and not t.init_code and t.memory_mode is not MemoryMode.VIRTUAL
        ]  # fmt: skip
        self.executable = context.runtime.compile(lowered, self.name)
        for t in self.fused:
            t.fused_into = self.name
        context.reads(self.inputs)

    @property
    def source_path(self) -> str:
        return self.executable.source_path

    def run(self) -> None:
        if self.generation != fusion.generation():
            self.generation = fusion.generation()
            read = self.context.read_elsewhere
            if any(t.kept or t.id in read for t in self.fused):
                log.info("routine %s compiled again: a tensor it fused is kept now", self.name)
                self.build()
        for t in self.inputs:
            if not residency.computed(t.value_node):
                hint = (
                    f" (routine {t.fused_into!r} computed it without storing it; it stores it "
                    "from its next run on)"
                    if t.fused_into
                    else ""
                )
                raise ValueError(
                    f"tensor {t.label!r} is read by routine {self.executable.name!r} but has no "
                    "value: fill it with set_value(...), or run the code that computes it first"
                    + hint
                )
        self.executable.run()

    def __repr__(self) -> str:
        return f"<routine {self.executable.name!r} source={self.source_path}>"


class Context:
    """`Context("c")`, `Context("cuda")`, or `Context()` (CUDA when a GPU is usable, else C).
    `compile(code)` takes tensor code (`t.forward`, `train.grad_update(loss)`, `cd(...)`) or
    arrayjit assignments."""

    def __init__(self, backend: str | None = None) -> None:
        self.runtime = Runtime(backend)
        self._forward_routines: dict[int, Routine] = {}
        #: Ids of the tensors some routine of this context reads without computing them: they
        #: are stored by the routines that compute them.
        self.read_elsewhere: set[int] = set()

    @property
    def name(self) -> str:
        """The backend's name: "c" or "cuda"."""
        return self.runtime.name

    @property
    def backend(self) -> Backend:
        return self.runtime.backend

    def synchronize(self) -> None:
        """Wait until the work submitted so far is done."""
        self.runtime.synchronize()

    def compile(
        self, code: Code | asg.Assignments, name: str | None = None
    ) -> Routine | Executable:
        """A routine for tensor code; arrayjit assignments compile to an arrayjit executable."""
        if isinstance(code, asg.Assignments):
            return self.runtime.compile(code, name or "routine")
        if not isinstance(code, Code):
            raise TypeError(
                "Context.compile takes tensor code (t.forward, train.grad_update(loss), cd(...)) "
                f"or arrayjit assignments, got {type(code).__name__}"
            )
        return Routine(self, code.with_constants(), name or code.label or "routine")

    def reads(self, tensors: Iterable[Tensor]) -> None:
        """Record that a routine reads `tensors` without computing them."""
        new = {t.id for t in tensors} - self.read_elsewhere
        if new:
            self.read_elsewhere |= new
            fusion.changed()

    def initialize(self, tensors: Iterable[Tensor]) -> None:
        """Initialise parameters and optimizer state that are not yet: done once, before the
        first routine that uses them is built."""
        tensors = [t for t in tensors if t.init_code]
        shapes.close([t.shape for t in tensors])
        fresh = [t for t in tensors if not residency.computed(t.value_node)]
        if not fresh:
            return
        init = Code()
        for t in fresh:
            init = init + t.init_code
        if init:
            self.runtime.compile(init.lower(), "init_params").run()

    def __repr__(self) -> str:
        return f"Context({self.name!r})"

    def forward(self, t: Tensor) -> None:
        """Compile (once) and run the forward code of `t`."""
        routine = self._forward_routines.get(t.id)
        if routine is None:
            routine = self.compile(t.forward, f"forward_{t.label}")
            self._forward_routines[t.id] = routine
        self.initialize(t.subgraph())  # a bare parameter has no forward code
        routine.run()

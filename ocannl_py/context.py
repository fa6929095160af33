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
from ocannl_py import shape as shapes
from ocannl_py.code import Code
from ocannl_py.tensor import Tensor

log = logging.getLogger("ocannl_py")


class Routine:
    """A compiled unit of code; `run()` executes it."""

    def __init__(self, executable: Executable, inputs: list[Tensor]) -> None:
        self.executable = executable
        # Inputs that no code computes: terms the user must fill with set_value.
        self.inputs = inputs

    @property
    def source_path(self) -> str:
        return self.executable.source_path

    def run(self) -> None:
        for t in self.inputs:
            if not residency.computed(t.value_node):
                raise ValueError(
                    f"tensor {t.label!r} is read by routine {self.executable.name!r} but has no "
                    "value: fill it with set_value(...), or run the code that computes it first"
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
        name = name or code.label or "routine"
        code = code.with_constants()
        lowered = code.lower()
        self.initialize(code.tensors())
        written = code.written()
        # What the code reads without computing it: data (terms) and results of other routines.
        inputs = [
            t for t in code.tensors()
            if t.id not in written and not t.init_code and t.memory_mode is not MemoryMode.VIRTUAL
        ]  # fmt: skip
        return Routine(self.runtime.compile(lowered, name), inputs)

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

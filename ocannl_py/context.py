"""Compiling and running tensor code: `Context` holds an arrayjit `Runtime` and compiles tensor code
with it."""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    import numpy as np

    from arrayjit.runtime.stream_plan import StreamPlan
    from arrayjit.runtime.streamed import StreamedExecutable, StreamStats

log = logging.getLogger("ocannl_py")

#: Compiling closes shapes and lowers code of a tensor graph that all contexts share: one thread
#: at a time (running compiled routines is not held up by it).
_compiling = threading.RLock()


def _one_at_a_time(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _compiling:
            return method(*args, **kwargs)

    return locked


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
        # Weak references: a routine must not itself hold what it fused (see `fusion._held`).
        self._fused: list[weakref.ref[Tensor]] = []
        fused = fusion.fused(code, context.read_elsewhere)
        self.generation = fusion.generation()
        lowered = code.lower(fusion.private_values(code, fused))
        context.initialize(code.tensors())
        written = code.written()
        # What the code reads without computing it: data (terms) and results of other routines.
        self.inputs: list[Tensor] = [
            t for t in code.tensors()
            if t.id not in written and not t.init_code and t.memory_mode is not MemoryMode.VIRTUAL
        ]  # fmt: skip
        self.executable = context.runtime.compile(lowered, self.name)
        for t in fused:
            t.fused_into = self.name
        self._fused = [weakref.ref(t) for t in fused]
        context.reads(fusion.values_read(code))

    @property
    def fused(self) -> list[Tensor]:
        """The intermediates this routine computes without storing them (those still alive)."""
        return [t for t in (r() for r in self._fused) if t is not None]

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
        _check_inputs(self.inputs, f"routine {self.executable.name!r}")
        self.executable.run()

    def profile(self, repeats: int = 3) -> list:
        """Each kernel's median time (`arrayjit.backends.cuda.KernelTime`: name, form, grid,
        block, ms), the kernels launched one by one; on the C backend each chunk function's
        (`arrayjit.backends.cc.ChunkTime`: name, ms), called one by one."""
        profile = getattr(self.executable.compiled, "profile", None)
        if profile is None:
            raise TypeError(
                f"routine {self.executable.name!r}: profile() times CUDA kernels and C chunk "
                "functions; this routine's backend has neither (time its run() instead)"
            )
        _check_inputs(self.inputs, f"routine {self.executable.name!r}")
        return profile(repeats)

    def __repr__(self) -> str:
        return f"<routine {self.executable.name!r} source={self.source_path}>"


class StreamedRoutine:
    """Stages run in order within a device memory budget (`Context.compile_streamed`);
    `run()` executes them, `stats` says what the plan holds and what the last run copied."""

    def __init__(self, executable: StreamedExecutable, inputs: list[Tensor]) -> None:
        self.executable = executable
        self.inputs = inputs

    @property
    def stats(self) -> StreamStats:
        return self.executable.stats

    @property
    def plan(self) -> StreamPlan:
        return self.executable.plan

    def run(self) -> None:
        _check_inputs(self.inputs, "the streamed stages")
        self.executable.run()

    def __repr__(self) -> str:
        return f"<streamed routine {self.executable!r}>"


def forward_stages(*outputs: Tensor) -> list[Code]:
    """Stages for `Context.compile_streamed`: stage k is the forward code that computes
    `outputs[k]` from `outputs[k - 1]` (and what only it uses), stage 0 from the leaves."""
    done: set[int] = set()
    stages = []
    for k, output in enumerate(outputs):
        code = Code(label=f"stage{k}_{output.label}")
        for t in output.subgraph():
            if t.id not in done:
                code = code + t.forward_code
                done.add(t.id)
        stages.append(code)
    return stages


def _check_inputs(inputs: list[Tensor], name: str) -> None:
    for t in inputs:
        if not residency.computed(t.value_node):
            hint = (
                f" (routine {t.fused_into!r} computed it without storing it; it stores it from "
                "its next run on)"
                if t.fused_into
                else ""
            )
            raise ValueError(
                f"tensor {t.label!r} is read by {name} but has no value: fill it with "
                "set_value(...), or run the code that computes it first" + hint
            )


class Context:
    """`Context("c")`, `Context("cuda")`, or `Context()` (CUDA when a GPU is usable, else C).
    `compile(code)` takes tensor code (`t.forward`, `train.grad_update(loss)`, `cd(...)`) or
    arrayjit assignments. `device`: which GPU a CUDA context runs on (data parallelism)."""

    def __init__(self, backend: str | None = None, device: int = 0) -> None:
        self.runtime = Runtime(backend, device)
        self._forward_routines: dict[int, Routine] = {}
        self._c_runtime: Runtime | None = None
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

    @_one_at_a_time
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

    @_one_at_a_time
    def compile_streamed(
        self,
        stages: Sequence[Code],
        budget: int | str,
        weights: Mapping[Tensor, np.ndarray] | None = None,
        names: Sequence[str] | None = None,
        keep: Sequence[Tensor] | None = None,
        **options,
    ) -> StreamedRoutine:
        """Stages (tensor code, typically one per layer) run in order within `budget` bytes of
        device memory (an int or a text like "2GiB"): weights stay in host memory and are
        copied in while the stage before computes (docs/streaming.md). `weights` gives sources
        for some parameters (e.g. memory-mapped arrays: `arrayjit.runtime.mapped`). `keep`: the
        computed tensors to keep for the plan's life (outputs read after a run, a KV cache); the
        others share memory by live range (None: all are kept). `options`: `slots`,
        `keep_resident`, `host_memory` of `Runtime.compile_streamed`."""
        lowered, names_found, tensors, written = [], [], {}, set()
        for k, code in enumerate(stages):
            if not isinstance(code, Code):
                raise TypeError(
                    f"stage {k} of compile_streamed is a {type(code).__name__}, expected tensor "
                    "code (t.forward, cd(...))"
                )
            code = code.with_constants()
            lowered.append(code)
            names_found.append(code.label or f"stage{k}")
            tensors.update({t.id: t for t in code.tensors()})
            written |= code.written()
        # Parameters are initialized on the host, where streamed weights live: on a GPU, the
        # initializing routine would keep a device copy of every parameter, outside the budget.
        self._initialize_on(self._host_runtime(), tensors.values())
        inputs = [
            t for t in tensors.values()
            if t.id not in written and not t.init_code and t.memory_mode is not MemoryMode.VIRTUAL
        ]  # fmt: skip
        sources = {t.value_node: array for t, array in (weights or {}).items()}
        executable = self.runtime.compile_streamed(
            [code.lower() for code in lowered],
            budget,
            names=list(names) if names is not None else names_found,
            weights=sources,
            keep=None if keep is None else [t.value_node for t in keep],
            **options,
        )
        return StreamedRoutine(executable, inputs)

    def _host_runtime(self) -> Runtime:
        if self.runtime.name == "c":
            return self.runtime
        if self._c_runtime is None:
            self._c_runtime = Runtime("c")
        return self._c_runtime

    @_one_at_a_time
    def initialize(self, tensors: Iterable[Tensor]) -> None:
        """Initialise parameters and optimizer state that are not yet: done once, before the
        first routine that uses them is built."""
        self._initialize_on(self.runtime, tensors)

    def _initialize_on(self, runtime: Runtime, tensors: Iterable[Tensor]) -> None:
        tensors = [t for t in tensors if t.init_code]
        shapes.close([t.shape for t in tensors])
        fresh = [t for t in tensors if not residency.computed(t.value_node)]
        if not fresh:
            return
        init = Code()
        for t in fresh:
            init = init + t.init_code
        if init:
            runtime.compile(init.lower(), "init_params").run()

    def __repr__(self) -> str:
        return f"Context({self.name!r})"

    def forward(self, t: Tensor) -> None:
        """Compile (once) and run the forward code of `t`."""
        with _compiling:
            routine = self._forward_routines.get(t.id)
            if routine is None:
                routine = self.compile(t.forward, f"forward_{t.label}")
                self._forward_routines[t.id] = routine
            self.initialize(t.subgraph())  # a bare parameter has no forward code
        routine.run()

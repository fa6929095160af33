"""Context: a backend, the buffers it holds and the routines compiled for it."""

from __future__ import annotations

import logging
import time

from arrayjit import assignments as asg
from arrayjit import loop_ir as ir
from arrayjit.backends.base import Backend, Compiled
from arrayjit.lowering import compile_to_ir

log = logging.getLogger("arrayjit")

BACKENDS = ("c", "cuda")


def make_backend(name: str) -> Backend:
    if name == "c":
        from arrayjit.backends.cc import CBackend

        return CBackend()
    if name == "cuda":
        from arrayjit.backends.cuda import CudaBackend

        return CudaBackend()
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def cuda_usable() -> bool:
    """Whether a CUDA device can be used here (driver, device and cuda-python present)."""
    try:
        from arrayjit.backends.cuda import cuda_available
    except ImportError:
        return False
    return cuda_available()


class Routine:
    """Compiled code bound to its buffers; `run()` executes it."""

    def __init__(
        self, context: Context, code: asg.Assignments, stmt: ir.Stmt, compiled: Compiled, name: str
    ):
        self.context = context
        self.code = code
        self.ir = stmt
        self.compiled = compiled
        self.name = name
        self.written = sorted(ir.written_tnodes(stmt), key=lambda t: t.id)

    @property
    def source_path(self) -> str:
        return self.compiled.source_path

    def run(self) -> None:
        self.compiled.run()
        for t in self.written:
            t.computed = True

    def __repr__(self) -> str:
        return f"Routine({self.name!r}, {len(self.compiled.tnodes)} buffers, source={self.source_path})"


class Context:
    """`Context("c")` compiles with the C backend; `Context("cuda")` with CUDA; `Context()` picks
    CUDA when a GPU is usable, else C."""

    def __init__(self, backend: str | None = None) -> None:
        if backend is None:
            backend = "cuda" if cuda_usable() else "c"
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name ({', '.join(BACKENDS)}), got {backend!r}")
        self.backend = make_backend(backend)

    @property
    def name(self) -> str:
        return self.backend.name

    def compile(self, code: asg.Assignments, name: str = "routine") -> Routine:
        if not isinstance(code, asg.Assignments):
            raise TypeError(f"Context.compile takes assignment code, got {type(code).__name__}")
        start = time.perf_counter()
        stmt = compile_to_ir(code, self.backend.reductions_innermost, self.backend.cpu_target())
        compiled = self.backend.compile(stmt, name)
        log.debug("compiled %s in %.1f ms", name, 1e3 * (time.perf_counter() - start))
        return Routine(self, code, stmt, compiled, name)

    def synchronize(self) -> None:
        self.backend.synchronize()

    def __repr__(self) -> str:
        return f"Context({self.name!r})"

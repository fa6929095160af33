"""Runtime: a backend, the buffers it holds and the executables compiled for it."""

from __future__ import annotations

import logging
import time

from arrayjit import assignments as asg
from arrayjit.backends.base import Backend
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime.executable import Executable

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


class Runtime:
    """`Runtime("c")` compiles with the C backend; `Runtime("cuda")` with CUDA; `Runtime()` picks
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

    def compile(self, code: asg.Code, name: str = "routine") -> Executable:
        if not isinstance(code, asg.Code):
            raise TypeError(f"Runtime.compile takes assignment code, got {type(code).__name__}")
        start = time.perf_counter()
        stmt = compile_to_ir(code, self.backend.reductions_innermost)
        compiled = self.backend.compile(stmt, name)
        log.debug("compiled %s in %.1f ms", name, 1e3 * (time.perf_counter() - start))
        return Executable(self, code, stmt, compiled, name)

    def synchronize(self) -> None:
        self.backend.synchronize()

    def __repr__(self) -> str:
        return f"Runtime({self.name!r})"

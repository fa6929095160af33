"""Runtime: a backend, the buffers it holds and the executables compiled for it.

`compile` first looks the code up by its structure (`code_key`): a hit binds the compiled pieces
named by the cache record to the code's buffers, skipping lowering, printing and compiling; a miss
lowers, compiles (chunk functions are themselves cached) and records where the pieces are.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from arrayjit import assignments as asg
from arrayjit import cache
from arrayjit.backends.base import Backend, Compiled
from arrayjit.lowering import compile_to_ir, values_buffer
from arrayjit.runtime import index_checks
from arrayjit.runtime.code_key import Structure, generator_version, structure
from arrayjit.runtime.executable import Executable
from arrayjit.tnode import MemoryMode, TNode

if TYPE_CHECKING:
    import numpy as np

    from arrayjit.runtime.streamed import StreamedExecutable

log = logging.getLogger("arrayjit")

BACKENDS = ("c", "cuda")


def make_backend(name: str, device: int = 0) -> Backend:
    if name == "c":
        from arrayjit.backends.cc import CBackend

        return CBackend()
    if name == "cuda":
        from arrayjit.backends.cuda import CudaBackend

        return CudaBackend(device)
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
    CUDA when a GPU is usable, else C. `device`: the GPU of a CUDA runtime."""

    def __init__(self, backend: str | None = None, device: int = 0) -> None:
        if backend is None:
            backend = "cuda" if cuda_usable() else "c"
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name ({', '.join(BACKENDS)}), got {backend!r}")
        self.backend = make_backend(backend, device)
        # The backend's printer and records are shared state: one compile at a time.
        self._compile_lock = threading.Lock()
        #: Off: a run reads its index checks at once (on a GPU, waiting for it). On: a GPU run's
        #: checks are read at the routine's next run or at `synchronize`/`raise_index_errors`,
        #: so the host can queue work ahead (data-parallel steps); the error comes late, but
        #: nothing is ever read or written outside a buffer.
        self.defer_index_checks = False
        self.pending_checks: weakref.WeakSet[Executable] = weakref.WeakSet()

    @property
    def name(self) -> str:
        return self.backend.name

    def compile(
        self, code: asg.Assignments, name: str = "routine", bound: bool = False
    ) -> Executable:
        """Compile `code` (or find it by its structure). `bound=True`: the executable owns no
        buffers; each is placed with `Executable.bind` before a run (a streaming plan's slots)."""
        if not isinstance(code, asg.Assignments):
            raise TypeError(f"Runtime.compile takes assignment code, got {type(code).__name__}")
        with self._compile_lock:
            return self._compile(code, name, bound)

    def _compile(self, code: asg.Assignments, name: str, bound: bool) -> Executable:
        start = time.perf_counter()
        found = structure(code)
        backend = self.backend
        key = cache.key(
            found.digest,
            name,
            backend.name,
            str(backend.reductions_innermost),
            backend.routine_identity(found.tnodes),
            generator_version(),
        )
        record = f"{key}.routine"
        compiled = self._from_record(record, found, bound)
        if compiled is not None:
            log.debug(
                "%s: found by structure in %.1f ms", name, 1e3 * (time.perf_counter() - start)
            )
            return Executable(self, code, compiled, name)
        stmt = compile_to_ir(code, backend.reductions_innermost, backend.cpu_target())
        compiled = backend.compile(stmt, name, bound)
        self._record(record, found, compiled)
        log.debug("compiled %s in %.1f ms", name, 1e3 * (time.perf_counter() - start))
        return Executable(self, code, compiled, name, stmt)

    def _from_record(self, record: str, found: Structure, bound: bool) -> Compiled | None:
        text = cache.read_record(record)
        if text is None:
            return None
        try:
            entry = json.loads(text)
            tnodes = [_buffer(ref, found) for ref in entry["buffers"]]
            return self.backend.load(entry["plan"], tnodes, bound)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            log.debug("cache record %s unusable (%s): compiling", record, exc)
            return None

    def _record(self, record: str, found: Structure, compiled: Compiled) -> None:
        slots: dict[TNode, int | str | dict] = {t: k for k, t in enumerate(found.tnodes)}
        slots.update({values_buffer(f): f"values{m}" for m, f in enumerate(found.values)})
        slots.update(
            {index_checks.check_of(a).errors: f"check{m}" for m, a in enumerate(found.checked)}
        )
        for t in compiled.tnodes:
            if t not in slots and t.memory_mode is MemoryMode.LOCAL:
                # Scratch space the backend made (e.g. partial results): made again on a hit.
                slots[t] = {"scratch": [t.label, list(t.dims), t.dtype.name]}
        refs = [slots.get(t) for t in compiled.tnodes]
        if None in refs:
            return  # a buffer made by lowering that the structure cannot name: not recorded
        cache.write_record(record, json.dumps({"buffers": refs, "plan": compiled.plan}))

    def compile_streamed(
        self,
        stages: Sequence[asg.Assignments],
        budget: int | str,
        names: Sequence[str] | None = None,
        weights: Mapping[TNode, np.ndarray] | None = None,
        slots: int = 2,
        keep_resident: bool = True,
        host_memory: str = "pinned",
        keep: Collection[TNode] | None = None,
    ) -> StreamedExecutable:
        """Compile `stages` to run in order within `budget` bytes of device memory (an int or a
        text like "2GiB"), their weights streamed from host memory (`weights`: sources for some
        weight tnodes, e.g. memory-mapped arrays) through a ring of `slots` slots
        (`arrayjit.runtime.streamed`). `keep`: the buffers written by the stages that must stay
        for the plan's life (outputs read after a run, state such as a KV cache); the others
        share memory by live range. None: every buffer a stage writes stays."""
        from arrayjit.runtime.stream_plan import parse_bytes
        from arrayjit.runtime.streamed import StreamedExecutable

        stages = list(stages)
        if not stages:
            raise ValueError("compile_streamed needs at least one stage")
        names = list(names) if names is not None else [f"stage{k}" for k in range(len(stages))]
        if len(names) != len(stages):
            raise ValueError(f"{len(stages)} stages but {len(names)} names")
        executables = [
            self.compile(code, name, bound=True) for code, name in zip(stages, names, strict=True)
        ]
        return StreamedExecutable(
            executables, parse_bytes(budget), weights, slots, keep_resident, host_memory, keep
        )

    def synchronize(self) -> None:
        self.backend.synchronize()
        self.raise_index_errors()

    def raise_index_errors(self) -> None:
        """Read the deferred index checks of past runs; raise `IndexOutOfRange` for the first
        that found an index outside its axis."""
        for executable in list(self.pending_checks):
            executable.raise_index_errors()

    def __repr__(self) -> str:
        return f"Runtime({self.name!r})"


def _buffer(ref: int | str | dict, found: Structure) -> TNode:
    if isinstance(ref, int):
        return found.tnodes[ref]
    if isinstance(ref, dict):
        label, dims, dtype = ref["scratch"]
        return TNode(label, dims, dtype, MemoryMode.LOCAL)
    if ref.startswith("check"):
        return index_checks.check_of(found.checked[int(ref.removeprefix("check"))]).errors
    return values_buffer(found.values[int(ref.removeprefix("values"))])

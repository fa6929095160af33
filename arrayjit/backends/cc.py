"""The C backend: generated C compiled by the system compiler into a shared object, loaded with
ctypes. The compiler is `cc` unless `ARRAYJIT_CC` names another; artifacts go through
`arrayjit.cache`.

Flags: `-O3 -march=native -fPIC -shared -fno-math-errno`. Not `-ffast-math`: results must match
numpy's, NaN and infinity included.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from arrayjit import cache
from arrayjit import loop_ir as ir
from arrayjit.backends.base import Backend, Compiled
from arrayjit.codegen.c_syntax import CSyntax
from arrayjit.codegen.inert_text import identifier
from arrayjit.errors import CompileError
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")

FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno")


def compiler() -> str:
    return os.environ.get("ARRAYJIT_CC", "cc")


@functools.cache
def compiler_version(command: str) -> str:
    """`command --version`, remembered on disk per compiler binary (path, size, mtime), so a
    fresh process that finds its routines in the cache starts no compiler at all."""
    argv = shlex.split(command)
    binary = shutil.which(argv[0]) if argv else None
    record = None
    if binary:
        stat = os.stat(binary)
        fingerprint = cache.key(
            command, os.path.realpath(binary), str(stat.st_size), str(stat.st_mtime_ns)
        )
        record = cache.cache_dir() / f"compiler-{fingerprint}.txt"
        if cache.lookup(record):
            return record.read_text()
    try:
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True, check=True)
    except (OSError, IndexError, subprocess.CalledProcessError) as exc:
        raise CompileError(f"the C compiler {command!r} cannot be run: {exc}") from None
    version = out.stdout.strip()
    if record is not None:
        tmp = cache.temp_path(record)
        tmp.write_text(version)
        cache.commit(tmp, record)
    return version


class CCompiled(Compiled):
    def __init__(
        self,
        function,
        tnodes: list[TNode],
        scratch: dict[TNode, np.ndarray],
        written: set[TNode],
        source_path: str,
    ):
        self.function = function
        self.tnodes = tnodes
        self.source_path = source_path
        # Keep the arrays alive: the pointer table below refers to their memory.
        self.arrays = [scratch[t] if t in scratch else t.host() for t in tnodes]
        self.pointers = (ctypes.c_void_p * max(1, len(tnodes)))(
            *(a.ctypes.data for a in self.arrays)
        )
        # Host arrays are this backend's buffers: a device may hold newer values of those it
        # reads, and devices must learn about those it writes.
        self.shared = [t for t in tnodes if t not in scratch]
        self.shared_written = [t for t in self.shared if t in written]

    def run(self) -> None:
        for t in self.shared:
            if t.fetch_from_device is not None:
                t.host()
        self.function(self.pointers)
        for t in self.shared_written:
            t.host_version += 1


class CBackend(Backend):
    name = "c"

    def __init__(self) -> None:
        self.syntax = CSyntax()

    def source(self, stmt: ir.Stmt, tnodes: list[TNode], function: str) -> str:
        dtypes = sorted({t.dtype for t in tnodes}, key=lambda d: d.name)
        self.syntax.begin(tnodes)
        lines = [
            "#include <math.h>",
            "#include <stdint.h>",
            self.syntax.prelude(dtypes, ir.ops_used(stmt)),
            f"void {function}(void **buffers) {{",
        ]
        for k, t in enumerate(tnodes):
            c_type = t.dtype.c_name
            name = self.syntax.buffer(t)
            lines.append(f"  {c_type} *restrict {name} = ({c_type} *)buffers[{k}];")
        lines += self.syntax.stmt(stmt)
        lines.append("}")
        return "\n".join(lines) + "\n"

    def compile(self, stmt: ir.Stmt, name: str) -> CCompiled:
        tnodes = ir.tnodes_in(stmt)
        function = "ocannl_" + identifier(name, 60)
        source = self.source(stmt, tnodes, function)
        library = build_shared_object(source)
        try:
            lib = ctypes.CDLL(str(library))
        except OSError as exc:
            raise CompileError(
                f"cannot load {library}: {exc}", str(library.with_suffix(".c"))
            ) from None
        fn = getattr(lib, function)
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        fn.restype = None
        scratch = {
            t: np.zeros(t.dims, t.dtype.numpy)
            for t in tnodes
            if t.memory_mode in (MemoryMode.LOCAL, MemoryMode.VIRTUAL)
        }
        written = ir.written_tnodes(stmt)
        return CCompiled(fn, tnodes, scratch, written, str(library.with_suffix(".c")))


def build_shared_object(source: str) -> Path:
    """The shared object for `source`, from the cache or freshly compiled."""
    command = compiler()
    flags = (*FLAGS, *shlex.split(os.environ.get("ARRAYJIT_CFLAGS", "")))
    key = cache.key(source, " ".join(flags), compiler_version(command))

    def build(source_path: Path, output: Path) -> None:
        args = [*shlex.split(command), *flags, "-o", str(output), str(source_path), "-lm"]
        log.debug("compiling: %s", shlex.join(args))
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(
                f"the C compiler failed (exit {result.returncode})", str(source_path), result.stderr
            )

    return cache.artifact(key, ".so", source, ".c", build)

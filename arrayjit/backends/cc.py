"""The C backend: each chunk of a routine (`arrayjit.backends.chunks`) is printed as a C function
`void ocannl_c<key>(void **buffers)` whose text, and so whose cache key, does not depend on the
routine it comes from. Functions missing from the cache are grouped into a few translation units
compiled in parallel by the system compiler into shared objects; every function is indexed by its
key, so equal layers, in this routine or any other, compile once. A routine runs as one ctypes
call into a small runner that calls its chunk functions in order with their buffer tables.

The compiler is `cc` unless `ARRAYJIT_CC` names another; `ARRAYJIT_JOBS` caps the parallel
compiler processes (default: the usable cores). Flags: `-O3 -march=native -fPIC -shared
-fno-math-errno`, plus OpenMP and vector math where the compiler has them
(`arrayjit.backends.cc_features`; they are part of the build identity). Not `-ffast-math`:
results must match numpy's, NaN and infinity included. The code is scheduled for a `CpuTarget`
(threads, thresholds), which is part of the backend's identity. float16 buffers are `_Float16`
when the compiler has that type (checked once per compiler and flags, remembered in the
cache), else their bits in a `uint16_t`; bfloat16 buffers are always bits.
`ARRAYJIT_SANITIZE=address,undefined` adds those sanitizers (a process must then run under the
matching runtime: docs/reliability.md).

Libraries are loaded from the bytes the cache verified and unloaded when no routine uses them
(`arrayjit.backends.loading`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arrayjit import cache, ops
from arrayjit import loop_ir as ir
from arrayjit.backends import cc_features, units
from arrayjit.backends.base import Backend, Compiled
from arrayjit.backends.chunks import Chunk, split
from arrayjit.backends.loading import Library, Vanished, load, try_load
from arrayjit.codegen import c_matmul
from arrayjit.codegen.c_syntax import VECTOR_MATH, CSyntax, buffer_name, fill_names
from arrayjit.codegen.inert_text import comment_text, identifier
from arrayjit.dtypes import DType
from arrayjit.errors import CompileError
from arrayjit.runtime.residency import HOST, Residency
from arrayjit.runtime.residency import of as residency_of
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")

FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math")

#: In every unit: runs `n` chunk functions in order, each on its table of buffers.
RUNNER = """\
typedef void (*ocannl_chunk)(void **);
void ocannl_run_chunks(int n, ocannl_chunk *chunks, void ***tables) {
  for (int k = 0; k < n; ++k) chunks[k](tables[k]);
}
"""


def compiler() -> str:
    return os.environ.get("ARRAYJIT_CC", "cc")


#: Tries at compiling a routine whose libraries keep leaving the cache.
ATTEMPTS = 5

SANITIZERS = ("address", "undefined")


def sanitizer_flags(setting: str) -> tuple[str, ...]:
    """The compiler flags for `ARRAYJIT_SANITIZE` (e.g. "address,undefined"); any report aborts."""
    names = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in names if n not in SANITIZERS]
    if unknown:
        raise ValueError(
            f"ARRAYJIT_SANITIZE={setting!r}: unknown sanitizer {unknown[0]!r}; expected a comma-"
            f"separated list of {', '.join(SANITIZERS)}"
        )
    if not names:
        return ()
    return (
        f"-fsanitize={','.join(names)}",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
        "-g",
    )


def flags() -> tuple[str, ...]:
    return (*FLAGS, *_extra_flags())


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
        known = cache.read_verified(record)
        if known is not None:
            return known.decode(errors="replace")
    try:
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True, check=True)
    except (OSError, IndexError, subprocess.CalledProcessError) as exc:
        raise CompileError(f"the C compiler {command!r} cannot be run: {exc}") from None
    version = out.stdout.strip()
    if record is not None:
        cache.store(record, version.encode())
    return version


def features() -> cc_features.Features:
    """The optional compiler features builds use now (OpenMP, vector math)."""
    command = compiler()
    return cc_features.assumed(command, compiler_version(command), flags())


def build_identity() -> str:
    """Everything besides the source that determines a compiled library."""
    return _build_identity(compiler(), _extra_flags(), features())


def _extra_flags() -> tuple[str, ...]:
    """The flags the environment adds: sanitizers, then ARRAYJIT_CFLAGS."""
    return (
        *sanitizer_flags(os.environ.get("ARRAYJIT_SANITIZE", "")),
        *shlex.split(os.environ.get("ARRAYJIT_CFLAGS", "")),
    )


#: `_Float16` exists, and a vectorized loop storing comparisons of 16-bit values builds: GCC 12
#: with AVX512-FP16 (-march=native on a Sapphire Rapids host) emits a zero-masked `vmovsh`
#: store there, which the assembler rejects; such a compiler stores float16 as bits.
_FLOAT16_PROBE = (
    "float ocannl_probe(_Float16 h, float x) { return (float)h + (float)(_Float16)x; }\n"
    "void ocannl_probe_lt(_Float16 *restrict y, const _Float16 *restrict a,\n"
    "                     const _Float16 *restrict b) {\n"
    "  for (int i = 0; i < 388; ++i) y[i] = (_Float16)(float)((float)a[i] < (float)b[i]);\n"
    "}\n"
)


def has_float16() -> bool:
    """Whether the C compiler (with the flags) has `_Float16` and builds loops over it."""
    return _has_float16(compiler(), build_identity())


@functools.cache
def _has_float16(command: str, identity: str) -> bool:
    record = f"{cache.key(identity, _FLOAT16_PROBE)}.float16"
    known = cache.read_record(record)
    if known is not None:
        return known.strip() == "yes"
    folder = Path(tempfile.mkdtemp(prefix="arrayjit-probe-"))
    try:
        source = folder / "probe.c"
        source.write_text(_FLOAT16_PROBE)
        args = [*shlex.split(command), *(f for f in flags() if f != "-shared"), "-c", str(source)]
        found = (
            subprocess.run([*args, "-o", str(folder / "probe.o")], capture_output=True).returncode
            == 0
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cache.write_record(record, "yes" if found else "no")
    return found


@functools.cache
def _build_identity(command: str, extra: tuple[str, ...], found: cc_features.Features) -> str:
    # Every unit defines the runner: a unit made for another runner must not be used.
    all_flags = " ".join((*FLAGS, *found.flags, *extra, *found.libraries))
    return "\n".join((command, all_flags, compiler_version(command), RUNNER))


@dataclass(frozen=True, eq=False)
class ChunkFunction:
    """The C function of one chunk: its key (a hash of its text, which names buffers by
    position only), its symbol, and its body with buffer names left as placeholders."""

    key: str
    body: str
    labels: tuple[str, ...]
    dtypes: tuple[DType, ...]
    #: What the function needs from the prelude: the random generator, vector math
    #: declarations, product kernels, the index check.
    needs: Needs

    @property
    def symbol(self) -> str:
        return f"ocannl_c{self.key}"

    @property
    def lines(self) -> int:
        return self.body.count("\n")

    def text(self) -> str:
        """The function, its buffers named after the labels of the chunk it was printed from."""
        return (
            f"void {self.symbol}(void **buffers) {{\n{fill_names(self.body, list(self.labels))}}}\n"
        )


@dataclass(frozen=True)
class Needs:
    """The optional parts of a prelude: `ops` are the ops among `ops.RANDOM_OPS` and
    `VECTOR_MATH` used; `matmul` the dtypes of products (each has its kernel)."""

    ops: frozenset[str] = frozenset()
    matmul: frozenset[DType] = frozenset()
    #: Whether the code has dynamic indices (`ocannl_index`).
    checks: bool = False

    @classmethod
    def of(cls, stmt: ir.Stmt) -> Needs:
        used = ir.ops_used(stmt) & (ops.RANDOM_OPS | set(VECTOR_MATH))
        products = {s.tnode.dtype for s in ir.walk(stmt) if isinstance(s, ir.Matmul)}
        return cls(frozenset(used), frozenset(products), bool(ir.index_checks(stmt)))

    @classmethod
    def union(cls, functions: Sequence[ChunkFunction]) -> Needs:
        return cls(
            frozenset().union(*(f.needs.ops for f in functions)),
            frozenset().union(*(f.needs.matmul for f in functions)),
            any(f.needs.checks for f in functions),
        )


@functools.cache
def _prelude(dtypes: tuple[DType, ...], needs: Needs) -> str:
    syntax = CSyntax()
    return "\n".join(
        [
            "#include <math.h>\n#include <stdint.h>",
            syntax.prelude(list(dtypes), set(needs.ops), needs.checks),
            c_matmul.matmul_functions(set(needs.matmul)),
        ]
    )


def _union_dtypes(functions: Sequence[ChunkFunction]) -> tuple[DType, ...]:
    return tuple(sorted({d for f in functions for d in f.dtypes}, key=lambda d: d.name))


@dataclass(frozen=True)
class ChunkTime:
    """One chunk function's call and its median time (`CCompiled.profile`)."""

    name: str  # the function's symbol, shared by equal nests (each layer's, each routine's)
    ms: float


class CCompiled(Compiled):
    """The chunk functions of a routine and their buffer tables, run by one call. A `bound`
    routine owns no buffers: `bind` writes each buffer's address into the tables that use it."""

    def __init__(
        self,
        libraries: list[Path],
        symbols: list[str],
        parameters: list[list[int]],
        tnodes: list[TNode],
        written: list[int],
        source_path: Path,
        bound: bool = False,
    ) -> None:
        self.tnodes = tnodes
        self.bound = bound
        self.written = [tnodes[k] for k in written]
        self.source_path = str(source_path)
        self.libraries = sorted(set(libraries))
        self.plan = {
            "source": source_path.name,
            "chunks": [
                [lib.name, s, p] for lib, s, p in zip(libraries, symbols, parameters, strict=True)
            ],
            "written": written,
        }
        self.runner = None
        # Holding the loaded libraries keeps them mapped while this routine can run.
        self.loaded = {path: load(path) for path in self.libraries}
        if libraries:
            self.runner = self.loaded[libraries[0]].cdll.ocannl_run_chunks
            self.runner.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            self.runner.restype = None
        functions = [
            self.loaded[library].address(symbol)
            for library, symbol in zip(libraries, symbols, strict=True)
        ]
        scratch = {t for t in tnodes if t.memory_mode in (MemoryMode.LOCAL, MemoryMode.VIRTUAL)}
        if bound:
            self.arrays = []
            addresses = [None] * len(tnodes)
            scratch = set(tnodes)  # no buffer here is the host array: no residency to keep
        else:
            # Keep the arrays alive: the tables below refer to their memory.
            self.arrays = [
                np.zeros(t.dims, t.dtype.numpy) if t in scratch else t.host() for t in tnodes
            ]
            addresses = [a.ctypes.data for a in self.arrays]
        self.tables = [
            (ctypes.c_void_p * max(1, len(p)))(*(addresses[i] for i in p)) for p in parameters
        ]
        # Where each buffer's address sits in the tables: (table, index) pairs, for `bind`.
        self.uses: list[list[tuple[ctypes.Array, int]]] = [[] for _ in tnodes]
        for table, p in zip(self.tables, parameters, strict=True):
            for index, k in enumerate(p):
                self.uses[k].append((table, index))
        self.unbound = set(range(len(tnodes))) if bound else set()
        n = len(functions)
        self.table_array = (ctypes.c_void_p * max(1, n))(
            *(ctypes.addressof(t) for t in self.tables)
        )
        self.function_array = (ctypes.c_void_p * max(1, n))(*functions)
        self.arguments = (
            n,
            ctypes.addressof(self.function_array),
            ctypes.addressof(self.table_array),
        )
        # Host arrays are this backend's buffers: a device may hold newer values of those it
        # uses, and devices must learn about those it writes.
        self.shared = [t for t in tnodes if t not in scratch]
        written_set = set(self.written)
        self.shared_written = [residency_of(t) for t in self.shared if t in written_set]
        self.seen_device_writes = -1

    def bind(self, position: int, address: int) -> None:
        """Run the buffer at `position` of `tnodes` at `address` (a bound routine only)."""
        if not self.bound:
            raise ValueError("only a routine compiled with bound=True takes buffers by bind()")
        for table, index in self.uses[position]:
            table[index] = address
        self.unbound.discard(position)

    def run(self) -> None:
        if self.unbound:
            names = ", ".join(self.tnodes[k].label for k in sorted(self.unbound))
            raise ValueError(f"routine {self.source_path}: buffers not bound yet: {names}")
        if Residency.device_places:
            if self.seen_device_writes != Residency.device_writes:
                for t in self.shared:
                    t.host()  # copies newer values from a device, if one has them
                self.seen_device_writes = Residency.device_writes
            self.call()
            for state in self.shared_written:
                state.write_at(HOST)
        else:
            self.call()

    def call(self) -> None:
        if self.runner is not None:
            self.runner(*self.arguments)

    def profile(
        self, repeats: int = 3, clock: Callable[[], float] = time.perf_counter
    ) -> list[ChunkTime]:
        """Each chunk function's median time over `repeats` calls, called one by one (as a run
        calls them, in order), after one ordinary run; for finding where a routine's time goes.
        The buffers change as `repeats + 1` runs would change them. `clock`: e.g.
        `time.thread_time` for the CPU time of one thread."""
        self.run()  # names unbound buffers; brings the host arrays up to date
        call = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        calls = [
            (call(self.function_array[n]), ctypes.addressof(self.tables[n]))
            for n in range(self.arguments[0])
        ]
        times: list[list[float]] = [[] for _ in calls]
        for _ in range(max(1, repeats)):
            for n, (function, table) in enumerate(calls):
                start = clock()
                function(table)
                times[n].append(clock() - start)
        symbols = [symbol for _, symbol, _ in self.plan["chunks"]]
        return [
            ChunkTime(symbol, 1e3 * statistics.median(t))
            for symbol, t in zip(symbols, times, strict=True)
        ]


class CBackend(Backend):
    name = "c"

    def __init__(self, native_float16: bool | None = None) -> None:
        """`native_float16`: store float16 as `_Float16` (default: when the compiler has it,
        checked when float16 buffers are first compiled)."""
        self.syntax = CSyntax(has_float16 if native_float16 is None else native_float16)
        #: The CPU schedule's target: `CpuTarget.from_environment()` unless set (tests lower its
        #: thresholds to exercise the schedules on small sizes).
        self.target: CpuTarget | None = None

    def cpu_target(self) -> CpuTarget:
        if self.target is None:
            self.target = CpuTarget.from_environment()
        return self.target

    def declarations(self, tnodes: Sequence[TNode], names: Sequence[str]) -> list[str]:
        """The typed buffer pointers of a function taking `void **buffers`."""
        types = [self.syntax.type_name(t.dtype) for t in tnodes]
        return [
            f"  {c} *restrict {name} = ({c} *)buffers[{k}];"
            for k, (c, name) in enumerate(zip(types, names, strict=True))
        ]

    def chunk_function(self, chunk: Chunk, identity: str) -> ChunkFunction:
        syntax = self.syntax
        syntax.begin(list(chunk.tnodes), placeholders=True)
        lines = self.declarations(chunk.tnodes, [syntax.buffer(t) for t in chunk.tnodes])
        lines += syntax.stmt(chunk.stmt)
        body = "\n".join(lines) + "\n"
        dtypes = tuple(sorted({t.dtype for t in chunk.tnodes}, key=lambda d: d.name))
        needs = Needs.of(chunk.stmt)
        key = cache.key(_prelude(dtypes, needs), body, identity)
        labels = tuple(t.label for t in chunk.tnodes)
        return ChunkFunction(key, body, labels, dtypes, needs)

    def identity(self) -> str:
        # The target decides the schedule, hence the code a structural cache hit must match.
        return f"{build_identity()}\n{self.cpu_target()!r}"

    def routine_identity(self, tnodes: Sequence[TNode]) -> str:
        if not any(t.dtype.name == "float16" for t in tnodes):
            return self.identity()
        storage = "_Float16" if self.syntax.native_float16 else "bits"
        return f"{self.identity()}\nfloat16: {storage}"

    def compile(self, stmt: ir.Stmt, name: str, bound: bool = False) -> CCompiled:
        # A library removed from the cache between being built or found and being loaded (the
        # cache being cleared) is built again.
        for _ in range(ATTEMPTS - 1):
            try:
                return self._compile(stmt, name, bound)
            except Vanished as gone:
                log.info("%s left the cache while compiling %s: building again", gone, name)
        return self._compile(stmt, name, bound)

    def _compile(self, stmt: ir.Stmt, name: str, bound: bool) -> CCompiled:
        tnodes = ir.tnodes_in(stmt)
        position = {t: k for k, t in enumerate(tnodes)}
        chunks = split(stmt)
        try:
            # `held` keeps the libraries found in the cache loaded until the routine holds them.
            functions, libraries, held = self._compile_chunks(chunks)
        except CompileError:
            # Perhaps a feature assumed present is missing: probe once, retry if it changes.
            command = compiler()
            assumed = features()
            if cc_features.probe(command, compiler_version(command), flags()) == assumed:
                raise
            functions, libraries, held = self._compile_chunks(chunks)
        source_path = write_listing(self, name, tnodes, chunks, functions, libraries)
        written = sorted(position[t] for t in ir.written_tnodes(stmt))
        return CCompiled(
            [libraries[f.key] for f in functions],
            [f.symbol for f in functions],
            [[position[t] for t in c.tnodes] for c in chunks],
            tnodes,
            written,
            source_path,
            bound,
        )

    def _compile_chunks(
        self, chunks: list[Chunk]
    ) -> tuple[list[ChunkFunction], dict[str, Path], list[Library]]:
        """The chunks' functions, the library that defines each (by key), and the libraries
        found in the cache (loaded while checked: hold them until the routine does)."""
        identity = build_identity()
        found = features()
        functions = [self.chunk_function(c, identity) for c in chunks]
        held: list[Library] = []

        def defines(library: Path, symbol: str) -> bool:
            loaded = try_load(library)
            if loaded is None:
                return False
            held.append(loaded)
            return loaded.address(symbol) is not None

        libraries = units.compiled(
            functions, "fn", lambda group: build_unit(group, identity, found), defines
        )
        return functions, libraries, held

    def load(
        self, plan: dict[str, Any], tnodes: list[TNode], bound: bool = False
    ) -> CCompiled | None:
        folder = cache.cache_dir()
        source_path = folder / plan["source"]
        paths = {name: folder / name for name in {name for name, _, _ in plan["chunks"]}}
        libraries = [paths[name] for name, _, _ in plan["chunks"]]
        symbols = [symbol for _, symbol, _ in plan["chunks"]]
        if not source_path.exists():
            return None
        held = {path: try_load(path) for path in paths.values()}
        if any(
            held[lib] is None or not held[lib].address(s)
            for lib, s in zip(libraries, symbols, strict=True)
        ):
            return None
        parameters = [params for _, _, params in plan["chunks"]]
        try:
            return CCompiled(
                libraries, symbols, parameters, tnodes, plan["written"], source_path, bound
            )
        except Vanished:
            return None


def build_unit(
    functions: Sequence[ChunkFunction], identity: str, found: cc_features.Features
) -> Path:
    """A shared object defining `functions` and the runner, from the cache or compiled now."""
    prelude = _prelude(_union_dtypes(functions), Needs.union(functions))
    source = "\n".join([prelude, *(f.text() for f in functions), RUNNER])
    return build_shared_object(source, identity, found)


def build_shared_object(source: str, identity: str, found: cc_features.Features) -> Path:
    """The shared object for `source`, from the cache or freshly compiled with the optional
    features `found` (their flags are part of `identity`)."""
    command = compiler()
    key = cache.key(source, identity)

    def build(source_path: Path, output: Path) -> None:
        args = [
            *shlex.split(command),
            *FLAGS,
            *found.flags,
            *_extra_flags(),
            "-o",
            str(output),
            str(source_path),
            *found.libraries,
            "-lm",
        ]
        log.debug("compiling: %s", shlex.join(args))
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(
                f"the C compiler failed (exit {result.returncode})", str(source_path), result.stderr
            )

    return cache.artifact(key, ".so", source, ".c", build)


def write_listing(
    backend: CBackend,
    name: str,
    tnodes: list[TNode],
    chunks: list[Chunk],
    functions: list[ChunkFunction],
    libraries: dict[str, Path],
) -> Path:
    """A readable C source of the whole routine: each distinct chunk function once (with the
    library it is compiled in), then the routine as a function calling them in order."""
    routine = "ocannl_" + identifier(name, 60)
    distinct = list({f.key: f for f in functions}.values())
    lines = [
        f"/* Routine {comment_text(repr(name))}: {len(chunks)} chunk calls of {len(distinct)} distinct functions.",
        "   Each function is compiled on its own, in the library named above it, and cached by",
        f"   its text; the runtime calls them in the order of {routine} below. */",
        _prelude(_union_dtypes(functions), Needs.union(functions)),
    ]
    for f in distinct:
        lines += [f"/* in {comment_text(str(libraries[f.key]))} */", f.text()]
    names = [buffer_name(t.label, k) for k, t in enumerate(tnodes)]
    position = {t: k for k, t in enumerate(tnodes)}
    lines.append(f"void {routine}(void **buffers) {{")
    lines += backend.declarations(tnodes, names)
    for chunk, f in zip(chunks, functions, strict=True):
        arguments = ", ".join(names[position[t]] for t in chunk.tnodes)
        lines.append(f"  {f.symbol}((void *[]){{{arguments}}});")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    path = cache.cache_dir() / f"{cache.key(text)}.listing.c"
    if not path.exists():
        cache.write_atomic(path, text.encode())
    return path

"""What the C compiler offers beyond C99, and the flags that turn it on: OpenMP (`-fopenmp`: the
threads of parallel loops and `#pragma omp simd`; `-fopenmp-simd` alone where the runtime is
missing) and glibc's vector math library (`-lmvec`: `expf`, `logf`... on whole vectors).

Features are assumed present (vector math only where libmvec has every variant the generated
code may call), so a build runs the compiler once. When a build fails, `probe` compiles small
programs to find what really works; the answer is remembered on disk per compiler and flags,
and the build is retried with it. Generated code stays correct without any of them: OpenMP
pragmas are then ignored (loops run on one thread, in order) and math calls stay scalar.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import platform
import shlex
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from arrayjit import cache
from arrayjit.codegen.c_syntax import VECTOR_MATH, VECTOR_MATH_2_35, vector_math_declarations

log = logging.getLogger("arrayjit")

#: libmvec's name-mangling letter and lanes per vector of float for each x86 instruction set
#: (SSE4, AVX, AVX2, AVX-512); a double vector holds half as many.
_X86_VARIANTS = {"b": 4, "c": 8, "d": 8, "e": 16}


@dataclass(frozen=True)
class Features:
    openmp: bool = False
    openmp_simd: bool = False
    vector_math: bool = False
    #: libmvec also has the functions of glibc 2.35 (`VECTOR_MATH_2_35`: erf).
    vector_math_2_35: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        flags = ("-fopenmp",) if self.openmp else ("-fopenmp-simd",) if self.openmp_simd else ()
        if self.vector_math:
            flags = (*flags, "-DOCANNL_VECTOR_MATH")
            if self.vector_math_2_35:
                flags = (*flags, "-DOCANNL_VECTOR_MATH_2_35")
        return flags

    @property
    def libraries(self) -> tuple[str, ...]:
        return ("-lmvec",) if self.vector_math else ()


#: `assumed`'s answers in this process (the record is read once), updated by `probe`.
_assumed: dict[tuple[str, str, tuple[str, ...]], Features] = {}


def _read_record(record: Path) -> Features | None:
    """A recorded probe's answer; None if missing, garbled or of another form (probe again)."""
    data = cache.read_verified(record)
    try:
        return Features(**json.loads(data)) if data is not None else None
    except (ValueError, TypeError):
        return None


def assumed(command: str, version: str, flags: tuple[str, ...]) -> Features:
    """The features a build of `command` (version `version`) with `flags` uses: a probe's
    answer if one was recorded, else everything that can be present here."""
    remembered = _assumed.get((command, version, flags))
    if remembered is not None:
        return remembered
    found = _read_record(_record_path(command, version, flags))
    if found is None:
        found = Features(
            openmp=True,
            openmp_simd=True,
            vector_math=_libmvec_complete(BASE_VECTOR_MATH),
            vector_math_2_35=_libmvec_complete(VECTOR_MATH_2_35),
        )
    _assumed[(command, version, flags)] = found
    return found


def probe(command: str, version: str, flags: tuple[str, ...]) -> Features:
    """Compile (and load) small programs to find which features work; record the answer."""
    argv = [*shlex.split(command), *flags]
    with tempfile.TemporaryDirectory(prefix="arrayjit-probe-") as folder:
        workdir = Path(folder)
        openmp = _builds(argv, workdir, "openmp", _OPENMP_PROBE, ("-fopenmp",), call=True)
        simd = openmp or _builds(argv, workdir, "simd", _SIMD_PROBE, ("-fopenmp-simd",))
        pragma_flag = ("-fopenmp",) if openmp else ("-fopenmp-simd",) if simd else ()
        newer = _libmvec_complete(VECTOR_MATH_2_35)
        vector_math = _libmvec_complete(BASE_VECTOR_MATH) and _builds(
            argv,
            workdir,
            "vector_math",
            _vector_math_probe(),
            (
                *pragma_flag,
                "-DOCANNL_VECTOR_MATH",
                *(("-DOCANNL_VECTOR_MATH_2_35",) if newer else ()),
            ),
            libraries=("-lmvec",),
        )
    found = Features(openmp=openmp, openmp_simd=simd, vector_math=vector_math,
                     vector_math_2_35=vector_math and newer)  # fmt: skip
    log.info("C compiler %r offers %s", command, found)
    cache.store(_record_path(command, version, flags), json.dumps(asdict(found)).encode())
    _assumed[(command, version, flags)] = found
    return found


def _record_path(command: str, version: str, flags: tuple[str, ...]) -> Path:
    return cache.cache_dir() / f"cc-features-{cache.key(command, version, *flags)}.json"


#: The functions of `VECTOR_MATH` that every libmvec has (glibc 2.22 on).
BASE_VECTOR_MATH = frozenset(VECTOR_MATH) - VECTOR_MATH_2_35


@functools.cache
def _libmvec_complete(names: frozenset[str]) -> bool:
    """Whether glibc's libmvec has every vector variant of the functions `names` (of
    `VECTOR_MATH`), for every x86 instruction set the compiler might target."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        library = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return False
    for name in names:
        arity = VECTOR_MATH[name]
        for letter, float_lanes in _X86_VARIANTS.items():
            for suffix, lanes in (("f", float_lanes), ("", float_lanes // 2)):
                if not hasattr(library, f"_ZGV{letter}N{lanes}{'v' * arity}_{name}{suffix}"):
                    return False
    return True


def _builds(
    argv: list[str],
    workdir: Path,
    name: str,
    source: str,
    extra: tuple[str, ...],
    libraries: tuple[str, ...] = (),
    call: bool = False,
) -> bool:
    """Whether `source` compiles with `extra` flags into a shared object that loads (and whose
    `ocannl_probe()` returns 4, if `call`)."""
    source_path, library = workdir / f"{name}.c", workdir / f"{name}.so"
    source_path.write_text(source)
    args = [*argv, *extra, "-o", str(library), str(source_path), *libraries, "-lm"]
    try:
        built = subprocess.run(args, capture_output=True, text=True).returncode == 0
        if not built:
            return False
        loaded = ctypes.CDLL(str(library))
        return not call or loaded.ocannl_probe() == 4
    except OSError:
        return False


_OPENMP_PROBE = """
#include <omp.h>
int ocannl_probe(void) {
  int n = 0;
#pragma omp parallel for num_threads(2) reduction(+ : n)
  for (int i = 0; i < 4; ++i) n += 1;
  return n;
}
"""

_SIMD_PROBE = """
float ocannl_probe_sum(const float *x, int n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += x[i];
  return s;
}
"""


def _vector_math_probe() -> str:
    """Every function of `VECTOR_MATH` called in a simd loop, in float and double."""
    lines = ["#include <math.h>", vector_math_declarations()]
    for c_type, suffix in (("float", "f"), ("double", "")):
        calls = " + ".join(
            f"{name}{suffix}({', '.join(['x[i]'] * arity)})" for name, arity in VECTOR_MATH.items()
        )
        lines += [
            f"void ocannl_probe_{c_type}({c_type} *restrict y, const {c_type} *restrict x, int n) {{",
            "#pragma omp simd",
            f"  for (int i = 0; i < n; ++i) y[i] = {calls};",
            "}",
        ]
    return "\n".join(lines) + "\n"

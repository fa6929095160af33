"""NVRTC: generated CUDA C++ compiled into a cubin for the device's own architecture, cached on
disk through `arrayjit.cache` like the C backend's shared objects."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

from arrayjit import cache
from arrayjit.errors import CompileError

log = logging.getLogger("arrayjit")

#: NVRTC options (besides the architecture); part of the cache key.
NVRTC_OPTIONS = {"std": "c++17"}


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"nvrtcVersion failed: {err.name}")
    return f"{major}.{minor}"


def _nvrtc_compile(source: str, arch: str, source_path: Path) -> bytes:
    """Compile `source` to a cubin for `sm_<arch>`; CompileError with NVRTC's log on failure."""
    from cuda.core import Program, ProgramOptions

    options = ProgramOptions(arch=f"sm_{arch}", name=source_path.name, **NVRTC_OPTIONS)
    logs = io.StringIO()
    try:
        program = Program(source, "c++", options)
        code = program.compile("cubin", logs=logs)
    except Exception as exc:
        message = logs.getvalue() or str(exc)
        raise CompileError(
            "NVRTC failed to compile the generated CUDA code",
            str(source_path),
            message.replace("\x00", "").strip(),
        ) from None
    return bytes(code.code)


def identity(arch: str) -> str:
    """Everything besides the source that determines a cubin."""
    return "\n".join((repr(sorted(NVRTC_OPTIONS.items())), nvrtc_version(), arch))


def build_cubin(source: str, arch: str) -> Path:
    """The cubin for `source`, from the cache or freshly compiled by NVRTC."""
    key = cache.key(source, identity(arch))

    def build(source_path: Path, output: Path) -> None:
        start = time.perf_counter()
        output.write_bytes(_nvrtc_compile(source, arch, source_path))
        log.debug("NVRTC compiled %s in %.1f ms", source_path, 1e3 * (time.perf_counter() - start))

    return cache.artifact(key, ".cubin", source, ".cu", build)

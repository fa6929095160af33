"""NVRTC: generated CUDA C++ compiled into a cubin for the device's own architecture, cached on
disk through `arrayjit.cache` like the C backend's shared objects."""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
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


#: Headers of the CUDA toolkit that generated code may include (16-bit types). NVRTC has no
#: search path of its own for them.
TOOLKIT_HEADERS = ("cuda_fp16.h", "cuda_bf16.h")
#: Where a system-wide CUDA toolkit keeps them, searched last.
SYSTEM_INCLUDE = Path("/usr/local/cuda/include")


@functools.cache
def toolkit_include_dir() -> str | None:
    """The folder holding cuda_fp16.h and cuda_bf16.h: from cuda.pathfinder (NVIDIA wheels,
    conda, CUDA_PATH/CUDA_HOME), else the NVIDIA wheels' folders on sys.path, else
    the system toolkit's; None when none holds them."""
    candidates: list[Path] = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        found = find_nvidia_header_directory("cudart")
        if found:
            candidates.append(Path(found))
    except Exception:  # an older cuda-pathfinder, or none: search the usual places
        pass
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            candidates.append(Path(os.environ[variable]) / "include")
    for entry in sys.path:
        nvidia = Path(entry or ".") / "nvidia"
        if nvidia.is_dir():
            candidates += sorted(nvidia.glob("*/include"))
    candidates.append(SYSTEM_INCLUDE)
    for folder in candidates:
        if all((folder / header).is_file() for header in TOOLKIT_HEADERS):
            return str(folder)
    return None


def _nvrtc_compile(source: str, arch: str, source_path: Path) -> bytes:
    """Compile `source` to a cubin for `sm_<arch>`; CompileError with NVRTC's log on failure."""
    from cuda.core import Program, ProgramOptions

    extra = {}
    if any(header in source for header in TOOLKIT_HEADERS):
        include = toolkit_include_dir()
        if include is None:
            raise CompileError(
                "the generated CUDA code includes cuda_fp16.h / cuda_bf16.h (16-bit dtypes) and "
                "no folder holding them was found: install the CUDA toolkit's headers (e.g. "
                "`pip install nvidia-cuda-runtime`) or set CUDA_HOME",
                str(source_path),
            )
        extra["include_path"] = [include]
    options = ProgramOptions(arch=f"sm_{arch}", name=source_path.name, **NVRTC_OPTIONS, **extra)
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

"""NVRTC: generated CUDA C++ compiled into a cubin for the device's own architecture, cached on
disk through `arrayjit.cache` like the C backend's shared objects."""

from __future__ import annotations

import functools
import importlib
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


@functools.cache
def nvrtc_version() -> str:
    """NVRTC's version, part of every cubin's cache key. Asking NVRTC loads its library (7 ms
    warm, over half a second from a cold disk), which a routine found in the cache would not
    need otherwise: the answer is kept in the cache under a fingerprint of every NVRTC library
    file that could be the one loaded (`_nvrtc_files`); a file added, removed or changed asks
    NVRTC again."""
    fingerprint = cache.key(repr(_nvrtc_files()))
    path = cache.cache_dir() / f"nvrtc-version-{fingerprint}.txt"
    try:
        known = path.read_text().strip()
    except OSError:
        known = ""
    if known:
        return known
    version = _ask_nvrtc()
    cache.write_atomic(path, version.encode())
    return version


def _ask_nvrtc() -> str:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"nvrtcVersion failed: {err.name}")
    return f"{major}.{minor}"


#: NVRTC library names cuda-python's loader may open (CUDA 11 to 14).
NVRTC_NAMES = ("libnvrtc.so", *(f"libnvrtc.so.{major}" for major in range(11, 15)))


def _nvrtc_files() -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each NVRTC library where cuda-python may find one: NVIDIA's
    wheels on sys.path, CUDA_PATH / CUDA_HOME, LD_LIBRARY_PATH, the system's CUDA toolkits and
    library folders; with the versions of cuda-bindings and cuda-pathfinder, which choose."""
    folders: list[Path] = []
    for entry in sys.path:
        nvidia = Path(entry or ".") / "nvidia"
        if nvidia.is_dir():
            folders += nvidia.glob("*/lib")
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            folders += [Path(os.environ[variable]) / "lib64", Path(os.environ[variable]) / "lib"]
    folders += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    folders += sorted(Path("/usr/local").glob("cuda*/lib64"))
    folders += [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib")]
    found: list[tuple[str, int, int]] = []
    for folder in folders:
        # The names a loader asks for (links to the versioned file, whose size and time count):
        # a few lookups, where listing a system library folder would take milliseconds.
        for name in NVRTC_NAMES:
            try:
                stat = (folder / name).stat()
            except OSError:
                continue
            entry = (str((folder / name).resolve()), stat.st_size, stat.st_mtime_ns)
            if entry not in found:  # links of one file, folders reached twice
                found.append(entry)
    for package in ("cuda.bindings", "cuda.pathfinder"):
        try:
            module = importlib.import_module(package)
        except ImportError:
            found.append((f"{package} absent", 0, 0))
        else:
            found.append((f"{package} {getattr(module, '__version__', '?')}", 0, 0))
    return found


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

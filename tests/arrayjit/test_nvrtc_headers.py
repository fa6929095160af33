"""NVRTC has no search path for the toolkit's 16-bit headers: the backend finds their folder and
passes it, or says what to install. Runs without a GPU (cuda.core and cuda.pathfinder faked)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from arrayjit.backends.cuda import nvrtc
from arrayjit.errors import CompileError

SOURCE = '#include <cuda_fp16.h>\n#include <cuda_bf16.h>\nextern "C" __global__ void k() {}\n'


@pytest.fixture
def fake_cuda(monkeypatch):
    """A cuda.core whose Program records its options, and a cuda.pathfinder that finds nothing."""
    seen: list = []

    class ProgramOptions:
        def __init__(self, **options) -> None:
            self.options = options

    class Program:
        def __init__(self, source, kind, options) -> None:
            seen.append(options.options)

        def compile(self, target, logs=None):
            return types.SimpleNamespace(code=b"cubin")

    core = types.ModuleType("cuda.core")
    core.Program, core.ProgramOptions = Program, ProgramOptions
    pathfinder = types.ModuleType("cuda.pathfinder")
    pathfinder.find_nvidia_header_directory = lambda name: None
    package = types.ModuleType("cuda")
    package.core, package.pathfinder = core, pathfinder
    monkeypatch.setitem(sys.modules, "cuda", package)
    monkeypatch.setitem(sys.modules, "cuda.core", core)
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pathfinder)
    nvrtc.toolkit_include_dir.cache_clear()
    yield seen
    # (A test may have replaced the function itself.)
    getattr(nvrtc.toolkit_include_dir, "cache_clear", lambda: None)()


def headers_in(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for header in nvrtc.TOOLKIT_HEADERS:
        (folder / header).write_text("")
    return folder


def test_the_folder_of_the_16_bit_headers_is_passed_to_nvrtc(fake_cuda, tmp_path, monkeypatch):
    include = headers_in(tmp_path / "cuda" / "include")
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "cuda"))
    assert nvrtc._nvrtc_compile(SOURCE, "90", tmp_path / "k.cu") == b"cubin"
    assert fake_cuda[-1]["include_path"] == [str(include)]
    # Code without those headers gets no include path.
    nvrtc._nvrtc_compile('extern "C" __global__ void k() {}', "90", tmp_path / "k.cu")
    assert "include_path" not in fake_cuda[-1]


def test_a_folder_with_one_header_only_is_not_taken(fake_cuda, tmp_path, monkeypatch):
    partial = tmp_path / "partial" / "include"
    partial.mkdir(parents=True)
    (partial / "cuda_fp16.h").write_text("")
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "partial"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(sys, "path", [])
    monkeypatch.setattr(nvrtc, "SYSTEM_INCLUDE", tmp_path / "nowhere")
    assert nvrtc.toolkit_include_dir() is None


def test_missing_headers_are_a_compile_error_saying_what_to_install(
    fake_cuda, tmp_path, monkeypatch
):
    monkeypatch.setattr(nvrtc, "toolkit_include_dir", lambda: None)
    with pytest.raises(CompileError, match="cuda_fp16.h / cuda_bf16.h.*CUDA_HOME") as error:
        nvrtc._nvrtc_compile(SOURCE, "90", tmp_path / "k.cu")
    assert str(tmp_path / "k.cu") in str(error.value)
    assert fake_cuda == []

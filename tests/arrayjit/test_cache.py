"""The on-disk cache of compiled routines, across processes: hits skip the compiler, concurrent
compiles of one routine all succeed, corrupted entries are rebuilt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from arrayjit import cache

# Builds and runs the same routine in every process: tnode and iterator ids are deterministic in
# a fresh process, so the generated source (and so the cache key) is the same each time.
ROUTINE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from arrayjit.assignments import Accum
    from arrayjit.runtime.runtime import Runtime
    from arrayjit.indexing import Iterator, Projections
    from arrayjit.tnode import TNode

    a, b = TNode("a", (3, 4), "float64"), TNode("b", (4, 2), "float64")
    c = TNode("c", (3, 2), "float64")
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((3, 2, 4), (i, j, k), (i, j), ((i, k), (k, j)))
    code = Accum(c, "add", "mul", (a, b), projections, True)
    routine = Runtime("c").compile(code)
    a.set_host(np.arange(12.0).reshape(3, 4))
    b.set_host(np.arange(8.0).reshape(4, 2))
    routine.run()
    print(routine.source_path)
    print(*routine.compiled.libraries)
    print(repr(c.host().ravel().tolist()))
    """
)
EXPECTED = (np.arange(12.0).reshape(3, 4) @ np.arange(8.0).reshape(4, 2)).ravel().tolist()


@pytest.fixture
def fresh_cache(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    return folder


@pytest.fixture
def recording_compiler(tmp_path):
    """A compiler wrapper that logs each build (not `--version`) to a file, then runs cc."""
    real = shutil.which("cc") or shutil.which("gcc")
    assert real, "no C compiler on PATH"
    calls = tmp_path / "compiler_calls.log"
    wrapper = tmp_path / "recording-cc"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$1" in --version) ;; *) echo "$@" >> {calls} ;; esac\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, calls


def run_routine_process(cache_dir: Path, compiler: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, ARRAYJIT_CACHE_DIR=str(cache_dir))
    if compiler is not None:
        env["ARRAYJIT_CC"] = str(compiler)
    return subprocess.Popen(
        [sys.executable, "-c", ROUTINE_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[Path, Path]:
    """The routine's source and the library its one chunk function is compiled in."""
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    source_path, library, values = out.strip().splitlines()
    assert eval(values) == EXPECTED  # noqa: S307 - our own script's repr of a list of floats
    return Path(source_path), Path(library)


def builds(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_second_process_takes_the_routine_from_the_cache(fresh_cache, recording_compiler):
    wrapper, calls = recording_compiler
    source, library = finish(run_routine_process(fresh_cache, wrapper))
    assert builds(calls) == 1
    assert source.exists() and library.exists()
    assert cache.lookup(library)
    assert finish(run_routine_process(fresh_cache, wrapper)) == (source, library)
    assert builds(calls) == 1, "the compiler ran again on a cache hit"


def test_concurrent_compiles_of_one_routine_all_succeed(fresh_cache):
    processes = [run_routine_process(fresh_cache) for _ in range(4)]
    sources = {finish(p) for p in processes}
    assert len(sources) == 1
    library = sources.pop()[1]
    assert cache.lookup(library)
    # No temporary files are left behind.
    assert not [p for p in fresh_cache.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "digest_missing"])
def test_corrupted_entry_is_rebuilt(fresh_cache, recording_compiler, damage):
    wrapper, calls = recording_compiler
    library = finish(run_routine_process(fresh_cache, wrapper))[1]
    data = library.read_bytes()
    if damage == "truncated":
        library.write_bytes(data[: len(data) // 2])
    elif damage == "overwritten":
        library.write_bytes(bytes(len(data)))
    else:
        library.with_name(library.name + ".sha256").unlink()
    assert not cache.lookup(library)
    finish(run_routine_process(fresh_cache, wrapper))
    assert builds(calls) == 2
    assert cache.lookup(library)
    assert library.read_bytes() != bytes(len(data))


def test_write_atomic_and_commit(tmp_path):
    target = tmp_path / "entry.bin"
    cache.write_atomic(target, b"first")
    cache.write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    artifact = tmp_path / "artifact.so"
    staged = cache.temp_path(artifact)
    staged.write_bytes(b"\x7fELF...")
    cache.commit(staged, artifact)
    assert not staged.exists() and cache.lookup(artifact)
    artifact.write_bytes(b"\x7fELF..!")
    assert not cache.lookup(artifact)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "artifact.so",
        "artifact.so.sha256",
        "entry.bin",
    ]


def test_key_depends_on_every_part():
    assert cache.key("source", "flags", "cc 1") == cache.key("source", "flags", "cc 1")
    assert cache.key("source", "flags", "cc 1") != cache.key("source", "flags", "cc 2")
    assert cache.key("ab", "c") != cache.key("a", "bc")  # parts are length-prefixed


def test_cache_dir_defaults_to_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("ARRAYJIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "arrayjit"
    assert cache.cache_dir().is_dir()
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache.cache_dir() == tmp_path / "explicit"

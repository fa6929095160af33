"""Sanitizer builds (issue 14): `ARRAYJIT_SANITIZE=address,undefined` compiles the generated C
with AddressSanitizer and UBSan (any report aborts), and the flags are part of the cache key.
A Python process must load the ASan runtime first, so these checks run in a subprocess with
LD_PRELOAD of the compiler's libasan (docs/reliability.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from arrayjit.backends import cc

ROOT = Path(__file__).resolve().parents[2]


def runtime_library(name: str) -> str | None:
    """The compiler's sanitizer runtime `name` (e.g. libasan.so), if it has one."""
    try:
        found = subprocess.run(
            [cc.compiler(), f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


LIBASAN = runtime_library("libasan.so")
needs_asan = pytest.mark.skipif(LIBASAN is None, reason="the C compiler has no libasan here")

# A loop over 11 cells of 10-cell buffers: loop IR straight to the backend (assignments would
# refuse it), as a bug in lowering would make it.
OUT_OF_BOUNDS = textwrap.dedent(
    """
    import numpy as np
    from arrayjit import loop_ir as ir
    from arrayjit.backends.cc import CBackend
    from arrayjit.indexing import Iterator
    from arrayjit.tnode import TNode

    x, y = TNode("x", (10,)), TNode("y", (10,))
    x.set_host(np.arange(10.0))
    i = Iterator(name="i")
    stmt = ir.For(i, 11, ir.Set(y, (i,), ir.Apply("neg", (ir.Get(x, (i,)),), x.dtype)))
    CBackend().compile(stmt, "out_of_bounds").run()
    print("ran to the end")
    """
)

CORRECT = textwrap.dedent(
    """
    import numpy as np
    from arrayjit.assignments import Accum
    from arrayjit.indexing import Iterator, Projections
    from arrayjit.runtime.runtime import Runtime
    from arrayjit.tnode import TNode

    a, b, c = TNode("a", (5, 7)), TNode("b", (7, 3)), TNode("c", (5, 3))
    a.set_host(np.arange(35.0).reshape(5, 7) / 7)
    b.set_host(np.arange(21.0).reshape(7, 3) / 3)
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((5, 3, 7), (i, j, k), (i, j), ((i, k), (k, j)))
    Runtime("c").compile(Accum(c, "add", "mul", (a, b), projections, True), "product").run()
    np.testing.assert_allclose(c.host(), a.host() @ b.host(), rtol=1e-5)
    print("ran to the end")
    """
)


def run_sanitized(script: str, cache_dir: Path, sanitize: bool = True):
    env = dict(os.environ, ARRAYJIT_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    if sanitize:
        env.update(
            ARRAYJIT_SANITIZE="address,undefined",
            LD_PRELOAD=LIBASAN or "",
            ASAN_OPTIONS="detect_leaks=0",  # Python itself never frees some memory
        )
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )


def test_sanitizer_flags():
    assert cc.sanitizer_flags("") == ()
    flags = cc.sanitizer_flags("address, undefined")
    assert flags[0] == "-fsanitize=address,undefined" and "-fno-sanitize-recover=all" in flags
    with pytest.raises(ValueError, match="ARRAYJIT_SANITIZE='memory'.*unknown sanitizer"):
        cc.sanitizer_flags("memory")


def test_sanitizer_flags_are_part_of_the_build_identity(monkeypatch):
    monkeypatch.delenv("ARRAYJIT_SANITIZE", raising=False)
    plain = cc.build_identity()
    monkeypatch.setenv("ARRAYJIT_SANITIZE", "address,undefined")
    sanitized = cc.build_identity()
    assert plain != sanitized and "-fsanitize=address,undefined" in sanitized


@needs_asan
def test_an_out_of_bounds_access_is_reported(tmp_path):
    result = run_sanitized(OUT_OF_BOUNDS, tmp_path / "cache")
    assert result.returncode != 0 and "ran to the end" not in result.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr[-2000:]
    # Without the sanitizer the same code runs to the end and corrupts the heap unnoticed
    # (here glibc may or may not notice at exit).
    plain = run_sanitized(OUT_OF_BOUNDS, tmp_path / "plain-cache", sanitize=False)
    assert "ran to the end" in plain.stdout and "AddressSanitizer" not in plain.stderr


@needs_asan
def test_correct_code_runs_clean_under_the_sanitizers(tmp_path):
    result = run_sanitized(CORRECT, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ran to the end" in result.stdout
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr
    libraries = list((tmp_path / "cache").glob("*.so"))
    assert libraries and all(b"__asan" in lib.read_bytes() for lib in libraries)

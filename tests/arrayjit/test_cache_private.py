"""The compile cache is private and loads what it checked (issue 14): its folder is created 0700;
a folder of another user, or writable by others, is refused with an error saying why and how to
fix it; a file or a read-only folder in its place is a clear error; garbage in any cache file
means a rebuild; a library swapped after its check is never what gets loaded."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from arrayjit import cache
from arrayjit.assignments import Constant, Fetch
from arrayjit.backends import loading
from arrayjit.errors import CacheError
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache_at(monkeypatch):
    """Point the cache at a path (checked afresh, as in a new process)."""

    def point(path: Path) -> None:
        monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(path))
        monkeypatch.setattr(cache, "_checked", set())

    return point


def test_a_new_cache_folder_is_private(cache_at, tmp_path):
    folder = tmp_path / "deep" / "cache"
    cache_at(folder)
    assert cache.cache_dir() == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o775, 0o777, 0o1777, 0o722])
def test_a_folder_others_can_write_is_refused(cache_at, tmp_path, mode):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    cache_at(folder)
    with pytest.raises(CacheError, match="writable by its group or by others") as info:
        cache.cache_dir()
    assert str(folder) in str(info.value) and f"chmod 700 {folder}" in str(info.value)
    assert "ARRAYJIT_CACHE_DIR" in str(info.value)


def test_a_folder_of_another_user_is_refused(cache_at, tmp_path):
    if os.getuid() == 0:
        folder = tmp_path / "theirs"
        folder.mkdir(mode=0o700)
        os.chown(folder, 65534, 65534)
        other = 65534
    else:
        folder, other = Path("/usr"), 0  # root's, and not writable by others
    cache_at(folder)
    with pytest.raises(CacheError, match=f"belongs to user id {other}, not to you") as info:
        cache.cache_dir()
    assert "ARRAYJIT_CACHE_DIR" in str(info.value)


def test_a_planted_library_in_a_shared_folder_is_never_run(tmp_path):
    """The issue's attack: a world-writable cache folder; a process refuses it before reading
    anything from it."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    script = "from arrayjit.runtime.runtime import Runtime\nRuntime('c').compile(__import__('arrayjit.assignments').assignments.Comment('x'))\n"  # noqa: E501
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, ARRAYJIT_CACHE_DIR=str(folder)),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "CacheError" in result.stderr and "writable by its group or by others" in result.stderr


def test_cache_dir_naming_a_file_is_a_clear_error(cache_at, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    cache_at(path)
    with pytest.raises(CacheError, match="is not a folder"):
        cache.cache_dir()
    cache_at(path / "below")
    with pytest.raises(CacheError, match="cannot be created"):
        cache.cache_dir()


def test_a_read_only_empty_folder_is_a_clear_error():
    """Run as another user when this one is root (root writes anywhere)."""
    folder = Path(tempfile.mkdtemp(prefix="arrayjit-ro-"))
    try:
        folder.chmod(0o500)
        as_user = []
        if os.getuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("root writes anywhere, and setpriv (to run as another user) is missing")
            os.chown(folder, 65534, 65534)
            as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
            probe = subprocess.run(
                [*as_user, sys.executable, "-c", "import arrayjit"],
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                capture_output=True,
                cwd="/",
            )
            if probe.returncode != 0:
                pytest.skip(
                    "the other user cannot import this Python environment (e.g. a virtual "
                    "environment inside a folder only root may read)"
                )
        script = (
            "from arrayjit.assignments import Constant, Fetch\n"
            "from arrayjit.runtime.runtime import Runtime\n"
            "from arrayjit.tnode import TNode\n"
            "Runtime('c').compile(Fetch(TNode('x', (3,)), Constant(1.0)))\n"
        )
        result = subprocess.run(
            [*as_user, sys.executable, "-c", script],
            env=dict(os.environ, ARRAYJIT_CACHE_DIR=str(folder), PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            cwd="/",
        )
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("arrayjit.errors.CacheError"), result.stderr
        assert "is not writable" in last and f"chmod u+rwx {folder}" in last
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- garbage in the cache means a rebuild ---------------------------------------------------


def fill(value: float, n: int = 5) -> tuple[Fetch, TNode]:
    x = TNode("x", (n,))
    return Fetch(x, Constant(value)), x


@pytest.fixture
def private_cache(cache_at, tmp_path) -> Path:
    folder = tmp_path / "cache"
    cache_at(folder)
    return folder


def compile_and_check(value: float) -> None:
    code, x = fill(value)
    Runtime("c").compile(code, "fill").run()
    np.testing.assert_array_equal(x.host(), np.full(5, value, np.float32))


@pytest.mark.parametrize("garbage", [b"\xff\xfe\xfa not utf-8", b"", b"0" * 64])
def test_garbage_in_every_cache_file_means_a_rebuild(private_cache, garbage):
    """Digests, records (routine and function indexes, compiler version) and artifacts filled
    with invalid UTF-8 or wrong bytes: the routine is rebuilt, never a UnicodeDecodeError."""
    compile_and_check(1.5)
    files = [p for p in private_cache.iterdir() if p.is_file()]
    assert any(p.suffix == ".sha256" for p in files) and any(p.suffix == ".routine" for p in files)
    for p in files:
        p.write_bytes(garbage)
    # A new process, which remembers nothing of what this one read.
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(
        """
        import numpy as np
        from arrayjit.assignments import Constant, Fetch
        from arrayjit.runtime.runtime import Runtime
        from arrayjit.tnode import TNode

        x = TNode("x", (5,))
        Runtime("c").compile(Fetch(x, Constant(1.5)), "fill").run()
        assert np.array_equal(x.host(), np.full(5, 1.5, np.float32))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, ARRAYJIT_CACHE_DIR=str(private_cache)),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loading._loaded.clear()  # and this one, as a new process would
    loading._recent.clear()
    compile_and_check(1.5)
    compile_and_check(2.5)


def test_a_library_swapped_after_its_check_is_not_loaded(private_cache, monkeypatch, tmp_path):
    """Between the digest check and the load, the file is replaced by a library whose
    constructor creates a file: what loads is the checked bytes, so nothing is created."""
    marker = tmp_path / "planted-code-ran"
    evil_source = tmp_path / "evil.c"
    evil_source.write_text(
        "#include <fcntl.h>\n"
        f'__attribute__((constructor)) static void planted(void) {{ creat("{marker}", 0600); }}\n'
    )
    evil = tmp_path / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(evil), str(evil_source)], check=True)
    compile_and_check(3.5)  # the library is in the cache now
    loading._loaded.clear()
    loading._recent.clear()
    checked = cache.read_verified

    def check_then_swap(path: Path) -> bytes | None:
        data = checked(path)
        if path.suffix == ".so":
            shutil.copyfile(evil, path)  # the attacker wins the race
        return data

    monkeypatch.setattr(cache, "read_verified", check_then_swap)
    compile_and_check(3.5)
    assert not marker.exists()

"""The on-disk cache of compiled artifacts, shared by the backends.

Entries are keyed by a hash of everything that determines the artifact (source, flags, compiler
version). Every file is written to a temporary name and renamed, so a reader never sees half a
file and two processes compiling the same routine at once both succeed. Each artifact has a
digest beside it; an entry whose bytes do not match is treated as missing and rebuilt.

The folder is `$ARRAYJIT_CACHE_DIR`, else `$XDG_CACHE_HOME/arrayjit`, else `~/.cache/arrayjit`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_created: set[Path] = set()


def cache_dir() -> Path:
    configured = os.environ.get("ARRAYJIT_CACHE_DIR")
    if configured:
        path = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        path = Path(base) / "arrayjit"
    if path not in _created:
        path.mkdir(parents=True, exist_ok=True)
        _created.add(path)
    return path


def key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_path(path: Path) -> Path:
    """A fresh name beside `path` for a tool to write into before `commit`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit(tmp: Path, path: Path) -> None:
    """Move a finished artifact into place, then record its digest."""
    digest = _digest(tmp.read_bytes())
    os.replace(tmp, path)
    write_atomic(path.with_name(path.name + ".sha256"), digest.encode())


def lookup(path: Path) -> bool:
    """Whether `path` holds a complete artifact whose bytes match its recorded digest."""
    digest_path = path.with_name(path.name + ".sha256")
    try:
        recorded = digest_path.read_text().strip()
        data = path.read_bytes()
    except OSError:
        return False
    return recorded == _digest(data)


_verified: dict[Path, tuple[int, int]] = {}


def verified(path: Path) -> bool:
    """`lookup(path)`, remembered in the process for as long as the file's size and modification
    time stay the same (a library used by many routines is hashed once)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    signature = (stat.st_size, stat.st_mtime_ns)
    if _verified.get(path) == signature:
        return True
    if not lookup(path):
        return False
    _verified[path] = signature
    return True


def write_record(name: str, text: str) -> None:
    """Store a small text entry (an index from a key to an artifact) in the cache folder."""
    write_atomic(cache_dir() / name, text.encode())


def read_record(name: str) -> str | None:
    try:
        return (cache_dir() / name).read_text()
    except OSError:
        return None


def artifact(key: str, suffix: str, source: str, source_suffix: str, build) -> Path:
    """The artifact `<key><suffix>` from the cache; on a miss the source is written beside it
    (for error messages) and `build(source_path, tmp_path)` writes the artifact to `tmp_path`,
    which is then moved into place."""
    folder = cache_dir()
    path = folder / f"{key}{suffix}"
    if lookup(path):
        return path
    source_path = folder / f"{key}{source_suffix}"
    write_atomic(source_path, source.encode())
    tmp = temp_path(path)
    try:
        build(source_path, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, path)
    return path

"""The on-disk cache of compiled artifacts, shared by the backends.

Entries are keyed by a hash of everything that determines the artifact (source, flags, compiler
version). The folder is `$ARRAYJIT_CACHE_DIR`, else `$XDG_CACHE_HOME/arrayjit`, else
`~/.cache/arrayjit`. Its rules (docs/reliability.md):

- It is private: created 0700; a folder owned by another user, or writable by the group or
  others, is refused with a `CacheError` saying why and how to fix it (another user could plant
  code there that this process would run). So is a path that is not a folder or not writable.
- Artifacts are built in a private temporary folder and copied in through a temporary file and
  a rename, with a digest beside them; a reader never sees half a file, and two processes
  building the same entry both succeed.
- What is loaded is what was checked: `read_verified` returns the bytes whose digest matched,
  and the backends load those bytes (never the path again). Anything unreadable, garbled,
  mismatched or vanished reads as missing, and the caller rebuilds.
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from arrayjit.errors import CacheError, CompileError

_checked: set[Path] = set()

#: Artifacts this process just built, by path, until read once: the process loads the bytes it
#: built even if the cache is cleared at once (a few, in case some are never read).
_FRESH_LIMIT = 64
_fresh: collections.OrderedDict[Path, bytes] = collections.OrderedDict()
_fresh_lock = threading.Lock()


def _configured() -> tuple[Path, str]:
    configured = os.environ.get("ARRAYJIT_CACHE_DIR")
    if configured:
        return Path(configured), "ARRAYJIT_CACHE_DIR"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "arrayjit", "XDG_CACHE_HOME"
    return Path.home() / ".cache" / "arrayjit", "the default"


def cache_dir() -> Path:
    """The cache folder, created private (0700) and checked once per process."""
    path, source = _configured()
    if path not in _checked:
        _prepare(path, source)
        _checked.add(path)
    return path


_FIX = "set ARRAYJIT_CACHE_DIR to a folder of your own (it is created 0700)"


def _prepare(path: Path, source: str) -> None:
    where = f"the arrayjit cache folder {str(path)!r} (from {source})"
    if path.exists() and not path.is_dir():
        raise CacheError(f"{where} is not a folder: remove it, or {_FIX}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{where} cannot be created ({exc.strerror or exc}): {_FIX}") from None
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise CacheError(
            f"{where} belongs to user id {info.st_uid}, not to you ({os.getuid()}): its owner "
            f"could place code there that you would run. Use your own: {_FIX}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"{where} is writable by its group or by others (mode {stat.filemode(info.st_mode)}): "
            f"they could place code there that you would run. Run `chmod 700 {path}`, or {_FIX}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheError(
            f"{where} is not writable (mode {stat.filemode(info.st_mode)}): run "
            f"`chmod u+rwx {path}`, or {_FIX}"
        )


def key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename. A folder
    or temporary file removed meanwhile (the cache being cleared) is made again, a few times."""
    for attempt in range(4):
        try:
            _write_once(path, data)
            return
        except FileNotFoundError:
            if attempt == 3:
                raise
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except PermissionError as exc:
            raise CacheError(
                f"cannot write {str(path)!r} in the arrayjit cache ({exc.strerror}): {_FIX}"
            ) from None


def _write_once(path: Path, data: bytes) -> None:
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


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def commit(tmp: Path, path: Path) -> None:
    """Move a finished artifact into place, then record its digest."""
    digest = _digest(tmp.read_bytes())
    os.replace(tmp, path)
    write_atomic(_digest_path(path), digest.encode())


def store(path: Path, data: bytes) -> None:
    """Put an artifact in place, then its digest."""
    write_atomic(path, data)
    write_atomic(_digest_path(path), _digest(data).encode())


def read_verified(path: Path) -> bytes | None:
    """The bytes of the artifact at `path` if they match its recorded digest (or this process
    just built them); None if anything is missing, unreadable or does not match."""
    with _fresh_lock:
        data = _fresh.pop(path, None)
    if data is not None:
        return data
    try:
        recorded = _digest_path(path).read_bytes()
        data = path.read_bytes()
    except OSError:
        return None
    return data if recorded.strip() == _digest(data).encode() else None


def lookup(path: Path) -> bool:
    """Whether `path` holds a complete artifact whose bytes match its recorded digest."""
    return read_verified(path) is not None


def write_record(name: str, text: str) -> None:
    """Store a small text entry (an index from a key to an artifact) in the cache folder."""
    write_atomic(cache_dir() / name, text.encode())


def read_record(name: str) -> str | None:
    """A record's text; None if it is missing, unreadable or not UTF-8."""
    try:
        return (cache_dir() / name).read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return None


def artifact(
    key: str, suffix: str, source: str, source_suffix: str, build: Callable[[Path, Path], None]
) -> Path:
    """The artifact `<key><suffix>` from the cache. On a miss, `build(source_path, output)`
    writes it in a private temporary folder (from the source written there), and it is stored
    with its digest; the source is kept beside it (and named by a failed build's error)."""
    folder = cache_dir()
    path = folder / f"{key}{suffix}"
    if read_verified(path) is not None:
        return path
    kept = folder / f"{key}{source_suffix}"
    with tempfile.TemporaryDirectory(prefix="arrayjit-build-") as work:
        source_path = Path(work) / kept.name
        source_path.write_text(source)
        output = Path(work) / path.name
        try:
            build(source_path, output)
        except CompileError as exc:
            write_atomic(kept, source.encode())
            raise CompileError(
                exc.message, str(kept), exc.log.replace(str(source_path), str(kept))
            ) from None
        data = output.read_bytes()
    with _fresh_lock:
        _fresh[path] = data
        while len(_fresh) > _FRESH_LIMIT:
            _fresh.popitem(last=False)
    write_atomic(kept, source.encode())
    store(path, data)
    return path

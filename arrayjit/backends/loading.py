"""Loading generated libraries from the bytes the cache verified (docs/reliability.md): each is
written to this process's private folder under a name used once (so the dynamic loader never
confuses two libraries), loaded, and the file removed; a library no routine holds is unloaded
(dlclose) once it is no longer among the few used last."""

from __future__ import annotations

import _ctypes
import atexit
import collections
import ctypes
import functools
import itertools
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

from arrayjit import cache
from arrayjit.backends import openmp_fork
from arrayjit.errors import CompileError


class Library:
    """A shared object loaded from bytes the cache verified: written to this process's private
    folder under a name used once (so the dynamic loader never confuses two libraries), loaded,
    and the file removed. Unloaded (dlclose) when the last routine holding it is gone."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        private = _private_folder() / f"{next(_load_serial)}-{path.name}"
        with open(os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700), "wb") as f:
            f.write(data)
        try:
            self.cdll = ctypes.CDLL(str(private))
        except OSError as exc:
            raise CompileError(f"cannot load {path}: {exc}", str(path.with_suffix(".c"))) from None
        finally:
            private.unlink()
        _pin_thread_runtimes()
        openmp_fork.register(self.cdll)
        self._finalizer = weakref.finalize(self, _unload, self.cdll)

    def address(self, symbol: str) -> int | None:
        return _dlsym(self.cdll._handle, symbol.encode())


#: OpenMP runtimes stay loaded for good once a library brought them in: unloading the last
#: library that uses one would unmap the code its idle worker threads are waiting in.
_THREAD_RUNTIMES = ("libgomp.so.1", "libomp.so", "libomp.so.5", "libiomp5.so")
_pinned: dict[str, ctypes.CDLL] = {}


def _pin_thread_runtimes() -> None:
    for name in _THREAD_RUNTIMES:
        if name not in _pinned:
            try:  # a handle only if it is loaded already: one more reference, never released
                _pinned[name] = ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
            except OSError:
                pass


def _unload(cdll: ctypes.CDLL) -> None:
    openmp_fork.unregister(cdll)
    _ctypes.dlclose(cdll._handle)


_load_serial = itertools.count()


@functools.cache
def _private_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="arrayjit-load-"))  # 0700, this user's
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


#: Loaded libraries by cache path, while some routine holds them; the few used last stay loaded
#: a while, so that checking a library and building the routine that uses it load it once.
_loaded: weakref.WeakValueDictionary[Path, Library] = weakref.WeakValueDictionary()
_recent: collections.deque[Library] = collections.deque(maxlen=16)
_load_lock = threading.Lock()


def try_load(library: Path) -> Library | None:
    """The library at `library` in the cache, loaded from its verified bytes (or still loaded
    from them, while the file is there); None if the cache no longer holds it (the caller
    rebuilds)."""
    with _load_lock:
        loaded = _loaded.get(library)
        if loaded is not None and not library.exists():
            return None
        if loaded is None:
            data = cache.read_verified(library)
            if data is None:
                return None
            loaded = _loaded[library] = Library(library, data)
        _recent.append(loaded)
        return loaded


class Vanished(Exception):
    """A library left the cache (or was garbled) between being found and being loaded."""


def load(library: Path) -> Library:
    """A library this process holds (found or just built), else loaded from the cache."""
    with _load_lock:
        loaded = _loaded.get(library)
    if loaded is None:
        loaded = try_load(library)
    if loaded is None:
        raise Vanished(library)
    return loaded


_dlsym = ctypes.CDLL(None).dlsym
_dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_dlsym.restype = ctypes.c_void_p

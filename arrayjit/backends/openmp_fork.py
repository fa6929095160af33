"""Threads after `fork`: GNU libgomp cannot start threads in a process forked after it started
its own (the child hangs in its first parallel region, waiting for threads that were not
copied). Every generated library has a flag, `ocannl_threads_ok`, that its parallel regions
test: in a forked child it is cleared in every library already loaded and in every library
loaded later, so parallel loops and products run on the calling thread. Results are the same,
since the work is divided by the count compiled in, not by the threads that run it.
"""

from __future__ import annotations

import ctypes
import os
import weakref

_libraries: weakref.WeakSet[ctypes.CDLL] = weakref.WeakSet()
_forked = False


def register(library: ctypes.CDLL) -> None:
    """Track a loaded generated library (its flag is cleared if this process is a fork)."""
    _libraries.add(library)
    if _forked:
        _clear(library)


def _clear(library: ctypes.CDLL) -> None:
    try:
        ctypes.c_int.in_dll(library, "ocannl_threads_ok").value = 0
    except ValueError:  # a library without parallel regions
        pass


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    for library in list(_libraries):
        _clear(library)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""Compiled libraries are released (issue 14): a routine holds the libraries it runs, and a
library no routine holds is unloaded (dlclose), so a process making thousands of routines keeps
a bounded number mapped (never loaded, a process would reach the kernel's map limit near 13,000
routines)."""

from __future__ import annotations

import gc

import numpy as np

from arrayjit.assignments import Constant, Fetch
from arrayjit.backends import loading
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode

DISTINCT = 24  # more than the few libraries kept loaded after their last use


def mapped_libraries(names: set[str]) -> list[str]:
    """Which of the cache's libraries `names` are mapped in this process (once per load: each
    is loaded from a private copy `<serial>-<name>`)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[5] for line in maps if "arrayjit-load-" in line}
    return [name for path in paths if (name := path.rsplit("/", 1)[1].split("-", 1)[1]) in names]


def fill(runtime: Runtime, k: int):
    x = TNode("x", (7,))
    routine = runtime.compile(Fetch(x, Constant(k + 0.5)), f"fill{k}")
    return routine, x


def libraries_of(routine) -> set[str]:
    return {path.name for path in routine.compiled.libraries}


def test_thousands_of_routines_keep_few_libraries_mapped():
    runtime = Runtime("c")
    ours: set[str] = set()
    for k in range(DISTINCT):  # each its own library, in the cache from now on
        ours |= libraries_of(fill(runtime, k)[0])
    assert len(ours) == DISTINCT
    gc.collect()
    most = 0
    for n in range(2000):
        k = n % DISTINCT
        routine, x = fill(runtime, k)  # found by structure: the library is loaded again
        routine.run()
        assert x.host()[0] == k + 0.5
        del routine
        if n % 100 == 0:
            most = max(most, len(mapped_libraries(ours)))
    # The recently used ones, the routine in hand, and a few dropped routines that wait for the
    # garbage collector (an executable and its compiled code refer to each other).
    assert most <= loading._recent.maxlen + 8, most
    loading._recent.clear()
    gc.collect()
    assert mapped_libraries(ours) == []


def test_a_library_stays_loaded_while_a_routine_holds_it():
    runtime = Runtime("c")
    kept, x = fill(runtime, 100)
    others = set().union(*(libraries_of(fill(runtime, 200 + k)[0]) for k in range(DISTINCT)))
    loading._recent.clear()
    gc.collect()
    kept.run()
    np.testing.assert_array_equal(x.host(), np.full(7, 100.5, np.float32))
    assert mapped_libraries(libraries_of(kept)) == [*libraries_of(kept)]
    assert mapped_libraries(others) == []

"""Translation units: the functions of routines that the cache lacks are compiled in a few units
at once (several compiler processes, or threads for NVRTC), and each function is indexed in the
cache by its own key, so that later routines find it whichever unit compiled it."""

from __future__ import annotations

import heapq
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from arrayjit import cache

log = logging.getLogger("arrayjit")


class Function(Protocol):
    """A function printed on its own: `key` hashes its text and everything that compiles it."""

    key: str
    symbol: str
    lines: int


#: Missing functions are compiled in `jobs()` translation units at once, or more when they would
#: hold more than UNIT_LINES lines each; fewer than SMALL_UNIT_LINES lines in all make one unit.
UNIT_LINES = 4000
SMALL_UNIT_LINES = 200


def jobs() -> int:
    """How many compilations run at once: `ARRAYJIT_JOBS`, else the usable cores."""
    configured = os.environ.get("ARRAYJIT_JOBS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def units(sizes: Sequence[int]) -> list[list[int]]:
    """Indices of functions (of `sizes` lines) grouped into the translation units that compile
    them: about equal in size, `jobs()` of them unless the total is small or large."""
    total = sum(sizes)
    count = max(math.ceil(total / UNIT_LINES), min(jobs(), math.ceil(total / SMALL_UNIT_LINES)))
    return balanced_groups(sizes, count)


def balanced_groups(sizes: Sequence[int], groups: int) -> list[list[int]]:
    """Indices of `sizes` in at most `groups` groups of about equal total size (largest first,
    each into the lightest group); each group keeps the indices in increasing order."""
    groups = max(1, min(groups, len(sizes)))
    heap = [(0, g) for g in range(groups)]
    members: list[list[int]] = [[] for _ in range(groups)]
    for index in sorted(range(len(sizes)), key=lambda k: -sizes[k]):
        total, g = heapq.heappop(heap)
        members[g].append(index)
        heapq.heappush(heap, (total + sizes[index], g))
    return [sorted(m) for m in members if m]


def compiled(
    functions: Sequence[Function],
    index: str,
    build_unit: Callable[[list], Path],
    defines: Callable[[Path, str], bool],
) -> dict[str, Path]:
    """Function key -> the artifact that defines it. Functions are looked up in the cache's
    index (records `<key>.<index>` naming the artifact, checked with `defines(path, symbol)`);
    the missing ones are grouped by `units` and built by `build_unit(group)`, in parallel."""
    unique = {f.key: f for f in functions}
    found: dict[str, Path] = {}
    missing = []
    for key, function in unique.items():
        entry = cache.read_record(f"{key}.{index}")
        artifact = cache.cache_dir() / entry.strip() if entry else None
        if artifact is not None and cache.verified(artifact) and defines(artifact, function.symbol):
            found[key] = artifact
        else:
            missing.append(function)
    if not missing:
        return found
    groups = [[missing[k] for k in unit] for unit in units([f.lines for f in missing])]
    log.debug("compiling %d functions in %d units", len(missing), len(groups))
    with ThreadPoolExecutor(max_workers=min(jobs(), len(groups))) as pool:
        built = list(pool.map(build_unit, groups))
    for group, artifact in zip(groups, built, strict=True):
        for function in group:
            cache.write_record(f"{function.key}.{index}", artifact.name)
            found[function.key] = artifact
    return found

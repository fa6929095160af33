"""The streams of a streamed run on the C backend, where device memory is host memory: the plan's
allocation is one numpy array, a copy is a memcpy from the weights' source (a host array or a
memory map) into a slot, and an event is a timestamp. Copies run on the calling thread when the
table reaches them, so the plan's logic (slots, order, sources, stats) runs for real but nothing
overlaps: the compute already uses every core through OpenMP, and a copier thread competing with
its spinning workers made runs many times slower on a small machine.
"""

from __future__ import annotations

import time

import numpy as np

from arrayjit.tnode import TNode


class Reached:
    """A point the calling thread has reached, and when (perf_counter seconds)."""

    __slots__ = ("time",)

    def __init__(self) -> None:
        self.time = time.perf_counter()


class HostLoad:
    """The copies of one stage's streamed weights: (destination view, source) pairs."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.pairs = pairs
        self.nbytes = sum(d.nbytes for d, _ in pairs)

    def refresh(self, k: int, source: np.ndarray) -> None:
        self.pairs[k] = (self.pairs[k][0], source)

    def run(self) -> None:
        for target, source in self.pairs:
            np.copyto(target, source, casting="unsafe")


class HostStreams:
    """Copies and computes in table order on the calling thread."""

    def __init__(self) -> None:
        self.memory = np.zeros(0, np.uint8)
        self.base = 0

    def allocate(self, nbytes: int) -> int:
        self.memory = np.zeros(max(1, nbytes), np.uint8)
        self.base = self.memory.ctypes.data
        return self.base

    def view(self, address: int, t: TNode) -> np.ndarray:
        start = address - self.base
        size = t.size * t.dtype.itemsize
        return self.memory[start : start + size].view(t.dtype.numpy).reshape(t.dims)

    def load(self, parts: list[tuple[int, TNode, np.ndarray]]) -> HostLoad:
        return HostLoad([(self.view(address, t), source) for address, t, source in parts])

    def copy(self, load: HostLoad) -> None:
        load.run()

    def record_copy(self) -> Reached:
        return Reached()

    def record_compute(self) -> Reached:
        return Reached()

    def copy_waits(self, event: Reached) -> None:
        pass  # everything before it on the calling thread is done

    def compute_waits(self, event: Reached) -> None:
        pass

    def seconds(self, start: Reached, end: Reached) -> float:
        return end.time - start.time

    def synchronize(self) -> None:
        pass

    def upload(self, address: int, t: TNode, array: np.ndarray) -> None:
        np.copyto(self.view(address, t), array, casting="unsafe")

    def download(self, address: int, t: TNode, array: np.ndarray) -> None:
        np.copyto(array, self.view(address, t))

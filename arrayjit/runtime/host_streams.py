"""The streams of a streamed run on the C backend, where device memory is host memory: the plan's
allocation is one numpy array, a copy is a memcpy from the weights' source (a host array or a
memory map) into a slot, done by a copier thread while the calling thread computes (numpy's copy
and the ctypes call into the runner both release the GIL), and an event is a timestamped flag.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np

from arrayjit.tnode import TNode


class HostEvent:
    """Set when the work before it is done; `time` is when (perf_counter seconds)."""

    __slots__ = ("done", "time")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.time = 0.0

    def set(self) -> None:
        self.time = time.perf_counter()
        self.done.set()

    def wait(self) -> None:
        self.done.wait()


def _serve(tasks: queue.SimpleQueue, errors: list) -> None:
    while (task := tasks.get()) is not None:
        try:
            task()
        except Exception as exc:  # reported by the next wait of the calling thread
            errors.append(exc)


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
    """Copies on a copier thread, computes on the calling thread."""

    def __init__(self) -> None:
        self.memory = np.zeros(0, np.uint8)
        self.base = 0
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._errors: list[Exception] = []
        threading.Thread(
            target=_serve, args=(self._tasks, self._errors), daemon=True, name="arrayjit-copier"
        ).start()
        weakref.finalize(self, self._tasks.put, None)

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

    def _enqueue(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def copy(self, load: HostLoad) -> None:
        self._enqueue(load.run)

    def record_copy(self) -> HostEvent:
        event = HostEvent()
        self._enqueue(event.set)
        return event

    def record_compute(self) -> HostEvent:
        event = HostEvent()
        event.set()
        return event

    def copy_waits(self, event: HostEvent) -> None:
        self._enqueue(event.wait)

    def compute_waits(self, event: HostEvent) -> None:
        event.wait()
        self._raise_errors()

    def seconds(self, start: HostEvent, end: HostEvent) -> float:
        return end.time - start.time

    def synchronize(self) -> None:
        self.record_copy().wait()
        self._raise_errors()

    def upload(self, address: int, t: TNode, array: np.ndarray) -> None:
        np.copyto(self.view(address, t), array, casting="unsafe")

    def download(self, address: int, t: TNode, array: np.ndarray) -> None:
        np.copyto(array, self.view(address, t))

    def _raise_errors(self) -> None:
        if self._errors:
            error = self._errors.pop(0)
            self._errors.clear()
            raise RuntimeError(
                f"copying weights into the streaming slots failed: {error}"
            ) from error

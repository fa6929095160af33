"""The streams of a streamed run on the C backend, where device memory is host memory: the plan's
allocation is one numpy array, a copy is a memcpy from the weights' source (a host array or a
memory map) into a slot, done by the process's copier thread while the calling thread computes
(numpy's copy and the ctypes call into the runner both release the GIL), and an event is a
timestamped flag. One copier serves every plan: each plan's copies stay in its table's order.
"""

from __future__ import annotations

import queue
import threading
import time
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


class Reached:
    """A point the calling thread has reached: done when made (no lock to create)."""

    __slots__ = ("time",)

    def __init__(self) -> None:
        self.time = time.perf_counter()

    def wait(self) -> None:
        pass


def _serve(tasks: queue.SimpleQueue) -> None:
    while True:
        task, errors = tasks.get()
        try:
            task()
        except Exception as exc:  # reported by the next wait of the thread that gave the task
            errors.append(exc)


_copier: queue.SimpleQueue | None = None
_copier_lock = threading.Lock()


def copier() -> queue.SimpleQueue:
    """The tasks of the process's one copier thread (started on first use), run in order."""
    global _copier
    with _copier_lock:
        if _copier is None:
            tasks: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(
                target=_serve, args=(tasks,), daemon=True, name="arrayjit-copier"
            ).start()
            _copier = tasks
    return _copier


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
        self._tasks = copier()
        self._errors: list[Exception] = []

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
        self._tasks.put((task, self._errors))

    def copy(self, load: HostLoad) -> None:
        self._enqueue(load.run)

    def record_copy(self) -> HostEvent:
        event = HostEvent()
        self._enqueue(event.set)
        return event

    def record_compute(self) -> Reached:
        return Reached()

    def copy_waits(self, event: Reached) -> None:
        pass  # computes run on the calling thread: done before a later copy is enqueued

    def compute_waits(self, event: HostEvent) -> None:
        event.wait()
        self._raise_errors()

    def seconds(self, start: HostEvent | Reached, end: HostEvent | Reached) -> float:
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

"""The streams of a streamed run on CUDA: the plan's memory is one allocation from the device's
pool; stages compute on the backend's stream while weights go up on its copy stream, ordered by
events recorded with timing on, so the run can say how much copy time compute hid.

Weights come from pinned host memory: with `host_memory="pinned"` each streamed stage's weights
are packed at plan time into one pinned buffer laid out as its slot, so a stage is one
asynchronous copy at the full host-to-device bandwidth; with `host_memory="mapped"` (a model
larger than host RAM) they stay in their sources (memory maps) and each copy first gathers them
into one of two pinned staging buffers on the calling thread, while the GPU computes.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import numpy as np

from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.backends.cuda import CudaBackend

HOST_MEMORY = ("pinned", "mapped")


def _pinned_array(buffer, nbytes: int) -> np.ndarray:
    """The bytes of a pinned host buffer as a numpy array."""
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(int(buffer.handle)), np.uint8)


def _typed(memory: np.ndarray, start: int, t: TNode) -> np.ndarray:
    size = t.size * t.dtype.itemsize
    return memory[start : start + size].view(t.dtype.numpy).reshape(t.dims)


class CudaLoad:
    """One stage's streamed weights: where they go (one span of the slot), where they come from."""

    def __init__(self, streams: CudaStreams, parts: list[tuple[int, TNode, np.ndarray]]) -> None:
        from cuda.core import Buffer

        self.streams = streams
        self.start = min(address for address, _, _ in parts)
        self.nbytes = max(a + t.size * t.dtype.itemsize for a, t, _ in parts) - self.start
        self.parts = [(address - self.start, t, source) for address, t, source in parts]
        self.target = Buffer.from_handle(self.start, self.nbytes)
        self.packed = None
        if streams.host_memory == "pinned":
            self.packed = streams.backend.pinned.allocate(self.nbytes)
            self.source = Buffer.from_handle(int(self.packed.handle), self.nbytes)
            self.memory = _pinned_array(self.packed, self.nbytes)
            for k in range(len(self.parts)):
                self.refresh(k, self.parts[k][2])

    def refresh(self, k: int, source: np.ndarray) -> None:
        offset, t, _ = self.parts[k]
        self.parts[k] = (offset, t, source)
        if self.packed is not None:
            np.copyto(_typed(self.memory, offset, t), source, casting="unsafe")

    def run(self) -> None:
        streams = self.streams
        if self.packed is not None:
            self.target.copy_from(self.source, stream=streams.copier)
            return
        staging = streams.staging_for(self.nbytes)
        for offset, t, source in self.parts:
            np.copyto(_typed(staging.memory, offset, t), source, casting="unsafe")
        self.target.copy_from(staging.view(self.nbytes), stream=streams.copier)
        staging.free = streams.copier.record()


class Staging:
    """A pinned buffer that mapped weights are gathered into; `free` after its last copy."""

    def __init__(self, backend: CudaBackend, nbytes: int) -> None:
        self.buffer = backend.pinned.allocate(nbytes)
        self.memory = _pinned_array(self.buffer, nbytes)
        self.free = None

    def view(self, nbytes: int):
        from cuda.core import Buffer

        return Buffer.from_handle(int(self.buffer.handle), nbytes)


class CudaStreams:
    """Computes on the backend's stream, copies on its copy stream."""

    def __init__(self, backend: CudaBackend, host_memory: str = "pinned") -> None:
        from cuda.core import EventOptions

        if host_memory not in HOST_MEMORY:
            raise ValueError(f"host_memory must be one of {HOST_MEMORY}, got {host_memory!r}")
        self.backend = backend
        self.host_memory = host_memory
        self.compute = backend.stream
        self.copier = backend.copy_stream
        self.timing = EventOptions(timing_enabled=True)
        self.memory = None
        self.stagings: list[Staging] = []
        self.staging_bytes = 0
        self._next_staging = 0

    def allocate(self, nbytes: int) -> int:
        self.memory = self.backend.allocate(max(1, nbytes))
        self.memory.fill(0, stream=self.compute)
        # Copies into the memory come after its allocation and zeroing.
        self.copier.wait(self.compute.record())
        return int(self.memory.handle)

    def load(self, parts: list[tuple[int, TNode, np.ndarray]]) -> CudaLoad:
        load = CudaLoad(self, parts)
        self.staging_bytes = max(self.staging_bytes, load.nbytes)
        return load

    def staging_for(self, nbytes: int) -> Staging:
        """The next of two pinned staging buffers (as large as the largest load, made when
        first needed, after every load exists), once its last copy is done."""
        if not self.stagings:
            self.stagings = [Staging(self.backend, self.staging_bytes) for _ in range(2)]
        staging = self.stagings[self._next_staging % 2]
        self._next_staging += 1
        if staging.free is not None:
            staging.free.sync()
        return staging

    def copy(self, load: CudaLoad) -> None:
        load.run()

    def record_copy(self):
        return self.copier.record(options=self.timing)

    def record_compute(self):
        return self.compute.record(options=self.timing)

    def copy_waits(self, event) -> None:
        self.copier.wait(event)

    def compute_waits(self, event) -> None:
        self.compute.wait(event)

    def seconds(self, start, end) -> float:
        return (end - start) / 1e3  # events subtract to milliseconds

    def synchronize(self) -> None:
        self.copier.sync()
        self.compute.sync()

    def upload(self, address: int, t: TNode, array: np.ndarray) -> None:
        """Copy `array` to `address` before later compute (synchronously: rare, small)."""
        from cuda.core import Buffer

        nbytes = t.size * t.dtype.itemsize
        staging = self.backend.pinned.allocate(nbytes)
        np.copyto(_typed(_pinned_array(staging, nbytes), 0, t), array, casting="unsafe")
        source = Buffer.from_handle(int(staging.handle), nbytes)
        Buffer.from_handle(address, nbytes).copy_from(source, stream=self.compute)
        self.compute.sync()

    def download(self, address: int, t: TNode, array: np.ndarray) -> None:
        from cuda.core import Buffer

        nbytes = t.size * t.dtype.itemsize
        staging = self.backend.pinned.allocate(nbytes)
        target = Buffer.from_handle(int(staging.handle), nbytes)
        self.compute.sync()
        Buffer.from_handle(address, nbytes).copy_to(target, stream=self.compute)
        self.compute.sync()
        np.copyto(array, _typed(_pinned_array(staging, nbytes), 0, t))

"""Device memory of the CUDA backend: the device copy of a host buffer and its transfers."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import numpy as np

from arrayjit.runtime import residency
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.backends.cuda import CudaBackend


class DeviceCopy:
    """The device buffer of one HOST or DEVICE tnode in one backend, with a pinned staging buffer
    for its transfers (allocated on first use). It is a place of the tnode's residency."""

    def __init__(self, backend: CudaBackend, tnode: TNode) -> None:
        self.backend = backend
        self.dims, self.dtype = tnode.dims, tnode.dtype.numpy
        self.nbytes = tnode.size * tnode.dtype.itemsize
        self.buffer = backend.allocate(self.nbytes)
        # Matches C, where a buffer nobody wrote reads as zeros.
        self.buffer.fill(0, stream=backend.stream)
        # Fresh zeros are the newest values of a buffer that nothing ever wrote.
        state = residency.of(tnode)
        state.add_place(self, holds_newest=state.latest == 0 and not tnode.has_host)
        self.written = None  # event after the last routine that wrote the buffer
        self.staging = None
        self.staging_array: np.ndarray | None = None
        self.staging_free = None  # event after the last copy through the staging buffer

    def _staging(self) -> np.ndarray:
        if self.staging is None:
            self.staging = self.backend.pinned.allocate(self.nbytes)
            raw = (ctypes.c_byte * self.nbytes).from_address(int(self.staging.handle))
            self.staging_array = np.frombuffer(raw, self.dtype).reshape(self.dims)
        elif self.staging_free is not None:
            self.staging_free.sync()
        return self.staging_array

    def upload(self, tnode: TNode) -> None:
        """Copy the newest values up (through the host), asynchronously on the copy stream."""
        copy_stream = self.backend.copy_stream
        np.copyto(self._staging(), tnode.host())
        self.buffer.copy_from(self.staging, stream=copy_stream)
        self.staging_free = copy_stream.record()
        residency.of(tnode).copied_to(self)

    def fetch(self, host: np.ndarray) -> None:
        """Copy the device values into the host array `host` (once the last writer is done)."""
        staging = self._staging()
        copy_stream = self.backend.copy_stream
        if self.written is not None:
            copy_stream.wait(self.written)
        self.buffer.copy_to(self.staging, stream=copy_stream)
        self.staging_free = copy_stream.record()
        self.staging_free.sync()
        np.copyto(host, staging)

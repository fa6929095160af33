"""Device memory of the CUDA backend: the device copy of a host buffer and its transfers."""

from __future__ import annotations

import ctypes
import weakref
from typing import TYPE_CHECKING

import numpy as np

from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.backends.cuda import CudaBackend


class DeviceCopy:
    """The device buffer of one HOST or DEVICE tnode in one backend, with a pinned staging buffer
    for its transfers (allocated on first use)."""

    def __init__(self, backend: CudaBackend, tnode: TNode) -> None:
        self.backend = backend
        self.tnode = weakref.ref(tnode)
        self.dims, self.dtype = tnode.dims, tnode.dtype.numpy
        self.nbytes = tnode.size * tnode.dtype.itemsize
        self.buffer = backend.allocate(self.nbytes)
        # Matches C, where a buffer nobody wrote reads as zeros.
        self.buffer.fill(0, stream=backend.stream)
        # The host version the device holds; None: not uploaded yet.
        self.uploaded_version: int | None = None if tnode.has_host else tnode.host_version
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
        """Copy the host values up, asynchronously on the copy stream."""
        copy_stream = self.backend.copy_stream
        np.copyto(self._staging(), tnode.host())
        self.buffer.copy_from(self.staging, stream=copy_stream)
        self.staging_free = copy_stream.record()
        self.uploaded_version = tnode.host_version

    def fetch(self) -> None:
        """`tnode.fetch_from_device`: copy the device values into the host array."""
        tnode = self.tnode()
        if tnode is None:
            return
        if tnode.fetch_from_device == self.fetch:
            tnode.fetch_from_device = None  # before host(), which would call it again
        staging = self._staging()
        copy_stream = self.backend.copy_stream
        if self.written is not None:
            copy_stream.wait(self.written)
        self.buffer.copy_to(self.staging, stream=copy_stream)
        self.staging_free = copy_stream.record()
        self.staging_free.sync()
        np.copyto(tnode.host(), staging)
        # New host values: other devices holding an older copy must upload again.
        tnode.host_version += 1
        self.uploaded_version = tnode.host_version

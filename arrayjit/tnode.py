"""TNode: one buffer of the computation, with its dims, dtype, memory mode and host array. Where
its newest values are (host or device copies) is kept by `arrayjit.runtime.residency`."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from arrayjit.codegen.inert_text import identifier
from arrayjit.dtypes import DType, dtype_of, float32, holds_numbers
from arrayjit.runtime import residency

_tnode_ids = itertools.count(1)


class MemoryMode(enum.Enum):
    """Where a buffer lives. VIRTUAL: never stored, computed inline where it is used; LOCAL: a
    scratch buffer of one routine; DEVICE: kept on the device between routines; HOST: also
    readable and writable from numpy (the default for tensors a user sees)."""

    VIRTUAL = "virtual"
    LOCAL = "local"
    DEVICE = "device"
    HOST = "host"


class TNode:
    """A buffer. Identity is by object; `id` is stable and unique within the process."""

    def __init__(
        self,
        label: str,
        dims: Sequence[int],
        dtype: DType | str = float32,
        memory_mode: MemoryMode = MemoryMode.HOST,
    ) -> None:
        self.id = next(_tnode_ids)
        self.label = label
        self.dims = check_dims(dims, label)
        self.dtype = dtype_of(dtype)
        if not isinstance(memory_mode, MemoryMode):
            raise TypeError(
                f"tnode {label!r}: memory_mode must be a MemoryMode, got {memory_mode!r}"
            )
        self.memory_mode = memory_mode
        self._host: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))

    @property
    def name(self) -> str:
        """An ASCII identifier for logs and printed IR, unique in the process."""
        return f"{identifier(self.label, 40)}_{self.id}"

    @property
    def has_host(self) -> bool:
        return self._host is not None

    def host(self) -> np.ndarray:
        """The host array, allocated (zeros) on first use, refreshed from a device if stale."""
        if self._host is None:
            self._host = np.zeros(self.dims, dtype=self.dtype.numpy)
        residency.refresh_host(self, self._host)
        return self._host

    def set_host(self, values: Any) -> None:
        """Write values (anything numpy can turn into an array of the tnode's dims)."""
        array = np.asarray(values)
        if not holds_numbers(array.dtype):
            raise TypeError(f"tnode {self.label!r}: values of dtype {array.dtype} are not numbers")
        if not self.dtype.is_float and array.dtype != self.dtype.numpy:
            _check_integral(array, self)
        if array.shape != self.dims:
            if array.shape != ():
                raise ValueError(
                    f"tnode {self.label!r}: expected an array of shape {self.dims}, got {array.shape}"
                )
            array = np.broadcast_to(array, self.dims)
        host = self._host if self._host is not None else np.empty(self.dims, self.dtype.numpy)
        np.copyto(host, array, casting="unsafe")
        self._host = host
        residency.host_written(self)

    def __repr__(self) -> str:
        return f"TNode({self.label!r}#{self.id}, dims={self.dims}, {self.dtype}, {self.memory_mode.value})"


def _check_integral(array: np.ndarray, tnode: TNode) -> None:
    """Values given to an integer buffer convert toward zero; they must lie in its range (never
    wrap) and be finite."""
    wide = array.astype(np.float64)
    info = np.iinfo(tnode.dtype.numpy)
    bad = ~np.isfinite(wide) | (wide <= info.min - 1) | (wide >= info.max + 1)
    if bad.any():
        value = wide.ravel()[np.flatnonzero(bad.ravel())[0]]
        raise ValueError(f"tnode {tnode.label!r} holds {tnode.dtype} values: {value!r} is not one")


def check_dims(dims: Sequence[int], label: str) -> tuple[int, ...]:
    try:
        out = tuple(dims)
    except TypeError:
        raise TypeError(f"tnode {label!r}: dims must be a sequence of ints, got {dims!r}") from None
    for d in out:
        if isinstance(d, bool) or not isinstance(d, int | np.integer):
            raise TypeError(f"tnode {label!r}: dims must be ints, got {dims!r}")
        if d < 1:
            raise ValueError(f"tnode {label!r}: every dim must be >= 1, got {out}")
    return tuple(int(d) for d in out)

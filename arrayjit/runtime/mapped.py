"""Weights memory-mapped from a safetensors file: arrays that read the file's pages only when a
streamed copy touches them, so a model larger than host RAM can stream from disk."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

#: safetensors dtype names -> numpy dtypes.
DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
}


def map_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Name -> read-only array over the file's memory map, for every tensor of a safetensors file."""
    path = Path(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(
                f"{path}: not a safetensors file (shorter than its 8-byte header size)"
            )
        (header_size,) = struct.unpack("<Q", prefix)
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a safetensors file (bad JSON header: {exc})") from None
    start = 8 + header_size
    memory = np.memmap(path, np.uint8, mode="r")
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, not supported")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or start + end > len(
            memory
        ):
            raise ValueError(f"{path}: tensor {name!r} has offsets that do not fit its shape")
        arrays[name] = memory[start + begin : start + end].view(dtype).reshape(shape)
    return arrays

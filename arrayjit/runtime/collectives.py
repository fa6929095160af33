"""Collectives across the replicas of one computation: the all-reduce (mean) of buffers that
data-parallel training runs on gradients.

A collective takes `buffers[r]`, the buffers of replica `r` (each replica holds its own tnodes,
in the same order on every replica), and replaces every `buffers[r][i]` by the mean over `r`.
`NcclMean` does it on the GPUs through NCCL (NVIDIA's `nccl4py` bindings, one communicator per
GPU of this process), in place on the replicas' device copies; `HostMean` does it on the host
arrays (the C backend's replicas, and the tests of the logic without GPUs).

nccl4py and cuda-python are imported inside `NcclMean` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from arrayjit.runtime import residency
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.backends.cuda import CudaBackend

log = logging.getLogger("arrayjit")


class Collective(Protocol):
    """All-reduce of the replicas' buffers: every buffer becomes the mean over the replicas."""

    replicas: int

    def all_reduce(self, buffers: Sequence[Sequence[TNode]], streams: Sequence | None = None):
        """Replace every `buffers[r][i]` by the mean over `r` of `buffers[r][i]`, the work of
        replica `r` ordered on `streams[r]` (None: each replica's compute stream). Returns what
        the caller waits on before reading the results (events on GPUs, None on the host)."""


def check_buffers(buffers: Sequence[Sequence[TNode]], replicas: int) -> None:
    """Raise a ValueError naming the buffers unless there are `replicas` lists of buffers of
    equal dims and types, position by position."""
    if len(buffers) != replicas:
        raise ValueError(f"all_reduce: {replicas} replicas but {len(buffers)} lists of buffers")
    counts = {len(b) for b in buffers}
    if len(counts) != 1:
        raise ValueError(
            f"all_reduce: the replicas have different numbers of buffers: {[len(b) for b in buffers]}"
        )
    for group in zip(*buffers, strict=True):
        first = group[0]
        for r, t in enumerate(group[1:], 1):
            if t.dims != first.dims or t.dtype != first.dtype:
                raise ValueError(
                    f"all_reduce: buffer {t.label!r} of replica {r} is {t.dtype} {t.dims}, but "
                    f"{first.label!r} of replica 0 is {first.dtype} {first.dims}"
                )


class HostMean:
    """The all-reduce on the host arrays, summed in float64 then rounded to each buffer's type;
    for replicas on the C backend, run one after the other."""

    def __init__(self, replicas: int) -> None:
        if replicas < 1:
            raise ValueError(f"HostMean: replicas must be at least 1, got {replicas}")
        self.replicas = replicas

    def all_reduce(self, buffers: Sequence[Sequence[TNode]], streams: Sequence | None = None):
        check_buffers(buffers, self.replicas)
        if self.replicas == 1:
            return None  # the mean of one: nothing to do (and no copy from a device)
        for group in zip(*buffers, strict=True):
            total = np.zeros(group[0].dims, np.float64)
            for t in group:
                total += t.host()
            mean = total / self.replicas
            for t in group:
                t.set_host(mean)
        return None


def gpu_count() -> int:
    """The number of CUDA devices this process sees (0 without a driver or cuda-python)."""
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return 0
        err, count = driver.cuDeviceGetCount()
    except Exception:  # cuda-python missing or libcuda unloadable: no GPU usable here
        return 0
    return count if err == driver.CUresult.CUDA_SUCCESS else 0


#: Buffer types NCCL reduces (the CUDA array interface names them by numpy's type string).
_NCCL_TYPES = ("float16", "float32", "float64")


class NcclMean:
    """The all-reduce through NCCL, one communicator per GPU of this process
    (`Communicator.init_all`), each replica's buffers reduced in place on its device copy with
    NCCL's average, all replicas' calls in one NCCL group (one process drives every GPU)."""

    def __init__(self, backends: Sequence[CudaBackend]) -> None:
        try:
            from nccl import core as nccl
            from nccl.bindings import nccl as raw
        except ImportError as exc:
            raise RuntimeError(
                f"NcclMean needs nccl4py (pip install 'ocannl-py[cuda]'): {exc}"
            ) from None
        self.nccl, self.raw = nccl, raw
        self.backends = list(backends)
        self.replicas = len(self.backends)
        devices = [b.device.device_id for b in self.backends]
        if len(set(devices)) != len(devices):
            raise ValueError(f"NcclMean: one replica per GPU, got the devices {devices}")
        self.comms = nccl.Communicator.init_all(devices)

    def all_reduce(self, buffers: Sequence[Sequence[TNode]], streams: Sequence | None = None):
        check_buffers(buffers, self.replicas)
        for t in buffers[0] if buffers else ():
            if np.dtype(t.dtype.numpy).name not in _NCCL_TYPES:
                raise ValueError(
                    f"all_reduce: buffer {t.label!r} is {t.dtype}; NCCL averages "
                    f"{', '.join(_NCCL_TYPES)} here"
                )
        streams = [b.stream for b in self.backends] if streams is None else list(streams)
        for r, (backend, stream) in enumerate(zip(self.backends, streams, strict=True)):
            device = getattr(getattr(stream, "device", None), "device_id", None)
            if device is not None and device != backend.device.device_id:
                # NCCL would run replica r's reduction on another GPU's stream: a hang.
                raise ValueError(
                    f"all_reduce: stream {r} belongs to GPU {device}, replica {r} is on GPU "
                    f"{backend.device.device_id} (create it with that device current)"
                )
        arrays = []
        for backend, stream, tnodes in zip(self.backends, streams, buffers, strict=True):
            backend.device.set_current()
            for t in tnodes:
                backend.device_copy(t)
            # Buffers the host holds newer values of (e.g. set_value) go up first.
            backend.upload_stale(list(tnodes))
            if stream is not backend.stream:
                stream.wait(backend.stream.record())
            arrays.append([int(backend.copies[t].buffer.handle) for t in tnodes])
        # The raw ncclAllReduce: nccl4py's Communicator.allreduce infers a buffer's device from
        # its address through cuda.core, which placed pool memory of GPU 1 on GPU 0 (H200 pair).
        nccl, raw = self.nccl, self.raw
        kinds = [
            int(nccl.NcclDataType.from_numpy_dtype(np.dtype(t.dtype.numpy))) for t in buffers[0]
        ]
        nccl.group_start()
        try:
            for i, t in enumerate(buffers[0]):
                for backend, comm, stream, replica in zip(
                    self.backends, self.comms, streams, arrays, strict=True
                ):
                    backend.device.set_current()
                    raw.all_reduce(
                        replica[i],
                        replica[i],
                        t.size,
                        kinds[i],
                        int(nccl.AVG),
                        comm._comm,
                        int(stream.handle),
                    )
        finally:
            nccl.group_end()
        events = []
        for backend, stream, tnodes in zip(self.backends, streams, buffers, strict=True):
            backend.device.set_current()
            done = stream.record()
            for t in tnodes:
                copy = backend.copies[t]
                copy.written = done
                residency.of(t).write_at(copy)
            events.append(done)
        return events

    def close(self) -> None:
        """Destroy the communicators."""
        for comm in self.comms:
            comm.destroy()
        self.comms = []

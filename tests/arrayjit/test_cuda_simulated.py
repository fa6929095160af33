"""The CUDA backend's own Python (chunked kernels, the cache records, launches on each kernel's
buffers, residency of device copies) run against a simulated `cuda.core`: device memory is host
memory, NVRTC returns the module's text as its "cubin", and a launch is recorded, not run. What
the kernels compute is tested on a real GPU by test_cuda_backend.py."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest
from test_chunks import chain

from arrayjit.backends import cuda
from arrayjit.backends.cuda import memory, nvrtc
from arrayjit.runtime import residency
from arrayjit.runtime import runtime as runtime_module
from arrayjit.runtime.runtime import Runtime


class Event:
    def sync(self) -> None:
        pass


class Stream:
    def record(self) -> Event:
        return Event()

    def wait(self, event: Event) -> None:
        pass

    def sync(self) -> None:
        pass


class Pinned:
    def __init__(self, nbytes: int) -> None:
        self.memory = (ctypes.c_byte * nbytes)()
        self.handle = ctypes.addressof(self.memory)
        self.nbytes = nbytes


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.data = bytearray(nbytes)

    def fill(self, value: int, stream: Stream) -> None:
        self.data[:] = bytes([value]) * len(self.data)

    def copy_from(self, source: Pinned, stream: Stream) -> None:
        self.data[:] = ctypes.string_at(source.handle, len(self.data))

    def copy_to(self, target: Pinned, stream: Stream) -> None:
        ctypes.memmove(target.handle, bytes(self.data), len(self.data))

    def values(self, dtype=np.float32) -> np.ndarray:
        return np.frombuffer(self.data, dtype)


class Pool:
    def allocate(self, nbytes: int, stream: Stream) -> DeviceBuffer:
        return DeviceBuffer(nbytes)


class GraphBuilder:
    """Stream capture: launches into a builder are recorded; the completed graph replays them
    into the simulated GPU's log."""

    def __init__(self, log: list) -> None:
        self.log, self.captured, self.building, self.closed = log, [], False, False

    def begin_building(self) -> GraphBuilder:
        self.building = True
        return self

    def end_building(self) -> GraphBuilder:
        self.building = False
        return self

    def complete(self) -> Graph:
        assert not self.building
        return Graph(self.log, list(self.captured))

    def close(self) -> None:
        self.closed = True


class Graph:
    def __init__(self, log: list, captured: list) -> None:
        self.log, self.captured, self.replays = log, captured, 0

    def launch(self, stream: Stream) -> None:
        self.replays += 1
        self.log.extend(self.captured)


class Device:
    arch = "90"
    #: Where graph replays go (the test's launch log).
    log: list = []

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.memory_resource = Pool()

    def set_current(self) -> None:
        pass

    def create_stream(self) -> Stream:
        return Stream()

    def create_graph_builder(self) -> GraphBuilder:
        return GraphBuilder(self.log)


class Module:
    def __init__(self, text: bytes) -> None:
        self.text = text.decode()

    def get_kernel(self, name: str) -> str:
        if f" {name}(" not in self.text:
            raise RuntimeError(f"no kernel {name}")
        return name


class LaunchConfig:
    def __init__(self, grid, block, shmem_size: int = 0) -> None:
        self.grid, self.block, self.shmem_size = grid, block, shmem_size


class Launches(list):
    """(kernel, config, arguments) of each launch; `compiles`: the sources NVRTC compiled."""

    compiles: list


@pytest.fixture
def launches(monkeypatch, tmp_path) -> Launches:
    """A simulated GPU, and what it is asked to do."""
    launches = Launches()
    core = types.ModuleType("cuda.core")
    core.Device = Device
    core.LegacyPinnedMemoryResource = lambda: types.SimpleNamespace(allocate=Pinned)
    core.LaunchConfig = LaunchConfig
    core.ObjectCode = types.SimpleNamespace(from_cubin=Module)

    def launch(stream, config, kernel, *args) -> None:
        target = stream.captured if isinstance(stream, GraphBuilder) else launches
        assert not isinstance(stream, GraphBuilder) or stream.building
        target.append((kernel, config, args))

    core.launch = launch
    monkeypatch.setattr(Device, "log", launches)
    package = types.ModuleType("cuda")
    package.core = core
    monkeypatch.setitem(sys.modules, "cuda", package)
    monkeypatch.setitem(sys.modules, "cuda.core", core)
    monkeypatch.setattr(cuda, "unavailable_reason", lambda: None)
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: "simulated")
    compiles: list = []

    def compile_module(source, arch, source_path):
        compiles.append(source)
        return source.encode()

    monkeypatch.setattr(nvrtc, "_nvrtc_compile", compile_module)
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    launches.compiles = compiles
    return launches


def test_equal_layers_launch_one_kernel_each_on_their_own_buffers(launches):
    gpu = Runtime("cuda")
    code, x, weights, y = chain(4, n=40)
    routine = gpu.compile(code, "chain")
    compiled = routine.compiled
    assert len(compiled.kernels) == 8
    assert len({kernel for kernel, _ in compiled.kernels}) == 2
    assert len(launches.compiles) == 1  # the two distinct kernels, in one module
    routine.run()
    assert len(launches) == 8
    copies = gpu.backend.copies
    first_matvec = launches[0][2]
    assert first_matvec == (copies[weights[0]].buffer, copies[x].buffer, first_matvec[2])
    last_residual = launches[-1][2]
    assert last_residual[-1] is copies[y].buffer
    assert "ocannl_chain_k7" in open(routine.source_path).read()


def test_an_equal_routine_is_found_by_structure_and_bound_to_its_buffers(launches, monkeypatch):
    gpu = Runtime("cuda")
    gpu.compile(chain(3, n=40)[0], "chain").run()
    lowered = []
    original = runtime_module.compile_to_ir
    monkeypatch.setattr(
        runtime_module, "compile_to_ir", lambda *a, **k: lowered.append(1) or original(*a, **k)
    )
    code, x, weights, y = chain(3, n=40)
    routine = gpu.compile(code, "chain")
    assert lowered == [] and len(launches.compiles) == 1
    del launches[:]
    routine.run()
    assert launches[0][2][:2] == (
        gpu.backend.copies[weights[0]].buffer,
        gpu.backend.copies[x].buffer,
    )
    assert launches[-1][2][-1] is gpu.backend.copies[y].buffer
    # Kernel plans are made again from the IR when asked for.
    assert len(routine.compiled.plans) == 6


def test_device_copies_are_uploaded_when_stale_and_fetched_when_read(launches):
    gpu = Runtime("cuda")
    code, x, weights, y = chain(1, n=40)
    routine = gpu.compile(code)
    x.set_host(np.arange(40.0))
    routine.run()
    copies = gpu.backend.copies
    np.testing.assert_array_equal(copies[x].buffer.values(), np.arange(40.0))
    assert not residency.of(y).is_current(residency.HOST)
    # What the kernel "computed": the device copy of y holds new values.
    copies[y].buffer.data[:] = np.full(40, 7.0, np.float32).tobytes()
    np.testing.assert_array_equal(y.host(), np.full(40, 7.0))
    assert residency.of(y).is_current(copies[y])
    routine.run()
    assert launches[-1][2][-1] is copies[y].buffer
    x_uploads = []
    original = memory.DeviceCopy.upload
    memory.DeviceCopy.upload = lambda self, t: x_uploads.append(t) or original(self, t)
    try:
        routine.run()
        assert x_uploads == []  # x did not change
        x.set_host(np.ones(40))
        routine.run()
        assert x_uploads == [x]
    finally:
        memory.DeviceCopy.upload = original


def test_kernels_are_replayed_as_one_graph_after_the_first_run(launches):
    gpu = Runtime("cuda")
    code, x, weights, y = chain(3, n=40)
    routine = gpu.compile(code, "chain")
    compiled = routine.compiled
    routine.run()
    first = list(launches)
    assert len(first) == 6
    graph = compiled._graph
    assert graph.captured == first and graph.replays == 0
    for runs in (1, 2):
        routine.run()
        assert graph.replays == runs
    assert launches == first * 3
    # Stale inputs are still uploaded before the graph runs.
    uploads = []
    original = memory.DeviceCopy.upload
    memory.DeviceCopy.upload = lambda self, t: uploads.append(t) or original(self, t)
    try:
        x.set_host(np.ones(40))
        routine.run()
    finally:
        memory.DeviceCopy.upload = original
    assert uploads == [x] and graph.replays == 3


def test_graphs_off_or_failing_capture_launch_kernel_by_kernel(launches, monkeypatch, caplog):
    gpu = Runtime("cuda")
    gpu.backend.cuda_graphs = False
    routine = gpu.compile(chain(2, n=40)[0], "chain")
    routine.run()
    routine.run()
    assert routine.compiled._graph is False and len(launches) == 8

    def no_graphs(self):
        raise RuntimeError("graphs unsupported")

    monkeypatch.setattr(Device, "create_graph_builder", no_graphs)
    other = Runtime("cuda")
    routine = other.compile(chain(2, n=40)[0], "chain")
    del launches[:]
    with caplog.at_level("WARNING", logger="arrayjit"):
        routine.run()
        routine.run()
    assert routine.compiled._graph is False and len(launches) == 8
    assert "no CUDA graph: graphs unsupported" in caplog.text

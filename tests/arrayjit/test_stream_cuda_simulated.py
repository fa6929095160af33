"""Streamed execution on CUDA against a simulated `cuda.core` whose device memory is host memory
at real addresses: copies happen when they are enqueued, launches are recorded, and every
operation carries the vector clock of its stream, so that a copy and a launch touching the same
bytes without an event ordering them is reported as a race. What is checked: the plan's order
of copies and computes, that each stage's slot holds its own weights when it computes, that no
copy overwrites a slot a stage may still be reading (within a run and across runs), the stats.
The kernels themselves run on a real GPU in test_stream_cuda.py."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest
from test_chunks import layer

from arrayjit.backends import cuda
from arrayjit.backends.cuda import nvrtc
from arrayjit.runtime import streamed as streamed_module
from arrayjit.runtime.mapped import map_safetensors
from arrayjit.runtime.runtime import Runtime
from arrayjit.runtime.stream_plan import aligned, nbytes
from arrayjit.tnode import TNode


class Clock(dict):
    def merge(self, other: dict) -> None:
        for key, value in other.items():
            self[key] = max(self.get(key, 0), value)


class Gpu:
    """The simulated device's log: operations with their stream, clock and bytes touched."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str, dict, list[tuple[int, int]], object]] = []
        self.ticks = 0
        self.host = Clock()
        self.memory: list = []  # keeps simulated allocations alive

    def op(self, stream: Stream, kind: str, spans: list[tuple[int, int]], what=None) -> None:
        self.ticks += 1
        stream.clock[stream.name] = stream.clock.get(stream.name, 0) + 1
        self.ops.append((kind, stream.name, dict(stream.clock), spans, what))

    def allocate(self, nbytes: int) -> int:
        memory = (ctypes.c_byte * nbytes)()
        self.memory.append(memory)
        return ctypes.addressof(memory)

    def races(self, regions: list[tuple[int, int]]) -> list[str]:
        """Pairs of operations on different streams that touch the same region, unordered."""
        found = []
        touching = []
        for n, (kind, stream, clock, spans, what) in enumerate(self.ops):
            hit = {r for r, (lo, hi) in enumerate(regions) for a, b in spans if a < hi and lo < b}
            touching.append(hit)
            for m in range(n):
                other_kind, other_stream, other_clock, _, other_what = self.ops[m]
                if other_stream == stream or not (touching[m] & hit):
                    continue
                if clock.get(other_stream, 0) < other_clock[other_stream]:
                    found.append(f"{other_kind} {other_what} / {kind} {what}")
        return found


GPU = Gpu()


class Event:
    def __init__(self, stream: Stream) -> None:
        self.clock, self.time = dict(stream.clock), GPU.ticks

    def sync(self) -> None:
        GPU.host.merge(self.clock)

    def __sub__(self, other: Event) -> float:
        return float(self.time - other.time)  # "milliseconds"


class Stream:
    count = 0

    def __init__(self) -> None:
        Stream.count += 1
        self.name = f"stream{Stream.count}"
        self.clock = Clock()

    def record(self, event=None, options=None) -> Event:
        return Event(self)

    def wait(self, event: Event) -> None:
        self.clock.merge(event.clock)

    def sync(self) -> None:
        GPU.host.merge(self.clock)


class Buffer:
    def __init__(self, handle: int, size: int) -> None:
        self.handle, self.size = handle, size

    @staticmethod
    def from_handle(ptr: int, size: int, mr=None, owner=None) -> Buffer:
        return Buffer(int(ptr), size)

    def fill(self, value: int, *, stream: Stream) -> None:
        ctypes.memset(self.handle, value, self.size)
        GPU.op(stream, "fill", [(self.handle, self.handle + self.size)])

    def copy_from(self, src: Buffer, *, stream: Stream) -> None:
        assert src.size == self.size, "buffer sizes mismatch"
        ctypes.memmove(self.handle, src.handle, self.size)
        GPU.op(stream, "copy", [(self.handle, self.handle + self.size)], hex(self.handle))

    def copy_to(self, dst: Buffer, *, stream: Stream) -> None:
        dst.copy_from(self, stream=stream)


class Pool:
    def allocate(self, nbytes: int, stream: Stream) -> Buffer:
        return Buffer(GPU.allocate(nbytes), nbytes)


class Pinned:
    def allocate(self, nbytes: int, stream=None) -> Buffer:
        return Buffer(GPU.allocate(nbytes), nbytes)


class GraphBuilder:
    def __init__(self) -> None:
        self.captured: list = []

    def begin_building(self) -> GraphBuilder:
        return self

    def end_building(self) -> GraphBuilder:
        return self

    def complete(self) -> Graph:
        return Graph(self.captured)

    def close(self) -> None:
        pass


class Graph:
    def __init__(self, captured: list) -> None:
        self.captured = captured

    def launch(self, stream: Stream) -> None:
        for config, kernel, args in self.captured:
            launch(stream, config, kernel, *args)


class Device:
    arch = "90"

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id
        self.memory_resource = Pool()

    def set_current(self) -> None:
        pass

    def create_stream(self) -> Stream:
        return Stream()

    def create_graph_builder(self) -> GraphBuilder:
        return GraphBuilder()


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


#: Bytes each argument address stands for (set by the test from the plan).
SIZES: dict[int, int] = {}


def launch(stream, config, kernel, *args) -> None:
    if isinstance(stream, GraphBuilder):
        stream.captured.append((config, kernel, args))
        return
    assert all(isinstance(a, int) for a in args), "bound kernels take addresses"
    GPU.op(stream, "launch", [(a, a + SIZES.get(a, 1)) for a in args], kernel)


@pytest.fixture
def gpu(monkeypatch, tmp_path) -> Gpu:
    global GPU
    GPU = Gpu()
    SIZES.clear()
    core = types.ModuleType("cuda.core")
    core.Device = Device
    core.Buffer = Buffer
    core.EventOptions = lambda timing_enabled=False: types.SimpleNamespace(timing=timing_enabled)
    core.LegacyPinnedMemoryResource = Pinned
    core.LaunchConfig = LaunchConfig
    core.ObjectCode = types.SimpleNamespace(from_cubin=Module)
    core.launch = launch
    package = types.ModuleType("cuda")
    package.core = core
    monkeypatch.setitem(sys.modules, "cuda", package)
    monkeypatch.setitem(sys.modules, "cuda.core", core)
    monkeypatch.setattr(cuda, "unavailable_reason", lambda: None)
    monkeypatch.setattr(nvrtc, "nvrtc_version", lambda: "simulated")
    monkeypatch.setattr(nvrtc, "_nvrtc_compile", lambda source, arch, path: source.encode())
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    return GPU


def stages(count: int, n: int):
    x = TNode("x", (n,))
    codes, weights, y = [], [], x
    rng = np.random.default_rng(1)
    x.set_host(rng.standard_normal(n))
    for k in range(count):
        code, w, y = layer(y, n, k)
        w.set_host(rng.standard_normal((n, n)))
        codes.append(code)
        weights.append(w)
    return codes, x, weights, y


def watch(streamed, weights_of) -> list:
    """Log each stage's compute and check, as it is enqueued, that every weight it reads holds
    that weight's values where the stage will read it; note each buffer's size for the race
    checker."""
    log, wrapped = [], {}
    plan, base = streamed.plan, streamed.base
    for stage, executable in enumerate(streamed.executables):
        for t in executable.compiled.tnodes:
            SIZES[base + plan.offset(stage, t)] = nbytes(t)

        def run(stage=stage, original=executable.compiled.run) -> None:
            log.append(("compute", stage))
            for t in streamed.plan.stages[stage].weights:
                address = base + plan.offset(stage, t)
                held = np.ctypeslib.as_array(
                    (ctypes.c_byte * nbytes(t)).from_address(address)
                ).view(t.dtype.numpy)
                expected = np.asarray(weights_of(t), t.dtype.numpy).ravel()
                np.testing.assert_array_equal(held, expected, err_msg=f"{t.label} at stage {stage}")
            original()

        wrapped[stage] = run
    streamed.table = [
        (kind, stage, slot, wrapped[stage] if kind is streamed_module._COMPUTE else work)
        for kind, stage, slot, work in streamed.table
    ]
    return log


def regions(streamed) -> list[tuple[int, int]]:
    p, base = streamed.plan, streamed.base
    spans = {(base + o, base + o + p.slot_bytes) for o in p.slot_offsets}
    spans |= {(base + o, base + o + aligned(nbytes(t))) for t, o in p.resident.items()}
    return sorted(spans)


@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("host_memory", ["pinned", "mapped"])
def test_copies_and_computes_follow_the_plan_without_races(gpu, slots, host_memory):
    n = 40
    codes, x, weights, y = stages(6, n)
    layer_slot = aligned(4 * n * n) + aligned(4 * n)
    budget = 12 * aligned(4 * n) + aligned(4 * n * n) + slots * layer_slot  # one stage resident
    streamed = Runtime("cuda").compile_streamed(codes, budget, slots=slots, host_memory=host_memory)
    plan = streamed.plan
    assert len(plan.slot_offsets) == slots and len(plan.streamed) == 5
    log = watch(streamed, lambda t: t.host())
    for _ in range(3):
        streamed.run()
    assert [s for _, s in log] == list(range(6)) * 3
    kernels = sum(len(e.compiled.kernels) for e in streamed.executables)
    assert len([op for op in gpu.ops if op[0] == "launch"]) == 3 * kernels  # graphs replayed
    assert gpu.races(regions(streamed)) == []
    stats = streamed.stats
    assert stats.peak_device_bytes == plan.total_bytes <= budget
    assert stats.bytes_copied == plan.streamed_bytes() and stats.runs == 3
    assert 0 <= stats.hidden_copy_seconds <= stats.copy_seconds
    copies = [op for op in gpu.ops if op[0] == "copy" and op[1] == streamed.streams.copier.name]
    # One copy per streamed stage and run, and the next run's first copies, issued ahead.
    assert len(streamed.leading) == slots and len(copies) == 3 * 5 + slots
    # Values set on the host reach the next run: a streamed weight and the input.
    weights[3].set_host(np.full((n, n), 0.5))
    x.set_host(np.arange(n))
    streamed.run()
    assert log[-6:] == [("compute", s) for s in range(6)]


@pytest.mark.parametrize("dropped", ["compute_waits", "copy_waits"])
def test_the_race_checker_sees_a_missing_wait(gpu, dropped):
    """Without compute waiting for each copy, a stage may read a slot being written; without
    copies waiting for the release of their slot, a copy may overwrite weights being read."""
    n = 40
    codes, x, weights, y = stages(4, n)
    streamed = Runtime("cuda").compile_streamed(
        codes, 8 * aligned(4 * n) + 2 * (aligned(4 * n * n) + aligned(4 * n)), keep_resident=False
    )
    watch(streamed, lambda t: t.host())
    setattr(streamed.streams, dropped, lambda event: None)
    streamed.run()
    assert gpu.races(regions(streamed))
    launches = [op for op in gpu.ops if op[0] == "launch"]
    assert len(launches) == sum(len(e.compiled.kernels) for e in streamed.executables)


def test_activations_are_fetched_when_read_and_sent_when_set(gpu):
    n = 16
    codes, x, weights, y = stages(2, n)
    streamed = Runtime("cuda").compile_streamed(codes, 10**6)
    streamed.run()
    address = streamed.base + streamed.plan.resident[y]
    ctypes.memmove(address, np.full(n, 3.0, np.float32).ctypes.data, 4 * n)  # as if computed
    np.testing.assert_array_equal(y.host(), np.full(n, 3.0))
    y.set_host(np.arange(n))
    streamed.run()  # sent before the stages run
    held = np.ctypeslib.as_array((ctypes.c_float * n).from_address(address))
    np.testing.assert_array_equal(held, np.arange(n))


def test_weights_from_a_memory_map_are_converted_to_the_tnode_dtype(gpu, tmp_path):
    from safetensors.numpy import save_file

    n = 24
    codes, x, weights, y = stages(3, n)
    values = {w.label: np.random.default_rng(7).standard_normal((n, n)) for w in weights}
    save_file(values, str(tmp_path / "w.safetensors"))
    mapped = map_safetensors(tmp_path / "w.safetensors")
    for host_memory in ("pinned", "mapped"):
        streamed = Runtime("cuda").compile_streamed(
            codes,
            6 * aligned(4 * n) + 2 * (aligned(4 * n * n) + aligned(4 * n)),
            weights={w: mapped[w.label] for w in weights},
            host_memory=host_memory,
        )
        assert streamed.plan.streamed == [0, 1, 2]
        watch(streamed, lambda t: values[t.label] if t.label in values else t.host())
        streamed.run()
        streamed.run()

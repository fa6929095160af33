"""Timing candidate tile configurations of a routine's matrix products on the device (see
`arrayjit.schedule.tuning`): each candidate is compiled for the nest alone and run on scratch
buffers of random values (never the routine's own, whose values must not change), and the
fastest median time wins. The choice is recorded in the compile cache, so each nest is timed once
per device and compiler."""

from __future__ import annotations

import ctypes
import logging
import statistics
from dataclasses import replace

import numpy as np

from arrayjit import cache
from arrayjit import loop_ir as ir
from arrayjit.backends.cuda.launch import load_kernels, write_tensor_maps
from arrayjit.backends.cuda.nvrtc import build_cubin, nvrtc_version
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.schedule import tuning
from arrayjit.schedule.gpu_kernels import GpuOptions
from arrayjit.schedule.gpu_matmul import MatmulConfig
from arrayjit.tnode import TNode

log = logging.getLogger("arrayjit")

#: Timed runs per candidate (after one warm-up run); the median counts.
REPEATS = 7


def tune_matmuls(backend, stmt: ir.Stmt, options: GpuOptions) -> dict[str, MatmulConfig]:
    """The best configuration of each matmul nest of `stmt`, by config key (timed on a miss)."""
    chosen: dict[str, MatmulConfig] = {}
    limit = _max_shared(backend)
    for key, plan in tuning.tunable_nests(stmt, options).items():
        shape = plan.matmul
        itemsizes = tuple(_dtype(e).itemsize for e in (shape.x, shape.y))
        configs = tuning.fitting(shape.config.tensor_cores, itemsizes, limit, shape.config.wgmma)
        if len(configs) < 2:
            continue
        record_key = cache.key(
            tuning.VERSION, key, repr(configs), backend.device.name, backend.arch, nvrtc_version()
        )

        def build(source_path, output, plan=plan, key=key, configs=configs) -> None:
            seconds = _time(backend, plan.grid[0], key, configs, options)
            best = min(configs, key=lambda c: seconds[c.describe()])
            log.info("tuned %s: %s (%s)", key, best.describe(), seconds)
            output.write_text(tuning.record_text(best, seconds))

        description = f"matmul tuning of: {key}\n"
        path = cache.artifact(record_key, ".tune.json", description, ".tune.txt", build)
        chosen[key] = tuning.read_record(path)
    return chosen


def _dtype(e: ir.Expr):
    return e.tnode.dtype if isinstance(e, ir.Get) else e.dtype


def _max_shared(backend) -> int:
    properties = backend.device.properties
    return int(getattr(properties, "max_shared_memory_per_block_optin", 227 * 1024))


def _random_buffers(backend, tnodes: list[TNode]) -> dict[TNode, object]:
    """Device buffers for `tnodes`, filled with random values (timings on zeros flatter)."""
    rng = np.random.default_rng(0)
    buffers = {}
    for t in tnodes:
        nbytes = t.size * t.dtype.itemsize
        staging = backend.pinned.allocate(nbytes)
        raw = (ctypes.c_byte * nbytes).from_address(int(staging.handle))
        host = np.frombuffer(raw, t.dtype.numpy)
        if t.dtype.is_float:
            host[:] = rng.standard_normal(t.size, dtype=np.float32)
        else:
            host[:] = rng.integers(-100, 100, t.size)
        buffer = backend.allocate(nbytes)
        buffer.copy_from(staging, stream=backend.stream)
        backend.stream.sync()
        buffers[t] = buffer
    return buffers


def _time(
    backend, nest: ir.Stmt, key: str, configs: list[MatmulConfig], options: GpuOptions
) -> dict[str, float]:
    """Median seconds of each configuration on the nest alone."""
    from cuda.core import EventOptions, launch

    timing = EventOptions(timing_enabled=True)
    stream = backend.stream
    buffers: dict[TNode, object] = {}
    seconds: dict[str, float] = {}
    for config in configs:
        generated = generate(nest, "ocannl_tune", replace(options, matmul_configs={key: config}))
        if [p.matmul.config for p in generated.plans if p.matmul] != [config]:
            raise AssertionError(f"tuning {key}: the nest did not take {config.describe()}")
        # The nest's buffers once; each candidate's tensor-map buffers are its own.
        buffers.update(_random_buffers(backend, [t for t in generated.tnodes if t not in buffers]))
        cubin = build_cubin(generated.source, backend.arch + generated.arch_suffix)
        module = backend.module(cubin)  # from the bytes the cache verified
        kernels = load_kernels(module, generated.launches, backend.device.device_id)
        arguments = [buffers[t] for t in generated.tnodes]
        write_tensor_maps(backend, generated.tensor_maps, generated.tnodes, arguments)

        def run(kernels=kernels, arguments=arguments) -> None:
            for kernel, launch_config in kernels:
                launch(stream, launch_config, kernel, *arguments)

        run()
        stream.sync()
        times = []
        for _ in range(REPEATS):
            start = stream.record(options=timing)
            run()
            end = stream.record(options=timing)
            end.sync()
            times.append((end - start) / 1e3)
        seconds[config.describe()] = statistics.median(times)
    return seconds

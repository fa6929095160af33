"""The CUDA backend: loop IR printed as CUDA C++ kernels, compiled by NVRTC into a cubin for the
device's own architecture, launched with cuda.core.

Kernels. Each top-level loop nest of the routine becomes one kernel, launched in order on one
stream. The outermost run of parallel loops of a nest is flattened onto the grid (a grid-stride
loop over one linear index, the innermost loop fastest so neighbouring threads touch neighbouring
cells); the loops inside it (reductions, with their register accumulator) stay inside the thread.
A nest shaped like a matrix product (`acc = acc op f(x[.., i, k], y[.., k, j])` over an innermost
reduction `k`, under parallel `i, j`) gets a shared-memory tiled kernel instead. Statements that
are not parallel loops run in a kernel of one thread. Hoisted locals that several kernels read are
recomputed at the start of each. Each kernel takes only its own buffers and is compiled and cached
on its own (`modules.py`), so equal layers share one kernel.

Memory. Buffers of HOST and DEVICE tnodes live on the device between routines, allocated from the
device's memory pool; scratch buffers of LOCAL and VIRTUAL tnodes belong to one routine. Each
device buffer is a place of its tnode's residency (`arrayjit.runtime.residency`): before a run,
buffers whose device copy is stale go up on a copy stream through pinned staging buffers, and
compute waits on an event for them; a routine that writes a buffer makes its device copy the
newest, so `tnode.host()` copies the values back only when read, only when stale.

cuda-python is imported inside functions only: without it (or without a GPU or driver),
`cuda_available()` is False and `CudaBackend()` raises a RuntimeError that says why.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arrayjit import cache
from arrayjit import loop_ir as ir
from arrayjit.backends import units
from arrayjit.backends.base import Backend, Compiled
from arrayjit.backends.cuda import nvrtc
from arrayjit.backends.cuda.launch import kernel_config, write_tensor_maps
from arrayjit.backends.cuda.memory import DeviceCopy
from arrayjit.backends.cuda.modules import kernel_function, kernel_tnodes, module_source
from arrayjit.codegen.cuda_syntax import CudaSyntax, kernel_source
from arrayjit.codegen.inert_text import comment_text, identifier
from arrayjit.errors import CompileError
from arrayjit.runtime import residency
from arrayjit.schedule.gpu_kernels import GpuOptions, KernelPlan, plan_kernels
from arrayjit.schedule.gpu_wgmma import TensorMapSpec
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")


# ---- availability ------------------------------------------------------------------------


@functools.cache
def unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can. Never raises."""
    try:
        import cuda.core  # noqa: F401
        from cuda.bindings import driver
    except Exception as exc:  # ImportError, or a broken install
        return f"cuda-python (the packages cuda-core and cuda-bindings) cannot be imported: {exc}"
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return f"the NVIDIA driver cannot be initialized ({err.name}): no GPU or driver here"
        err, count = driver.cuDeviceGetCount()
        if err != driver.CUresult.CUDA_SUCCESS or count == 0:
            return "the NVIDIA driver sees no CUDA device"
    except Exception as exc:  # libcuda missing or unloadable
        return f"the NVIDIA driver cannot be used: {exc}"
    return None


def cuda_available() -> bool:
    """Whether a CUDA device, its driver and cuda-python are all usable here."""
    return unavailable_reason() is None


# ---- compiled routines and the backend ---------------------------------------------------


@dataclass
class KernelTime:
    """One kernel's launch and its median time (`CudaCompiled.profile`)."""

    name: str
    form: str
    grid: object
    block: int
    ms: float


def describe_plan(plan: KernelPlan | None) -> str:
    """A kernel plan's form in a few words."""
    if plan is None:
        return "?"
    if plan.matmul is not None:
        config = getattr(plan.matmul, "config", None)
        return "matmul " + (config.describe() if config is not None else "")
    if plan.reduction is not None:
        r = plan.reduction
        return (
            f"reduction {r.shape.op} of {r.shape.length} over {plan.cells} cells, team {r.team}"
            f", parts {r.parts}, vector {r.vector}"
        )
    return f"{plan.cells} cells, {len(plan.body)} statements, vector {plan.vector}"


class CudaCompiled(Compiled):
    """The kernels of a routine, each launched on its own buffers. A `bound` routine owns no
    device memory: `bind` places each buffer (kernels take their buffers as launch arguments)."""

    def __init__(
        self,
        backend: CudaBackend,
        kernels: list[tuple[Path, str, int | tuple[int, ...], int, int]],
        parameters: list[list[int]],
        tnodes: list[TNode],
        written: list[int],
        source_path: Path,
        plans: list[KernelPlan] | None = None,
        tensor_maps: list[list] | None = None,
        bound: bool = False,
    ) -> None:
        self.backend = backend
        self.tnodes = tnodes
        self.bound = bound
        self.written = [tnodes[k] for k in written]
        self.source_path = str(source_path)
        self.plan = {
            "source": source_path.name,
            "kernels": [
                [cubin.name, symbol, grid, block, shared, params]
                for (cubin, symbol, grid, block, shared), params in zip(
                    kernels, parameters, strict=True
                )
            ],
            "written": written,
            # [map buffer, operand, offset, dims, strides, box] of each TMA tensor map.
            "tensor_maps": tensor_maps or [],
        }
        self._plans = plans
        # (kernel, launch config), in launch order.
        device = backend.device.device_id
        self.kernels = [
            kernel_config(
                backend.module(cubin).get_kernel(symbol), symbol, grid, block, shared, device
            )
            for cubin, symbol, grid, block, shared in kernels
        ]
        self.parameters = parameters
        if bound:
            self.persistent = []
            # Device addresses, in the order of `tnodes`, given by `bind`.
            self.arguments: list = [None] * len(tnodes)
        else:
            self.persistent = [
                t for t in tnodes if t.memory_mode in (MemoryMode.HOST, MemoryMode.DEVICE)
            ]
            scratch = {
                t: backend.allocate(t.size * t.dtype.itemsize)
                for t in tnodes
                if t.memory_mode in (MemoryMode.LOCAL, MemoryMode.VIRTUAL)
            }
            for buffer in scratch.values():
                buffer.fill(0, stream=backend.stream)
            # Device buffers, in the order of `tnodes`.
            self.arguments = [
                scratch[t] if t in scratch else backend.device_copy(t).buffer for t in tnodes
            ]
        # Each kernel's own buffers, in the order of its parameters.
        self.launches = [
            (kernel, config, tuple(self.arguments[i] for i in params))
            for (kernel, config), params in zip(self.kernels, parameters, strict=True)
        ]
        # (map buffer, operand, spec) of each TMA tensor map, written once both buffers are known
        # (here; for a bound routine, when `bind` has given both).
        self.tensor_maps = [
            (map_at, operand, TensorMapSpec(tnodes[operand], offset, *map(tuple, shape)))
            for map_at, operand, offset, *shape in tensor_maps or []
        ]
        if not bound:
            for map_at, _, spec in self.tensor_maps:
                write_tensor_maps(backend, {tnodes[map_at]: spec}, tnodes, self.arguments)
        # The launches that take each buffer, for `bind`.
        self.uses: list[list[int]] = [[] for _ in tnodes]
        for n, params in enumerate(parameters):
            for k in dict.fromkeys(params):
                self.uses[k].append(n)
        self.unbound = set(range(len(tnodes))) if bound else set()
        persistent = set(self.persistent)
        self.written_persistent = [t for t in self.written if t in persistent]
        # The launches captured as a CUDA graph after the first run (None: not yet; False:
        # graphs off when compiled, or capture failed). Buffers are bound once (`bind` drops
        # the graph: the next run captures it again), so the graph stays valid.
        self._graph = None if backend.cuda_graphs else False

    @property
    def plans(self) -> list[KernelPlan]:
        """The kernel plans (planned again from the IR when the routine came from the cache)."""
        if self._plans is None:
            self._plans = self.backend.kernel_plans(self.ir_source())
        return self._plans

    def bind(self, position: int, address: int) -> None:
        """Launch the kernels with the buffer at `position` of `tnodes` at device address
        `address` (a bound routine only)."""
        if not self.bound:
            raise ValueError("only a routine compiled with bound=True takes buffers by bind()")
        self.arguments[position] = address
        for n in self.uses[position]:
            kernel, config, _ = self.launches[n]
            arguments = tuple(self.arguments[i] for i in self.parameters[n])
            self.launches[n] = (kernel, config, arguments)
        self.unbound.discard(position)
        for map_at, operand, spec in self.tensor_maps:
            if position in (map_at, operand) and not {map_at, operand} & self.unbound:
                write_tensor_maps(
                    self.backend, {self.tnodes[map_at]: spec}, self.tnodes, self.arguments
                )
        if self._graph:
            self._graph = None

    def run(self) -> None:
        if self.unbound:
            names = ", ".join(self.tnodes[k].label for k in sorted(self.unbound))
            raise ValueError(f"routine {self.source_path}: buffers not bound yet: {names}")
        backend = self.backend
        backend.upload_stale(self.persistent)
        if self._graph:
            self._graph.launch(backend.stream)
        else:
            self._launch(backend.stream)
            if self._graph is None:
                self._graph = self._capture()
        backend.mark_written(self.written_persistent)

    def _launch(self, stream) -> None:
        from cuda.core import launch

        for kernel, config, arguments in self.launches:
            launch(stream, config, kernel, *arguments)

    def profile(self, repeats: int = 3) -> list[KernelTime]:
        """Each kernel's median time over `repeats` runs, launched one by one between timing
        events (not as a graph), in launch order; for finding where a routine's time goes."""
        import statistics

        from cuda.core import EventOptions, launch

        if self.unbound:
            self.run()  # raises the error naming the unbound buffers
        backend = self.backend
        backend.upload_stale(self.persistent)
        stream, timing = backend.stream, EventOptions(timing_enabled=True)
        plans = self.plans if len(self.plans) == len(self.launches) else [None] * len(self.launches)
        times: list[list[float]] = [[] for _ in self.launches]
        for _ in range(max(1, repeats)):
            for n, (kernel, config, arguments) in enumerate(self.launches):
                start = stream.record(options=timing)
                launch(stream, config, kernel, *arguments)
                end = stream.record(options=timing)
                end.sync()
                times[n].append(end - start)
        backend.mark_written(self.written_persistent)
        return [
            KernelTime(symbol, describe_plan(plan), grid, block, statistics.median(ms))
            for (_, symbol, grid, block, _, _), plan, ms in zip(
                self.plan["kernels"], plans, times, strict=True
            )
        ]

    def _capture(self):
        """The launches as one CUDA graph, replayed by later runs with a single call (a launch
        from Python costs microseconds per kernel); False, logged, where capture fails."""
        builder = None
        try:
            builder = self.backend.device.create_graph_builder().begin_building()
            self._launch(builder)
            builder.end_building()
            return builder.complete()
        except Exception as exc:  # an old driver or cuda.core: launch kernel by kernel
            log.warning(
                "%s: kernels launched one by one (no CUDA graph: %s)", self.source_path, exc
            )
            return False
        finally:
            if builder is not None:
                builder.close()


class CudaBackend(Backend):
    name = "cuda"
    reductions_innermost = True

    def __init__(self, device_id: int = 0) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f'Context("cuda") cannot run here: {reason}. Use Context("c").')
        from cuda.core import Device, LegacyPinnedMemoryResource

        self.device = Device(device_id)
        self.device.set_current()
        self.arch = self.device.arch
        #: Matrix-product nests get the shared-memory tiled kernel (else one thread per cell).
        self.tile_matmul = True
        #: Reductions over many values get teams of threads (else one thread per cell).
        self.parallel_reductions = True
        #: fp32 matrix products may use TF32 tensor cores (as PyTorch's allow_tf32; off: exact fp32).
        self.allow_tf32 = False
        #: Tensor-core matrix products take the wgmma form (TMA-fed warpgroup MMA, sm_90a) on an
        #: sm_90 device; off: mma.sync.
        self.wgmma = True
        #: Matrix products get the tile configuration timed fastest on this device (timed once,
        #: remembered in the compile cache); off: a fixed default.
        self.autotune = False
        #: Tile configurations chosen by hand for given matmul nests (`gpu_matmul.config_key`);
        #: they win over the defaults and over autotuning.
        self.matmul_configs: dict[str, object] = {}
        #: Routines compiled while on capture their kernels as a CUDA graph after their first
        #: run and replay it as one launch (off: kernels launched one by one every run).
        self.cuda_graphs = True
        self.stream = self.device.create_stream()
        self.copy_stream = self.device.create_stream()
        self.pool = self.device.memory_resource
        self.pinned = LegacyPinnedMemoryResource()
        self.copies: weakref.WeakKeyDictionary[TNode, DeviceCopy] = weakref.WeakKeyDictionary()
        self.modules: dict[Path, object] = {}
        self.syntax = CudaSyntax()

    def allocate(self, nbytes: int):
        return self.pool.allocate(nbytes, stream=self.stream)

    def device_copy(self, tnode: TNode) -> DeviceCopy:
        copy = self.copies.get(tnode)
        if copy is None:
            copy = self.copies[tnode] = DeviceCopy(self, tnode)
        return copy

    def upload_stale(self, tnodes: list[TNode]) -> None:
        """Upload the tnodes whose newest values the device does not hold; compute waits for
        them."""
        stale = [t for t in tnodes if not residency.of(t).is_current(self.copies[t])]
        if not stale:
            return
        # Uploads overwrite buffers that earlier work on the compute stream may still read.
        self.copy_stream.wait(self.stream.record())
        for t in stale:
            self.copies[t].upload(t)
        self.stream.wait(self.copy_stream.record())

    def mark_written(self, tnodes: list[TNode]) -> None:
        if not tnodes:
            return
        done = self.stream.record()
        for t in tnodes:
            copy = self.copies[t]
            copy.written = done
            residency.of(t).write_at(copy)

    def module(self, cubin: Path):
        """A compiled module from the cache, loaded once per backend."""
        from cuda.core import ObjectCode

        module = self.modules.get(cubin)
        if module is None:
            # Loaded from the bytes whose digest was checked, never from the path again.
            data = cache.read_verified(cubin)
            if data is None:
                raise CompileError(
                    f"cannot load {cubin}: it vanished from the cache or does not match its digest",
                    str(cubin.with_suffix(".cu")),
                )
            try:
                module = self.modules[cubin] = ObjectCode.from_cubin(data)
            except Exception as exc:
                raise CompileError(
                    f"cannot load {cubin}: {exc}", str(cubin.with_suffix(".cu"))
                ) from None
        return module

    def defines(self, cubin: Path, symbol: str) -> bool:
        try:
            self.module(cubin).get_kernel(symbol)
        except Exception:
            return False
        return True

    def identity(self) -> str:
        """What besides the code decides the kernels: the compiler, the device and the switches."""
        configs = sorted((k, repr(v)) for k, v in self.matmul_configs.items())
        return (
            f"{nvrtc.identity(self.arch)}\ntiled matmul: {self.tile_matmul}\nparallel reductions: "
            f"{self.parallel_reductions}\ntf32: {self.allow_tf32}\nwgmma: {self.wgmma}\nautotune: {self.autotune}\n"
            f"matmul configs: {configs}"
        )

    def options(self, stmt: ir.Stmt) -> GpuOptions:
        """The switches as planning options; with `autotune`, tuned tile configurations."""
        options = GpuOptions(
            tile_matmul=self.tile_matmul,
            parallel_reductions=self.parallel_reductions,
            allow_tf32=self.allow_tf32,
            wgmma=self.wgmma and self.arch == "90",
            matmul_configs=dict(self.matmul_configs),
        )
        if self.autotune and self.tile_matmul:
            from arrayjit.backends.cuda.tuning import tune_matmuls

            options.matmul_configs = {**tune_matmuls(self, stmt, options), **self.matmul_configs}
        return options

    def kernel_plans(self, stmt: ir.Stmt) -> list[KernelPlan]:
        return plan_kernels(stmt, self.options(stmt))

    def compile(self, stmt: ir.Stmt, name: str, bound: bool = False) -> CudaCompiled:
        plans = self.kernel_plans(stmt)
        # The IR's buffers, then scratch buffers the plans added (partial results).
        scratch = list(dict.fromkeys(t for plan in plans for t in plan.scratch))
        tnodes = [*ir.tnodes_in(stmt), *scratch]
        position = {t: k for k, t in enumerate(tnodes)}
        build_identity = nvrtc.identity(self.arch)
        parameters = [kernel_tnodes(plan) for plan in plans]
        functions = [
            kernel_function(self.syntax, plan, params, build_identity)
            for plan, params in zip(plans, parameters, strict=True)
        ]
        cubins = units.compiled(
            functions,
            "kernel",
            # A module holding a wgmma kernel is built for sm_90a (it runs on the sm_90 device).
            lambda group: nvrtc.build_cubin(
                module_source(group), self.arch + max(f.arch_suffix for f in group)
            ),
            self.defines,
        )
        source_path = self.write_listing(name, plans, tnodes, stmt, functions, cubins)
        tensor_maps = [
            [position[map_at], position[spec.tnode], spec.offset, spec.dims, spec.strides, spec.box]
            for plan in plans
            if plan.matmul is not None and plan.matmul.wgmma is not None
            for map_at, spec in zip(
                plan.matmul.wgmma.maps,
                (plan.matmul.wgmma.a.spec, plan.matmul.wgmma.b.spec),
                strict=True,
            )
        ]
        return CudaCompiled(
            self,
            [(cubins[f.key], f.symbol, f.grid, f.block, f.shared_bytes) for f in functions],
            [[position[t] for t in params] for params in parameters],
            tnodes,
            sorted(position[t] for t in ir.written_tnodes(stmt)),
            source_path,
            plans,
            tensor_maps,
            bound,
        )

    def load(
        self, plan: dict[str, Any], tnodes: list[TNode], bound: bool = False
    ) -> CudaCompiled | None:
        folder = cache.cache_dir()
        source_path = folder / plan["source"]
        kernels = [
            (folder / cubin, symbol, tuple(grid) if isinstance(grid, list) else grid, block, shared)
            for cubin, symbol, grid, block, shared, _ in plan["kernels"]
        ]
        if not source_path.exists() or not all(
            self.defines(cubin, symbol) for cubin, symbol, *_ in kernels
        ):
            return None
        parameters = [params for *_, params in plan["kernels"]]
        return CudaCompiled(
            self,
            kernels,
            parameters,
            tnodes,
            plan["written"],
            source_path,
            bound=bound,
            tensor_maps=plan.get("tensor_maps"),
        )

    def write_listing(self, name, plans, tnodes, stmt, functions, cubins) -> Path:
        """The routine as one readable module (kernels named after it, every buffer a parameter),
        headed by the kernels actually launched: their module, launch shape and buffers."""
        routine = "ocannl_" + identifier(name, 60)
        text, _ = kernel_source(self.syntax, plans, tnodes, routine, stmt)
        # User text (the name, labels, the cache folder's path) goes in as inert comment text.
        header = [
            f"/* Routine {comment_text(repr(name))}: each kernel below runs as a kernel compiled "
            "on its own:"
        ]
        for n, f in enumerate(functions):
            buffers = comment_text(", ".join(f.labels))
            header.append(
                f"   {routine}_k{n}: {f.symbol} in {comment_text(str(cubins[f.key]))}, grid "
                f"{f.grid}, block {f.block}, on {buffers}"
            )
        text = "\n".join(header) + " */\n" + text
        path = cache.cache_dir() / f"{cache.key(text)}.listing.cu"
        if not path.exists():
            cache.write_atomic(path, text.encode())
        return path

    def synchronize(self) -> None:
        self.stream.sync()

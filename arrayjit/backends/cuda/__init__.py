"""The CUDA backend: loop IR printed as CUDA C++ kernels, compiled by NVRTC into a cubin for the
device's own architecture, launched with cuda.core.

Kernels. Each top-level loop nest of the routine becomes one kernel, launched in order on one
stream. The outermost run of parallel loops of a nest is flattened onto the grid (a grid-stride
loop over one linear index, the innermost loop fastest so neighbouring threads touch neighbouring
cells); the loops inside it (reductions, with their register accumulator) stay inside the thread.
A nest shaped like a matrix product (`acc = acc op f(x[.., i, k], y[.., k, j])` over an innermost
reduction `k`, under parallel `i, j`) gets a shared-memory tiled kernel instead. Statements that
are not parallel loops run in a kernel of one thread. Hoisted locals that several kernels read are
recomputed at the start of each.

Memory. Buffers of HOST and DEVICE tnodes live on the device between routines, allocated from the
device's memory pool; scratch buffers of LOCAL and VIRTUAL tnodes belong to one routine. Host
values go up on a copy stream through pinned staging buffers whenever `tnode.host_version` moved;
compute waits on an event for them. A routine that writes a buffer leaves a callback in
`tnode.fetch_from_device`, so `tnode.host()` copies the values back only when read, only when
stale.

cuda-python is imported inside functions only: without it (or without a GPU or driver),
`cuda_available()` is False and `CudaBackend()` raises a RuntimeError that says why.
"""

from __future__ import annotations

import functools
import logging
import weakref

from arrayjit import loop_ir as ir
from arrayjit.backends.base import Backend, Compiled
from arrayjit.backends.cuda.launch import load_kernels, write_tensor_maps
from arrayjit.backends.cuda.memory import DeviceCopy
from arrayjit.backends.cuda.nvrtc import build_cubin
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.errors import CompileError
from arrayjit.schedule.gpu_kernels import GpuOptions, KernelPlan
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


class CudaCompiled(Compiled):
    def __init__(
        self,
        backend: CudaBackend,
        plans: list[KernelPlan],
        kernels: list,
        tnodes: list[TNode],
        arguments: list,
        persistent: list[TNode],
        written: list[TNode],
        source_path: str,
    ) -> None:
        self.backend = backend
        self.plans = plans
        self.kernels = kernels  # (kernel, launch config)
        self.tnodes = tnodes
        self.arguments = arguments  # device buffers, in the order of `tnodes`
        self.persistent = persistent
        self.written = written
        self.source_path = source_path

    def run(self) -> None:
        from cuda.core import launch

        backend = self.backend
        backend.upload_stale(self.persistent)
        for kernel, config in self.kernels:
            launch(backend.stream, config, kernel, *self.arguments)
        backend.mark_written(self.written)


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
        self.stream = self.device.create_stream()
        self.copy_stream = self.device.create_stream()
        self.pool = self.device.memory_resource
        self.pinned = LegacyPinnedMemoryResource()
        self.copies: weakref.WeakKeyDictionary[TNode, DeviceCopy] = weakref.WeakKeyDictionary()

    def allocate(self, nbytes: int):
        return self.pool.allocate(nbytes, stream=self.stream)

    def device_copy(self, tnode: TNode) -> DeviceCopy:
        copy = self.copies.get(tnode)
        if copy is None:
            copy = self.copies[tnode] = DeviceCopy(self, tnode)
        return copy

    def upload_stale(self, tnodes: list[TNode]) -> None:
        """Upload the tnodes whose host values the device does not hold; compute waits for them."""
        stale = []
        for t in tnodes:
            copy = self.copies[t]
            fetch = t.fetch_from_device
            if fetch is not None and getattr(fetch, "__self__", None) is not copy:
                t.host()  # another device holds the newest values: bring them here through the host
                stale.append(t)
            elif copy.uploaded_version != t.host_version:
                stale.append(t)
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
            t.fetch_from_device = copy.fetch

    def compile(self, stmt: ir.Stmt, name: str) -> CudaCompiled:
        from cuda.core import ObjectCode

        function = "ocannl_" + "".join(c if c.isalnum() else "_" for c in name)[:60]
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
        generated = generate(stmt, function, options)
        # The IR's buffers, then scratch buffers of the kernel plans (partial results).
        tnodes, plans = generated.tnodes, generated.plans
        cubin = build_cubin(generated.source, self.arch + generated.arch_suffix)
        try:
            module = ObjectCode.from_cubin(cubin.read_bytes())
            kernels = load_kernels(module, generated.launches, self.device.device_id)
        except Exception as exc:
            raise CompileError(
                f"cannot load {cubin}: {exc}", str(cubin.with_suffix(".cu"))
            ) from None
        persistent = [t for t in tnodes if t.memory_mode in (MemoryMode.HOST, MemoryMode.DEVICE)]
        scratch = {
            t: self.allocate(t.size * t.dtype.itemsize) for t in tnodes if t not in persistent
        }
        for buffer in scratch.values():
            buffer.fill(0, stream=self.stream)
        arguments = [scratch[t] if t in scratch else self.device_copy(t).buffer for t in tnodes]
        write_tensor_maps(self, generated.tensor_maps, tnodes, arguments)
        written = [t for t in ir.written_tnodes(stmt) if t in set(persistent)]
        written.sort(key=lambda t: t.id)
        return CudaCompiled(
            self,
            plans,
            kernels,
            tnodes,
            arguments,
            persistent,
            written,
            str(cubin.with_suffix(".cu")),
        )

    def synchronize(self) -> None:
        self.stream.sync()

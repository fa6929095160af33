"""Runs the CUDA backend's generated kernels on the CPU, for tests on machines without a GPU.

The generated source is compiled by the host C++ compiler against `cuda_emulator.h`, which
emulates threads, blocks, barriers, warp shuffles, cp.async and the mma/ldmatrix fragment
layouts (see there). The PTX helper functions of the source are replaced by emulated ones of the
same names. Buffers are the tnodes' host arrays; scratch buffers that the kernel plans add are
filled with NaN (or -1) first, so a kernel that reads what it did not write shows up.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from arrayjit import loop_ir as ir
from arrayjit.assignments import Assignments
from arrayjit.backends.base import Backend, Compiled
from arrayjit.codegen import cuda_device, cuda_syntax
from arrayjit.codegen.inert_text import identifier
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime import residency
from arrayjit.runtime.runtime import Runtime
from arrayjit.schedule.gpu_kernels import GpuOptions
from arrayjit.tnode import MemoryMode, TNode

HEADER = Path(__file__).with_name("cuda_emulator.h")
#: Headers it includes (copied beside it).
HEADERS = (HEADER, Path(__file__).with_name("cuda_emulator_sm90.h"))

#: The emulated definitions of the PTX helper functions, by the name of the source constant.
EMULATED = {
    "ASYNC_COPY_HELPERS": """
inline unsigned ocannl_shared_address(const void *p) { return emu::shared_offset(p); }
template <int BYTES> inline void ocannl_cp_async(void *dst, const void *src, bool full) {
  emu_cp_async(dst, src, BYTES, full ? BYTES : 0);
}
inline void ocannl_cp_async_commit() { emu_cp_async_commit(); }
template <int N> inline void ocannl_cp_async_wait() { emu_cp_async_wait(N); }
""",
    "MMA_HELPERS": """
inline unsigned ocannl_tf32(float x) { return emu_cvt_tf32(x); }
inline void ocannl_mma_tf32(float *d, const unsigned *a, const unsigned *b) {
  emu_mma(d, a, b, 8, 0);
}
inline void ocannl_mma_f16(float *d, const unsigned *a, const unsigned *b) {
  emu_mma(d, a, b, 16, 1);
}
inline void ocannl_mma_bf16(float *d, const unsigned *a, const unsigned *b) {
  emu_mma(d, a, b, 16, 2);
}
inline void ocannl_ldmatrix_x4(unsigned *out, const void *row) { emu_ldmatrix_x4(out, row, false); }
inline void ocannl_ldmatrix_x4_trans(unsigned *out, const void *row) {
  emu_ldmatrix_x4(out, row, true);
}
""",
    "WGMMA_HELPERS": """
inline void ocannl_mbarrier_init(unsigned long long *bar, unsigned count) {
  emu_mbarrier_init(bar, count);
}
inline void ocannl_fence_barrier_init() {}
inline void ocannl_mbarrier_arrive(unsigned long long *bar) { emu_mbarrier_arrive(bar, 0); }
inline void ocannl_mbarrier_expect_bytes(unsigned long long *bar, unsigned bytes) {
  emu_mbarrier_arrive(bar, bytes);
}
inline void ocannl_mbarrier_wait(unsigned long long *bar, unsigned parity) {
  emu_mbarrier_wait(bar, parity);
}
inline void ocannl_tensormap_acquire(const void *) {}
inline void ocannl_tma_load_2d(void *dst, const void *map, int c0, int c1, unsigned long long *bar) {
  int c[] = {c0, c1};
  emu_tma_load(dst, map, c, 2, bar);
}
inline void ocannl_tma_load_3d(void *dst, const void *map, int c0, int c1, int c2,
                               unsigned long long *bar) {
  int c[] = {c0, c1, c2};
  emu_tma_load(dst, map, c, 3, bar);
}
inline void ocannl_tma_load_4d(void *dst, const void *map, int c0, int c1, int c2, int c3,
                               unsigned long long *bar) {
  int c[] = {c0, c1, c2, c3};
  emu_tma_load(dst, map, c, 4, bar);
}
inline void ocannl_tma_load_5d(void *dst, const void *map, int c0, int c1, int c2, int c3, int c4,
                               unsigned long long *bar) {
  int c[] = {c0, c1, c2, c3, c4};
  emu_tma_load(dst, map, c, 5, bar);
}
template <int REGISTERS> inline void ocannl_setmaxnreg_inc() {}
template <int REGISTERS> inline void ocannl_setmaxnreg_dec() {}
inline void ocannl_wgmma_fence() {}
inline void ocannl_wgmma_commit() { emu_wgmma_commit(); }
template <int N> inline void ocannl_wgmma_wait() { emu_wgmma_wait(N); }
template <int COUNT> inline void ocannl_fence_operands(float *) {}
""",
}

#: The emulated wgmma instructions, by tensor-core kind (see `cuda_device.wgmma_function`).
_WGMMA_KIND_CODES = {"tf32": 0, "f16": 1, "bf16": 2}

_build_dir = Path(tempfile.mkdtemp(prefix="arrayjit-cuda-emulator-"))
atexit.register(shutil.rmtree, _build_dir, True)
_FLAGS = ["-std=c++20", "-O1", "-fPIC", "-w"]


def _compiler() -> str:
    return shutil.which("g++") or "c++"


def _header() -> Path:
    """The emulator header in the build folder, precompiled once (a third of each build)."""
    header = _build_dir / HEADER.name
    if not header.exists():
        for path in HEADERS:
            shutil.copy(path, _build_dir / path.name)
        command = [_compiler(), *_FLAGS, "-x", "c++-header", str(header), "-o", f"{header}.gch"]
        subprocess.run(command, capture_output=True)  # without it, builds are only slower
    return header


def emulated_source(source: str) -> str:
    """`source` with its PTX helpers replaced by the emulated ones."""
    for name, replacement in EMULATED.items():
        helpers = getattr(cuda_device, name)
        if helpers in source:
            source = source.replace(helpers, replacement)
    for kind, code in _WGMMA_KIND_CODES.items():
        for n in range(8, 257, 8):
            device = cuda_device.wgmma_function(kind, n)
            if device in source:
                emulated = (
                    f"inline void ocannl_wgmma_{kind}_n{n}(float *d, const unsigned *a,"
                    f" unsigned long long desc) {{ emu_wgmma(d, a, desc, {n}, {code}); }}\n"
                )
                source = source.replace(device, emulated)
    # The 16-bit types and their conversions are the header's.
    source = source.replace("#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n", "")
    # Dynamic shared memory: in the emulated shared window, at a start that is not 1024-aligned.
    source = source.replace(
        cuda_device.SHARED_DECLARATION,
        "ocannl_float4 *const ocannl_smem ="
        " reinterpret_cast<ocannl_float4 *>(emu_shared_window + EMU_DYNAMIC_OFFSET);",
    )
    # Parameters declared __restrict__ check the contract they state (see the header).
    source = re.sub(r"(\w+(?: \w+)*) \*__restrict__ (\w+)", r"emu::Restrict<\1> \2", source)
    source = re.sub(r"(reinterpret_cast<[^>]*>)\((\w+)\)", r"\1(emu_pointer(\2))", source)
    if "asm" in source:
        raise AssertionError("inline PTX left in the source: the emulator cannot run it")
    return source


def _build(source: str, launches: list[cuda_device.Launch], tnodes: list[TNode]) -> ctypes.CDLL:
    types = [cuda_syntax.CudaSyntax().type_name(t.dtype) for t in tnodes]
    params = ", ".join(f"({c} *)args[{k}]" for k, c in enumerate(types))
    wrappers = [
        f'extern "C" const char *emu_{launch.name}(void **args, unsigned gx, unsigned gy,'
        " unsigned gz, unsigned bx, unsigned seed) {\n"
        f"  return emu_launch(gx, gy, gz, bx, seed, [args] {{ dev::{launch.name}({params}); }});\n"
        "}"
        for launch in launches
    ]
    text = (
        f'#include "{_header()}"\nnamespace dev {{\n{emulated_source(source)}\n}}\n'
        + "\n".join(wrappers)
        + "\n"
    )
    digest = hashlib.sha256(text.encode() + b"".join(h.read_bytes() for h in HEADERS))
    digest = digest.hexdigest()[:24]
    library = _build_dir / f"{digest}.so"
    if not library.exists():
        cpp = _build_dir / f"{digest}.cpp"
        cpp.write_text(text)
        command = [_compiler(), *_FLAGS, "-shared", "-o", str(library), str(cpp)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(
                f"emulated kernel source does not compile ({cpp}):\n{result.stderr}"
            )
    return ctypes.CDLL(str(library))


class EmulatedRoutine:
    """A routine's kernels, compiled for the emulator and bound to the tnodes' host arrays."""

    def __init__(
        self, stmt: ir.Stmt, options: GpuOptions, name: str = "routine", edit=None
    ) -> None:
        """`edit`, if given, changes the source before it is compiled (to test the emulator)."""
        generated = cuda_syntax.generate(stmt, "ocannl_" + name, options)
        self.generated = generated
        self.plans = generated.plans
        self.source = edit(generated.source) if edit else generated.source
        self.launches = generated.launches
        self.tnodes = generated.tnodes
        self.library = _build(self.source, generated.launches, generated.tnodes)
        self.scratch: dict[TNode, np.ndarray] = {}
        for t in self.tnodes:
            if t.memory_mode in (MemoryMode.HOST, MemoryMode.DEVICE):
                continue
            poison = np.nan if t.dtype.is_float else -1
            # Scratch of the plans is poisoned; the IR's own scratch starts at zero as on the device.
            fill = poison if t in generated.scratch else 0
            self.scratch[t] = np.full(t.dims, fill, dtype=t.dtype.numpy)

    def run(self, seed: int = 0) -> None:
        arrays = [self.scratch[t] if t in self.scratch else t.host() for t in self.tnodes]
        for array in arrays:
            assert array.flags.c_contiguous
        for tnode, spec in self.generated.tensor_maps.items():
            operand = arrays[self.tnodes.index(spec.tnode)]
            packed = tensor_map_bytes(spec, operand.ctypes.data)
            arrays[self.tnodes.index(tnode)][:] = np.frombuffer(packed, np.int32)
        args = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
        for launch in self.launches:
            grid = launch.grid if isinstance(launch.grid, tuple) else (launch.grid, 1, 1)
            grid = (*grid, 1, 1)[:3]
            function = getattr(self.library, f"emu_{launch.name}")
            function.restype = ctypes.c_char_p
            error = function(args, *grid, launch.block, seed)
            if error:
                message = _name_addresses(error.decode(), self.tnodes, arrays)
                raise AssertionError(f"{launch.name}: {message}")
        for t in ir.written_tnodes(self.generated.stmt):
            residency.host_written(t)


def _name_addresses(message: str, tnodes: list[TNode], arrays: list[np.ndarray]) -> str:
    """`message` with each address in a buffer named as the buffer's cell (`x[2, 4]`)."""

    def name(match: re.Match) -> str:
        address = int(match.group(0), 16)
        for t, a in zip(tnodes, arrays, strict=True):
            start = a.ctypes.data
            if start <= address < start + a.nbytes:
                cell = np.unravel_index((address - start) // a.itemsize, a.shape)
                return f"{t.label}[{', '.join(str(int(i)) for i in cell)}]"
        return match.group(0)

    return re.sub(r"0x[0-9a-f]+", name, message)


def tensor_map_bytes(spec, address: int) -> bytes:
    """The emulator's tensor map (`emu::TensorMap` of cuda_emulator_sm90.h) for `spec` over the
    array at `address`: what cuTensorMapEncodeTiled encodes on the device."""
    rank, size = len(spec.dims), spec.itemsize
    dims = [*spec.dims, *[0] * (5 - rank)]
    strides = [s * size for s in spec.strides] + [0] * (4 - len(spec.strides))
    box = [*spec.box, *[0] * (5 - rank)]
    start = address + spec.offset * size
    packed = struct.pack("<QIIII5Q4Q5I", start, rank, size, 1, 0, *dims, *strides, *box)
    return packed.ljust(128, b"\0")


def emulate(
    code: Assignments, options: GpuOptions | None = None, seed: int = 0, name: str = "routine"
) -> EmulatedRoutine:
    """Lower `code` as the CUDA backend does, compile its kernels for the emulator and run them."""
    stmt = compile_to_ir(code, reductions_innermost=True)
    routine = EmulatedRoutine(stmt, options or GpuOptions(), name)
    routine.run(seed)
    return routine


# ---- a backend for runtimes and contexts --------------------------------------------------


class EmulatedCompiled(Compiled):
    """A routine of `EmulatedCudaBackend`: its kernels in the emulator, over the host arrays."""

    def __init__(self, stmt: ir.Stmt, options: GpuOptions, name: str) -> None:
        self.routine = EmulatedRoutine(stmt, options, identifier(name, 60))
        self.tnodes = self.routine.tnodes
        self.written = sorted(ir.written_tnodes(stmt), key=self.tnodes.index)
        digest = hashlib.sha256(self.routine.source.encode()).hexdigest()[:24]
        self.source_path = str(_build_dir / f"{digest}.cu")
        Path(self.source_path).write_text(self.routine.source)
        self.plan = {}

    @property
    def plans(self):
        return self.routine.plans

    def run(self) -> None:
        self.routine.run()

    def bind(self, position: int, address: int) -> None:
        raise NotImplementedError("the emulated CUDA backend runs over the host arrays only")


class EmulatedCudaBackend(Backend):
    """The CUDA backend's lowering and kernels (with an sm_90 device's options), run by the
    emulator over the host arrays: `emulated_runtime()` for tests of code through a Context."""

    name = "cuda-emulator"
    reductions_innermost = True

    def __init__(self, options: GpuOptions | None = None) -> None:
        self.options = options or GpuOptions(wgmma=True)

    def identity(self) -> str:
        headers = hashlib.sha256(b"".join(h.read_bytes() for h in HEADERS)).hexdigest()[:16]
        return f"CUDA emulator {headers} {self.options!r}"

    def compile(self, stmt: ir.Stmt, name: str, bound: bool = False) -> EmulatedCompiled:
        if bound:
            raise NotImplementedError("the emulated CUDA backend runs over the host arrays only")
        return EmulatedCompiled(stmt, self.options, name)

    def load(self, plan, tnodes, bound=False):
        return None  # never recorded: compiled each time


def emulated_runtime() -> Runtime:
    """A runtime whose routines run on `EmulatedCudaBackend` (what `Runtime("cuda")` would run)."""
    runtime = Runtime("c")
    runtime.backend = EmulatedCudaBackend()
    return runtime

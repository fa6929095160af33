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
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from arrayjit import loop_ir as ir
from arrayjit.assignments import Assignments
from arrayjit.codegen import cuda_device, cuda_syntax
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime import residency
from arrayjit.schedule.gpu_kernels import GpuOptions
from arrayjit.tnode import MemoryMode, TNode

HEADER = Path(__file__).with_name("cuda_emulator.h")

#: The emulated definitions of the PTX helper functions, by the name of the source constant.
EMULATED = {
    "ASYNC_COPY_HELPERS": """
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
}

_build_dir = Path(tempfile.mkdtemp(prefix="arrayjit-cuda-emulator-"))
atexit.register(shutil.rmtree, _build_dir, True)
_FLAGS = ["-std=c++20", "-O1", "-fPIC", "-w"]


def _compiler() -> str:
    return shutil.which("g++") or "c++"


def _header() -> Path:
    """The emulator header in the build folder, precompiled once (a third of each build)."""
    header = _build_dir / HEADER.name
    if not header.exists():
        shutil.copy(HEADER, header)
        command = [_compiler(), *_FLAGS, "-x", "c++-header", str(header), "-o", f"{header}.gch"]
        subprocess.run(command, capture_output=True)  # without it, builds are only slower
    return header


def emulated_source(source: str) -> str:
    """`source` with its PTX helpers replaced by the emulated ones."""
    for name, replacement in EMULATED.items():
        helpers = getattr(cuda_device, name)
        if helpers in source:
            source = source.replace(helpers, replacement)
    # The 16-bit types and their conversions are the header's.
    source = source.replace("#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n", "")
    # Dynamic shared memory: a static buffer of the largest size a block may have.
    source = source.replace(
        cuda_device.SHARED_DECLARATION, "static ocannl_float4 ocannl_smem[232448 / 16];"
    )
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
    digest = hashlib.sha256(text.encode() + HEADER.read_bytes()).hexdigest()[:24]
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
        args = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
        for launch in self.launches:
            grid = launch.grid if isinstance(launch.grid, tuple) else (launch.grid, 1, 1)
            grid = (*grid, 1, 1)[:3]
            function = getattr(self.library, f"emu_{launch.name}")
            function.restype = ctypes.c_char_p
            error = function(args, *grid, launch.block, seed)
            if error:
                raise AssertionError(f"{launch.name}: {error.decode()}")
        for t in ir.written_tnodes(self.generated.stmt):
            residency.host_written(t)


def emulate(
    code: Assignments, options: GpuOptions | None = None, seed: int = 0, name: str = "routine"
) -> EmulatedRoutine:
    """Lower `code` as the CUDA backend does, compile its kernels for the emulator and run them."""
    stmt = compile_to_ir(code, reductions_innermost=True)
    routine = EmulatedRoutine(stmt, options or GpuOptions(), name)
    routine.run(seed)
    return routine

"""Two ways to run the CUDA backend's kernels in tests: on the CPU emulator (wherever a C++
compiler is), and on a GPU (where one is usable). Both return what ran, with its kernel plans."""

from __future__ import annotations

import functools
import os
import shutil

import pytest

from arrayjit.assignments import Assignments
from arrayjit.runtime.runtime import Runtime, cuda_usable
from arrayjit.schedule.gpu_kernels import GpuOptions

#: Where kernel tests run; `ARRAYJIT_CUDA_TEST_RUNNERS=gpu` leaves the emulator out (on a GPU
#: machine, where its runs would only repeat what a machine without a GPU checks).
RUNNERS = os.environ.get("ARRAYJIT_CUDA_TEST_RUNNERS", "emulator,gpu").split(",")


@functools.cache
def gpu_context() -> Runtime:
    return Runtime("cuda")


class Ran:
    """The plans and source of a routine that ran."""

    def __init__(self, plans, source: str) -> None:
        self.plans = plans
        self.source = source


def runner(kind: str):
    """A function `run(code, options=None, seed=0) -> Ran` for `kind`, or a skip."""
    if kind == "gpu":
        if not cuda_usable():
            pytest.skip("CUDA backend: no usable NVIDIA GPU, driver or cuda-python here")

        def run_gpu(code: Assignments, options: GpuOptions | None = None, seed: int = 0) -> Ran:
            backend = gpu_context().backend
            options = options or GpuOptions()
            names = ("tile_matmul", "parallel_reductions", "allow_tf32", "wgmma", "matmul_configs")
            saved = {name: getattr(backend, name) for name in names}
            for name in names:
                setattr(backend, name, getattr(options, name))
            try:
                routine = gpu_context().compile(code)
            finally:
                for name, value in saved.items():
                    setattr(backend, name, value)
            routine.run()
            gpu_context().synchronize()
            with open(routine.source_path) as f:
                return Ran(routine.compiled.plans, f.read())

        return run_gpu
    if shutil.which("g++") is None:
        pytest.skip("CUDA emulator: no C++ compiler (g++) here")
    from cuda_emulator import emulate

    def run_emulated(code: Assignments, options: GpuOptions | None = None, seed: int = 0) -> Ran:
        routine = emulate(code, options, seed)
        return Ran(routine.plans, routine.source)

    return run_emulated


# ---- compiling for the device with nvcc (no GPU needed) -----------------------------------


def _tool(name: str) -> str | None:
    """A CUDA tool from PATH or from the nvidia-cuda-* wheels (cuobjdump, nvdisasm)."""
    import os

    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        for candidate in (os.path.join(root, "cu13", "bin", name), os.path.join(root, "bin", name)):
            if os.path.exists(candidate):
                return candidate
    return None


def nvcc_cubin(source: str, folder, arch: str = "sm_90", headers: str = ""):
    """Compile generated source with nvcc into a cubin (skips without nvcc). nvcc includes the
    CUDA runtime headers that NVRTC does not, so the source goes into a namespace, where its
    own typedefs (int64_t...) do not clash with theirs; the device code is the same. `headers`
    come first, outside the namespace. An architecture-specific `arch` ("sm_90a") is built with
    `-gencode` (the `-arch` shorthand also runs a plain pass that rejects its instructions);
    ptxas's report (`-v`: registers, spills, warnings) is left in `folder / "ptxas.log"`."""
    import subprocess
    from pathlib import Path

    nvcc = _tool("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed here")
    folder = Path(folder)
    (folder / "kernels.cu").write_text(source)
    (folder / "check.cu").write_text(
        f'{headers}\nnamespace ocannl_check {{\n#include "kernels.cu"\n}}\n'
    )
    cubin = folder / "check.cubin"
    target = (
        f"-gencode=arch=compute_{arch[3:]},code={arch}" if arch.endswith("a") else f"-arch={arch}"
    )
    command = [nvcc, target, "-cubin", "-Xptxas", "-v", "-o", str(cubin), str(folder / "check.cu")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    assert result.returncode == 0, f"nvcc failed on {folder / 'kernels.cu'}:\n{result.stderr}"
    (folder / "ptxas.log").write_text(result.stderr)
    return cubin


def sass(cubin) -> dict[str, str]:
    """The SASS of each kernel of a cubin (skips without cuobjdump and nvdisasm)."""
    import os
    import subprocess

    cuobjdump, nvdisasm = _tool("cuobjdump"), _tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        pytest.skip(
            "cuobjdump/nvdisasm are not installed (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"
        )
    env = {
        **os.environ,
        "PATH": os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""),
    }
    text = subprocess.run(
        [cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, env=env, check=True
    ).stdout
    out: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if "Function :" in line:
            name = line.split("Function :")[1].strip()
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def resources(cubin) -> dict[str, dict[str, int]]:
    """Registers, shared and local memory of each kernel (REG, SHARED, LOCAL, STACK)."""
    import re
    import subprocess

    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump)")
    text = subprocess.run(
        [cuobjdump, "-res-usage", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    out: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"\s*Function (\S+):", line)
        if match:
            name = match.group(1)
        elif name and "REG:" in line:
            out[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
    return out

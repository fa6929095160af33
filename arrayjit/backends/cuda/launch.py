"""Loading a routine's kernels from a cubin with their launch configurations."""

from __future__ import annotations

from arrayjit.codegen.cuda_device import Launch

#: Shared memory a kernel gets without opting in.
DEFAULT_SHARED_LIMIT = 48 * 1024


def load_kernels(module, launches: list[Launch], device_id: int) -> list:
    """(kernel, LaunchConfig) per launch; kernels using more than 48 KB of dynamic shared memory
    have their limit raised first."""
    from cuda.bindings import driver
    from cuda.core import LaunchConfig

    kernels = []
    for launch in launches:
        kernel = module.get_kernel(launch.name)
        if launch.shared_bytes > DEFAULT_SHARED_LIMIT:
            attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            handle = kernel.handle
            if not isinstance(handle, driver.CUkernel):
                handle = driver.CUkernel(int(handle))
            (err,) = driver.cuKernelSetAttribute(
                attribute, launch.shared_bytes, handle, driver.CUdevice(device_id)
            )
            if err != driver.CUresult.CUDA_SUCCESS:
                raise RuntimeError(
                    f"kernel {launch.name} needs {launch.shared_bytes} bytes of shared memory: "
                    f"{err.name}"
                )
        config = LaunchConfig(grid=launch.grid, block=launch.block, shmem_size=launch.shared_bytes)
        kernels.append((kernel, config))
    return kernels

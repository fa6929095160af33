"""Loading a routine's kernels from a cubin with their launch configurations."""

from __future__ import annotations

from arrayjit.codegen.cuda_device import Launch

#: Shared memory a kernel gets without opting in.
DEFAULT_SHARED_LIMIT = 48 * 1024


def load_kernels(module, launches: list[Launch], device_id: int) -> list:
    """(kernel, LaunchConfig) per launch of `module`."""
    return [
        kernel_config(
            module.get_kernel(launch.name),
            launch.name,
            launch.grid,
            launch.block,
            launch.shared_bytes,
            device_id,
        )  # fmt: skip
        for launch in launches
    ]


def kernel_config(kernel, name: str, grid, block: int, shared_bytes: int, device_id: int):
    """(kernel, LaunchConfig); a kernel using more than 48 KB of dynamic shared memory has its
    limit raised first."""
    from cuda.core import LaunchConfig

    if shared_bytes > DEFAULT_SHARED_LIMIT:
        from cuda.bindings import driver

        attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        handle = kernel.handle
        if not isinstance(handle, driver.CUkernel):
            handle = driver.CUkernel(int(handle))
        (err,) = driver.cuKernelSetAttribute(
            attribute, shared_bytes, handle, driver.CUdevice(device_id)
        )
        if err != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(
                f"kernel {name} needs {shared_bytes} bytes of shared memory: {err.name}"
            )
    return kernel, LaunchConfig(grid=grid, block=block, shmem_size=shared_bytes)

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


#: CUtensorMapDataType of each element type a tensor map copies (cuda.h).
_TENSOR_MAP_TYPES = {"float16": 6, "float32": 7, "bfloat16": 9}
_SWIZZLE_128B, _L2_PROMOTION_128B = 3, 2


def encode_tensor_map(spec, address: int) -> bytes:
    """The 128-byte CUtensorMap of `spec` over the device buffer at `address` (the operand's
    buffer start), by the driver's cuTensorMapEncodeTiled: tiles in the 128-byte swizzle, zeros
    outside the tensor."""
    import ctypes

    from arrayjit.errors import CompileError

    rank = len(spec.dims)
    itemsize = spec.itemsize
    storage = ctypes.create_string_buffer(128 + 64)
    aligned = (ctypes.addressof(storage) + 63) & ~63  # the driver wants 64-byte alignment
    encode = ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled
    encode.restype = ctypes.c_int
    result = encode(
        ctypes.c_void_p(aligned),
        ctypes.c_int(_TENSOR_MAP_TYPES[spec.tnode.dtype.name]),
        ctypes.c_uint32(rank),
        ctypes.c_void_p(address + spec.offset * itemsize),
        (ctypes.c_uint64 * rank)(*spec.dims),
        (ctypes.c_uint64 * max(rank - 1, 1))(*(s * itemsize for s in spec.strides)),
        (ctypes.c_uint32 * rank)(*spec.box),
        (ctypes.c_uint32 * rank)(*([1] * rank)),
        ctypes.c_int(0),  # no interleave
        ctypes.c_int(_SWIZZLE_128B),
        ctypes.c_int(_L2_PROMOTION_128B),
        ctypes.c_int(0),  # zeros outside the tensor
    )
    if result != 0:
        raise CompileError(
            f"cuTensorMapEncodeTiled failed (CUresult {result}) for {spec.tnode.label}: "
            f"dims {spec.dims}, element strides {spec.strides}, box {spec.box}, "
            f"offset {spec.offset}"
        )
    return ctypes.string_at(aligned, 128)


def write_tensor_maps(backend, tensor_maps: dict, tnodes: list, arguments: list) -> None:
    """Fill each tensor-map buffer of `arguments` (by tnode) with its map over the operand's
    buffer in `arguments` (device buffers, or a bound routine's device addresses); compute on
    the backend's stream comes after."""
    import ctypes

    def address(argument) -> int:
        return argument if isinstance(argument, int) else int(argument.handle)

    for tnode, spec in tensor_maps.items():
        data = encode_tensor_map(spec, address(arguments[tnodes.index(spec.tnode)]))
        staging = backend.pinned.allocate(len(data))
        ctypes.memmove(int(staging.handle), data, len(data))
        target = arguments[tnodes.index(tnode)]
        if isinstance(target, int):  # a bound routine's buffer, by its device address
            from cuda.core import Buffer

            target = Buffer.from_handle(target, len(data))
        target.copy_from(staging, stream=backend.stream)
        backend.stream.sync()  # the staging buffer is freed on return

"""The sm_90a matrix-product kernel (TMA-fed warpgroup MMA): which nests take it and with which
operands (pure Python), its source compiled for sm_90a (HGMMA and TMA in the SASS, no spills or
serialized products), values against numpy on the CPU emulator (which models TMA's swizzled
copies, mbarrier phases and wgmma's descriptor and fragment layouts) and, where one is usable,
on a GPU. Kernels with a pipeline step removed or a layout detail changed fail on the emulator.

Sums of products of small integers are exact in TF32 and in 16-bit types with fp32 sums, so
they must match numpy exactly; random fp32 values are checked by the relative error of the whole
product (under 1e-3: wgmma drops the low 13 mantissa bits of a TF32 operand read from shared
memory; the register operand is rounded to nearest first).
"""

from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest
from cuda_emulator import EmulatedRoutine
from cuda_runners import RUNNERS, nvcc_cubin, resources, runner, sass
from test_cuda_matmul import fill, matmul, matmul_plan
from test_cuda_mma16 import BFLOAT16, FLOAT16, matmul16
from test_cuda_simulated import launches  # noqa: F401 (a fixture)

from arrayjit import lowering
from arrayjit.assignments import Accum
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Iterator, Projections
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule import gpu_matmul
from arrayjit.schedule.gpu_kernels import GpuOptions
from arrayjit.schedule.gpu_matmul import MatmulConfig, OperandLoad
from arrayjit.tnode import TNode

WGMMA = GpuOptions(allow_tf32=True, wgmma=True)


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


def with_config(code, config: MatmulConfig) -> GpuOptions:
    """Options under which the nest of `code` takes `config`."""
    key = gpu_matmul.config_key(matmul_plan(code, WGMMA), config.tensor_cores)
    return GpuOptions(allow_tf32=True, wgmma=True, matmul_configs={key: config})


def emulator_only():
    if "emulator" not in RUNNERS:
        pytest.skip("emulator runs left out by request")
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler (g++)")


# ---- planning (pure Python) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("transpose_a", "transpose_b", "swap"),
    [(False, False, True), (False, True, False), (True, True, False)],
)
def test_the_k_contiguous_operand_goes_through_the_descriptor(transpose_a, transpose_b, swap):
    code, *_ = matmul(4096, 4096, 4096, transpose_a=transpose_a, transpose_b=transpose_b)
    shape = matmul_plan(code, WGMMA)
    assert shape.config == MatmulConfig(128, 256, 32, 4, "tf32", True, overlap=True)
    assert shape.config.threads == 384 and shape.wgmma.swap == swap
    b = shape.wgmma.b
    assert b.k_major and b.spec.dims == (4096, 4096) and b.spec.box == (32, 256)
    assert b.spec.strides == (4096,) and b.spec.offset == 0
    a = shape.wgmma.a
    assert a.k_major == (transpose_b and not transpose_a) and a.spec.box == (
        (32, 128) if a.k_major else (32, 32)
    )
    assert shape.wgmma.a_boxes == (1 if a.k_major else 4)
    assert shape.loads == (
        OperandLoad("tma", 1, not transpose_a),
        OperandLoad("tma", 1, transpose_b),
    )


def test_no_wgmma_without_a_k_contiguous_operand_or_aligned_strides_or_the_option():
    code, *_ = matmul(512, 512, 512, transpose_a=True)  # both contiguous along their side
    assert matmul_plan(code, WGMMA).wgmma is None
    assert matmul_plan(code, WGMMA).config.tensor_cores == "tf32"  # mma.sync instead
    code, *_ = matmul(512, 512, 510)  # b's rows are 2040 bytes apart: not 16-byte aligned
    assert matmul_plan(code, WGMMA).wgmma is None
    code, *_ = matmul(512, 512, 512)
    assert matmul_plan(code, GpuOptions(allow_tf32=True)).wgmma is None
    assert matmul_plan(code, GpuOptions(wgmma=True)).wgmma is None  # fp32 without TF32: SIMT


def test_16_bit_products_take_wgmma_with_64_deep_tiles():
    code, *_ = matmul16(8192, 8192, 8192, BFLOAT16)
    shape = matmul_plan(code, WGMMA)
    assert shape.config == MatmulConfig(128, 256, 64, 4, "bf16", True, overlap=True)
    assert shape.wgmma.swap and shape.wgmma.a_boxes == 2 and shape.wgmma.a.spec.box == (64, 64)


def test_small_products_get_tiles_that_fill_the_gpu():
    code, *_ = matmul(1024, 1024, 1024)
    assert matmul_plan(code, WGMMA).config.block_cols == 64  # 8 x 16 blocks


def test_a_wgmma_configuration_is_never_taken_as_an_mma_sync_one():
    code, *_ = matmul(200, 300, 150)  # b's stride of 150 floats is not 16-byte aligned
    shape = matmul_plan(code, WGMMA)
    key = gpu_matmul.config_key(shape, "tf32")
    config = MatmulConfig(128, 128, 32, 4, "tf32", True)
    options = GpuOptions(allow_tf32=True, wgmma=True, matmul_configs={key: config})
    assert matmul_plan(code, options).config == gpu_matmul.default_config(shape, "tf32")


def test_batch_loops_become_tensor_map_dimensions(monkeypatch):
    # Unmerged: loop merging would make this batch and the rows one 192-row product.
    monkeypatch.setattr(lowering, "GPU_PASSES", lowering.PASSES)
    code, *_ = batched(3, 64, 40, 96)
    shape = matmul_plan(code, WGMMA)
    w = shape.wgmma
    assert w.b.spec.dims == (40, 64, 3) and w.b.spec.strides == (40, 64 * 40)
    assert w.b.spec.box == (32, shape.config.block_cols, 1)
    assert w.a.spec.dims == (96, 40) and w.a.batch == ()  # b is shared by the batch


def batched(batch, m, k, n):
    """`c[h] =:+ a[h] * b`: a batched product with an operand shared by the batch."""
    a, b = TNode("a", (batch, m, k)), TNode("b", (k, n))
    c = TNode("c", (batch, m, n))
    h, i, j, r = (Iterator(name=s) for s in "hijr")
    projections = Projections((batch, m, n, k), (h, i, j, r), (h, i, j), ((h, i, r), (r, j)))
    return Accum(c, "add", "mul", (a, b), projections, True), a, b, c


# ---- the source, compiled for sm_90a -------------------------------------------------------


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
@pytest.mark.parametrize(("transpose_a", "transpose_b"), [(False, False), (False, True)])
def test_kernel_compiles_to_hgmma_and_tma_without_spills(tmp_path, kind, transpose_a, transpose_b):
    if kind == "tf32":
        code, *_ = matmul(4096, 4096, 4096, transpose_a=transpose_a, transpose_b=transpose_b)
    else:
        code, *_ = matmul16(4096, 4096, 4096, BFLOAT16, transpose_a, transpose_b)
    source = generate(compile_to_ir(code, True), "ocannl_wg", WGMMA).source
    headers = ""
    if kind == "bf16":  # the dtype's header and helpers come with the dtype (see test_cuda_mma16)
        source = "\n".join(
            line for line in source.splitlines() if not line.startswith("OCANNL_FN __nv_bfloat16 ")
        )
        headers = "#include <cuda_bf16.h>"
    cubin = nvcc_cubin(source, tmp_path, "sm_90a", headers)
    usage = resources(cubin)["ocannl_wg_k0"]
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0
    log = (tmp_path / "ptxas.log").read_text()
    assert "serialized" not in log, log  # ptxas serializes wgmma it cannot keep in flight
    code_of = sass(cubin)["ocannl_wg_k0"]
    shape = "64x256x8.F32.TF32" if kind == "tf32" else "64x256x16.F32.BF16"
    assert code_of.count(f"HGMMA.{shape}") == 4  # one 128-byte deep tile: 4 products
    assert "UTMALDG.2D" in code_of and "SYNCS.PHASECHK" in code_of
    assert ("LDSM" in code_of) == (kind == "bf16")


def test_overlapped_kernel_keeps_products_in_flight_across_tiles(tmp_path):
    code, *_ = matmul(4096, 4096, 4096)
    config = MatmulConfig(128, 256, 32, 4, "tf32", True, overlap=True)
    source = generate(compile_to_ir(code, True), "ocannl_wg", with_config(code, config)).source
    cubin = nvcc_cubin(source, tmp_path, "sm_90a")
    assert resources(cubin)["ocannl_wg_k0"]["LOCAL"] == 0
    log = (tmp_path / "ptxas.log").read_text()
    assert "serialized" not in log, log
    code_of = sass(cubin)["ocannl_wg_k0"]
    assert code_of.count("HGMMA.64x256x8.F32.TF32") == 4
    # Each tile waits for all but the newest product (4 waits); one full wait after the loop.
    assert code_of.count("WARPGROUP.DEPBAR.LE gsb0, 0x1") == 4
    assert code_of.count("WARPGROUP.DEPBAR.LE gsb0, 0x0") == 1


# ---- values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "k", "n", "transpose_a", "transpose_b"),
    [
        (200, 300, 152, False, False),
        (136, 72, 80, False, True),
        (72, 40, 260, True, True),
        (64, 4, 64, False, False),
        (72, 24, 1160, False, False),  # 10 A tiles: a group of 8 and a partial one
    ],
)
def test_tf32_wgmma_is_exact_on_integers(run, m, k, n, transpose_a, transpose_b):
    rng = np.random.default_rng(m + k + n)
    code, a, b, c = matmul(m, k, n, transpose_a=transpose_a, transpose_b=transpose_b)
    x, y = fill(rng, a, b, transpose_a, transpose_b)
    c.set_host(np.full((m, n), np.nan, np.float32))
    ran = run(code, WGMMA)
    assert ran.plans[0].matmul.wgmma is not None
    np.testing.assert_array_equal(c.host(), x @ y)


@pytest.mark.parametrize(
    "config",
    gpu_matmul.candidates("tf32", wgmma=True),
    ids=MatmulConfig.describe,
)
def test_every_wgmma_candidate_is_exact_on_integers(run, config):
    rng = np.random.default_rng(3)
    m, k, n = 136, 100, 264  # partial tiles along every axis
    code, a, b, c = matmul(m, k, n)
    x, y = fill(rng, a, b)
    c.set_host(np.full((m, n), np.nan, np.float32))
    ran = run(code, with_config(code, config))
    assert ran.plans[0].matmul.config == config
    np.testing.assert_array_equal(c.host(), x @ y)


@pytest.mark.parametrize(
    "config",
    [
        *(c for c in gpu_matmul.candidates("tf32", wgmma=True) if c.overlap),
        MatmulConfig(128, 64, 32, 2, "tf32", True, overlap=True),  # refilled right after release
    ],
    ids=MatmulConfig.describe,
)
def test_overlapped_wgmma_is_exact_over_many_tiles(run, config):
    """Stages refilled many times over while a tile's last product is still in flight."""
    rng = np.random.default_rng(5)
    m, k, n = 136, 600, 264  # 19 tiles of k, the last partial
    code, a, b, c = matmul(m, k, n)
    x, y = fill(rng, a, b)
    c.set_host(np.full((m, n), np.nan, np.float32))
    ran = run(code, with_config(code, config))
    assert ran.plans[0].matmul.config == config
    np.testing.assert_array_equal(c.host(), x @ y)


def test_tf32_wgmma_random_values_are_within_tf32_rounding(run):
    rng = np.random.default_rng(4)
    m, k, n = 256, 320, 264
    code, a, b, c = matmul(m, k, n, zero_first=False)
    x, y = fill(rng, a, b, integers=False)
    start = rng.standard_normal((m, n)).astype(np.float32)
    c.set_host(start)
    run(code, WGMMA)
    expected = start + x @ y
    assert np.linalg.norm(c.host() - expected) / np.linalg.norm(expected) < 1e-3


def test_batched_wgmma_is_exact_on_integers(run):
    rng = np.random.default_rng(5)
    code, a, b, c = batched(3, 72, 40, 136)
    x = rng.integers(-4, 5, a.dims).astype(np.float32)
    y = rng.integers(-4, 5, b.dims).astype(np.float32)
    a.set_host(x)
    b.set_host(y)
    c.set_host(np.full(c.dims, np.nan, np.float32))
    ran = run(code, WGMMA)
    assert ran.plans[0].matmul.wgmma is not None
    np.testing.assert_array_equal(c.host(), x.astype(np.float64) @ y)


@pytest.mark.parametrize("dtype", [BFLOAT16, FLOAT16], ids=["bf16", "f16"])
@pytest.mark.parametrize(
    ("m", "k", "n", "transpose_a", "transpose_b"),
    [(200, 136, 72, False, False), (136, 72, 80, False, True), (64, 48, 200, True, True)],
)
def test_16_bit_wgmma_is_exact_on_integers(dtype, m, k, n, transpose_a, transpose_b):
    emulator_only()  # no 16-bit dtypes in the backend yet
    run16 = runner("emulator")
    rng = np.random.default_rng(m + n)
    code, a, b, c = matmul16(m, k, n, dtype, transpose_a, transpose_b)
    x = rng.integers(-4, 5, a.dims).astype(np.float32)
    y = rng.integers(-4, 5, b.dims).astype(np.float32)
    a.set_host(x)
    b.set_host(y)
    c.set_host(np.full((m, n), np.nan, np.float32))
    ran = run16(code, WGMMA)
    assert ran.plans[0].matmul.wgmma is not None
    x = x.T if transpose_a else x
    y = y.T if transpose_b else y
    np.testing.assert_array_equal(c.host(), x.astype(np.float64) @ y)


# ---- the emulator catches broken kernels ---------------------------------------------------

BROKEN = {
    "fragments read without the swizzle": ("^ ((k + 0) & 7)", ""),
    "8-row groups of B at 512 bytes": ("(64ull << 32)", "(32ull << 32)"),
    "a stage refilled before the consumers release it": (
        "if (tile >= 4) ocannl_mbarrier_wait(&empty[stage]",
        "if (false) ocannl_mbarrier_wait(&empty[stage]",
    ),
    "a stage released while its products are in flight": (
        "      ocannl_wgmma_wait<0>();\n      ocannl_fence_operands<64>(acc);\n"
        "      ocannl_mbarrier_arrive(&empty[stage]);\n",
        "      ocannl_mbarrier_arrive(&empty[stage]);\n      ocannl_wgmma_wait<0>();\n"
        "      ocannl_fence_operands<64>(acc);\n",
    ),
    "a stage read before it is full": ("ocannl_mbarrier_wait(&full[stage], (tile / 4) & 1);", ""),
    "no barrier after the mbarrier initialization": (
        "  __syncthreads();\n  if (threadIdx.x < 128)",
        "  if (threadIdx.x < 128)",
    ),
    "tiles not aligned to 1024 bytes": ("(((raw + 1023u) & ~1023u) - raw)", "0"),
    "fragment registers reused while their product is in flight": (
        "if (ks >= 2) ocannl_wgmma_wait<1>();",
        "",
    ),
    "accumulator rows 8 apart swapped with columns": ("((q / 2) % 2) * 8", "(q % 2) * 8"),
}


@pytest.mark.parametrize("mistake", list(BROKEN))
def test_a_broken_wgmma_kernel_fails_on_the_emulator(mistake):
    emulator_only()
    old, new = BROKEN[mistake]
    m, k, n = 200, 300, 152
    code, a, b, c = matmul(m, k, n)
    x, y = fill(np.random.default_rng(6), a, b)
    options = with_config(code, MatmulConfig(128, 128, 32, 4, "tf32", True))
    stmt = compile_to_ir(code, True)

    def edit(source: str) -> str:
        assert old in source, f"{old!r} is not in the kernel"
        return source.replace(old, new)

    intact = EmulatedRoutine(stmt, options)
    intact.run(seed=1)
    np.testing.assert_array_equal(c.host(), x @ y)
    broken = EmulatedRoutine(stmt, options, edit=edit)
    c.set_host(np.full((m, n), np.nan, np.float32))
    with pytest.raises(AssertionError) as failure:
        broken.run(seed=1)
        np.testing.assert_array_equal(c.host(), x @ y)
    assert "ocannl_routine_k0" in str(failure.value) or "Arrays are not equal" in str(failure.value)


OVERLAP_BROKEN = {
    "a stage released while its last product is in flight": (
        "if (ks == 1) ocannl_mbarrier_arrive(release);",
        "if (ks == 0) ocannl_mbarrier_arrive(release);",
    ),
    "fragment registers reused across tiles while their product is in flight": (
        "ocannl_wgmma_wait<1>();\n        if (ks == 1) ocannl_mbarrier_arrive",
        "if (tile == 0 || ks >= 2) ocannl_wgmma_wait<1>();\n        if (ks == 1) ocannl_mbarrier_arrive",
    ),
}


@pytest.mark.parametrize("mistake", list(OVERLAP_BROKEN))
def test_a_broken_overlapped_wgmma_kernel_fails_on_the_emulator(mistake):
    emulator_only()
    old, new = OVERLAP_BROKEN[mistake]
    m, k, n = 136, 600, 152
    code, a, b, c = matmul(m, k, n)
    x, y = fill(np.random.default_rng(7), a, b)
    options = with_config(code, MatmulConfig(128, 128, 32, 2, "tf32", True, overlap=True))
    stmt = compile_to_ir(code, True)

    def edit(source: str) -> str:
        assert old in source, f"{old!r} is not in the kernel"
        return source.replace(old, new)

    intact = EmulatedRoutine(stmt, options)
    intact.run(seed=1)
    np.testing.assert_array_equal(c.host(), x @ y)
    broken = EmulatedRoutine(stmt, options, edit=edit)
    c.set_host(np.full((m, n), np.nan, np.float32))
    with pytest.raises(AssertionError) as failure:
        broken.run(seed=1)
        np.testing.assert_array_equal(c.host(), x @ y)
    assert "ocannl_routine_k0" in str(failure.value) or "Arrays are not equal" in str(failure.value)


# ---- the host side: tensor maps, without a driver -----------------------------------------


class FakeDriver:
    """Stands in for libcuda: records cuTensorMapEncodeTiled's arguments, writes a marker."""

    def __init__(self):
        self.calls = []

    def __call__(self, name):
        assert name == "libcuda.so.1"
        return self

    @property
    def cuTensorMapEncodeTiled(self):
        import ctypes

        def encode(out, dtype, rank, address, dims, strides, box, elements, *modes):
            n = rank.value
            self.calls.append(
                {
                    "aligned": out.value % 64 == 0,
                    "dtype": dtype.value,
                    "address": address.value,
                    "dims": list(dims)[:n],
                    "strides": list(strides)[: n - 1],
                    "box": list(box)[:n],
                    "elements": list(elements)[:n],
                    "modes": [m.value for m in modes],
                }
            )
            ctypes.memset(out.value, 0xAB, 128)
            return 0

        encode.restype = None
        return encode


def test_tensor_maps_are_encoded_with_byte_strides_and_written_to_their_buffers(monkeypatch):
    import ctypes

    from arrayjit.backends.cuda import launch

    # Unmerged: loop merging would make this batch and the rows one 216-row product.
    monkeypatch.setattr(lowering, "GPU_PASSES", lowering.PASSES)
    code, *_ = batched(3, 72, 40, 136)
    plan = matmul_plan(code, WGMMA)
    driver = FakeDriver()
    monkeypatch.setattr(ctypes, "CDLL", driver)

    class Buffer:
        def __init__(self, handle):
            self.handle, self.copied = handle, None

        def copy_from(self, staging, stream):
            self.copied = ctypes.string_at(staging.handle, 128)

    class Backend:
        class pinned:
            keep = []

            @staticmethod
            def allocate(size):
                memory = ctypes.create_string_buffer(size)
                Backend.pinned.keep.append(memory)
                return Buffer(ctypes.addressof(memory))

        class stream:
            @staticmethod
            def sync():
                pass

    w = plan.wgmma
    tnodes = [w.a.spec.tnode, w.b.spec.tnode, *w.maps]
    arguments = [Buffer(0x10000), Buffer(0x20000), Buffer(0), Buffer(0)]
    launch.write_tensor_maps(
        Backend, dict(zip(w.maps, (w.a.spec, w.b.spec), strict=True)), tnodes, arguments
    )
    a_call, b_call = driver.calls
    assert all(call["aligned"] and call["dtype"] == 7 for call in driver.calls)  # FLOAT32
    # b (shared by the batch, 40 x 136, contiguous along the columns) is the register operand.
    assert a_call["address"] == 0x10000 and a_call["dims"] == [136, 40]
    assert a_call["strides"] == [136 * 4] and a_call["box"] == [32, 32]
    # a (3 x 72 x 40, contiguous along k): K-major, its batch a third dimension.
    assert b_call["address"] == 0x20000 and b_call["dims"] == [40, 72, 3]
    assert b_call["strides"] == [40 * 4, 72 * 40 * 4]
    assert b_call["box"] == [32, plan.config.block_cols, 1]
    # No interleave, 128-byte swizzle, 128-byte L2 promotion, zeros outside.
    assert all(call["elements"] == [1] * len(call["dims"]) for call in driver.calls)
    assert all(call["modes"] == [0, 3, 2, 0] for call in driver.calls)
    assert arguments[2].copied == arguments[3].copied == b"\xab" * 128


# ---- the backend's side, on a simulated GPU (see test_cuda_simulated) ----------------------


@pytest.fixture
def simulated(launches, monkeypatch):  # noqa: F811 (the imported fixture)
    """The simulated GPU (device buffers' addresses: their ids; any shared memory), its NVRTC
    compiles' architectures and the driver's tensor maps."""
    import ctypes

    import test_cuda_simulated

    from arrayjit.backends import cuda as backend
    from arrayjit.backends.cuda import nvrtc

    monkeypatch.setattr(test_cuda_simulated.DeviceBuffer, "handle", property(id), raising=False)
    config = sys.modules["cuda.core"].LaunchConfig
    monkeypatch.setattr(
        backend,
        "kernel_config",
        lambda kernel, name, grid, block, shared, device: (kernel, config(grid, block, shared)),
    )
    arches = []
    compile_module = nvrtc._nvrtc_compile
    monkeypatch.setattr(
        nvrtc,
        "_nvrtc_compile",
        lambda source, arch, path: arches.append(arch) or compile_module(source, arch, path),
    )
    driver = FakeDriver()
    monkeypatch.setattr(ctypes, "CDLL", driver)
    return arches, driver


def test_a_wgmma_routine_is_built_for_sm_90a_with_its_tensor_maps_written(simulated):
    from arrayjit.runtime.runtime import Runtime

    arches, driver = simulated
    gpu = Runtime("cuda")
    gpu.backend.allow_tf32 = True
    code, a, b, c = matmul(256, 96, 264)
    fill(np.random.default_rng(8), a, b)
    compiled = gpu.compile(code, "tf32").compiled
    (plan,) = compiled.plans
    assert plan.matmul.wgmma is not None and arches == ["90a"]
    maps = [compiled.tnodes.index(t) for t in plan.matmul.wgmma.maps]
    assert all(bytes(compiled.arguments[k].data) == b"\xab" * 128 for k in maps)
    operands = [id(compiled.arguments[compiled.tnodes.index(t)]) for t in (a, b)]
    assert sorted(call["address"] for call in driver.calls) == sorted(operands)


def test_a_bound_wgmma_routine_writes_a_tensor_map_once_both_its_buffers_are_bound(
    simulated, monkeypatch
):
    import ctypes

    from arrayjit.runtime.runtime import Runtime

    arches, driver = simulated
    written = {}

    class Target:
        def __init__(self, address: int, nbytes: int) -> None:
            self.address, self.nbytes = address, nbytes

        def copy_from(self, staging, stream) -> None:
            written[self.address] = ctypes.string_at(staging.handle, self.nbytes)

    core = sys.modules["cuda.core"]
    monkeypatch.setattr(core, "Buffer", types.SimpleNamespace(from_handle=Target), raising=False)
    gpu = Runtime("cuda")
    gpu.backend.allow_tf32 = True
    code, a, b, c = matmul(256, 96, 264)
    compiled = gpu.compile(code, "tf32_bound", bound=True).compiled
    (plan,) = compiled.plans
    w = plan.matmul.wgmma
    map_a, operand_a = (compiled.tnodes.index(t) for t in (w.maps[0], w.a.spec.tnode))
    compiled.bind(map_a, 0x1000)
    assert not written and not driver.calls  # the operand's address is not known yet
    compiled.bind(operand_a, 0x40000)
    assert written == {0x1000: b"\xab" * 128}
    assert driver.calls[-1]["address"] == 0x40000 + w.a.spec.offset * 4
    compiled.bind(operand_a, 0x80000)  # bound elsewhere: its map follows
    assert driver.calls[-1]["address"] == 0x80000 + w.a.spec.offset * 4

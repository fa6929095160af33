"""The CUDA backend: the clear error without a GPU, how routines are split into kernels (both run
anywhere), and on a GPU the values against numpy, lazy copies, uploads, NVRTC errors and the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum
from arrayjit.backends import cuda
from arrayjit.backends.cuda import memory, nvrtc
from arrayjit.codegen import cuda_syntax
from arrayjit.errors import CompileError
from arrayjit.indexing import Fixed, Iterator, Projections, identity_projections
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime import residency
from arrayjit.runtime.runtime import Runtime, cuda_usable
from arrayjit.schedule import gpu_kernels
from arrayjit.threefry import uniform_reference
from arrayjit.tnode import MemoryMode, TNode

needs_gpu = pytest.mark.skipif(
    not cuda_usable(), reason="CUDA backend: no usable NVIDIA GPU, driver or cuda-python here"
)


def matmul(a: TNode, b: TNode, c: TNode, zero_first: bool = True) -> Accum:
    (m, k), (_, n) = a.dims, b.dims
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    projections = Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j)))
    return Accum(c, "add", "mul", (a, b), projections, zero_first)


def pointwise(lhs: TNode, op: str, *rhses: TNode) -> Accum:
    return Accum(lhs, None, op, rhses, identity_projections(lhs.dims, len(rhses)))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    expected = expected.astype(np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# ---- without a GPU -----------------------------------------------------------------------


def test_context_cuda_without_gpu_is_a_clear_error(monkeypatch):
    """Whatever the machine, a missing GPU reads as one sentence, not a traceback."""
    monkeypatch.setattr(cuda, "unavailable_reason", lambda: "the NVIDIA driver sees no device")
    with pytest.raises(RuntimeError, match=r'Context\("cuda"\) cannot run here: the NVIDIA driver'):
        Runtime("cuda")
    assert not cuda_usable()
    assert Runtime().name == "c"


@pytest.mark.skipif(cuda_usable(), reason="this machine has a usable GPU")
def test_context_cuda_on_this_machine_says_why():
    with pytest.raises(RuntimeError, match=r'cannot run here: .*Use Context\("c"\)') as info:
        Runtime("cuda")
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert Runtime().name == "c"


def test_unavailable_reason_never_raises():
    reason = cuda.unavailable_reason()
    assert reason is None or isinstance(reason, str)
    assert cuda.cuda_available() == (reason is None)


# ---- kernel formation (pure Python: runs anywhere) ---------------------------------------


def plans_for(code) -> list[gpu_kernels.KernelPlan]:
    return gpu_kernels.plan_kernels(compile_to_ir(code, reductions_innermost=True))


def test_matmul_nest_is_one_tiled_kernel():
    a, b, c = TNode("a", (64, 48)), TNode("b", (48, 40)), TNode("c", (64, 40))
    (plan,) = plans_for(matmul(a, b, c))
    assert plan.matmul is not None
    assert [loop.extent for loop in plan.grid] == [64, 40]
    assert plan.matmul.reduction.extent == 48


def test_small_matmul_is_one_thread_per_cell():
    a, b, c = TNode("a", (8, 5)), TNode("b", (5, 6)), TNode("c", (8, 6))
    (plan,) = plans_for(matmul(a, b, c))
    assert plan.matmul is None and plan.cells == 48


def test_full_reduction_is_one_kernel_without_grid_loops():
    """Its values are reduced by a block of threads (see test_cuda_reductions.py)."""
    x, total = TNode("x", (10, 7)), TNode("total", (1,))
    i, j = Iterator(name="i"), Iterator(name="j")
    code = Accum(
        total, "add", "identity", (x,), Projections((10, 7), (i, j), (Fixed(0),), ((i, j),))
    )
    (plan,) = plans_for(code)
    assert plan.grid == [] and len(plan.body) == 3


def test_fill_then_diagonal_update_is_two_kernels_in_order():
    x, out = TNode("x", (6, 6)), TNode("out", (6, 6))
    i, j = Iterator(name="i"), Iterator(name="j")
    code = Accum(out, "add", "identity", (x,), Projections((6, 6), (i, j), (i, i), ((i, j),)), True)
    fill, update = plans_for(code)
    assert fill.cells == 36 and update.grid == []


def test_hoisted_local_is_recomputed_by_the_kernel_that_reads_it():
    x, w, y = TNode("x", (16, 8)), TNode("w", (1,)), TNode("y", (16, 8))
    i, j = Iterator(name="i"), Iterator(name="j")
    projections = Projections((16, 8), (i, j), (i, j), ((i, j), (Fixed(0),)))
    (plan,) = plans_for(Accum(y, None, "mul", (x, w), projections))
    assert [loop.extent for loop in plan.grid] == [16, 8]
    assert len(plan.prologue) == 1 and ir.read_tnodes(plan.prologue[0]) == {w}


def test_local_whose_source_is_overwritten_before_a_later_kernel_falls_back_to_one_thread():
    """`h := w[0]; w[i] := 0; y[i] := h`: recomputing h in the second kernel would read the new w."""
    w, y = TNode("w", (4,)), TNode("y", (4,))
    i, j = Iterator(name="i"), Iterator(name="j")
    h = ir.Local("h", w.dtype)
    stmt = ir.Block(
        (
            ir.DeclLocal("h", w.dtype, ir.Get(w, (Fixed(0),))),
            ir.For(i, 4, ir.Set(w, (i,), ir.Const(0.0, w.dtype)), parallel=True),
            ir.For(j, 4, ir.Set(y, (j,), h), parallel=True),
        )
    )
    (plan,) = gpu_kernels.plan_kernels(stmt)
    assert plan.grid == [] and len(plan.body) == 3
    # Without the overwrite, each kernel recomputes h itself.
    reads_only = ir.Block((stmt.stmts[0], stmt.stmts[2], stmt.stmts[2]))
    plans = gpu_kernels.plan_kernels(reads_only)
    assert [len(p.prologue) for p in plans] == [1, 1] and all(p.grid for p in plans)


def test_source_has_one_kernel_per_nest_and_no_libc_headers():
    x, out = TNode("x", (6, 6)), TNode("out", (6, 6))
    i, j = Iterator(name="i"), Iterator(name="j")
    code = Accum(out, "max", "identity", (x,), Projections((6, 6), (i, j), (i, i), ((i, j),)), True)
    stmt = compile_to_ir(code, reductions_innermost=True)
    plans = gpu_kernels.plan_kernels(stmt)
    source, launches = cuda_syntax.kernel_source(
        cuda_syntax.CudaSyntax(), plans, ir.tnodes_in(stmt), "ocannl_f", stmt
    )
    assert source.count('extern "C" __global__') == 2
    assert [name for name, _, _ in launches] == ["ocannl_f_k0", "ocannl_f_k1"]
    assert "#include" not in source and "-INFINITY" in source


# ---- on a GPU ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu() -> Runtime:
    if not cuda_usable():
        pytest.skip("CUDA backend: no usable NVIDIA GPU, driver or cuda-python here")
    return Runtime("cuda")


@needs_gpu
def test_virtual_pointwise_chain_is_one_kernel_matching_numpy(gpu):
    n = 10_000
    x, y = TNode("x", (n,)), TNode("y", (n,))
    exp_x = TNode("exp_x", (n,), memory_mode=MemoryMode.VIRTUAL)
    times_x = TNode("times_x", (n,), memory_mode=MemoryMode.VIRTUAL)
    one = TNode("one", (1,))
    i = Iterator()
    add_one = Accum(
        y, None, "add", (times_x, one), Projections((n,), (i,), (i,), ((i,), (Fixed(0),)))
    )
    code = pointwise(exp_x, "exp", x) + pointwise(times_x, "mul", exp_x, x) + add_one
    values = np.random.default_rng(0).normal(size=n).astype(np.float32)
    x.set_host(values)
    one.set_host(1.0)
    routine = gpu.compile(code)
    routine.run()
    assert len(routine.compiled.kernels) == 1
    np.testing.assert_allclose(y.host(), np.exp(values) * values + 1, rtol=1e-6, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("accum", ["add", "max", "min"])
def test_row_and_full_reductions_match_numpy(gpu, accum):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(300, 77)).astype(np.float64)
    x, rows, total = TNode("x", (300, 77), "float64"), TNode("rows", (300,), "float64"), None
    total = TNode("total", (1,), "float64")
    i, j = Iterator(name="i"), Iterator(name="j")
    code = Accum(
        rows, accum, "identity", (x,), Projections((300, 77), (i, j), (i,), ((i, j),)), True
    )
    code = code + Accum(
        total, accum, "identity", (x,), Projections((300, 77), (i, j), (Fixed(0),), ((i, j),)), True
    )
    x.set_host(values)
    gpu.compile(code).run()
    reduce = {"add": np.add, "max": np.maximum, "min": np.minimum}[accum].reduce
    np.testing.assert_allclose(rows.host(), reduce(values, axis=1), rtol=1e-12)
    np.testing.assert_allclose(total.host()[0], reduce(values.ravel()), rtol=1e-12)


@needs_gpu
@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "one_thread_per_cell"])
@pytest.mark.parametrize(("m", "k", "n"), [(130, 37, 67), (64, 256, 96), (33, 3, 200)])
def test_matmul_matches_numpy(gpu, tiled, m, k, n):
    rng = np.random.default_rng(m * n + k)
    x = rng.standard_normal((m, k), dtype=np.float32)
    y = rng.standard_normal((k, n), dtype=np.float32)
    initial = rng.standard_normal((m, n), dtype=np.float32)
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    a.set_host(x)
    b.set_host(y)
    c.set_host(initial)
    gpu.backend.tile_matmul = tiled
    try:
        routine = gpu.compile(matmul(a, b, c, zero_first=False))
    finally:
        gpu.backend.tile_matmul = True
    assert (routine.compiled.plans[0].matmul is not None) == tiled
    routine.run()
    expected = initial.astype(np.float64) + x.astype(np.float64) @ y.astype(np.float64)
    assert relative_error(c.host(), expected) < 1e-5
    routine.run()
    assert relative_error(c.host(), expected + x.astype(np.float64) @ y.astype(np.float64)) < 1e-5


@needs_gpu
def test_batched_matmul_with_max_plus_is_tiled_and_exact(gpu):
    """A (max, +) product: the tiled kernel keeps the op and the order of the reduction."""
    rng = np.random.default_rng(5)
    batch, m, k, n = 3, 40, 19, 50
    x = rng.standard_normal((batch, m, k))
    y = rng.standard_normal((batch, k, n))
    a, b = TNode("a", (batch, m, k), "float64"), TNode("b", (batch, k, n), "float64")
    c = TNode("c", (batch, m, n), "float64")
    h, i, j, r = (Iterator(name=s) for s in "hijr")
    projections = Projections((batch, m, n, k), (h, i, j, r), (h, i, j), ((h, i, r), (h, r, j)))
    a.set_host(x)
    b.set_host(y)
    routine = gpu.compile(Accum(c, "max", "add", (a, b), projections, True))
    assert len(routine.compiled.kernels) == 1
    assert routine.compiled.kernels[0][1].grid == (1, 1, batch)
    routine.run()
    np.testing.assert_array_equal(c.host(), (x[:, :, :, None] + y[:, None, :, :]).max(axis=2))


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_at_matches_the_reference_bit_for_bit(gpu, dtype):
    n = 4096
    seed, counter, out = (
        TNode("seed", (1,), dtype),
        TNode("counter", (n,), dtype),
        TNode("out", (n,), dtype),
    )
    seed.set_host(1234)
    counter.set_host(np.arange(n))
    i = Iterator()
    projections = Projections((n,), (i,), (i,), ((Fixed(0),), (i,)))
    gpu.compile(Accum(out, None, "uniform_at", (seed, counter), projections)).run()
    expected = uniform_reference(
        np.full(n, 1234, dtype), np.arange(n, dtype=dtype), np.dtype(dtype)
    )
    np.testing.assert_array_equal(out.host(), expected)


@needs_gpu
def test_values_come_back_only_when_read(gpu, monkeypatch):
    fetches = []
    original = memory.DeviceCopy.fetch

    def counting_fetch(self, host):
        fetches.append(self)
        original(self, host)

    monkeypatch.setattr(memory.DeviceCopy, "fetch", counting_fetch)
    x, y = TNode("x", (1000,)), TNode("y", (1000,))
    x.set_host(np.arange(1000.0))
    y.set_host(np.zeros(1000))
    routine = gpu.compile(pointwise(y, "neg", x))
    routine.run()
    routine.run()
    assert fetches == [] and not residency.of(y).is_current(residency.HOST)
    assert y._host[999] == 0  # the host array is stale until read
    assert y.host()[999] == -999 and len(fetches) == 1
    assert residency.of(y).is_current(residency.HOST)
    y.host()
    assert len(fetches) == 1  # fresh: no second copy
    routine.run()
    assert len(fetches) == 1 and y.host()[0] == 0 and len(fetches) == 2


@needs_gpu
def test_upload_happens_after_set_host_only(gpu, monkeypatch):
    uploads = []
    original = memory.DeviceCopy.upload

    def counting_upload(self, tnode):
        uploads.append(tnode)
        original(self, tnode)

    monkeypatch.setattr(memory.DeviceCopy, "upload", counting_upload)
    x, y = TNode("x", (64,)), TNode("y", (64,))
    x.set_host(np.ones(64))
    routine = gpu.compile(pointwise(y, "exp", x))
    routine.run()
    assert uploads == [x]  # y has no host values yet: no upload
    routine.run()
    assert uploads == [x]
    x.set_host(np.zeros(64))
    routine.run()
    assert uploads == [x, x]
    np.testing.assert_array_equal(y.host(), np.ones(64, np.float32))


@needs_gpu
def test_device_buffers_persist_between_routines_and_contexts(gpu):
    x = TNode("x", (100,))
    hidden = TNode("hidden", (100,), memory_mode=MemoryMode.DEVICE)
    y = TNode("y", (100,))
    x.set_host(np.arange(100.0) / 10)
    gpu.compile(pointwise(hidden, "sqrt", x)).run()
    gpu.compile(pointwise(y, "neg", hidden)).run()
    np.testing.assert_allclose(y.host(), -np.sqrt(np.arange(100.0) / 10), rtol=1e-6)
    # Another context reads y after this one wrote it: it gets the new values.
    z = TNode("z", (100,))
    other = Runtime("cuda")
    other.compile(pointwise(z, "neg", y)).run()
    gpu.compile(pointwise(y, "exp", x)).run()
    other.compile(pointwise(z, "neg", y)).run()
    np.testing.assert_allclose(z.host(), -np.exp(np.arange(100.0) / 10), rtol=1e-6)


@needs_gpu
def test_nvrtc_error_is_a_compile_error_with_log_and_source(gpu):
    source = 'extern "C" __global__ void broken() { undeclared_name = 1; }\n'
    with pytest.raises(CompileError, match="NVRTC failed") as info:
        nvrtc.build_cubin(source, gpu.backend.arch)
    assert "undeclared_name" in info.value.log
    assert Path(info.value.source_path).read_text() == source
    assert not Path(info.value.source_path).with_suffix(".cubin").exists()


@needs_gpu
def test_second_compile_of_the_same_code_is_a_cache_hit(gpu, monkeypatch):
    calls = []
    original = nvrtc._nvrtc_compile

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(nvrtc, "_nvrtc_compile", counting)

    def build():
        x, y = TNode("cache_probe_x", (321,)), TNode("cache_probe_y", (321,))
        x.set_host(np.full(321, 2.0))
        routine = gpu.compile(pointwise(y, "log2", x), "cache_probe")
        routine.run()
        assert (y.host() == 1).all()
        return routine.source_path

    first, second = build(), build()
    assert first == second and len(calls) == 1


def test_c_and_cuda_routines_share_buffers_coherently(gpu):
    """Values written by one backend are what the other reads, in both directions."""
    n = 64
    x, y, z = TNode("x", (n,)), TNode("y", (n,)), TNode("z", (n,))
    two = TNode("two", (n,))
    two.set_host(np.full(n, 2.0, np.float32))
    on_gpu = gpu.compile(pointwise(y, "mul", x, two))
    on_cpu = Runtime("c").compile(pointwise(z, "add", y, two))
    back_on_gpu = gpu.compile(pointwise(x, "mul", z, two))
    values = np.linspace(-1, 1, n, dtype=np.float32)
    x.set_host(values)
    on_gpu.run()  # y = 2x on the device
    on_cpu.run()  # z = y + 2 on the host: must fetch y from the device first
    np.testing.assert_allclose(z.host(), 2 * values + 2, rtol=1e-6)
    back_on_gpu.run()  # x = 2z on the device: must upload the z the host wrote
    np.testing.assert_allclose(x.host(), 4 * values + 4, rtol=1e-6)


@needs_gpu
def test_replayed_graph_reads_new_inputs_and_orders_with_other_routines(gpu):
    """After the first run the kernels replay as one CUDA graph: every run still sees the inputs
    uploaded before it, and a routine reading another's result sees the newest one."""
    from test_chunks import chain, reference

    n = 33
    code, x, weights, y = chain(4, n=n)
    rng = np.random.default_rng(5)
    values = [rng.normal(size=(n, n)).astype(np.float32) / n for _ in weights]
    for w, v in zip(weights, values, strict=True):
        w.set_host(v)
    routine = gpu.compile(code, "graph_chain")
    doubled = TNode("doubled", (n,))
    double = gpu.compile(pointwise(doubled, "add", y, y), "double")
    for _ in range(5):
        inputs = rng.normal(size=n).astype(np.float32)
        x.set_host(inputs)
        routine.run()
        double.run()
        expected = reference(inputs, values)
        np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(doubled.host(), 2 * expected, rtol=1e-5, atol=1e-6)
    assert routine.compiled._graph and double.compiled._graph

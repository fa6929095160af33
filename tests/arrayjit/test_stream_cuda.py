"""Streamed execution on a real GPU: the kernels of bound routines at the plan's addresses, weights
copied from pinned or memory-mapped host memory on the copy stream, results equal to the same
stack run as one ordinary routine and to numpy, memory within the budget by the driver's count,
and a long run that does not grow device memory. Skipped without a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from arrayjit.assignments import Accum, Arg, Call
from arrayjit.indexing import Iterator, Projections, identity_projections
from arrayjit.runtime.mapped import map_safetensors
from arrayjit.runtime.runtime import Runtime, cuda_usable
from arrayjit.runtime.stream_plan import aligned
from arrayjit.tnode import TNode

pytestmark = pytest.mark.skipif(not cuda_usable(), reason="no CUDA device here")

N, BATCH, LAYERS = 256, 8, 6


def stack():
    """`LAYERS` stages `y = relu(w @ x + x)` over x of N x BATCH: a tiled matmul kernel and a
    pointwise one per stage."""
    x = TNode("x", (N, BATCH))
    rng = np.random.default_rng(0)
    x.set_host(rng.standard_normal((N, BATCH)))
    stages, weights, y = [], [], x
    for k in range(LAYERS):
        w, product, out = (
            TNode(f"w{k}", (N, N)),
            TNode(f"wx{k}", (N, BATCH)),
            TNode(f"y{k}", (N, BATCH)),
        )
        i, j, c = Iterator(name="i"), Iterator(name="j"), Iterator(name="c")
        projections = Projections((N, BATCH, N), (i, c, j), (i, c), ((i, j), (j, c)))
        matmul = Accum(product, "add", "mul", (w, y), projections, zero_first=True)
        relu = Call("relu", (Call("add", (Arg(0), Arg(1))),))
        residual = Accum(out, None, relu, (product, y), identity_projections((N, BATCH), 2))
        w.set_host(rng.standard_normal((N, N)) / np.sqrt(N))
        stages.append(matmul + residual)
        weights.append(w)
        y = out
    return stages, x, weights, y


def free_device_bytes() -> int:
    from cuda.bindings import driver

    err, free, _ = driver.cuMemGetInfo()
    assert err == driver.CUresult.CUDA_SUCCESS
    return free


def reference(x, weights) -> np.ndarray:
    y = x.astype(np.float64)
    for w in weights:
        y = np.maximum(w.astype(np.float64) @ y + y, 0)
    return y


#: The activations of the stack, and two slots of stage 0 (w0 and the input x).
TWO_SLOTS = 2 * LAYERS * aligned(4 * N * BATCH) + 2 * (aligned(4 * N * N) + aligned(4 * N * BATCH))


@pytest.mark.parametrize(
    "slots, keep_resident, host_memory, keep_output_only",
    [
        (2, True, "pinned", False),
        (2, False, "pinned", False),
        (1, False, "pinned", False),
        (3, False, "mapped", False),
        (2, True, "pinned", True),
    ],
)
def test_streamed_equals_one_routine_on_the_gpu(
    slots, keep_resident, host_memory, keep_output_only
):
    gpu = Runtime("cuda")
    stages, x, weights, y = stack()
    gpu.compile(sum(stages[1:], stages[0]), "whole").run()
    expected = y.host().copy()
    np.testing.assert_allclose(
        expected, reference(x.host(), [w.host() for w in weights]), rtol=1e-4, atol=1e-4
    )
    budget = TWO_SLOTS + aligned(4 * N * N) * (slots - 1)
    before = free_device_bytes()
    streamed = gpu.compile_streamed(
        stages,
        budget,
        slots=slots,
        keep_resident=keep_resident,
        host_memory=host_memory,
        keep=[y] if keep_output_only else None,
    )
    assert streamed.plan.streamed
    y.set_host(np.zeros(y.dims))
    for _ in range(3):
        streamed.run()
    np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-5)
    drop = before - free_device_bytes()
    stats = streamed.stats
    assert stats.peak_device_bytes <= budget
    # The driver counts in pages and the kernels' modules: a few MiB of slack, no more.
    assert drop <= stats.peak_device_bytes + (8 << 20), (drop, stats)
    assert stats.bytes_copied == streamed.plan.streamed_bytes() and stats.copy_seconds > 0
    assert 0 <= stats.hidden_copy_seconds <= stats.copy_seconds


def test_weights_stream_from_a_memory_mapped_file_on_the_gpu(tmp_path):
    gpu = Runtime("cuda")
    stages, x, weights, y = stack()
    values = {
        w.label: np.random.default_rng(k).standard_normal(w.dims) / np.sqrt(N)
        for k, w in enumerate(weights)
    }
    save_file(values, str(tmp_path / "w.safetensors"))  # float64, converted to float32 tnodes
    mapped = map_safetensors(tmp_path / "w.safetensors")
    expected = reference(x.host(), [values[w.label] for w in weights])
    for host_memory in ("pinned", "mapped"):
        streamed = gpu.compile_streamed(
            stages,
            TWO_SLOTS,
            weights={w: mapped[w.label] for w in weights},
            host_memory=host_memory,
        )
        streamed.run()
        np.testing.assert_allclose(y.host(), expected, rtol=1e-4, atol=1e-4)


def test_a_long_run_does_not_grow_device_memory():
    gpu = Runtime("cuda")
    stages, x, weights, y = stack()
    streamed = gpu.compile_streamed(stages, TWO_SLOTS)
    for _ in range(5):
        streamed.run()
    streamed.synchronize()
    first = y.host().copy()
    # The backend's own pool, not the device-wide free memory other test processes move.
    before = pool_used_bytes(gpu.backend)
    for _ in range(1000):
        streamed.run()
    streamed.synchronize()
    assert pool_used_bytes(gpu.backend) == before  # nothing allocated per run
    np.testing.assert_array_equal(y.host(), first)


def pool_used_bytes(backend) -> int:
    """Bytes in use in the backend's stream-ordered memory pool."""
    from cuda.bindings import driver

    attribute = driver.CUmemPool_attribute.CU_MEMPOOL_ATTR_USED_MEM_CURRENT
    err, value = driver.cuMemPoolGetAttribute(backend.pool.handle, attribute)
    assert err == driver.CUresult.CUDA_SUCCESS, err
    return int(value)

"""The all-reduce of data-parallel training: the host mean (C replicas, tests) against numpy,
the checks on the buffers, and the NCCL mean on two GPUs (skipped without them)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrayjit.runtime import collectives
from arrayjit.tnode import TNode


@settings(max_examples=30, deadline=None)
@given(
    replicas=st.integers(1, 5),
    dims=st.lists(st.sampled_from([1, 3, 17]), min_size=1, max_size=3),
    count=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_host_mean_matches_numpy(replicas, dims, count, seed):
    rng = np.random.default_rng(seed)
    values = [
        [rng.normal(size=dims).astype(np.float32) for _ in range(count)] for _ in range(replicas)
    ]
    buffers = [[TNode(f"g{i}_r{r}", dims) for i in range(count)] for r in range(replicas)]
    for r in range(replicas):
        for i in range(count):
            buffers[r][i].set_host(values[r][i])
    collectives.HostMean(replicas).all_reduce(buffers)
    for i in range(count):
        expected = np.mean([values[r][i].astype(np.float64) for r in range(replicas)], axis=0)
        for r in range(replicas):
            np.testing.assert_allclose(buffers[r][i].host(), expected, rtol=1e-6, atol=1e-7)
            assert buffers[r][i].host().dtype == np.float32


def test_buffers_checked():
    a, b = TNode("a", [3]), TNode("b", [4])
    with pytest.raises(ValueError, match=r"'b' of replica 1 is .*\(4,\).*'a' of replica 0"):
        collectives.HostMean(2).all_reduce([[a], [b]])
    with pytest.raises(ValueError, match="different numbers of buffers"):
        collectives.HostMean(2).all_reduce([[a], []])
    with pytest.raises(ValueError, match="3 replicas but 2 lists"):
        collectives.HostMean(3).all_reduce([[a], [a]])
    with pytest.raises(ValueError, match="at least 1"):
        collectives.HostMean(0)


needs_two_gpus = pytest.mark.skipif(
    collectives.gpu_count() < 2, reason="needs two CUDA GPUs (the NCCL all-reduce)"
)


@needs_two_gpus
def test_nccl_mean_on_two_gpus():
    from arrayjit.backends.cuda import CudaBackend

    backends = [CudaBackend(0), CudaBackend(1)]
    nccl = collectives.NcclMean(backends)
    rng = np.random.default_rng(0)
    dims = [(17,), (3, 1000), (1,)]
    values = [[rng.normal(size=d).astype(np.float32) for d in dims] for _ in backends]
    buffers = [[TNode(f"g{i}_r{r}", d) for i, d in enumerate(dims)] for r in range(2)]
    for r, backend in enumerate(backends):
        backend.device.set_current()
        for i in range(len(dims)):
            buffers[r][i].set_host(values[r][i])
    streams = []
    for backend in backends:
        backend.device.set_current()  # a stream belongs to the current device
        streams.append(backend.device.create_stream())
    events = nccl.all_reduce(buffers, streams)
    for backend, event in zip(backends, events, strict=True):
        backend.device.set_current()
        event.sync()
    for i in range(len(dims)):
        expected = (values[0][i].astype(np.float64) + values[1][i]) / 2
        for r, backend in enumerate(backends):
            backend.device.set_current()
            np.testing.assert_allclose(buffers[r][i].host(), expected, rtol=1e-6, atol=1e-7)
    nccl.close()

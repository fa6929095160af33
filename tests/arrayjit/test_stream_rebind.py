"""Routines compiled with `bound=True` own no buffers: each buffer is placed with `bind`, and can
be placed again elsewhere between runs (the slots of a streaming plan)."""

from __future__ import annotations

import numpy as np
import pytest
from test_chunks import chain, reference
from test_cuda_simulated import launches  # noqa: F401, F811 - the simulated GPU fixture

from arrayjit.runtime.runtime import Runtime


def test_a_bound_routine_runs_over_the_arrays_it_is_given_and_rebinds_between_runs():
    code, x, weights, y = chain(3, n=17)
    routine = Runtime("c").compile(code, "chain", bound=True)
    assert routine.compiled.arrays == []  # nothing allocated for it
    rng = np.random.default_rng(0)
    arrays = {t: np.zeros(t.dims, np.float32) for t in routine.compiled.tnodes}
    for t, array in arrays.items():
        routine.bind(t, array.ctypes.data)
    arrays[x][:] = rng.standard_normal(17)
    for w in weights:
        arrays[w][:] = rng.standard_normal((17, 17)) / 4
    routine.run()
    expected = reference(arrays[x], [arrays[w] for w in weights])
    np.testing.assert_allclose(arrays[y], expected, rtol=1e-5, atol=1e-6)
    assert not y.has_host  # the tnode's own host array was never made
    # Move the first layer's weights to another array: the next run reads them there.
    other = (rng.standard_normal((17, 17)) / 4).astype(np.float32)
    routine.bind(weights[0], other.ctypes.data)
    routine.run()
    expected = reference(arrays[x], [other, *(arrays[w] for w in weights[1:])])
    np.testing.assert_allclose(arrays[y], expected, rtol=1e-5, atol=1e-6)


def test_a_bound_routine_will_not_run_before_every_buffer_is_placed():
    code, x, weights, y = chain(1, n=5)
    routine = Runtime("c").compile(code, "chain", bound=True)
    arrays = [np.zeros(t.dims, np.float32) for t in routine.compiled.tnodes]
    for t, array in zip(routine.compiled.tnodes, arrays, strict=True):
        if t is not weights[0]:
            routine.bind(t, array.ctypes.data)
    with pytest.raises(ValueError, match="not bound yet: w0"):
        routine.run()


def test_an_owned_routine_refuses_bind():
    code, x, weights, y = chain(1, n=5)
    routine = Runtime("c").compile(code, "chain")
    with pytest.raises(ValueError, match="bound=True"):
        routine.bind(x, np.zeros(5, np.float32).ctypes.data)
    with pytest.raises(KeyError, match="no buffer"):
        routine.bind(chain(1, n=5)[1], 0)


def test_bound_cuda_kernels_take_the_addresses_they_are_given(launches):  # noqa: F811
    gpu = Runtime("cuda")
    code, x, weights, y = chain(2, n=40)
    routine = gpu.compile(code, "chain", bound=True)
    assert len(gpu.backend.copies) == 0  # no device memory of its own
    tnodes = routine.compiled.tnodes
    address = {t: 4096 * (k + 1) for k, t in enumerate(tnodes)}
    for t in tnodes:
        routine.bind(t, address[t])
    routine.run()
    assert len(launches) == len(routine.compiled.kernels)
    assert launches[0][2][:2] == (address[weights[0]], address[x])
    assert launches[-1][2][-1] == address[y]
    assert routine.compiled._graph  # captured after the first run
    routine.bind(weights[0], 1 << 20)
    assert routine.compiled._graph is None  # its arguments are stale: captured again
    for _ in range(2):  # launched one by one, then replayed as a graph
        del launches[:]
        routine.run()
        assert launches[0][2][:2] == (1 << 20, address[x])
    assert routine.compiled._graph.replays == 1

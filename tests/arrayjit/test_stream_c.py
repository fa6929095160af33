"""Streamed execution on the C backend, for real: stages compiled as bound routines, weights
copied from their sources (host arrays, memory maps) into the plan's slots in the table's order;
results against numpy and against the same code compiled as one ordinary routine."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from test_chunks import layer, reference

from arrayjit.assignments import Accum
from arrayjit.indexing import Iterator, Projections, identity_projections
from arrayjit.runtime.mapped import map_safetensors
from arrayjit.runtime.runtime import Runtime
from arrayjit.runtime.stream_plan import StreamBudgetError, aligned
from arrayjit.runtime.streamed import overlap
from arrayjit.tnode import TNode


def stages(count: int, n: int, seed: int = 0):
    """`count` stages `y = relu(w @ x + x)`, inputs and weights given random values."""
    x = TNode("x", (n,))
    codes, weights, y = [], [], x
    for k in range(count):
        code, w, y = layer(y, n, k)
        codes.append(code)
        weights.append(w)
    rng = np.random.default_rng(seed)
    x.set_host(rng.standard_normal(n))
    for w in weights:
        w.set_host(rng.standard_normal((n, n)) / np.sqrt(n))
    return codes, x, weights, y


def layer_bytes(n: int) -> int:
    return aligned(4 * n * n)


def ring_budget(n: int, layers: int, slots: int) -> int:
    """The activations of `layers` stages and `slots` slots of stage 0's weights (w0 and x)."""
    return 2 * layers * aligned(4 * n) + slots * (layer_bytes(n) + aligned(4 * n))


@pytest.mark.parametrize(
    "budget_layers, slots",
    [(100, 2), (4, 2), (2, 2), (1, 1), (3, 3)],
    ids=["all-resident", "some-resident", "two-slots", "one-slot", "three-slots"],
)
def test_streamed_results_equal_one_routine_and_numpy(budget_layers, slots):
    n = 33
    codes, x, weights, y = stages(7, n)
    activations = aligned(4 * n) * 14  # the 7 products and the 7 outputs
    # A layer's weights; stage 0 also reads x, which no stage writes: it streams like a weight.
    budget = activations + budget_layers * (layer_bytes(n) + aligned(4 * n))
    streamed = Runtime("c").compile_streamed(codes, budget, slots=slots)
    plan = streamed.plan
    assert plan.total_bytes <= budget
    if budget_layers < 7:
        assert plan.streamed and len(plan.slot_offsets) == min(slots, budget_layers)
    streamed.run()
    expected = reference(x.host(), [w.host() for w in weights])
    np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-5)
    got = y.host().copy()
    whole = sum(codes[1:], codes[0])
    Runtime("c").compile(whole, "whole").run()
    np.testing.assert_array_equal(y.host(), got)  # same kernels, same order: same bits
    stats = streamed.stats
    assert stats.peak_device_bytes == plan.total_bytes <= budget
    # The first run sends every weight: the streamed ones and, once, the resident ones.
    assert stats.bytes_copied == 7 * 4 * n * n + 4 * n
    streamed.run()
    assert streamed.stats.bytes_copied == plan.streamed_bytes()
    assert 0 <= streamed.stats.hidden_copy_seconds <= streamed.stats.copy_seconds


def test_new_host_values_of_weights_and_inputs_are_used_by_the_next_run():
    n = 17
    codes, x, weights, y = stages(5, n)
    budget = ring_budget(n, 5, 3)
    streamed = Runtime("c").compile_streamed(codes, budget)
    assert streamed.plan.streamed and len(streamed.plan.streamed) < 5  # both kinds
    streamed.run()
    rng = np.random.default_rng(5)
    for k in (0, 4):
        weights[k].set_host(rng.standard_normal((n, n)))
    x.set_host(rng.standard_normal(n))
    streamed.run()
    expected = reference(x.host(), [w.host() for w in weights])
    np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-5)


def test_new_weights_of_the_stages_copied_ahead_are_used_by_the_next_run():
    # The first streamed stages' copies for a run are issued at the end of the one before:
    # weights changed in between must be copied again.
    n = 17
    codes, x, weights, y = stages(5, n)
    streamed = Runtime("c").compile_streamed(codes, ring_budget(n, 5, 2))
    leading = [streamed.table[k][1] for k in streamed.leading]
    assert leading == streamed.plan.streamed[:2]
    rng = np.random.default_rng(7)
    for _ in range(3):
        streamed.run()
        for stage in leading:
            (weights[stage] if stage else x).set_host(
                rng.standard_normal(weights[stage].dims if stage else n)
            )
    streamed.run()
    expected = reference(x.host(), [w.host() for w in weights])
    np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-5)


def test_state_written_by_a_stage_persists_between_runs():
    """A buffer a stage both reads and writes (as a KV cache) keeps its values across runs, and
    values set from the host reach it."""
    n = 9
    codes, x, weights, y = stages(2, n)
    total = TNode("total", (n,))
    accumulate = Accum(total, "add", "identity", (y,), identity_projections((n,), 1))
    streamed = Runtime("c").compile_streamed([codes[0], codes[1] + accumulate], 10**6)
    for _ in range(3):
        streamed.run()
    expected = reference(x.host(), [w.host() for w in weights])
    np.testing.assert_allclose(total.host(), 3 * expected, rtol=1e-5, atol=1e-5)
    total.set_host(np.zeros(n))
    streamed.run()
    np.testing.assert_allclose(total.host(), expected, rtol=1e-5, atol=1e-5)


def test_weights_stream_from_a_memory_mapped_safetensors_file(tmp_path):
    n = 24
    codes, x, weights, y = stages(4, n)
    values = {f"w{k}": np.random.default_rng(k).standard_normal((n, n)) for k in range(4)}
    save_file(values, str(tmp_path / "weights.safetensors"))  # float64: converted when copied
    mapped = map_safetensors(tmp_path / "weights.safetensors")
    assert isinstance(mapped["w0"].base, np.memmap)
    codes, h = [], x
    for k in range(4):
        code, weights[k], h = layer(h, n, k)  # new weight tnodes: no host arrays at all
        codes.append(code)
    streamed = Runtime("c").compile_streamed(
        codes, ring_budget(n, 4, 2), weights={w: mapped[w.label] for w in weights}
    )
    assert len(streamed.plan.streamed) == 4
    streamed.run()
    assert not any(w.has_host for w in weights)
    expected = reference(x.host(), [values[f"w{k}"] for k in range(4)])
    np.testing.assert_allclose(h.host(), expected, rtol=1e-5, atol=1e-5)


def test_a_long_run_does_not_grow_memory():
    n = 40
    codes, x, weights, y = stages(6, n)
    streamed = Runtime("c").compile_streamed(codes, ring_budget(n, 6, 2))
    assert len(streamed.plan.slot_offsets) == 2
    for _ in range(5):
        streamed.run()
    first = y.host().copy()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(500):
        streamed.run()
    streamed.synchronize()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, f"500 runs left {grown} more bytes allocated"
    assert streamed.stats.peak_device_bytes == streamed.plan.total_bytes
    assert streamed.stats.runs == 505
    np.testing.assert_array_equal(y.host(), first)


def test_a_budget_too_small_for_a_stage_fails_before_anything_runs():
    n = 33
    codes, x, weights, y = stages(3, n)
    with pytest.raises(StreamBudgetError, match=r"stage 0 \('stage0'\): it needs \d+ bytes"):
        Runtime("c").compile_streamed(codes, layer_bytes(n))


def test_weights_of_the_wrong_shape_are_refused():
    codes, x, weights, y = stages(2, 8)
    with pytest.raises(ValueError, match=r"'w1' have shape \(8, 7\).*dims are \(8, 8\)"):
        Runtime("c").compile_streamed(codes, 10**6, weights={weights[1]: np.zeros((8, 7))})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 60), min_size=0, max_size=16), st.lists(st.integers(0, 60), max_size=16)
)
def test_hidden_copy_time_is_the_overlap_of_copies_with_computes(copy_points, busy_points):
    """Against counting unit steps: disjoint sorted intervals from sorted distinct points."""

    def intervals(points):
        points = sorted(set(points))
        return [(float(a), float(b)) for a, b in zip(points[::2], points[1::2], strict=False)]

    copies, busy = intervals(copy_points), intervals(busy_points)
    expected = sum(
        1
        for t in range(60)
        if any(a <= t < b for a, b in copies) and any(a <= t < b for a, b in busy)
    )
    assert overlap(copies, busy) == pytest.approx(expected)


def test_a_failed_copy_is_an_error_of_the_run():
    class Unreadable:
        shape = (8, 8)

        def __array__(self, dtype=None, copy=None):
            raise OSError("the disk is gone")

    codes, x, weights, y = stages(3, 8)
    streamed = Runtime("c").compile_streamed(
        codes, ring_budget(8, 3, 2), weights={weights[1]: Unreadable()}, keep_resident=False
    )
    with pytest.raises(OSError, match="the disk is gone"):
        streamed.run()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_stream_in_their_tnodes_dtype(dtype):
    """The bytes streamed are those of the weight tnodes' dtype (half-precision weight tnodes
    halve them the same way), whatever the dtype of the sources, converted as they are copied."""
    n, count = 16, 3
    x = TNode("x", (n,))
    x.set_host(np.linspace(-1, 1, n))
    rng = np.random.default_rng(2)
    values = [rng.standard_normal((n, n)).astype(np.float32) for _ in range(count)]
    codes, weights, h = [], [], x
    for k in range(count):
        w, out = TNode(f"w{k}", (n, n), dtype), TNode(f"y{k}", (n,))
        i, j = Iterator(name="i"), Iterator(name="j")
        projections = Projections((n, n), (i, j), (i,), ((i, j), (j,)))
        codes.append(Accum(out, "add", "mul", (w, h), projections, zero_first=True))
        weights.append(w)
        h = out
    streamed = Runtime("c").compile_streamed(
        codes, 10**5, weights=dict(zip(weights, values, strict=True)), keep_resident=False
    )
    streamed.run()
    itemsize = np.dtype(dtype).itemsize
    assert streamed.stats.bytes_copied == count * n * n * itemsize + 4 * n  # and x, float32
    expected = x.host().astype(np.float64)
    for w in values:
        expected = w.astype(np.float64) @ expected
    np.testing.assert_allclose(h.host(), expected, rtol=1e-5, atol=1e-5)


def test_activations_not_kept_share_memory_and_results_stay_equal():
    n = 33
    codes, x, weights, y = stages(7, n)
    everything = Runtime("c").compile_streamed(codes, 10**6, keep_resident=False)
    everything.run()
    expected = y.host().copy()
    # Only the output is kept: the products and hidden states of earlier layers reuse memory.
    lean = Runtime("c").compile_streamed(codes, 10**6, keep_resident=False, keep=[y])
    assert set(lean.plan.resident) == {y}
    assert lean.plan.total_bytes < everything.plan.total_bytes - 8 * aligned(4 * n)
    y.set_host(np.zeros(n))
    for _ in range(2):
        lean.run()
    np.testing.assert_array_equal(y.host(), expected)

"""The streaming plan alone: layout within the budget, the table's order of copies, computes and
releases, reuse of slots, stages kept resident, the budget error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrayjit.runtime.stream_plan import (
    ALIGN,
    StageBuffers,
    StreamBudgetError,
    aligned,
    nbytes,
    parse_bytes,
    plan,
)
from arrayjit.tnode import MemoryMode, TNode


def stack(weight_sizes: list[int], activation: int = 16, scratch: int = 0) -> list[StageBuffers]:
    """Stages of one weight of `weight_sizes[i]` floats each, chained by activations."""
    stages, x = [], TNode("x", (activation,))
    for i, size in enumerate(weight_sizes):
        y = TNode(f"y{i}", (activation,))
        local = (TNode(f"s{i}", (scratch,), memory_mode=MemoryMode.LOCAL),) if scratch else ()
        w = TNode(f"w{i}", (size,))
        # The input x is read and never written: a weight of stage 0 (an input streams like one).
        weights, activations = ((w, x), (y,)) if i == 0 else ((w,), (x, y))
        stages.append(StageBuffers(f"layer{i}", weights, activations, local))
        x = y
    return stages


def check_table(p) -> None:
    """Every streamed stage is copied before it computes, into its own slot, after the stage
    that used the slot before released it; every stage computes once, in order."""
    computes = [s.stage for s in p.steps if s.kind == "compute"]
    assert computes == list(range(len(p.stages)))
    holder: dict[int, int | None] = {}  # slot -> stage whose weights it holds (None: released)
    for step in p.steps:
        if step.kind == "copy":
            assert holder.get(step.slot) is None, f"{step}: slot still in use"
            assert step.slot == p.slot_of[step.stage]
            holder[step.slot] = step.stage
        elif step.kind == "compute" and p.slot_of[step.stage] is not None:
            assert holder[step.slot] == step.stage, f"{step}: weights not copied"
        elif step.kind == "release":
            assert holder[step.slot] == step.stage
            holder[step.slot] = None


def check_layout(p) -> None:
    """Within each stage's view, buffers do not overlap and all lie within the budget."""
    assert p.total_bytes <= p.budget
    for i, stage in enumerate(p.stages):
        spans = sorted(
            (p.offset(i, t), p.offset(i, t) + nbytes(t))
            for t in {*stage.weights, *stage.activations, *stage.scratch}
        )
        assert all(start % ALIGN == 0 for start, _ in spans)
        assert all(
            a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)
        )
        assert not spans or spans[-1][1] <= p.total_bytes


def test_two_slots_double_buffer_and_are_reused_in_turn():
    stages = stack([1000] * 5)
    # y0..y4 resident; two slots of the largest stage: w0 and x (read, never written)
    p = plan(stages, budget=5 * aligned(64) + 2 * (aligned(4000) + aligned(64)))
    assert p.slot_of == [0, 1, 0, 1, 0]
    assert [str(s) for s in p.steps] == [
        "copy 0 slot 0", "copy 1 slot 1",
        "compute 0 slot 0", "release 0 slot 0", "copy 2 slot 0",
        "compute 1 slot 1", "release 1 slot 1", "copy 3 slot 1",
        "compute 2 slot 0", "release 2 slot 0", "copy 4 slot 0",
        "compute 3 slot 1", "release 3 slot 1",
        "compute 4 slot 0", "release 4 slot 0",
    ]  # fmt: skip
    check_table(p)
    check_layout(p)
    assert len(p.slot_offsets) == 2 and p.slot_bytes == aligned(4000) + aligned(64)


def test_one_slot_is_the_no_overlap_baseline():
    p = plan(stack([1000] * 3), budget=10**6, slots=1, keep_resident=False)
    assert [str(s) for s in p.steps] == [
        "copy 0 slot 0", "compute 0 slot 0", "release 0 slot 0",
        "copy 1 slot 0", "compute 1 slot 0", "release 1 slot 0",
        "copy 2 slot 0", "compute 2 slot 0", "release 2 slot 0",
    ]  # fmt: skip


def test_everything_stays_resident_when_the_budget_allows():
    p = plan(stack([1000] * 4), budget=10**6)
    assert p.streamed == [] and p.slot_offsets == []
    assert [s.kind for s in p.steps] == ["compute"] * 4
    check_layout(p)


def test_stages_stay_resident_largest_first_while_the_ring_still_fits():
    # Weights of 1024, 4096, 1024, 1024 and 2048 bytes; stage 0 also reads x (256 bytes).
    stages = stack([256, 1024, 256, 256, 512])
    activations = 5 * 256
    p = plan(stages, budget=activations + 9472)
    # Largest first: keeping stage 1 (4096) leaves a ring of two 2048-byte slots: 8192 <= 9472.
    # Then stage 4 (2048): 6144 + 2 slots of 1280 (stage 0) = 8704, fits; then stage 0 (1280):
    # 7424 + 2 slots of 1024 = 9472, fits; stages 2 and 3 no longer fit.
    assert [i for i, s in enumerate(p.slot_of) if s is None] == [0, 1, 4]
    assert p.streamed == [2, 3] and p.slot_bytes == 1024
    assert p.total_bytes == p.budget
    check_table(p)
    check_layout(p)
    assert p.streamed_bytes() == 2 * 1024


def test_a_budget_too_small_for_a_stage_names_it_and_the_bytes_it_needs():
    stages = stack([100, 5000, 100], scratch=10)
    need = aligned(20000) + aligned(40) + 3 * aligned(64)  # weights, scratch, y0..y2
    with pytest.raises(StreamBudgetError) as info:
        plan(stages, budget=need - 1)
    message = str(info.value)
    assert "stage 1 ('layer1')" in message and f"needs {need} bytes" in message
    assert f"budget of {need - 1} bytes" in message
    p = plan(stages, budget=need)  # exactly enough: one slot, no overlap
    assert len(p.slot_offsets) == 1
    check_table(p)


def test_scratch_is_one_region_shared_by_the_stages():
    p = plan(stack([100, 100, 100], scratch=50), budget=10**6)
    assert len({p.shared[s.scratch[0]] for s in p.stages}) == 1


def check_live_ranges(p) -> None:
    """Buffers placed by live range never share bytes while both are live."""
    span = {}
    for i, stage in enumerate(p.stages):
        for t in {*stage.activations, *stage.scratch}:
            if t in p.shared:
                first, _ = span.get(t, (i, i))
                span[t] = (first, i)
    placed = list(span)
    for a_index, a in enumerate(placed):
        for b in placed[a_index + 1 :]:
            live = span[a][0] <= span[b][1] and span[b][0] <= span[a][1]
            apart = p.shared[a] + nbytes(a) <= p.shared[b] or p.shared[b] + nbytes(b) <= p.shared[a]
            assert apart or not live, f"{a.label} and {b.label} overlap while both live"


def test_transient_activations_share_memory_by_live_range():
    stages = stack([100] * 6, activation=64)
    outputs = [s.activations[-1] for s in stages]
    # Each y_i lives from stage i to stage i + 1: two regions serve them all, the last is kept.
    p = plan(stages, budget=10**6, transient=outputs[:-1])
    assert set(p.shared) == set(outputs[:-1]) and outputs[-1] in p.resident
    assert len({p.shared[t] for t in outputs[:-1]}) == 2
    check_live_ranges(p)
    check_layout(p)
    everything = plan(stages, budget=10**6)
    assert p.total_bytes == everything.total_bytes - 3 * aligned(4 * 64)


def test_an_activation_read_before_it_is_written_stays_resident():
    """A buffer stage 0 reads and stage 2 writes carries values from one run to the next."""
    x, carried, y = TNode("x", (8,)), TNode("carried", (8,)), TNode("y", (8,))
    stages = [
        StageBuffers("read", (x,), (carried, y), (), writes=(y,)),
        StageBuffers("pass", (), (y,), (), writes=(y,)),
        StageBuffers("write", (), (carried, y), (), writes=(carried,)),
    ]
    p = plan(stages, budget=10**6, transient=[carried, y])
    assert carried in p.resident and y in p.shared


@settings(max_examples=60, deadline=None)
@given(
    spans=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 3), st.integers(1, 600)),
        min_size=1,
        max_size=20,
    )
)
def test_any_live_ranges_pack_without_overlap(spans):
    buffers = [
        (TNode(f"a{k}", (size,)), first, first + length)
        for k, (first, length, size) in enumerate(spans)
    ]
    stages = []
    for i in range(11):
        live = tuple(t for t, first, last in buffers if first <= i <= last)
        stages.append(StageBuffers(f"s{i}", (), live, ()))
    p = plan(stages, budget=10**7, transient=[t for t, _, _ in buffers])
    check_live_ranges(p)
    check_layout(p)
    busiest = max(sum(aligned(nbytes(t)) for t in s.activations) for s in stages)
    assert busiest <= p.total_bytes <= sum(aligned(nbytes(t)) for t, _, _ in buffers)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=12),
    slots=st.integers(1, 4),
    extra=st.integers(0, 40000),
    keep=st.booleans(),
)
def test_any_stack_fits_its_budget_and_its_table_is_consistent(sizes, slots, extra, keep):
    stages = stack(sizes, scratch=7)
    floor = (len(sizes) + 1) * aligned(64) + aligned(28) + aligned(max(sizes) * 4) + aligned(64)
    p = plan(stages, budget=floor + extra, slots=slots, keep_resident=keep)
    check_table(p)
    check_layout(p)
    assert len(p.slot_offsets) <= slots


def test_sizes_read_as_bytes():
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(4096) == 4096
    for bad in ("2 parsecs", "GiB", "-1GiB", 0):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with pytest.raises(TypeError):
        parse_bytes(2.5)


@pytest.mark.parametrize(
    "kept, streamed", [(5, [2, 6]), (3, [1, 3, 5, 7]), (1, [1, 2, 3, 5, 6, 7])]
)
def test_streamed_layers_are_spread_among_the_resident_ones(kept, streamed):
    # Eight stages (stage 0, reading x too, is the largest) and room for stage 0 and `kept` of
    # the seven equal layers: the others stream evenly spaced (before: the last ones), so each
    # copy runs while resident layers compute.
    stages = stack([256] * 8)
    activations = plan(stages, budget=10**6).total_bytes - 7 * 1024 - 1280
    p = plan(stages, budget=activations + 1280 + kept * 1024 + 2 * 1024)
    assert p.streamed == streamed
    check_table(p)
    check_layout(p)

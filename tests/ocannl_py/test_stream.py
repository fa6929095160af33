"""`Context.compile_streamed` on tensor code: layers `relu(w @ x + b)` streamed through a small
budget give the values of the same model run whole, and of numpy."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from arrayjit.runtime.stream_plan import StreamBudgetError
from ocannl_py import Context


def mlp(layers: int, n: int):
    x = oc.term("x", output_dims=[n])
    h, outputs, params = x, [], []
    for k in range(layers):
        w = oc.param(f"w{k}", input_dims=[n], output_dims=[n])
        b = oc.param(f"b{k}", input_dims=[], output_dims=[n])
        h = oc.relu(w @ h + b)
        outputs.append(h)
        params.append((w, b))
    return x, outputs, params


def reference(x: np.ndarray, params) -> np.ndarray:
    h = x.astype(np.float64)
    for w, b in params:
        h = np.maximum(w.value @ h + b.value, 0)
    return h


# Activations (the product, the sum and the relu of each layer) stay resident: 18 * 256 bytes;
# a layer's weights w and b take 2304 + 256 bytes, and stage 0 also reads the input x (256).
ACTIVATIONS, STAGE0 = 18 * 256, 2816


@pytest.mark.parametrize(
    "budget",
    [2**20, ACTIVATIONS + 2 * STAGE0 + 2560, ACTIVATIONS + STAGE0],
    ids=["resident", "two-slots-and-one-resident-stage", "one-slot"],
)
def test_streamed_layers_equal_the_whole_model_and_numpy(budget):
    oc.set_seed(3)
    n, layers = 24, 6
    x, outputs, params = mlp(layers, n)
    x.set_value(np.linspace(-1, 1, n))
    ctx = Context("c")
    streamed = ctx.compile_streamed(oc.forward_stages(*outputs), budget)
    plan = streamed.plan
    expected_slots = {2**20: 0, ACTIVATIONS + STAGE0: 1}.get(budget, 2)
    assert len(plan.slot_offsets) == expected_slots, plan.table()
    if expected_slots == 2:
        assert plan.slot_of.count(None) == 1
    streamed.run()
    got = outputs[-1].value.copy()
    np.testing.assert_allclose(got, reference(x.value, params), rtol=1e-5, atol=1e-5)
    whole = Context("c")
    whole.forward(outputs[-1])
    np.testing.assert_array_equal(outputs[-1].value, got)
    assert streamed.stats.peak_device_bytes <= budget
    # New input values are used by the next run.
    x.set_value(np.linspace(1, -1, n))
    streamed.run()
    np.testing.assert_allclose(outputs[-1].value, reference(x.value, params), rtol=1e-5, atol=1e-5)


def test_streamed_stages_need_their_inputs_and_a_budget_for_one_stage():
    x, outputs, params = mlp(2, 64)
    ctx = Context("c")
    with pytest.raises(StreamBudgetError, match=r"stage 0 \('stage0_.*'\): it needs \d+ bytes"):
        ctx.compile_streamed(oc.forward_stages(*outputs), "8KiB")
    streamed = ctx.compile_streamed(oc.forward_stages(*outputs), "1MiB")
    with pytest.raises(ValueError, match="tensor 'x' is read by the streamed stages"):
        streamed.run()
    with pytest.raises(TypeError, match="stage 1 of compile_streamed is a str"):
        ctx.compile_streamed([outputs[0].forward, "relu"], "1MiB")


def test_only_the_tensors_kept_stay_resident():
    oc.set_seed(4)
    n = 24
    x, outputs, params = mlp(6, n)
    x.set_value(np.linspace(-1, 1, n))
    ctx = Context("c")
    stages = oc.forward_stages(*outputs)
    lean = ctx.compile_streamed(stages, ACTIVATIONS + STAGE0, keep=[outputs[-1]])
    assert set(lean.plan.resident) == {outputs[-1].value_node}
    lean.run()
    np.testing.assert_allclose(outputs[-1].value, reference(x.value, params), rtol=1e-5, atol=1e-5)

"""Fusion at the user level (ocannl_py.fusion): intermediates of a routine that nobody holds
are computed inside the loops that read them, tensors that can be read elsewhere stay stored, and
values match numpy on both backends (CUDA on the kernel emulator, and on a GPU where one is
usable). Graphs are built in helper functions, so that the tests hold only what they return."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from arrayjit import loop_ir as ir
from arrayjit.lowering import compile_to_ir
from ocannl_py import Context, cd, fusion, train

sys.path.insert(0, str(Path(__file__).parent.parent / "arrayjit"))
from cuda_runners import runner  # noqa: E402

ODD = [1, 3, 17, 1000]


def chain(n: int, rows: int = 3) -> tuple[oc.Tensor, oc.Tensor, np.ndarray]:
    """y = relu(exp(x) * x + 1) over x of `rows` x `n`, with x's values."""
    values = np.random.default_rng(n).normal(size=(rows, n)).astype(np.float32)
    x = oc.term("x", batch_dims=[rows], input_dims=[], output_dims=[n])
    x.set_value(values)
    return x, oc.relu(oc.exp(x) * x + 1), values


def chain_reference(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    return np.maximum(np.exp(v) * v + 1, 0)


def stored(routine) -> set[str]:
    """Labels of the buffers the routine's code writes (after inlining)."""
    return {t.label for t in ir.written_tnodes(routine.executable.ir)}


@pytest.mark.parametrize("n", ODD)
def test_pointwise_chain_is_one_loop_nest(n):
    x, y, values = chain(n)
    ctx = Context("c")
    routine = ctx.compile(y.forward)
    assert sorted(t.label for t in routine.fused) == sorted(["exp", "*.", "+"])
    assert stored(routine) == {y.label}
    routine.run()
    np.testing.assert_allclose(y.value, chain_reference(values), rtol=2e-6, atol=1e-6)


def test_intermediate_value_needs_keep():
    x, y, values = chain(17)
    ctx = Context("c")
    routine = ctx.compile(y.forward)
    routine.run()
    product = y.operands[0].operands[0]  # exp(x) * x, fused: nobody held it when compiled
    assert product in routine.fused
    with pytest.raises(ValueError, match=r"tensor '\*\.' has no stored value.*\.keep\(\)"):
        _ = product.value
    assert product.keep() is product
    routine.run()  # compiled again: the product is stored now
    assert product.label in stored(routine) and product not in routine.fused
    v = values.astype(np.float64)
    np.testing.assert_allclose(product.value, np.exp(v) * v, rtol=2e-6)
    np.testing.assert_allclose(y.value, chain_reference(values), rtol=2e-6, atol=1e-6)


def test_tensors_the_user_holds_are_stored():
    values = np.random.default_rng(7).normal(size=(3, 17)).astype(np.float32)
    x = oc.term("x", batch_dims=[3], input_dims=[], output_dims=[17])
    x.set_value(values)
    held = oc.exp(x) * x
    y = oc.relu(held + 1)
    kept = [oc.exp(y)]  # in a list: held too
    z = kept[0] * 2
    routine = Context("c").compile(z.forward)
    routine.run()
    assert sorted(t.label for t in routine.fused) == ["+", "exp"]  # exp(x), not kept[0]
    assert kept[0] not in routine.fused
    assert {held.label, y.label, kept[0].label} <= stored(routine)
    v = values.astype(np.float64)
    np.testing.assert_allclose(held.value, np.exp(v) * v, rtol=2e-6)
    np.testing.assert_allclose(kept[0].value, np.exp(chain_reference(values)), rtol=4e-6)
    np.testing.assert_allclose(z.value, 2 * np.exp(chain_reference(values)), rtol=4e-6)


def test_tensor_read_by_another_routine_is_stored():
    x, y, values = chain(33)
    z = oc.term("z", batch_dims=[3], input_dims=[], output_dims=[33])
    ctx = Context("c")
    first = ctx.compile(y.forward)
    h = y.operands[0]  # exp(x) * x + 1
    assert h in first.fused
    second = ctx.compile(cd("z =: h * 2", z=z, h=h))
    with pytest.raises(ValueError, match=r"tensor '\+' is read by routine .* stores it from"):
        second.run()
    first.run()
    second.run()
    assert h not in first.fused
    v = values.astype(np.float64)
    np.testing.assert_allclose(z.value, 2 * (np.exp(v) * v + 1), rtol=2e-6, atol=1e-6)


def test_read_before_written_is_not_fused():
    """A tensor that a routine reads before it overwrites it carries values between runs."""
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[5])
    y = oc.exp(x) + 1
    assert [t.label for t in fusion.fused(y.forward, set())] == ["exp"]
    carried = cd("y =: h + 1", y=y, h=y.operands[0]) + y.forward
    assert fusion.fused(carried, set()) == []


def mlp_step(xv, w1v, b1v, w2v):
    """The loss of relu(w1 @ x + b1) -> w2 @ . squared and summed, and its parameters."""
    batch, n_in = xv.shape
    hidden = len(b1v)
    x = oc.term("x", batch_dims=[batch], input_dims=[], output_dims=[n_in])
    x.set_value(xv)
    w1 = oc.param("w1", w1v, input_dims=[n_in], output_dims=[hidden])
    b1 = oc.param("b1", b1v, output_dims=[hidden])
    w2 = oc.param("w2", w2v, input_dims=[hidden], output_dims=[1])
    out = w2 @ oc.relu(w1 @ x + b1)
    return oc.einsum1("...|... => 0", out * out), w1, b1, w2


def test_training_step_keeps_what_is_read():
    """An MLP step: bias + activation fuse; the loss, parameters and gradients stay readable,
    and the step matches a float64 numpy re-implementation."""
    rng = np.random.default_rng(3)
    batch, n_in, hidden = 5, 7, 13
    xv = rng.normal(size=(batch, n_in)).astype(np.float32)
    w1v = rng.normal(size=(hidden, n_in)).astype(np.float32) * 0.5
    b1v = rng.normal(size=hidden).astype(np.float32)
    w2v = rng.normal(size=(1, hidden)).astype(np.float32) * 0.5
    loss, w1, b1, w2 = mlp_step(xv, w1v, b1v, w2v)
    step = Context("c").compile(train.grad_update(loss) + train.sgd_update(loss, 0.1))
    assert {"+", "relu", "*."} <= {t.label for t in step.fused}
    assert not {"+", "relu", "*."} & stored(step)
    step.run()
    x64, w1_64, w2_64 = (a.astype(np.float64) for a in (xv, w1v, w2v))
    pre64 = x64 @ w1_64.T + b1v
    act = np.maximum(pre64, 0)
    out64 = act @ w2_64.T
    assert loss.item() == pytest.approx(float(np.sum(out64**2)), rel=1e-5)
    g_out = 2 * out64
    g_w2 = g_out.T @ act
    g_pre = (g_out @ w2_64) * (pre64 > 0)
    np.testing.assert_allclose(w2.grad, g_w2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w1.grad, g_pre.T @ x64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b1.grad, g_pre.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w1.value, w1_64 - 0.1 * (g_pre.T @ x64), rtol=1e-4, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 9), n=st.integers(1, 70))
def test_fused_chain_over_shapes(rows, n):
    x, y, values = chain(n, rows)
    Context("c").forward(y)
    np.testing.assert_allclose(y.value, chain_reference(values), rtol=2e-6, atol=1e-6)


def chain_total(n: int, rows: int) -> tuple[oc.Tensor, np.ndarray]:
    """The row sums of `chain`'s y, and x's values."""
    _, y, values = chain(n, rows)
    return oc.einsum1("...|o => ...|", y), values


@pytest.mark.parametrize("kind", ["emulator", "gpu"])
def test_fused_code_on_cuda(kind):
    """The code a routine compiles, with its intermediates fused, run by the CUDA backend's
    kernels: a pointwise chain into a row reduction (one kernel, no stored intermediates)."""
    run = runner(kind)
    total, values = chain_total(17, 5)
    code = total.forward
    fused = fusion.fused(code, set())
    assert sorted(t.label for t in fused) == sorted(["exp", "*.", "+", "relu"])
    lowered = code.lower(fusion.private_values(code, fused))
    stores = ir.written_tnodes(compile_to_ir(lowered, reductions_innermost=True))
    assert {t.label for t in stores} == {total.label}
    run(lowered)
    np.testing.assert_allclose(
        total.value_node.host().reshape(5), chain_reference(values).sum(1), rtol=1e-5
    )


def gathered_relu(vocab: int, dim: int, ids: np.ndarray):
    """relu(embed(table, ids) * 2 - 1): the gather's result is an intermediate nobody holds."""
    table_values = np.random.default_rng(vocab).normal(size=(dim, vocab)).astype(np.float32)
    table = oc.term("table", batch_dims=[], input_dims=[vocab], output_dims=[dim])
    table.set_value(table_values)
    id_term = oc.term("ids", batch_dims=[len(ids)], input_dims=[], output_dims=[], dtype="int32")
    id_term.set_value(ids.astype(np.int32))
    return oc.relu(oc.embed(table, id_term) * 2.0 - 1.0), table_values


def test_a_gather_feeding_other_operations_stays_stored_and_correct():
    """Regression (found on the GPU run after merging fusion with gathers): the gather was made
    virtual while its lowering wrote the tensor's own buffer, so the routine failed with 'virtual
    buffer ... is read but never computed'."""
    ids = np.array([3, 0, 3, 1])
    y, table_values = gathered_relu(5, 7, ids)
    Context("c").forward(y)
    expected = np.maximum(table_values.T[ids].astype(np.float64) * 2 - 1, 0)
    np.testing.assert_allclose(y.value, expected, rtol=1e-6)

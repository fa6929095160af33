"""`oc.embed` (a gather by int32 ids) and its scatter-add gradient, against torch's embedding, on
every backend; ids outside the table are a run-time error naming the tensor and the id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from arrayjit.runtime.index_checks import IndexOutOfRange
from ocannl_py import Context, train


def embedding_loss(batch: list[int], vocab: int, dim: int, table_values: np.ndarray):
    """`sum(embed(table, ids)**2 * weights)`: every row's gradient differs (weights by column)."""
    ids = oc.term("ids", batch_dims=batch, output_dims=[], dtype="int32")
    table = oc.param("table", table_values, output_dims=[dim], input_dims=[vocab])
    weights = oc.ndarray(np.arange(1.0, dim + 1), output_dims=[dim], label="weights")
    e = oc.embed(table, ids)
    loss = oc.einsum1("...|...->... => 0", e * e * weights)
    return ids, table, e, loss


def torch_reference(id_values: np.ndarray, table_values: np.ndarray):
    """The embedding and the table's gradient of the same loss, in float64."""
    table = torch.tensor(table_values.T, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.embedding(torch.tensor(id_values, dtype=torch.long), table)
    weights = torch.arange(1, table_values.shape[0] + 1, dtype=torch.float64)
    (out * out * weights).sum().backward()
    return out.detach().numpy(), table.grad.numpy().T


@pytest.mark.parametrize(
    ("batch", "vocab", "dim"), [([2, 3], 5, 4), ([1], 1, 1), ([17], 1000, 3), ([3, 1, 2], 7, 17)]
)
def test_embed_and_its_gradient_match_torch(backend, batch, vocab, dim):
    rng = np.random.default_rng(vocab + dim)
    table_values = rng.normal(size=(dim, vocab))
    ids, table, e, loss = embedding_loss(batch, vocab, dim, table_values)
    # Repeated ids: their rows' gradients add up.
    id_values = rng.integers(0, vocab, batch)
    id_values.ravel()[0] = id_values.ravel()[-1] = vocab - 1
    ids.set_value(id_values)
    Context(backend).compile(train.grad_update(loss)).run()
    expected, expected_grad = torch_reference(id_values, table_values)
    assert e.value.shape == (*batch, dim)
    assert str(e.shape).endswith(f"|0:{dim}")
    np.testing.assert_allclose(e.value, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table.grad, expected_grad, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    batch=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    vocab=st.integers(1, 40),
    dim=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_embed_matches_torch_for_any_shape(batch, vocab, dim, seed):
    rng = np.random.default_rng(seed)
    table_values = rng.normal(size=(dim, vocab))
    ids, table, e, loss = embedding_loss(batch, vocab, dim, table_values)
    id_values = rng.integers(0, vocab, batch)
    ids.set_value(id_values)
    Context("c").compile(train.grad_update(loss)).run()
    expected, expected_grad = torch_reference(id_values, table_values)
    np.testing.assert_allclose(e.value, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table.grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_table_with_several_output_axes():
    """`d` may be several axes: each row of the table is a matrix."""
    values = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # output 2, 3; input vocab 4
    table = oc.param("table", values, output_dims=[2, 3], input_dims=[4])
    ids = oc.term("ids", batch_dims=[2], output_dims=[], dtype="int32")
    ids.set_value([3, 1])
    e = oc.embed(table, ids)
    Context("c").forward(e)
    np.testing.assert_array_equal(e.value, np.moveaxis(values, -1, 0)[[3, 1]])


@pytest.mark.parametrize("bad", [5, -1, 2**31 - 1])
def test_id_outside_the_table_is_an_error_naming_tensor_and_id(backend, bad):
    ids, table, e, loss = embedding_loss([2, 3], 5, 4, np.ones((4, 5)))
    routine = Context(backend).compile(train.grad_update(loss))
    ids.set_value([[0, 1, 2], [3, bad, 4]])
    with pytest.raises(
        IndexOutOfRange, match=rf"index {bad} read from 'ids' \(at ids\[1, 1\]\).*\[0, 5\).*'table'"
    ):
        routine.run()
    # The check is cleared: with good ids, the next run is fine.
    ids.set_value([[0, 1, 2], [3, 4, 4]])
    routine.run()
    np.testing.assert_array_equal(e.value, np.ones((2, 3, 4)))


def test_embed_rejects_float_ids_and_int_tables():
    table = oc.param("table", output_dims=[3], input_dims=[4])
    float_ids = oc.term("fids", batch_dims=[2], output_dims=[])
    with pytest.raises(TypeError, match="the ids 'fids' must be an int32 tensor, not float32"):
        oc.embed(table, float_ids)
    int_table = oc.term("itable", output_dims=[3], input_dims=[4], dtype="int32")
    ids = oc.term("ids", batch_dims=[2], output_dims=[], dtype="int32")
    with pytest.raises(TypeError, match="the table 'itable' must hold floats, not int32"):
        oc.embed(int_table, ids)


def test_one_hot_of_class_ids_through_eq():
    """Class ids as a one-hot float tensor (what a cross-entropy needs): `eq` of the int32 ids
    against a float range gives float values."""
    ids = oc.term("ids", batch_dims=[4], output_dims=[], dtype="int32")
    one_hot = oc.eq(ids, oc.range(5))
    assert one_hot.dtype.name == "float32"
    ids.set_value([0, 4, 2, 2])
    Context("c").forward(one_hot)
    np.testing.assert_array_equal(one_hot.value, np.eye(5, dtype=np.float32)[[0, 4, 2, 2]])


def test_position_embedding_through_an_int32_range():
    """GPT-2's positions: an int32 range picks the rows of a position table."""
    values = np.arange(3.0 * 6).reshape(3, 6)
    wpe = oc.param("wpe", values, output_dims=[3], input_dims=[6])
    positions = oc.range_of_shape(batch_dims=[4], dtype="int32", label="positions")
    e = oc.embed(wpe, positions)
    Context("c").forward(e)
    np.testing.assert_array_equal(e.value, values.T[:4])

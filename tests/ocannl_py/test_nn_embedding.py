"""Blocks taking int32 ids: `nn.embedding` against `torch.nn.functional.embedding` (values and
the scatter-add gradient of the table) and `nn.cross_entropy` with class ids against
`F.cross_entropy` (values and the logits' gradients), on every backend; ids outside the table or
the classes are run-time errors naming the ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch_reference import compare, torch

import ocannl_py as oc
from arrayjit.runtime.index_checks import IndexOutOfRange
from ocannl_py import Context, nn, train

F = torch.nn.functional
RNG = np.random.default_rng(0)


def int_ids(batch: list[int], high: int, label: str = "ids") -> oc.Tensor:
    ids = oc.term(label, batch_dims=batch, output_dims=[], dtype="int32")
    ids.set_value(RNG.integers(0, high, batch))
    return ids


# ---- embedding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "vocab", "dim"), [([2, 3], 5, 4), ([1], 1, 1), ([17], 50, 3), ([3, 1, 2], 7, [2, 3])]
)
def test_embedding(backend, batch, vocab, dim):
    """The table's gradient adds the rows of repeated ids: compared by a loss of the embedding
    times a tensor of fixed random weights, as PyTorch's."""
    ctx = Context(backend)
    oc.set_seed(1)
    ids = int_ids(batch, vocab)
    e = nn.embedding(ids, vocab, dim, "emb")
    dims = [dim] if isinstance(dim, int) else dim
    weights = RNG.normal(size=(*batch, *dims))
    w = oc.ndarray(weights, batch_dims=batch, output_dims=dims, label="weights")
    loss = oc.einsum1("... | ... => ", e * w)
    ctx.compile(train.grad_update(loss)).run()
    table = e.params["emb.w"]
    assert table.shape.input == [vocab] and table.shape.output == dims
    # Our table is `dim -> vocab` (dims then vocab in memory): PyTorch's weight transposed.
    weight = torch.tensor(table.value.reshape(-1, vocab).T.astype(np.float64), requires_grad=True)
    expected = F.embedding(torch.tensor(ids.value, dtype=torch.long), weight)
    (expected * torch.tensor(weights.reshape(*batch, -1))).sum().backward()
    np.testing.assert_allclose(e.value.reshape(*batch, -1), expected.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(table.grad.reshape(-1, vocab), weight.grad.numpy().T, rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_embedding_initialisation_is_standard_normal():
    """nn.Embedding's N(0, 1), drawn by the seeded generator."""
    oc.set_seed(2)
    ids = int_ids([4], 100)
    e = nn.embedding(ids, 100, 50, "emb")
    Context("c").forward(e)
    values = e.params["emb.w"].value
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1.0) < 0.05
    oc.set_seed(2)
    again = nn.embedding(int_ids([4], 100, "ids2"), 100, 50, "emb")
    Context("c").forward(again)
    np.testing.assert_array_equal(again.params["emb.w"].value, values)


def test_embedding_id_out_of_range_is_an_error(backend):
    ids = int_ids([2, 3], 5)
    e = nn.embedding(ids, 5, 4, "emb")
    routine = Context(backend).compile(e.forward)
    ids.set_value([[0, 1, 2], [3, 5, 4]])
    with pytest.raises(IndexOutOfRange, match=r"index 5 read from 'ids'"):
        routine.run()


def test_embedding_bad_arguments():
    ids = int_ids([2], 5)
    with pytest.raises(ValueError, match="vocab must be a positive int"):
        nn.embedding(ids, 0, 4, "emb")
    with pytest.raises(ValueError, match="dim"):
        nn.embedding(ids, 5, -1, "emb")
    floats = oc.term("floats", batch_dims=[2], output_dims=[])
    with pytest.raises(TypeError, match="must be an int32 tensor"):
        nn.embedding(floats, 5, 4, "emb")


# ---- cross-entropy with class ids ----------------------------------------------------------------


@pytest.mark.parametrize(("batch", "classes"), [([8], 5), ([2, 3], 4), ([1], 1), ([17], 17)])
def test_cross_entropy_with_class_ids(backend, batch, classes):
    logits = RNG.normal(scale=2.0, size=(*batch, classes))
    ids = int_ids(batch, classes)
    id_values = ids.value.copy()

    def reference(logits, params):
        flat = logits.reshape(-1, classes)
        return F.cross_entropy(flat, torch.tensor(id_values.reshape(-1), dtype=torch.long))

    y = compare(backend, lambda logits: nn.cross_entropy(logits, ids), reference,
                {"logits": (logits, len(batch))})  # fmt: skip
    assert y.value.shape == ()


def test_class_ids_equal_one_hot_targets(backend):
    """The same loss and gradients as one-hot float targets, through a training step."""
    ctx = Context(backend)
    values, x_values = RNG.integers(0, 6, 9), RNG.normal(size=(9, 4))
    results = []
    for kind in ("ids", "one_hot"):
        oc.set_seed(3)
        x = oc.term("x", batch_dims=[9], output_dims=[4])
        x.set_value(x_values)
        if kind == "ids":
            targets = oc.term("targets", batch_dims=[9], output_dims=[], dtype="int32")
            targets.set_value(values)
        else:
            targets = oc.term("targets", batch_dims=[9], output_dims=[6])
            targets.set_value(np.eye(6)[values])
        logits = nn.linear(x, 6, "lin")
        loss = nn.cross_entropy(logits, targets)
        ctx.compile(train.grad_update(loss)).run()
        results.append((loss.item(), logits.params["lin.w"].grad))
    assert math.isclose(results[0][0], results[1][0], rel_tol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_class_id_out_of_range_is_an_error(backend):
    logits = oc.term("logits", batch_dims=[4], output_dims=[3])
    logits.set_value(np.zeros((4, 3)))
    ids = oc.term("labels", batch_dims=[4], output_dims=[], dtype="int32")
    loss = nn.cross_entropy(logits, ids)
    routine = Context(backend).compile(loss.forward)
    ids.set_value([0, 2, 1, 2])
    routine.run()
    np.testing.assert_allclose(loss.item(), math.log(3), rtol=1e-6)
    for bad in (3, -1):
        ids.set_value([0, bad, 1, 2])
        with pytest.raises(IndexOutOfRange, match=rf"index {bad} read from 'labels'"):
            routine.run()


def test_class_ids_of_the_wrong_shape_are_a_shape_error():
    logits = oc.term("logits", batch_dims=[4], output_dims=[3])
    with pytest.raises(oc.ShapeError, match="class ids 'ids' .* must have the batch axes"):
        nn.cross_entropy(logits, oc.term("ids", batch_dims=[5], output_dims=[], dtype="int32"))
    with pytest.raises(oc.ShapeError, match="one output axis"):
        nn.cross_entropy(logits, oc.term("ids2", batch_dims=[4], output_dims=[1], dtype="int32"))
    two_axes = oc.term("two", batch_dims=[4], output_dims=[3, 2])
    with pytest.raises(oc.ShapeError, match="one output axis"):
        nn.cross_entropy(two_axes, oc.term("ids3", batch_dims=[4], output_dims=[], dtype="int32"))

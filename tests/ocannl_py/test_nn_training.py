"""A small network built from nn blocks learns: an MLP with softmax cross-entropy separates three
Gaussian blobs, trained by `train.grad_update` + `train.sgd_update` on every backend. And the
examples of docs/nn.md run."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np

import ocannl_py as oc
from ocannl_py import Context, nn, train

CENTRES = np.array([[0.0, 2.0], [-1.8, -1.0], [1.8, -1.0]])


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return CENTRES[labels] + rng.normal(scale=0.5, size=(n, 2)), labels


def test_mlp_learns_three_blobs(backend):
    ctx = Context(backend)
    oc.set_seed(0)
    n = 96
    points, labels = blobs(n, 0)
    x = oc.term("x", batch_dims=[n], input_dims=[], output_dims=[2])
    targets = oc.term("targets", batch_dims=[n], input_dims=[], output_dims=[3])
    x.set_value(points)
    targets.set_value(np.eye(3)[labels])
    shared: dict = {}
    logits = nn.mlp(x, 16, 3, "mlp", activation=nn.gelu, params=shared)
    loss = nn.cross_entropy(logits, targets)
    step = ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.5))
    losses = []
    for _ in range(150):
        step.run()
        losses.append(loss.item())
    assert losses[0] > 0.5 and losses[-1] < 0.1 * losses[0]
    assert (logits.value.argmax(-1) == labels).mean() >= 0.97
    # The trained parameters, shared into a network for held-out points of another batch size.
    test_points, test_labels = blobs(50, 1)
    x_test = oc.term("x_test", batch_dims=[50], input_dims=[], output_dims=[2])
    x_test.set_value(test_points)
    test_logits = nn.mlp(x_test, 16, 3, "mlp", activation=nn.gelu, params=shared)
    ctx.forward(test_logits)
    assert (test_logits.value.argmax(-1) == test_labels).mean() >= 0.95
    probabilities = nn.softmax(test_logits)
    ctx.forward(probabilities)
    np.testing.assert_allclose(probabilities.value.sum(-1), 1.0, rtol=1e-5)


def test_docs_nn_examples_run():
    doc = Path(__file__).resolve().parents[2] / "docs" / "nn.md"
    failures, tried = doctest.testfile(str(doc), module_relative=False)
    assert tried > 15 and failures == 0

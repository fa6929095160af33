"""The gradient of a max reduction at ties splits evenly among the tied cells, as PyTorch's
`amax`: `einmax1("i=>")` of `[2, 5, 5, 5, 1]` gives `[0, 1/3, 1/3, 1/3, 0]`. Checked for
`einmax1` and `tropical` (max-plus products, and max-pool-like windows) on small integer
values, where ties are frequent, against a numpy reference of amax's gradient (and against
`torch.amax` itself when PyTorch is installed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from ocannl_py import Context, train


def gradients(loss: oc.Tensor, *params: oc.Tensor) -> list[np.ndarray]:
    Context("c").compile(train.grad_update(loss)).run()
    return [p.grad for p in params]


def amax_gradients(candidates, axes, weights: np.ndarray, *values: np.ndarray) -> list:
    """Gradients of `sum(weights * amax(candidates(*values), axes))` in float64, where the
    candidates are a sum of broadcast values: each max's weight splits evenly among its ties.
    Cross-checked against torch.amax when PyTorch is installed."""
    table = candidates(*values)
    ties = table == table.max(axis=axes, keepdims=True)
    share = ties / ties.sum(axis=axes, keepdims=True) * np.expand_dims(weights, axes)
    grads = []
    for k, v in enumerate(values):
        grad = np.zeros(v.shape)
        for cell in np.ndindex(v.shape):  # the candidates are linear in each value
            unit = [np.zeros(u.shape) for u in values]
            unit[k][cell] = 1.0
            grad[cell] = (share * candidates(*unit)).sum()
        grads.append(grad)
    try:
        import torch
    except ImportError:
        return grads
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    (
        candidates(*leaves).amax(dim=axes) * torch.tensor(weights, dtype=torch.float64)
    ).sum().backward()
    for grad, leaf in zip(grads, leaves, strict=True):
        np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-12, atol=1e-12)
    return grads


def weighted_sum(y: oc.Tensor, weights: np.ndarray, spec: str) -> oc.Tensor:
    """`sum(y * weights)` as a scalar, `weights` a constant of `y`'s dims."""
    w = oc.ndarray(weights, output_dims=list(weights.shape))
    return oc.einsum1(f"{spec}=>", y * w)


def test_the_issue_example():
    x = oc.param("x", value=[2.0, 5.0, 5.0, 5.0, 1.0])
    y = oc.einmax1("i=>", x)
    (grad,) = gradients(y, x)
    np.testing.assert_allclose(grad, [0, 1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
    (expected,) = amax_gradients(lambda a: a, 0, np.ones(()), np.array([2.0, 5, 5, 5, 1]))
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_no_ties_keeps_the_whole_gradient():
    x = oc.param("x", value=[[1.0, 4.0, 2.0], [7.0, 0.0, -1.0]])
    (grad,) = gradients(oc.einsum1("a=>", oc.einmax1("ab=>a", x)), x)
    np.testing.assert_array_equal(grad, [[0, 1, 0], [1, 0, 0]])


small_ints = st.integers(0, 3).map(float)


class Routines:
    """One compiled gradient routine per operation and dims, reused for every drawn example
    (values are set, not compiled in), so hypothesis explores values cheaply."""

    def __init__(self) -> None:
        self.built: dict[tuple, tuple] = {}

    def gradients(self, key: tuple, build, weights: np.ndarray, *values: np.ndarray):
        if key not in self.built:
            params = [oc.param(f"p{k}", value=v) for k, v in enumerate(values)]
            upstream = oc.term(
                "upstream", batch_dims=[], input_dims=[], output_dims=list(weights.shape)
            )
            y = build(*params)
            loss = oc.einsum1(f"{'abcdef'[: weights.ndim]}=>", y * upstream)
            upstream.set_value(weights)
            routine = Context("c").compile(train.grad_update(loss))
            self.built[key] = (routine, params, upstream)
        routine, params, upstream = self.built[key]
        for p, v in zip(params, values, strict=True):
            p.set_value(v)
        upstream.set_value(weights)
        routine.run()
        return [p.grad for p in params]


ROUTINES = Routines()
ROW_DIMS = [(1, 1), (1, 5), (3, 4), (4, 1), (2, 6)]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ROW_DIMS).flatmap(
    lambda dims: st.tuples(
        st.just(dims),
        st.lists(small_ints, min_size=dims[0] * dims[1], max_size=dims[0] * dims[1]),
        st.lists(st.floats(-2, 2, width=32), min_size=dims[0], max_size=dims[0]),
    )
), st.booleans())  # fmt: skip
def test_einmax1_rows_match_amax(data, over_rows):
    """Max over the last or the first axis, with a random upstream gradient."""
    (rows, cols), flat, weights = data
    values, upstream = np.array(flat).reshape(rows, cols), np.array(weights)
    spec, axis = ("ba=>a", 0) if over_rows else ("ab=>a", 1)
    if over_rows:
        values = values.T.copy()
    build = lambda x: oc.einmax1(spec, x)  # noqa: E731
    (grad,) = ROUTINES.gradients(("einmax1", spec, values.shape), build, upstream, values)
    (expected,) = amax_gradients(lambda a: a, axis, upstream, values)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_einmax1_over_two_axes():
    """A max over two axes at once."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, (3, 2, 4)).astype(float)
    x = oc.param("x", value=values)
    y = oc.einmax1("abc=>a", x)
    upstream = rng.normal(size=3)
    (grad,) = gradients(weighted_sum(y, upstream, "a"), x)
    (expected,) = amax_gradients(lambda a: a, (1, 2), upstream, values)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_einmax1_of_a_product_keeps_a_row_axis_of_one():
    """`...|n => ...|0`, the softmax form, over `x * scale`."""
    torch = pytest.importorskip("torch", reason="PyTorch is optional: amax of a product")
    values = np.random.default_rng(3).integers(0, 3, (3, 2, 4)).astype(float)
    x = oc.term("x", batch_dims=[3], input_dims=[], output_dims=[4])
    x.set_value(values[:, 0, :])
    scale = oc.param("scale", value=np.ones(4))
    m = oc.einmax1("...|n => ...|0", x * scale)
    (grad,) = gradients(oc.einsum1("...|0 => ", m), scale)
    leaf = torch.ones(4, dtype=torch.float64, requires_grad=True)
    (torch.tensor(values[:, 0, :]) * leaf).amax(dim=1).sum().backward()
    np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-6)


PRODUCT_DIMS = [(1, 1, 1), (1, 4, 1), (2, 3, 2), (3, 4, 2), (2, 1, 3)]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PRODUCT_DIMS).flatmap(
    lambda dims: st.tuples(
        st.just(dims),
        st.lists(small_ints, min_size=dims[0] * dims[1], max_size=dims[0] * dims[1]),
        st.lists(small_ints, min_size=dims[1] * dims[2], max_size=dims[1] * dims[2]),
        st.lists(st.floats(-2, 2, width=32), min_size=dims[0] * dims[2], max_size=dims[0] * dims[2]),
    )
))  # fmt: skip
def test_tropical_product_matches_amax(data):
    """`ab;bc=>ac`: max over b of a[a, b] + b[b, c], both operands' gradients."""
    (m, k, n), a_flat, b_flat, weights = data
    a_values, b_values = np.array(a_flat).reshape(m, k), np.array(b_flat).reshape(k, n)
    upstream = np.array(weights).reshape(m, n)
    build = lambda a, b: oc.tropical("ab;bc=>ac", a, b)  # noqa: E731
    grads = ROUTINES.gradients(("tropical", m, k, n), build, upstream, a_values, b_values)
    expected = amax_gradients(
        lambda x, y: x[:, :, None] + y[None, :, :], 1, upstream, a_values, b_values
    )
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_max_pool_like_tropical_splits_among_window_ties():
    """2 x 2 windows of a 4 x 6 image laid out as (rows, window row, cols, window col), pooled
    by a tropical product with a zero kernel: each window's gradient splits among its ties."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 2, (2, 2, 3, 2)).astype(float)  # many ties among 0s and 1s
    x = oc.param("x", value=image)
    kernel = oc.param("kernel", value=np.zeros((2, 2)))
    pooled = oc.tropical("akbl;kl=>ab", x, kernel)
    upstream = rng.normal(size=(2, 3))
    grads = gradients(weighted_sum(pooled, upstream, "ab"), x, kernel)
    expected = amax_gradients(
        lambda x, k: x + k[None, :, None, :], (1, 3), upstream, image, np.zeros((2, 2))
    )
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Each window's gradient sums to its upstream gradient: nothing doubled at ties.
    np.testing.assert_allclose(grads[0].sum(axis=(1, 3)), upstream, rtol=1e-5)

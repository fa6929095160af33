"""Dropout: the mask is Threefry of (seed, cell offset) computed in the compiled code, the seed
advancing on every run; checked bit for bit against the numpy twin of the generator
(`arrayjit.threefry.uniform_reference`), for its keep rate, its determinism per `oc.set_seed`,
its gradient (through the same mask) and its identity when not training."""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from arrayjit.threefry import uniform_reference
from ocannl_py import Context, nn, train
from ocannl_py.nn.dropout import EXACT, initial_seed


def term(shape: tuple[int, ...], values: np.ndarray | None = None) -> oc.Tensor:
    x = oc.term("x", batch_dims=list(shape[:1]), input_dims=[], output_dims=list(shape[1:]))
    x.set_value(np.ones(shape) if values is None else values)
    return x


def reference_keep(seed: int, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Which cells a run with this seed keeps: the float32 uniform of (seed, offset) >= p."""
    offsets = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return uniform_reference(seed, offsets, np.float32) >= np.float32(p)


def masks(backend: str, seed: int, runs: int, shape=(6, 7), p: float = 0.4) -> list[np.ndarray]:
    oc.set_seed(seed)
    y = nn.dropout(term(shape), p, train=True)
    routine = Context(backend).compile(y.forward)
    out = []
    for _ in range(runs):
        routine.run()
        out.append(y.value)
    return out


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_mask_is_threefry_of_the_advancing_seed(backend, p):
    """Run r (from 1) keeps the cells whose uniform(seed0 + r, offset) >= p, scaled by 1/(1-p);
    seed0 comes from the dropout's random stream, the first after `oc.set_seed(3)`."""
    shape = (5, 17)
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    oc.set_seed(3)
    y = nn.dropout(term(shape, values), p, train=True)
    routine = Context(backend).compile(y.forward)
    seed0 = initial_seed(3 << 20)
    for run in range(1, 4):
        routine.run()
        keep = reference_keep(seed0 + run, shape, p)
        expected = values * (keep * np.float32(1 / (1 - p)))
        np.testing.assert_array_equal(y.value, expected, err_msg=f"run {run}")


def test_same_seed_same_masks_other_seed_other_masks(backend):
    first, again, other = masks(backend, 11, 3), masks(backend, 11, 3), masks(backend, 12, 3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    # A fresh mask on every run.
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


def test_two_dropouts_draw_different_masks(backend):
    oc.set_seed(0)
    x = term((8, 9))
    a, b = nn.dropout(x, 0.5, train=True), nn.dropout(x, 0.5, train=True)
    ctx = Context(backend)
    ctx.forward(a)
    ctx.forward(b)
    assert not np.array_equal(a.value, b.value)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_keep_rate_within_a_binomial_bound(backend, p):
    """Kept cells over a few runs of 100 x 100: within 5 standard deviations of n (1 - p), and
    every kept cell scaled by exactly 1 / (1 - p)."""
    shape, runs = (100, 100), 3
    kept = 0
    for mask in masks(backend, 5, runs, shape, p):
        kept += int(np.count_nonzero(mask))
        np.testing.assert_allclose(mask[mask != 0], np.float32(1 / (1 - p)), rtol=1e-7)
    n = runs * shape[0] * shape[1]
    assert abs(kept - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))


def test_gradient_flows_through_the_same_mask(backend):
    ctx = Context(backend)
    rng = np.random.default_rng(1)
    values, weights = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    x = oc.param("x", values, batch_dims=[4], output_dims=[6], input_dims=[])
    y = nn.dropout(x, 0.3, train=True)
    w = oc.term("w", batch_dims=[4], input_dims=[], output_dims=[6])
    w.set_value(weights)
    routine = ctx.compile(train.grad_update(y * w))
    for _ in range(2):  # a new mask each run, and the gradient follows it
        routine.run()
        scale = np.where(y.value != 0, np.float32(1 / 0.7), 0).astype(np.float32)
        np.testing.assert_allclose(y.value, np.float32(values) * scale, rtol=1e-6)
        np.testing.assert_allclose(x.grad, np.float32(weights) * scale, rtol=1e-6)


def test_identity_when_not_training_or_p_zero():
    x = term((2, 3))
    assert nn.dropout(x, 0.5, train=False) is x
    assert nn.dropout(x, 0.0, train=True) is x


def test_seed_wraps_below_two_to_the_24(backend):
    """The seed is carried in float32, exact below 2^24: it wraps to 0 there instead of sticking."""
    shape, p = (3, 5), 0.5
    y = nn.dropout(term(shape), p, train=True)
    routine = Context(backend).compile(y.forward)
    seed = y.operands[1].operands[0]
    seed.set_value(float(EXACT - 2))
    for expected_seed in (EXACT - 1, 0, 1):
        routine.run()
        keep = reference_keep(expected_seed, shape, p)
        np.testing.assert_array_equal(y.value, keep * np.float32(2.0))
        assert seed.item() == expected_seed


def test_bad_arguments():
    x = term((2, 3))
    for p in (1.0, -0.1, 2, True):
        with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\)"):
            nn.dropout(x, p, train=True)
    with pytest.raises(TypeError, match="train must be a bool"):
        nn.dropout(x, 0.5, train="yes")


def test_too_many_cells_is_an_error():
    big = oc.term("big", batch_dims=[4097], input_dims=[], output_dims=[4097])
    y = nn.dropout(big, 0.5, train=True)
    with pytest.raises(ValueError, match="16785409 cells, more than the 2\\^24"):
        Context("c").compile(y.forward)

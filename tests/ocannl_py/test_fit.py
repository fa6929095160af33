"""train.fit over data whose size is not a multiple of the batch size: a routine per batch size
(sharing parameters and optimizer state) or the last batch dropped. Losses and parameters are
compared with a numpy re-implementation of the same loop (same shuffling, same updates)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, train

RNG = np.random.default_rng(7)
FEATURES = RNG.normal(size=(30, 3)).astype(np.float32)
TARGETS = RNG.normal(size=(30, 2)).astype(np.float32)
W0 = np.array([[0.1, -0.2, 0.3], [0.4, 0.0, -0.1]])
B0 = np.array([0.05, -0.05])


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def parameters():
    w = oc.param("w", W0, output_dims=[2], input_dims=[3])
    b = oc.param("b", B0, output_dims=[2], batch_dims=[])
    return w, b


def mean_squared_error(w, b, size: int):
    """The loss for batches of `size`: sum over the batch of |w x + b - y|^2, over `size`."""
    x = oc.term("x", batch_dims=[size], input_dims=[], output_dims=[3])
    y = oc.term("y", batch_dims=[size], input_dims=[], output_dims=[2])
    diff = w @ x + b - y
    return oc.einsum1("...|... => 0", diff * diff) / float(size), {"x": x, "y": y}


UPDATES = {
    "sgd_momentum": lambda loss: train.sgd_update(loss, 0.1, momentum=0.5),
    "adam": lambda loss: train.adam_update(loss, 0.05),
}


def numpy_fit(update: str, batch_size: int, epochs: int, seed: int, drop_last: bool = False):
    """The same loop in float64: fit's shuffling (one permutation per epoch from
    default_rng(seed)), the mean-squared-error gradients, PyTorch's SGD-momentum / Adam."""
    params = [f32(W0), f32(B0)]
    state = [[np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]]
    rng, n, t, losses = np.random.default_rng(seed), len(FEATURES), 0, []
    for _ in range(epochs):
        order = rng.permutation(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            batch = order[start : start + batch_size]
            x, y = f32(FEATURES[batch]), f32(TARGETS[batch])
            residual = x @ params[0].T + params[1] - y
            losses.append(np.sum(residual**2) / len(batch))
            grads = [2 * residual.T @ x / len(batch), 2 * residual.sum(0) / len(batch)]
            t += 1
            for k, g in enumerate(grads):
                if update == "sgd_momentum":
                    state[0][k] = g.copy() if t == 1 else 0.5 * state[0][k] + g
                    params[k] = params[k] - 0.1 * state[0][k]
                else:
                    state[0][k] = 0.9 * state[0][k] + 0.1 * g
                    state[1][k] = 0.999 * state[1][k] + 0.001 * g * g
                    m_hat, v_hat = state[0][k] / (1 - 0.9**t), state[1][k] / (1 - 0.999**t)
                    params[k] = params[k] - 0.05 * m_hat / (np.sqrt(v_hat) + 1e-8)
    return losses, params


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("batch_size", [8, 7, 1, 29, 30, 64])
@pytest.mark.parametrize("update", sorted(UPDATES))
def test_uneven_batches_run_through_a_routine_per_size(backend, update, batch_size):
    w, b = parameters()
    losses = train.fit(
        lambda size: mean_squared_error(w, b, size), {"x": FEATURES, "y": TARGETS},
        batch_size=batch_size, epochs=2, update=UPDATES[update], context=Context(backend),
        seed=3, progress=False,
    )  # fmt: skip
    expected_losses, (w_expected, b_expected) = numpy_fit(update, batch_size, 2, seed=3)
    assert len(losses) == len(expected_losses) == 2 * -(-30 // batch_size)
    assert_close(losses, expected_losses)
    assert_close(w.value, w_expected)
    assert_close(b.value, b_expected)


def test_model_function_is_built_once_per_batch_size(backend):
    w, b = parameters()
    built = []

    def model(size):
        built.append(size)
        return mean_squared_error(w, b, size)

    train.fit(model, {"x": FEATURES, "y": TARGETS}, batch_size=8, epochs=3,
              update=UPDATES["adam"], context=Context(backend), progress=False)  # fmt: skip
    assert built == [8, 6]


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_drop_last_with_a_compiled_routine(backend, update):
    w, b = parameters()
    loss, inputs = mean_squared_error(w, b, 8)
    step = Context(backend).compile(train.grad_update(loss) + UPDATES[update](loss))
    data = {inputs["x"]: FEATURES, inputs["y"]: TARGETS}
    losses = train.fit(step, data, batch_size=8, epochs=2, loss=loss, seed=5, drop_last=True,
                       progress=False)  # fmt: skip
    expected_losses, (w_expected, b_expected) = numpy_fit(update, 8, 2, seed=5, drop_last=True)
    assert len(losses) == 6
    assert_close(losses, expected_losses)
    assert_close(w.value, w_expected)
    assert_close(b.value, b_expected)


def test_drop_last_with_a_model_function_never_builds_the_small_size():
    w, b = parameters()
    built = []

    def model(size):
        built.append(size)
        return mean_squared_error(w, b, size)

    losses = train.fit(model, {"x": FEATURES, "y": TARGETS}, batch_size=8, epochs=2,
                       update=UPDATES["sgd_momentum"], context=Context("c"), seed=1,
                       drop_last=True, progress=False)  # fmt: skip
    assert built == [8]
    assert_close(losses, numpy_fit("sgd_momentum", 8, 2, seed=1, drop_last=True)[0])


def test_fit_errors():
    w, b = parameters()
    loss, inputs = mean_squared_error(w, b, 8)
    data = {inputs["x"]: FEATURES, inputs["y"]: TARGETS}
    with pytest.raises(
        ValueError,
        match=r"30 examples do not split into batches of 8: pass drop_last=True to skip the last 6, or pass a function",
    ):
        train.fit(None, data, batch_size=8)
    named = {"x": FEATURES, "y": TARGETS}
    model = lambda size: mean_squared_error(w, b, size)  # noqa: E731
    with pytest.raises(ValueError, match="give `update`"):
        train.fit(model, named, batch_size=8, context=Context("c"))
    with pytest.raises(ValueError, match="drop `loss=`"):
        train.fit(model, named, batch_size=8, loss=loss, update=UPDATES["adam"])
    with pytest.raises(TypeError, match="maps input names to arrays; got the key"):
        train.fit(model, data, batch_size=8, update=UPDATES["adam"], context=Context("c"))
    with pytest.raises(
        ValueError, match=r"inputs \['x', 'y'\] and the data's names \['x'\] differ"
    ):
        train.fit(model, {"x": FEATURES}, batch_size=8, update=UPDATES["adam"],
                  context=Context("c"), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="make no batch of 64 with drop_last=True"):
        train.fit(model, named, batch_size=64, drop_last=True, update=UPDATES["adam"])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        train.fit(model, named, batch_size=0, update=UPDATES["adam"])


def test_parameters_made_inside_the_model_function_are_refused():
    def model(size):
        return mean_squared_error(*parameters(), size)

    with pytest.raises(
        ValueError,
        match=r"batches of 6 does not use the same parameters .*b, b, w, w.*outside the model function",
    ):
        train.fit(model, {"x": FEATURES, "y": TARGETS}, batch_size=8,
                  update=UPDATES["adam"], context=Context("c"), progress=False)  # fmt: skip


def test_docs_training_examples_run():
    doc = Path(__file__).resolve().parents[2] / "docs" / "training.md"
    failures, tried = doctest.testfile(str(doc), module_relative=False)
    assert tried > 10 and failures == 0

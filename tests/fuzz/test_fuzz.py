"""The fuzzer's own parts: the numpy reference against numpy.einsum, PyTorch and finite
differences, the generator's determinism and validity, the parser checks and the worker's
handling of crashes and hangs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fuzz import reference as ref
from fuzz.driver import Worker, signature
from fuzz.parsers import TARGETS, check, mutate, seed_text
from fuzz.programs import generate, sinks, used
from fuzz.reference import EinsumForm, Node, TensorType
from fuzz.specs import random_einsum


def test_einsum_form_matches_numpy_einsum():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5))
    form = EinsumForm("sum", "mul", (("b", "i", "k"), ("k", "j")), ("b", "j", "i"),
                      {"b": 2, "i": 3, "k": 4, "j": 5})  # fmt: skip
    np.testing.assert_allclose(ref.einsum_forward(form, [a, b]), np.einsum("bik,kj->bji", a, b))
    diagonal = EinsumForm("sum", None, (("i", "i"),), ("i",), {"i": 3})
    square = rng.normal(size=(3, 3))
    np.testing.assert_allclose(ref.einsum_forward(diagonal, [square]), np.diagonal(square))
    fixed = EinsumForm("max", None, ((2, "j"),), ("j",), {"j": 3})
    np.testing.assert_allclose(ref.einsum_forward(fixed, [square]), square[2])


def test_einsum_backward_matches_torch_at_ties():
    torch = pytest.importorskip("torch", reason="PyTorch is optional: gradient cross-check")
    values = np.array([[2.0, 5.0, 5.0], [1.0, 1.0, 0.0]])
    form = EinsumForm("max", None, (("a", "b"),), ("a",), {"a": 2, "b": 3})
    result = ref.einsum_forward(form, [values])
    upstream = np.array([1.0, -2.0])
    (grad,) = ref.einsum_backward(form, [values], result, upstream)
    leaf = torch.tensor(values, requires_grad=True)
    (leaf.amax(dim=1) * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(grad, leaf.grad.numpy())


def finite_difference(nodes, values, seeds, leaf: str, step: float = 1e-6) -> np.ndarray:
    types = {n.name: n.type for n in nodes}

    def loss(x: np.ndarray) -> float:
        vals = dict(values)
        vals[leaf] = x
        for n in nodes:
            if n.args:
                vals[n.name] = ref.forward(n, vals, types)
        return sum(float((vals[s] * w).sum()) for s, w in seeds.items())

    x0 = values[leaf]
    grad = np.zeros_like(x0)
    for k in np.ndindex(x0.shape):
        up, down = x0.copy(), x0.copy()
        up[k] += step
        down[k] -= step
        grad[k] = (loss(up) - loss(down)) / (2 * step)
    return grad


@pytest.mark.parametrize("seed", range(40))
def test_reference_gradients_match_finite_differences(seed):
    """The hand-derived backward of random programs against float64 finite differences (float
    mode keeps every point away from kinks and near ties, so the function is smooth there)."""
    program = generate(seed)
    if program.mode != "float":
        pytest.skip("ties mode: kinks on purpose, checked against PyTorch elsewhere")
    nodes = used(program)
    rng = np.random.default_rng(seed)
    seeds = {s.name: rng.normal(size=s.type.dims) for s in sinks(program) if s.grad}
    if not seeds:
        pytest.skip("no parameter reaches the sinks")
    grads = ref.gradients(nodes, program.values, seeds)
    for leaf in (n for n in nodes if n.op == "param"):
        expected = finite_difference(nodes, program.values, seeds, leaf.name)
        np.testing.assert_allclose(grads[leaf.name], expected, rtol=1e-4, atol=1e-5)


def test_generation_is_deterministic_and_valid():
    for seed in range(30):
        one, two = generate(seed), generate(seed)
        assert one.lines == two.lines
        for node in one.nodes:
            assert one.values[node.name].shape == node.type.dims
            assert np.all(np.isfinite(one.values[node.name]))


def test_random_specs_are_consistent_with_their_forms():
    rng = random.Random(3)
    t = TensorType((2,), (3,), ())
    for _ in range(200):
        made = random_einsum(rng, [t, t], "sum", "mul")
        if made is None:
            continue
        text, form, result = made
        assert "=>" in text
        assert tuple(form.dims[label] for label in form.result) == result.dims
        for axes in form.operands:
            assert len(axes) == len(t.dims)


def test_compose_and_transpose_against_numpy():
    rng = np.random.default_rng(1)
    ta, tb = TensorType((2,), (3,), (4,)), TensorType((), (4,), (5,))
    tr = TensorType((2,), (3,), (5,))
    a, b = rng.normal(size=ta.dims), rng.normal(size=tb.dims)
    np.testing.assert_allclose(ref.compose_forward(a, b, ta, tb, tr), a @ b)
    nodes = [Node("a", ta, "param", attrs={"value": a}, grad=True),
             Node("t", TensorType((2,), (4,), (3,)), "transpose", ("a",), grad=True)]  # fmt: skip
    values = {"a": a}
    values["t"] = ref.forward(nodes[1], values, {n.name: n.type for n in nodes})
    np.testing.assert_allclose(values["t"], np.swapaxes(a, 1, 2))


@pytest.mark.parametrize("target", TARGETS)
def test_parser_checks_accept_valid_and_broken_texts(target):
    rng = random.Random(5)
    for _ in range(30):
        text = mutate(rng, seed_text(rng, target))
        assert check(target, text) is None, text


def test_parser_check_reports_a_foreign_error(monkeypatch):
    from ocannl_py.dsl import syntax

    def broken(text):
        raise KeyError("boom")

    monkeypatch.setattr(syntax, "parse_op", broken)
    assert check("parse_op", "x") == "KeyError: 'boom'"


def test_worker_survives_a_crash_and_a_hang():
    worker = Worker()
    try:
        crash = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"
        assert worker.run(("program", crash), 30).startswith("Crash")
        assert worker.run(("program", "import time\ntime.sleep(60)"), 2).startswith("Timeout")
        assert worker.run(("program", "FAILURES = []"), 30) is None
        assert worker.run(("program", "FAILURES = ['x.value: differ']"), 30) == "x.value: differ"
    finally:
        worker.stop()


def test_signature_groups_failures_by_cause():
    one = signature("program", "t5.grad: 1 of 4 cells differ: got [2.5], expected [1.0]")
    two = signature("program", "t12.grad: 3 of 9 cells differ: got [0.1], expected [7.0]")
    assert one == two
    assert one != signature("program", "ShapeError (x): mismatch")


def test_float_programs_reject_a_max_over_equal_values_of_different_cells():
    """Finding of the 60-minute run (seed 20261124): `t7 = p / (c * p)` is `1 / c` in every
    cell in float64, not in float32, so a max over t7's cells picked one cell where the
    reference split the gradient. Float programs reject such ties; broadcast copies of one cell
    and exact ties in "ties" programs stay."""
    from fuzz.programs import Rejected, _no_near_ties

    form = EinsumForm("max", None, (("i",),), (), {"i": 3})
    values = [np.array([2.0, 2.0, 1.0])]
    with pytest.raises(Rejected, match="tie of different cells"):
        _no_near_ties(form, values, np.array([2.0]), exact_ties=False)
    _no_near_ties(form, values, np.array([2.0]), exact_ties=True)
    copies = EinsumForm("max", None, (("i",),), ("i",), {"i": 3, "j": 2})
    _no_near_ties(copies, [np.array([1.0, 2.0, 3.0])], np.array([1.0, 2.0, 3.0]), exact_ties=False)

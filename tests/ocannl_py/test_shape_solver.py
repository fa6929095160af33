"""The solver's costs and bookkeeping: work per operation, closing, graphs rebuilt on shared
parameters, rows that would grow without end."""

from __future__ import annotations

import gc
import weakref

import pytest

import ocannl_py as oc
from ocannl_py.errors import ShapeError
from ocannl_py.shape import Compose, Einsum, Pointwise, Shape, close, propagate
from ocannl_py.shape import solver as sv


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    """Counts the constraints the solver looks at (one per `Transaction.step` call)."""
    count = [0]
    original = sv.Transaction.step

    def counting(self, constraint):
        count[0] += 1
        return original(self, constraint)

    monkeypatch.setattr(sv.Transaction, "step", counting)
    return count


def layer(y: Shape, k: int) -> Shape:
    """`relu(w @ y + y)` with `w` a parameter whose dims are inferred."""
    w = Shape(f"w{k}", batch_dims=[], is_param=True)
    wy, total, out = Shape(f"wy{k}"), Shape(f"sum{k}"), Shape(f"relu{k}")
    propagate(Compose(), wy, [w, y])
    propagate(Pointwise(), total, [wy, y])
    propagate(Pointwise(), out, [total])
    return out


def chain(n: int) -> Shape:
    y = Shape("x", batch_dims=[4], input_dims=[], output_dims=[16])
    for k in range(n):
        y = layer(y, k)
    return y


def test_an_operation_looks_only_at_the_constraints_it_touches(steps):
    # The cost of one more layer does not depend on how many layers come before it.
    costs = []
    for n in (5, 40):
        y = chain(n)
        steps[0] = 0
        layer(y, n)
        costs.append(steps[0])
    assert costs[0] == costs[1] > 0


def test_closing_is_linear_in_the_size_of_the_graph(steps):
    counts = []
    for n in (20, 40, 80):
        y = chain(n)
        steps[0] = 0
        close([y])
        counts.append(steps[0])
        assert y.output == [16] and y.batch == [4]
    # Twice the layers, twice the work (up to the constant part of the first and last layers).
    assert counts[2] - counts[1] == 2 * (counts[1] - counts[0])


def test_rebuilding_a_graph_on_shared_parameters_keeps_nothing_of_the_old_graphs():
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    w = oc.param("w", output_dims=[4])
    refs = []
    for _ in range(10):
        y = oc.relu(w @ x) + 1.0
        y.forward.lower()  # closes its shapes, as compiling does
        refs.append((weakref.ref(y), weakref.ref(y.shape)))
        del y
    gc.collect()
    assert [r for pair in refs for r in pair if r() is not None] == []
    assert w.shape.open_steps == [] and str(w.shape) == "1:3->0:4"


def test_a_graph_left_unclosed_is_not_kept_alive_by_its_closed_operands():
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    w = oc.param("w", output_dims=[4])
    (w @ x).forward.lower()
    pending = oc.relu(w @ x)  # built, never compiled
    ref = weakref.ref(pending.shape)
    del pending
    gc.collect()
    assert ref() is None


def test_rows_that_would_grow_without_end_are_an_error():
    # p.output >= r.output = (p.output's part, one more axis): no finite solution.
    p, r = Shape("p"), Shape("r")
    propagate(Einsum("... => ...2"), r, [p])
    with pytest.raises(ShapeError, match="grow without end"):
        propagate(Pointwise(), p, [r])
    assert str(p) == "..." and str(r) == "...,0:3"  # the failed operation left no trace

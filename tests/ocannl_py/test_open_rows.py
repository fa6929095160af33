"""Two families the fuzzer found wrong, against numpy: einsum specs with fixed indices and axes
beside row variables (`2|b..v..->a ; c|..v..b->a => b`) on rows still open when the einsum is
built (`x - 2.0`, `x * q` with q's dims inferred), and numbers combined with tensors that have
empty rows (`p + 3.0` with p of no output axes has p's shape, as in numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from ocannl_py import Context
from ocannl_py.shape import close
from ocannl_py.shape import solver as sv
from ocannl_py.shape import terms as t

KINDS = ("batch", "input", "output")
MEMORY_ORDER = ("batch", "output", "input")
LABELS = "abcdefgh"

# ---- einsum: fixed indices and axes beside row variables ----------------------------------------


@st.composite
def einsum_cases(draw):
    """One or two operands over the same labels and row variables, each row arranged its own way:
    labels, fixed indices and the kind's row variable in any order. Returns the operands' rows
    (items: ("label", name), ("fixed", index, dim), ("var", kind)), the label and row variable
    dims, and the result's rows."""
    dims = {name: draw(st.integers(1, 3)) for name in LABELS[: draw(st.integers(1, 5))]}
    var_dims = {k: draw(st.lists(st.integers(1, 3), max_size=2)) for k in KINDS}
    kind_of = {name: draw(st.sampled_from(KINDS)) for name in dims}
    operands = []
    for _ in range(draw(st.integers(1, 2))):
        rows = {}
        for kind in KINDS:
            items = [("label", n) for n in dims if kind_of[n] == kind and draw(st.booleans())]
            for _ in range(draw(st.integers(0, 1))):
                dim = draw(st.integers(1, 3))
                items.append(("fixed", draw(st.integers(0, dim - 1)), dim))
            items = draw(st.permutations(items))
            if draw(st.booleans()):
                items.insert(draw(st.integers(0, len(items))), ("var", kind))
            rows[kind] = items
        if not rows["output"]:
            rows["output"] = [("fixed", 0, 1)]
        operands.append(rows)
    items = [i for rows in operands for row in rows.values() for i in row]
    kept = draw(st.permutations(sorted({i[1] for i in items if i[0] == "label"})))
    result = {k: [] for k in KINDS}
    for name in kept[: draw(st.integers(0, len(kept)))]:
        result[draw(st.sampled_from(KINDS))].append(("label", name))
    for kind in sorted({i[1] for i in items if i[0] == "var"}):
        if draw(st.booleans()):
            result[kind].insert(draw(st.integers(0, len(result[kind]))), ("var", kind))
    if not result["output"]:
        result["output"] = [("fixed", 0, 1)]
    return operands, dims, var_dims, result


def row_text(items) -> str:
    return "".join(
        f"..{i[1][0]}.." if i[0] == "var" else str(i[1]) if i[0] == "fixed" else i[1] for i in items
    )


def operand_text(rows) -> str:
    text = row_text(rows["output"])
    if rows["input"]:
        text = f"{row_text(rows['input'])}->{text}"
    if rows["batch"]:
        text = f"{row_text(rows['batch'])}|{text}"
    return text


def axis_dims(items, dims, var_dims, kind) -> list[int]:
    out: list[int] = []
    for item in items:
        if item[0] == "label":
            out.append(dims[item[1]])
        elif item[0] == "fixed":
            out.append(item[2])
        else:
            out.extend(var_dims[item[1]])
    return out


def numpy_einsum(operands, arrays, dims, var_dims, result) -> np.ndarray:
    """The reference: fixed indices taken, then numpy.einsum over labels and row variable axes."""
    letters = {name: name for name in dims}
    spare = iter("pqrstuvwxyzPQRSTUVWXYZ")
    var_letters = {k: "".join(next(spare) for _ in var_dims[k]) for k in KINDS}

    def subscripts(items) -> tuple[str, list[tuple[int, int]]]:
        text, fixed = "", []
        for item in items:
            if item[0] == "label":
                text += letters[item[1]]
            elif item[0] == "var":
                text += var_letters[item[1]]
            else:
                fixed.append((len(text) + len(fixed), item[1]))
        return text, fixed

    inputs, taken = [], []
    for rows, array in zip(operands, arrays, strict=True):
        text, fixed = subscripts([i for k in MEMORY_ORDER for i in rows[k]])
        for axis, index in sorted(fixed, reverse=True):
            array = np.take(array, index, axis=axis)
        inputs.append(text)
        taken.append(array)
    out, fixed = subscripts([i for k in MEMORY_ORDER for i in result[k]])
    value = np.einsum(f"{','.join(inputs)}->{out}", *taken)
    for axis, index in sorted(fixed):  # a fixed index in a new result: `index + 1` cells
        value = np.expand_dims(value, axis)
        pad = [(0, 0)] * value.ndim
        pad[axis] = (index, 0)
        value = np.pad(value, pad)
    return value


OPEN = {
    "leaf": (lambda x: x, lambda v: v),
    "x - 2.0": (lambda x: x - 2.0, lambda v: v - 2.0),
    "x * q": (lambda x: x * oc.param("q", 0.5), lambda v: v * 0.5),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=einsum_cases(), wrap=st.sampled_from(sorted(OPEN)), seed=st.integers(0, 1000))
def test_fixed_indices_and_axes_beside_row_variables(case, wrap, seed):
    operands, dims, var_dims, result = case
    build, reference = OPEN[wrap]
    rng = np.random.default_rng(seed)
    tensors, arrays = [], []
    for n, rows in enumerate(operands):
        given = {k: axis_dims(rows[k], dims, var_dims, k) for k in KINDS}
        values = rng.normal(size=[d for k in MEMORY_ORDER for d in given[k]])
        x = oc.term(f"x{n}", **{f"{k}_dims": given[k] for k in KINDS})
        x.set_value(values)
        tensors.append(build(x))
        arrays.append(reference(values.astype(np.float32).astype(np.float64)))
    spec = f"{' ; '.join(operand_text(r) for r in operands)} => {operand_text(result)}"
    einsum = oc.einsum if len(tensors) == 2 else oc.einsum1
    y = einsum(spec, *tensors)
    Context("c").forward(y)
    for tensor, rows in zip(tensors, operands, strict=True):
        for kind in KINDS:  # each operand keeps its own shape, however the spec reads it
            assert getattr(tensor.shape, kind) == axis_dims(rows[kind], dims, var_dims, kind), spec
    expected = numpy_einsum(operands, arrays, dims, var_dims, result)
    np.testing.assert_allclose(y.value, expected.reshape(y.value.shape), rtol=1e-4, atol=1e-5)
    assert y.value.size == expected.size, spec


def equation(tail: tuple, head: tuple):
    """`..r.., tail == head, ..v..` solved as far as it is decided."""
    tx, r, v = sv.Transaction(), t.RowVar("r"), t.RowVar("v")
    left, right = t.Row((), r, tail), t.Row(head, v, ())
    return tx, tx.unify_rows(left, right, sv.Where(lambda: "test")), left, right


def test_axes_that_cannot_be_one_are_distinct_at_once():
    """`..r.., 5` against `3, ..v..`: the 3 cannot be the 5, so the row is `3, .., 5` at once."""
    _, pending, left, right = equation((t.Dim(5),), (t.Dim(3),))
    assert pending == [] and t.resolve_row(left) == t.resolve_row(right)
    row = t.resolve_row(left)
    assert row.beg == (t.Dim(3),) and row.end == (t.Dim(5),) and row.var is not None


def test_closing_takes_the_most_overlap_the_dims_allow():
    """`..r.., 2, 5` against `5, b, ..v..`: two axes cannot overlap (2 vs 5), one can (b is 2):
    the equation waits, then settles as `5, 2, 5`."""
    b = t.DimVar("b")
    tx, pending, left, right = equation((t.Dim(2), t.Dim(5)), (t.Dim(5), b))
    assert [type(c) for c in pending] == [sv.RowEquation]
    tx.settle_equation(pending[0])
    assert t.row_sizes(left) == t.row_sizes(right) == [5, 2, 5]


# ---- numbers with tensors of empty rows ---------------------------------------------------------

NUMBER_OPS = {
    "+": (lambda x, c: x + c, lambda x, c: x + c),
    "-": (lambda x, c: c - x, lambda x, c: c - x),
    "*": (lambda x, c: x * c, lambda x, c: x * c),
    "/": (lambda x, c: x / c, lambda x, c: x / c),
    "max": (lambda x, c: oc.max(c, x), lambda x, c: np.maximum(c, x)),
}
rows = st.lists(st.integers(1, 3), max_size=2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    given_dims=st.fixed_dictionaries({k: rows for k in KINDS}),
    op=st.sampled_from(sorted(NUMBER_OPS)),
    constant=st.sampled_from([2.0, -1.5]),
    leaf=st.sampled_from(["param", "term"]),
    seed=st.integers(0, 1000),
)
def test_a_number_takes_the_shape_of_the_tensor(given_dims, op, constant, leaf, seed):
    """`x op c` has x's shape whatever rows x has (numpy's scalar broadcasting); an einsum that
    names exactly x's axes then reads it (`b|i-> => b|i->` failed on `p + 3.0`)."""
    values = np.random.default_rng(seed).normal(
        size=[d for k in MEMORY_ORDER for d in given_dims[k]]
    )
    dims_kw = {f"{k}_dims": given_dims[k] for k in KINDS}
    if leaf == "param":
        x = oc.param("x", values, **dims_kw)
    else:
        x = oc.term("x", **dims_kw)
        x.set_value(values)
    build, reference = NUMBER_OPS[op]
    y = build(x, constant)
    letters = iter(LABELS)
    names = {k: "".join(next(letters) for _ in given_dims[k]) for k in KINDS}
    text = f"{names['batch']}|{names['input']}->{names['output']}"
    z = oc.einsum1(f"{text} => {text}", y)
    Context("c").forward(z)
    for kind in KINDS:
        assert getattr(y.shape, kind) == given_dims[kind]
    expected = reference(values.astype(np.float32).astype(np.float64), constant)
    np.testing.assert_allclose(z.value, expected, rtol=1e-5)


@pytest.mark.parametrize("dims", [[], [3], [2, 1]])
def test_a_number_gives_an_axis_only_where_nothing_else_gives_one(dims):
    """`p + 3.0` has p's output axes (none, when p has none); `2 * m` and `2. + 3.` have the
    number's one output axis, and so has `2 *. {hey}` with hey's dims inferred."""
    p = oc.term("p", batch_dims=[2], input_dims=[], output_dims=dims)
    for y in (p + 3.0, 3.0 + p, oc.number(1.0) * p * 2.0):
        close([y.shape])
        assert y.shape.output == dims and y.shape.batch == [2]
    total = oc.number(2.0) + oc.number(3.0)
    close([total.shape])
    assert total.shape.output == [1]
    m = oc.term("m", batch_dims=[], input_dims=[4], output_dims=dims)
    composed = oc.op("2 * m", m=m)
    close([composed.shape])
    assert composed.shape.output == [1] and composed.shape.input == [4]
    hey = oc.op("2 *. {hey = 7.0}")
    close([hey.shape])
    assert str(hey.shape) == "0:1" and str(hey.params["hey"].shape) == "0:1"


def test_a_number_gives_no_axis_to_a_tensor_whose_row_is_settled_later():
    """`x + 3.0` with x's output row unknown when built, settled as empty by `set_value`."""
    x = oc.term("x", batch_dims=[2], input_dims=[3])
    y = x + 3.0
    x.set_value(np.arange(6.0).reshape(2, 3))
    Context("c").forward(y)
    assert y.shape.output == [] and y.value.shape == (2, 3)
    np.testing.assert_array_equal(y.value, np.arange(6.0).reshape(2, 3) + 3.0)

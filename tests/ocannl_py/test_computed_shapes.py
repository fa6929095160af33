"""A computed tensor has the shape its operands make it, as in numpy (the least solution), however
it is used later: broadcast into a larger tensor, or read by an einsum with labels beside a row
variable. Found by the fuzzer with a number as an operand (whose input row takes no axes unless
compose asks): hypothesis over that family of programs, values and gradients against numpy and
float64 finite differences."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from ocannl_py import Context, train

KINDS = ("batch", "output", "input")  # the memory order of a value's axes
NUMBER_OPS = {
    "x + c": (lambda x, c: x + c, lambda x, c: x + c),
    "c - x": (lambda x, c: c - x, lambda x, c: c - x),
    "c * x": (lambda x, c: c * x, lambda x, c: c * x),
    "x / c": (lambda x, c: x / c, lambda x, c: x / c),
    "max(x, c)": (lambda x, c: oc.max(x, c), np.maximum),
}

rows = st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=2)
nonempty_rows = st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=2)
# At least one output axis: a number's output axis of dim 1 stays on a tensor without any (an
# open bug of its own, fuzz.specs.KNOWN_ISSUES).
shapes = st.fixed_dictionaries({"batch": rows, "output": nonempty_rows, "input": rows})
LETTERS = {"batch": "abc", "input": "ijkl", "output": "uvw"}


def values(dims: dict[str, list[int]], seed: int) -> np.ndarray:
    """Values away from the numbers the operations use, so that max has no ties."""
    size = tuple(dims["batch"] + dims["output"] + dims["input"])
    cells = np.random.default_rng(seed).uniform(0.5, 1.5, size)
    signs = np.where(np.arange(cells.size).reshape(size) % 2 == 0, 1.0, -1.0)
    return cells * signs


def padded(dims: dict[str, list[int]], wider: dict[str, list[int]]) -> tuple[int, ...]:
    """`dims` as a numpy shape that broadcasts against `wider`: each row aligned on the right."""
    shape: list[int] = []
    for kind in KINDS:
        shape += [1] * (len(wider[kind]) - len(dims[kind])) + dims[kind]
    return tuple(shape)


def finite_difference(loss, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (loss(up) - loss(down)) / (2 * eps)
    return grad


def param(dims: dict[str, list[int]], value: np.ndarray) -> oc.Tensor:
    return oc.param(
        "x",
        value,
        batch_dims=dims["batch"],
        input_dims=dims["input"],
        output_dims=dims["output"],
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dims=shapes,
    extra=st.fixed_dictionaries(
        {kind: st.lists(st.sampled_from([2, 3]), max_size=1) for kind in KINDS}
    ),
    op=st.sampled_from(sorted(NUMBER_OPS)),
    constant=st.sampled_from([2.0, -1.5]),
    seed=st.integers(0, 1000),
)
def test_a_computed_tensor_broadcast_into_a_larger_one(dims, extra, op, constant, seed):
    """`t = op(x, c)` keeps x's shape when `t + z` has more axes (z's dims all known, its sum's
    shape pinned by an einsum): a sum over t counts each of its cells once."""
    build, reference = NUMBER_OPS[op]
    wide = {kind: extra[kind] + dims[kind] for kind in KINDS}
    x_value = values(dims, seed)
    z_value = values(wide, seed + 1)
    x = param(dims, x_value)
    z = oc.term("z", batch_dims=wide["batch"], input_dims=wide["input"], output_dims=wide["output"])
    z.set_value(z_value)
    t = build(x, constant)
    spec = "{}|{}->{}".format(*(LETTERS[k][: len(wide[k])] for k in ("batch", "input", "output")))
    both = oc.einsum1(f"{spec} => {spec}", t + z)
    w1, w2 = values(dims, seed + 2), values(wide, seed + 3)
    loss = oc.einsum1(
        "...|...->... => ",
        t
        * oc.ndarray(
            w1, batch_dims=dims["batch"], input_dims=dims["input"], output_dims=dims["output"]
        ),
    ) + oc.einsum1(
        "...|...->... => ",
        both
        * oc.ndarray(
            w2, batch_dims=wide["batch"], input_dims=wide["input"], output_dims=wide["output"]
        ),
    )
    Context("c").compile(train.grad_update(loss)).run()

    def numpy_loss(xv: np.ndarray) -> float:
        tv = reference(xv, constant)
        return float((tv * w1).sum() + ((tv.reshape(padded(dims, wide)) + z_value) * w2).sum())

    x32 = x_value.astype(np.float32).astype(np.float64)
    assert t.value.shape == x_value.shape
    np.testing.assert_allclose(t.value, reference(x32, constant), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss.item(), numpy_loss(x32), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x.grad, finite_difference(numpy_loss, x32), rtol=1e-4, atol=1e-4)


FORMS = {"i...": (0,), "...i": (-1,), "i...j": (0, -1)}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dims=shapes,
    kind=st.sampled_from(KINDS),
    form=st.sampled_from(sorted(FORMS)),
    op=st.sampled_from(sorted(NUMBER_OPS)),
    constant=st.sampled_from([2.0, -1.5]),
    seed=st.integers(0, 1000),
)
def test_labels_beside_a_row_variable_on_a_computed_tensor(dims, kind, form, op, constant, seed):
    """An einsum reading `t = op(x, c)` with labels before and after a row variable (`i...`,
    `...i`, `i...j`) pairs them with t's first and last axes of that row, as they are on x."""
    kept = FORMS[form]
    if len(dims[kind]) < len(kept):
        dims = {**dims, kind: [2] * len(kept) + dims[kind]}
    build, reference = NUMBER_OPS[op]
    x_value = values(dims, seed)
    x = param(dims, x_value)
    t = build(x, constant)
    rows = {k: "..." for k in KINDS}
    result_rows = dict(rows)
    rows[kind], result_rows[kind] = form, form.replace("...", "")
    spec = "{batch}|{input}->{output} => ".format(**rows) + "{batch}|{input}->{output}".format(
        **result_rows
    )
    y = oc.einsum1(spec, t)

    first = {"batch": 0, "output": len(dims["batch"])}
    first["input"] = first["output"] + len(dims["output"])
    length = len(dims[kind])
    keep = {first[kind] + (k % length) for k in kept}
    summed = tuple(a for a in range(first[kind], first[kind] + length) if a not in keep)
    y_dims = dict(dims)
    y_dims[kind] = [dims[kind][k] for k in kept]
    w = values(y_dims, seed + 1)
    weights = oc.ndarray(
        w, batch_dims=y_dims["batch"], input_dims=y_dims["input"], output_dims=y_dims["output"]
    )
    loss = oc.einsum1("...|...->... => ", y * weights)
    Context("c").compile(train.grad_update(loss)).run()

    def numpy_loss(xv: np.ndarray) -> float:
        return float((reference(xv, constant).sum(axis=summed) * w).sum())

    x32 = x_value.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(
        y.value, reference(x32, constant).sum(axis=summed), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(x.grad, finite_difference(numpy_loss, x32), rtol=1e-4, atol=1e-4)


UNARY = {
    "exp": (oc.exp, np.exp),
    "neg": (lambda x: -x, np.negative),
    "x * 2": (lambda x: x * 2.0, lambda x: x * 2.0),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dims=shapes,
    extra=st.lists(st.sampled_from([2, 3]), min_size=1, max_size=2),
    op=st.sampled_from(sorted(UNARY)),
    seed=st.integers(0, 1000),
)
def test_a_tensor_computed_from_an_inferred_parameter(dims, extra, op, seed):
    """`p`'s input dims are inferred from a first use (`p + z1`); `t = f(p)` then broadcast into
    `t + z2` of more input axes keeps p's shape: the greatest solution is the parameter's, and
    `t` follows it rather than taking z2's axes (which summed copies of `t`)."""
    build, reference = UNARY[op]
    wide = {**dims, "input": extra + dims["input"]}
    p = oc.param("p", batch_dims=dims["batch"], output_dims=dims["output"])
    z1_value, z2_value = values(dims, seed), values(wide, seed + 1)
    z1 = oc.term(
        "z1", batch_dims=dims["batch"], input_dims=dims["input"], output_dims=dims["output"]
    )
    z2 = oc.term(
        "z2", batch_dims=wide["batch"], input_dims=wide["input"], output_dims=wide["output"]
    )
    z1.set_value(z1_value)
    z2.set_value(z2_value)

    def exact(dims_of: dict[str, list[int]]) -> str:
        return "{}|{}->{}".format(
            *(LETTERS[k][: len(dims_of[k])] for k in ("batch", "input", "output"))
        )

    first = oc.einsum1(f"{exact(dims)} => {exact(dims)}", p + z1)
    t = build(p)
    both = oc.einsum1(f"{exact(wide)} => {exact(wide)}", t + z2)
    total = "...|...->... => "
    loss = oc.einsum1(total, first) + oc.einsum1(total, t) + oc.einsum1(total, both)
    Context("c").compile(train.grad_update(loss)).run()

    def numpy_loss(pv: np.ndarray) -> float:
        tv = reference(pv)
        return float(
            (pv + z1_value).sum() + tv.sum() + (tv.reshape(padded(dims, wide)) + z2_value).sum()
        )

    pv = p.value.astype(np.float64)
    assert p.value.shape == t.value.shape == z1_value.shape
    np.testing.assert_allclose(loss.item(), numpy_loss(pv), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p.grad, finite_difference(numpy_loss, pv), rtol=1e-3, atol=1e-3)

"""Every form of the public API contract (`shared/design/API.md`), against numpy.

Values are computed in float32 by the compiled code; the numpy references use float64 on the
same float32-rounded inputs. Arithmetic is correctly rounded in both, and the C and CUDA math
libraries promise a few ulp for transcendental functions, so `rtol=1e-6` (about 8 float32 ulp)
is tight enough to catch any wrong formula or axis order and loose enough for libm differences.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from ocannl_py import Context, cd, op, train

RTOL = 1e-6
ATOL = 1e-6


def f32(x) -> np.ndarray:
    """The float32 rounding of `x`, as float64: what the compiled code actually reads."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def literal(values, *, batch=(), output=(), inputs=(), label=None) -> oc.Tensor:
    return oc.ndarray(
        np.asarray(values, np.float64),
        batch_dims=list(batch),
        output_dims=list(output),
        input_dims=list(inputs),
        label=label,
    )


def computed(ctx: Context, t: oc.Tensor) -> np.ndarray:
    ctx.forward(t)
    return t.value


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---- leaves -------------------------------------------------------------------------------------


def test_number_is_a_broadcasting_constant(backend):
    ctx = Context(backend)
    x = literal([[1.0, 2.0], [3.0, 4.0]], output=[2, 2])
    y = x + oc.number(2.5)
    np.testing.assert_array_equal(computed(ctx, y), [[3.5, 4.5], [5.5, 6.5]])


def test_param_with_value_and_dims(backend):
    ctx = Context(backend)
    w = oc.param("w", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], input_dims=[3], output_dims=[2])
    x = literal([1.0, 0.0, -1.0], output=[3])
    y = w @ x
    np.testing.assert_array_equal(computed(ctx, y), [-2.0, -2.0])
    np.testing.assert_array_equal(w.value, [[1, 2, 3], [4, 5, 6]])
    assert w.shape.input == [3] and w.shape.output == [2] and w.shape.batch == []
    assert y.params == {"w": w}


def test_param_scalar_value_fills_inferred_dims(backend):
    ctx = Context(backend)
    w = oc.param("w", 0.25)
    x = literal(np.ones((2, 3)), batch=[2], output=[3])
    y = w * x
    np.testing.assert_array_equal(computed(ctx, y), np.full((2, 3), 0.25))
    assert w.value.size in (1, 3, 6)  # inferred: broadcast where it can, but all 0.25
    np.testing.assert_array_equal(w.value, np.full(w.value.shape, 0.25))


def test_param_inferred_dims_from_compose(backend):
    ctx = Context(backend)
    x = literal(np.arange(6.0).reshape(2, 3), batch=[2], output=[3])
    w = oc.param("w", output_dims=[4])
    y = w @ x
    ctx.forward(y)
    assert w.shape.input == [3] and w.shape.output == [4] and w.shape.batch == []
    assert w.value.shape == (4, 3)
    assert y.shape.batch == [2] and y.shape.output == [4] and y.shape.input == []
    np.testing.assert_allclose(y.value, f32(np.arange(6.0).reshape(2, 3)) @ f32(w.value).T,
                               rtol=RTOL, atol=ATOL)  # fmt: skip


def _random_param_values(ctx: Context, seed: int, fan_in: int = 16) -> np.ndarray:
    oc.set_seed(seed)
    w = oc.param("w", output_dims=[8], input_dims=[fan_in])
    y = oc.identity(w)
    ctx.forward(y)
    return w.value


def test_param_random_init_is_seeded_and_bounded(backend):
    ctx = Context(backend)
    first = _random_param_values(ctx, 7)
    again = _random_param_values(ctx, 7)
    other = _random_param_values(ctx, 8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Documented in `oc.param`: uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)].
    bound = 1 / np.sqrt(16)
    assert np.all(np.abs(first) <= bound + 1e-7)
    assert np.all(np.abs(other) <= bound + 1e-7)
    # 128 uniform draws cover the interval and are not all alike.
    assert first.min() < -bound / 2 and first.max() > bound / 2
    assert len(np.unique(first)) == first.size


def test_param_random_init_kth_parameter_after_seed(backend):
    ctx = Context(backend)
    oc.set_seed(3)
    w1 = oc.param("w1", output_dims=[5], input_dims=[1])
    w2 = oc.param("w2", output_dims=[5], input_dims=[1])
    ctx.forward(oc.identity(w1) + oc.identity(w2))
    assert not np.array_equal(w1.value, w2.value)  # different parameters, different streams
    oc.set_seed(3)
    v1 = oc.param("v1", output_dims=[5], input_dims=[1])
    ctx.forward(oc.identity(v1))
    np.testing.assert_array_equal(v1.value, w1.value)


def test_set_seed_rejects_bad_seeds():
    with pytest.raises(ValueError, match="set_seed"):
        oc.set_seed(-1)
    with pytest.raises(ValueError, match="set_seed"):
        oc.set_seed(1.5)


def test_forward_of_a_bare_parameter_initialises_it(backend):
    ctx = Context(backend)
    w = oc.param("w", [1.0, 2.0], output_dims=[2])
    ctx.forward(w)
    np.testing.assert_array_equal(w.value, [1.0, 2.0])


def test_term_set_value(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    y = x * 2.0
    x.set_value(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(computed(ctx, y), 2 * np.arange(6.0).reshape(2, 3))
    x.set_value(np.ones((2, 3)))  # new data, same compiled routine
    ctx.forward(y)
    np.testing.assert_array_equal(y.value, np.full((2, 3), 2.0))
    assert x.grad is None and y.grad is None
    assert y.params == {}


def test_routine_run_without_term_value_says_set_value(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[3])
    y = x + 1.0
    with pytest.raises(ValueError, match=r"set_value"):
        ctx.forward(y)


def test_ndarray_dims_and_layout(backend):
    ctx = Context(backend)
    values = np.arange(24.0)
    t = oc.ndarray(values, batch_dims=[2], output_dims=[3], input_dims=[4])
    np.testing.assert_array_equal(computed(ctx, oc.identity(t)), values.reshape(2, 3, 4))
    assert str(t.shape) == "0:2|1:4->0:3"
    assert t.grad is None


def test_ndarray_dims_must_multiply():
    with pytest.raises(ValueError, match=r"6 values|hold 4 values"):
        oc.ndarray(np.arange(6.0), output_dims=[2, 2])
    with pytest.raises(ValueError):
        oc.ndarray([1.0, 2.0, 3.0], batch_dims=[2], output_dims=[2])


def test_range(backend):
    ctx = Context(backend)
    r = oc.range(5)
    np.testing.assert_array_equal(computed(ctx, oc.identity(r)), np.arange(5.0))
    assert r.shape.output == [5] and r.shape.input == [] and r.shape.batch == []


@pytest.mark.parametrize(
    "batch,output,inputs",
    [([2], [4], [3]), ([], [3, 4], []), ([2, 3], [2], [2, 2]), ([], [1], [5])],
)
def test_range_of_shape_is_row_major_offset_in_batch_output_input_order(
    backend, batch, output, inputs
):
    ctx = Context(backend)
    r = oc.range_of_shape(batch_dims=batch, output_dims=output, input_dims=inputs)
    dims = tuple(batch + output + inputs)
    np.testing.assert_array_equal(
        computed(ctx, oc.identity(r)), np.arange(np.prod(dims), dtype=float).reshape(dims)
    )


# ---- tensor attributes --------------------------------------------------------------------------


def test_value_layout_and_shape_attributes(backend):
    ctx = Context(backend)
    r = oc.range_of_shape(batch_dims=[2], input_dims=[3], output_dims=[4])
    y = oc.identity(r)
    ctx.forward(y)
    assert y.value.shape == (2, 4, 3)  # batch, output, input
    assert y.value.dtype == np.float32
    assert y.value[1, 2, 0] == 1 * 12 + 2 * 3 + 0
    assert y.shape.batch == [2] and y.shape.input == [3] and y.shape.output == [4]
    assert str(y.shape) == "0:2|1:3->0:4"  # API.md's example
    assert str(oc.range_of_shape(output_dims=[4]).shape) == "0:4"
    assert str(oc.range_of_shape(input_dims=[3], output_dims=[4]).shape) == "1:3->0:4"
    assert str(oc.range_of_shape(batch_dims=[2], output_dims=[4]).shape) == "0:2|0:4"


def test_value_is_a_copy(backend):
    ctx = Context(backend)
    y = oc.identity(literal([1.0, 2.0], output=[2]))
    ctx.forward(y)
    y.value[0] = 100.0
    np.testing.assert_array_equal(y.value, [1.0, 2.0])


def test_label_and_params():
    x = oc.term("x", batch_dims=[1], input_dims=[], output_dims=[3])
    w = oc.param("w", output_dims=[2])
    b = oc.param("b", 0.0)
    y = oc.relu(w @ x + b)
    assert x.label == "x" and w.label == "w"
    assert isinstance(y.label, str) and y.label
    assert y.params == {"w": w, "b": b}
    assert set(op("{u} * x + {v = 1.0}", x=x).params) == {"u", "v"}
    assert repr(w).startswith("<param tensor 'w'")


def test_item(backend):
    ctx = Context(backend)
    s = op("2 *. {hey = 7.0}")
    ctx.forward(s)
    assert s.item() == 14.0 and isinstance(s.item(), float)
    v = oc.identity(literal([1.0, 2.0], output=[2]))
    ctx.forward(v)
    with pytest.raises(ValueError, match="2 values"):
        v.item()


def test_set_value_wrong_shape_raises():
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)|\(3, 2\)"):
        x.set_value(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        x.set_value(np.zeros(6))


def test_set_value_scalar_fills(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[3])
    x.set_value(4.0)
    np.testing.assert_array_equal(computed(ctx, x + 0.0), [4.0, 4.0, 4.0])


def test_value_before_computing_says_how():
    y = oc.relu(literal([1.0, -1.0], output=[2], label="lit"))
    with pytest.raises(ValueError, match=r"ctx\.forward") as err:
        _ = y.value
    assert "no value" in str(err.value)
    w = oc.param("w", 1.0, output_dims=[2])
    with pytest.raises(ValueError, match="grad_update"):
        _ = (w * 2.0).grad


def test_grad_is_none_for_non_differentiable(backend):
    ctx = Context(backend)
    x = literal([1.0, 2.0], output=[2])
    t = oc.term("t", batch_dims=[], input_dims=[], output_dims=[2])
    y = oc.exp(x) + t
    t.set_value([0.0, 1.0])
    ctx.forward(y)
    assert x.grad is None and t.grad is None and y.grad is None
    assert oc.number(3.0).grad is None


def test_tensor_has_no_truth_value():
    x = literal([1.0], output=[1])
    with pytest.raises(TypeError, match="truth value"):
        bool(x)


# ---- Python operators ---------------------------------------------------------------------------

_A = np.array([[0.5, -1.25, 2.0], [3.0, -0.75, 1.5]])
_B = np.array([[1.5, 2.0, -0.5], [0.25, 4.0, 2.5]])
_POS = np.array([[0.5, 1.25, 2.0], [3.0, 0.75, 1.5]])

OPERATORS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "pow_const": (lambda a, b: a**2.0, lambda a, b: a**2.0),
    "pow_int_const": (lambda a, b: a**3, lambda a, b: a**3),
    "neg": (lambda a, b: -a, lambda a, b: -a),
    "number_times": (lambda a, b: 2 * a, lambda a, b: 2 * a),
    "times_number": (lambda a, b: a * 0.5, lambda a, b: a * 0.5),
    "number_over": (lambda a, b: 10.0 / b, lambda a, b: 10.0 / b),
    "number_minus": (lambda a, b: 1 - a, lambda a, b: 1 - a),
    "plus_number": (lambda a, b: a + 3, lambda a, b: a + 3),
    "radd": (lambda a, b: 3.5 + a, lambda a, b: 3.5 + a),
    "over_number": (lambda a, b: a / 4.0, lambda a, b: a / 4.0),
    "composite": (lambda a, b: (a - b) * (a + b) / 2, lambda a, b: (a - b) * (a + b) / 2),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_python_operators_follow_numpy(backend, name):
    ctx = Context(backend)
    ours, ref = OPERATORS[name]
    a = literal(_A, output=[2, 3])
    b = literal(_B, output=[2, 3])
    y = ours(a, b)
    np.testing.assert_allclose(computed(ctx, y), ref(f32(_A), f32(_B)), rtol=RTOL, atol=ATOL)


def test_tensor_power_tensor(backend):
    ctx = Context(backend)
    y = literal(_POS, output=[2, 3]) ** literal(_B, output=[2, 3])
    np.testing.assert_allclose(computed(ctx, y), f32(_POS) ** f32(_B), rtol=RTOL)


def test_matmul_is_compose(backend, rng):
    ctx = Context(backend)
    a_val, b_val = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    a = literal(a_val, output=[2], inputs=[3])
    b = literal(b_val, output=[3], inputs=[4])
    y = a @ b
    np.testing.assert_allclose(computed(ctx, y), f32(a_val) @ f32(b_val), rtol=RTOL, atol=ATOL)
    assert y.shape.output == [2] and y.shape.input == [4]


def test_matmul_with_batch_needs_transposes(backend, rng):
    """Data with examples along batch and features along output: `w @ x` is `x @ w.T`."""
    ctx = Context(backend)
    w_val, x_val = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    w = literal(w_val, output=[4], inputs=[3])
    x = literal(x_val, batch=[5], output=[3])
    y = w @ x
    np.testing.assert_allclose(computed(ctx, y), f32(x_val) @ f32(w_val).T, rtol=RTOL, atol=ATOL)
    assert y.shape.batch == [5] and y.shape.output == [4]
    # Batched matrices on both sides: numpy's batched matmul.
    p_val, q_val = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 5))
    p = literal(p_val, batch=[2], output=[3], inputs=[4])
    q = literal(q_val, batch=[2], output=[4], inputs=[5])
    np.testing.assert_allclose(computed(ctx, p @ q), f32(p_val) @ f32(q_val), rtol=RTOL,
                               atol=ATOL)  # fmt: skip


def test_pointwise_broadcasting_follows_rows(backend, rng):
    """A missing row or dim-1 axis broadcasts: bias of output [4] over a batch of 3."""
    ctx = Context(backend)
    x_val, b_val = rng.normal(size=(3, 4)), rng.normal(size=4)
    y = literal(x_val, batch=[3], output=[4]) + literal(b_val, output=[4])
    np.testing.assert_allclose(computed(ctx, y), f32(x_val) + f32(b_val), rtol=RTOL, atol=ATOL)
    col = rng.normal(size=(3, 1))
    z = literal(x_val, output=[3, 4]) * literal(col, output=[3, 1])
    np.testing.assert_allclose(computed(ctx, z), f32(x_val) * f32(col), rtol=RTOL, atol=ATOL)


# ---- functions and methods ----------------------------------------------------------------------

_X = np.array([-2.5, -1.0, -0.3, 0.0, 0.2, 0.7, 1.0, 1.6, 3.0])
_XPOS = np.array([0.05, 0.3, 0.5, 1.0, 1.5, 2.0, 4.0, 9.0, 100.0])

UNARY = {
    "relu": (_X, lambda x: np.maximum(x, 0)),
    "exp": (_X, np.exp),
    "log": (_XPOS, np.log),
    "sqrt": (_XPOS, np.sqrt),
    "tanh": (_X, np.tanh),
    "erf": (_X, np.vectorize(math.erf)),
    "sin": (_X, np.sin),
    "cos": (_X, np.cos),
    "recip": (_XPOS, lambda x: 1 / x),
    "recip_sqrt": (_XPOS, lambda x: 1 / np.sqrt(x)),
    "sat01": (_X, lambda x: np.clip(x, 0, 1)),
    "exp2": (_X, np.exp2),
    "log2": (_XPOS, np.log2),
    "neg": (_X, np.negative),
    "identity": (_X, lambda x: x),
    "stop_gradient": (_X, lambda x: x),
}
METHODS = sorted(set(UNARY) - {"identity"})


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_functions_follow_numpy(backend, name):
    ctx = Context(backend)
    values, ref = UNARY[name]
    y = getattr(oc, name)(literal(values, output=[len(values)]))
    np.testing.assert_allclose(computed(ctx, y), ref(f32(values)), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", METHODS)
def test_unary_methods_follow_numpy(backend, name):
    ctx = Context(backend)
    values, ref = UNARY[name]
    y = getattr(literal(values, output=[len(values)]), name)()
    np.testing.assert_allclose(computed(ctx, y), ref(f32(values)), rtol=RTOL, atol=ATOL)


_P = np.array([-1.5, 0.0, 0.5, 2.0, 2.0, -3.0])
_Q = np.array([1.0, 0.0, -0.5, 2.0, 3.0, -4.0])

BINARY = {
    "lt": lambda a, b: (a < b).astype(float),
    "eq": lambda a, b: (a == b).astype(float),
    "ne": lambda a, b: (a != b).astype(float),
    "max": np.maximum,
    "min": np.minimum,
    "relu_gate": lambda a, b: np.where(a > 0, b, 0.0),
    "add": np.add,
    "sub": np.subtract,
    "pointmul": np.multiply,
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_functions_follow_numpy(backend, name):
    ctx = Context(backend)
    y = getattr(oc, name)(literal(_P, output=[6]), literal(_Q, output=[6]))
    np.testing.assert_allclose(computed(ctx, y), BINARY[name](_P, _Q), rtol=RTOL, atol=ATOL)


def test_where_fma_not(backend, rng):
    ctx = Context(backend)
    cond = np.array([1.0, 0.0, 1.0, 0.0, 2.0])
    a, b, c = (rng.normal(size=5) for _ in range(3))
    la, lb, lc = (literal(v, output=[5]) for v in (a, b, c))
    w = oc.where(literal(cond, output=[5]), la, lb)
    np.testing.assert_array_equal(computed(ctx, w), np.where(cond != 0, f32(a), f32(b)))
    fma = oc.fma(la, lb, lc)
    np.testing.assert_allclose(computed(ctx, fma), f32(a) * f32(b) + f32(c), rtol=RTOL,
                               atol=ATOL)  # fmt: skip
    n = oc.not_(literal(cond, output=[5]))
    np.testing.assert_array_equal(computed(ctx, n), (cond == 0).astype(float))


def test_where_broadcasts_condition(backend):
    ctx = Context(backend)
    cond = literal([1.0, 0.0], output=[2, 1])
    y = oc.where(cond, literal(np.ones((2, 3)), output=[2, 3]), 5.0)
    np.testing.assert_array_equal(computed(ctx, y), [[1, 1, 1], [5, 5, 5]])


# ---- einsum -------------------------------------------------------------------------------------


def test_einsum_api_example(backend, rng):
    ctx = Context(backend)
    x_val, y_val = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    z = oc.einsum("ab;bc=>ac", literal(x_val, output=[2, 3]), literal(y_val, output=[3, 4]))
    np.testing.assert_allclose(computed(ctx, z), np.einsum("ab,bc->ac", f32(x_val), f32(y_val)),
                               rtol=RTOL, atol=ATOL)  # fmt: skip


def test_einsum_all_rows_like_docs(backend, rng):
    """docs/einsum.md: `b|i->o; b|o->p => b|i->p` is `numpy.einsum("boi,bpo->bpi")`."""
    ctx = Context(backend)
    a_val, b_val = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 3))
    a = literal(a_val, batch=[2], output=[3], inputs=[4])
    b = literal(b_val, batch=[2], output=[5], inputs=[3])
    z = oc.einsum("b|i->o; b|o->p => b|i->p", a, b)
    np.testing.assert_allclose(
        computed(ctx, z), np.einsum("boi,bpo->bpi", f32(a_val), f32(b_val)), rtol=RTOL, atol=ATOL
    )


EINSUM1 = [
    # spec, (batch, output, input) dims of the operand, numpy equivalent on the value
    ("ij=>ji", ([], [2, 3], []), lambda x: x.T),
    ("ii=>i", ([], [3, 3], []), np.diagonal),
    ("ij=>i", ([], [2, 3], []), lambda x: x.sum(1)),
    ("...|...->... => 0", ([2], [3], [4]), lambda x: x.sum().reshape(1)),
    ("ab|cd->ef => cf|ae->db", ([2, 3], [2, 2], [3, 2]), lambda x: np.einsum("abefcd->cfdbae", x)),
    ("b|i->o => o|b->i", ([2], [4], [3]), lambda x: np.einsum("boi->oib", x)),
    ("...|...->...o => o", ([2], [4], [3]), lambda x: x.sum(axis=(0, 2))),
]


@pytest.mark.parametrize("spec,dims,ref", EINSUM1, ids=[e[0] for e in EINSUM1])
def test_einsum1_vs_numpy(backend, rng, spec, dims, ref):
    ctx = Context(backend)
    batch, output, inputs = dims
    val = rng.normal(size=tuple(batch + output + inputs))
    z = oc.einsum1(spec, literal(val, batch=batch, output=output, inputs=inputs))
    np.testing.assert_allclose(computed(ctx, z), ref(f32(val)), rtol=1e-5, atol=1e-5)


def test_outer_sum_einmax1_tropical_vs_numpy(backend, rng):
    ctx = Context(backend)
    x_val, y_val = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    x, y = literal(x_val, output=[2, 3]), literal(y_val, output=[3, 4])
    xf, yf = f32(x_val), f32(y_val)
    outer = oc.outer_sum("ab;bc=>ac", x, y)
    np.testing.assert_allclose(
        computed(ctx, outer), (xf[:, :, None] + yf[None, :, :]).sum(1), rtol=RTOL, atol=ATOL
    )
    outer2 = oc.outer_sum("a;c=>ac", literal(x_val[0], output=[3]), literal(y_val[0], output=[4]))
    np.testing.assert_allclose(computed(ctx, outer2), xf[0][:, None] + yf[0][None, :], rtol=RTOL)
    emax = oc.einmax1("ab=>a", x)
    np.testing.assert_array_equal(computed(ctx, emax), xf.max(1))
    trop = oc.tropical("ab;bc=>ac", x, y)
    np.testing.assert_allclose(
        computed(ctx, trop), (xf[:, :, None] + yf[None, :, :]).max(1), rtol=RTOL, atol=ATOL
    )


def test_einsum_fixed_index_and_named_row_variable(backend, rng):
    ctx = Context(backend)
    val = rng.normal(size=(3, 2, 4))
    x = literal(val, batch=[3], output=[2, 4])
    z = oc.einsum1("2..v..|... => ..v..", x)
    np.testing.assert_allclose(computed(ctx, z), f32(val)[2].sum(axis=(0, 1)).reshape(()),
                               rtol=1e-5)  # fmt: skip


# Hypothesis: random specs over tensors with all three rows, against numpy.einsum.
_LETTERS = "abcdefg"


@st.composite
def einsum_cases(draw, binary: bool):
    sizes = {c: draw(st.integers(2, 3)) for c in _LETTERS}
    n_ops = 2 if binary else 1
    operands = []
    for _ in range(n_ops):
        letters = draw(st.permutations(_LETTERS))[: draw(st.integers(1, 4))]
        cuts = sorted(draw(st.lists(st.integers(0, len(letters)), min_size=2, max_size=2)))
        batch, output, inputs = letters[: cuts[0]], letters[cuts[0] : cuts[1]], letters[cuts[1] :]
        operands.append((batch, output, inputs))
    used = sorted({c for rows in operands for row in rows for c in row})
    result = draw(st.permutations(used))[: draw(st.integers(0, len(used)))]
    cuts = sorted(draw(st.lists(st.integers(0, len(result)), min_size=2, max_size=2)))
    lhs = (result[: cuts[0]], result[cuts[0] : cuts[1]], result[cuts[1] :])
    return sizes, operands, lhs


def _spec_of(rows) -> str:
    batch, output, inputs = ("".join(r) for r in rows)
    return f"{batch}|{inputs}->{output}"


def _numpy_subscripts(rows) -> str:
    batch, output, inputs = ("".join(r) for r in rows)
    return batch + output + inputs  # the memory order of values


def _check_einsum_case(backend, case, seed):
    sizes, operands, lhs = case
    rng = np.random.default_rng(seed)
    ctx = Context(backend)
    values, tensors = [], []
    for batch, output, inputs in operands:
        dims = [sizes[c] for c in batch + output + inputs]
        val = rng.normal(size=dims)
        values.append(f32(val))
        tensors.append(
            literal(val, batch=[sizes[c] for c in batch], output=[sizes[c] for c in output],
                    inputs=[sizes[c] for c in inputs])
        )  # fmt: skip
    spec = ";".join(_spec_of(o) for o in operands) + "=>" + _spec_of(lhs)
    np_spec = ",".join(_numpy_subscripts(o) for o in operands) + "->" + _numpy_subscripts(lhs)
    z = oc.einsum(spec, *tensors) if len(tensors) == 2 else oc.einsum1(spec, tensors[0])
    expected = np.einsum(np_spec, *values)
    got = computed(ctx, z)
    assert got.shape == expected.shape or (got.size == expected.size == 1), spec
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5,
                               err_msg=f"{spec} vs numpy {np_spec}")  # fmt: skip


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=einsum_cases(binary=True), seed=st.integers(0, 2**16))
def test_einsum_random_specs_vs_numpy(backend, case, seed):
    _check_einsum_case(backend, case, seed)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=einsum_cases(binary=False), seed=st.integers(0, 2**16))
def test_einsum1_random_specs_vs_numpy(backend, case, seed):
    _check_einsum_case(backend, case, seed)


# ---- the op DSL ---------------------------------------------------------------------------------


def test_op_api_example(backend):
    ctx = Context(backend)
    y = op("({hey = 7.0} * [2;3]) + [4;5;6]")
    np.testing.assert_array_equal(computed(ctx, y), [39.0, 40.0, 41.0])
    hey = y.params["hey"]
    assert hey.shape.input == [2] and hey.shape.output == [3]


@pytest.mark.parametrize(
    "text,values,shape",
    [
        ("[1;2;3]", [1, 2, 3], "0:3"),
        ("(1,2,3)", [1, 2, 3], "0:3->"),
        ("[|1;2|]", [1, 2], "0:2|"),
        ("[(1,2,3);(4,5,6)]", [[1, 2, 3], [4, 5, 6]], "1:3->0:2"),
        ("[|[1;2];[3;4]|]", [[1, 2], [3, 4]], "0:2|0:2"),
        ("[[1;2];[3;4]]", [[1, 2], [3, 4]], "0:2,1:2"),
        # The outer input axis and inner output axis: values laid out output, then input.
        ("((1;2),(3;4))", None, None),
    ],
)
def test_op_literals(backend, text, values, shape):
    ctx = Context(backend)
    if values is None:
        with pytest.raises(oc.SpecSyntaxError):
            op(text)
        return
    t = op(text)
    np.testing.assert_array_equal(computed(ctx, oc.identity(t)), values)
    assert str(t.shape).endswith(shape) or str(t.shape) == shape
    assert t.grad is None


def test_op_literal_kinds_layout(backend):
    """`([1;2], [3;4])`: an input axis of 2 holding output axes of 2; values are output-major."""
    ctx = Context(backend)
    t = op("([1;2], [3;4])")
    assert t.shape.input == [2] and t.shape.output == [2]
    np.testing.assert_array_equal(computed(ctx, oc.identity(t)), [[1, 3], [2, 4]])


def test_op_inline_params_fields(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[3])
    m = op("{w; o = [4]} * x + {bias = 0.5; o = [4]}", x=x)
    assert set(m.params) == {"w", "bias"}
    w = m.params["w"]
    x.set_value(np.arange(6.0).reshape(2, 3))
    ctx.forward(m)
    assert w.shape.output == [4] and w.shape.input == [3]
    assert np.all(m.params["bias"].value == 0.5)
    np.testing.assert_allclose(m.value, np.arange(6.0).reshape(2, 3) @ f32(w.value).T + 0.5,
                               rtol=RTOL, atol=ATOL)  # fmt: skip
    p = op("{p; b = [2]; i = [3]; o = [4]}")
    assert (p.shape.batch, p.shape.input, p.shape.output) == ([2], [3], [4])
    q = op("{q; o = h}", h=5)
    assert q.shape.output == [5]


def test_scalar_initialised_param_gets_no_batch_axes(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[2], input_dims=[], output_dims=[4])
    x.set_value(np.zeros((2, 4)))
    m = op("x + {bias = 0.5; o = [4]}", x=x)
    b = oc.param("b", 0.5, output_dims=[4])
    ctx.forward(m + b)
    assert m.params["bias"].shape.batch == [] and b.shape.batch == []
    assert m.params["bias"].value.shape == (4,) and b.value.shape == (4,)


def test_op_inline_param_literal_init_and_reuse(backend):
    ctx = Context(backend)
    y = op("{w = [1;2;3]} *. 2 + {w} - [1;1;1]")
    assert list(y.params) == ["w"]
    np.testing.assert_array_equal(computed(ctx, y), [2.0, 5.0, 8.0])
    with pytest.raises(oc.SpecSyntaxError, match="defined twice"):
        op("{v = 1.0} + {v = 2.0}")


def test_inline_param_dims_come_from_its_literal(backend):
    ctx = Context(backend)
    y = op("{w = [1;2;3]} *. 2")
    np.testing.assert_array_equal(computed(ctx, y), [2.0, 4.0, 6.0])


def test_op_names_bound_by_keyword(backend):
    ctx = Context(backend)
    a = literal([1.0, 2.0], output=[2])
    y = op("a *. k + a", a=a, k=3)
    np.testing.assert_array_equal(computed(ctx, y), [4.0, 8.0])


def test_op_operators_and_functions(backend, rng):
    ctx = Context(backend)
    a_val, b_val = rng.uniform(0.5, 2.0, size=3), rng.normal(size=3)
    a, b = literal(a_val, output=[3]), literal(b_val, output=[3])
    af, bf = f32(a_val), f32(b_val)
    cases = {
        "a *. b": af * bf,
        "a /. b": af / bf,
        "a **. 2": af**2,
        "a - b - b": af - 2 * bf,
        "-a + b": -af + bf,
        "relu(b) + exp(a)": np.maximum(bf, 0) + np.exp(af),
        "a -?/ b": np.where(af > 0, bf, 0),
        "a @^ b": np.maximum(af, bf),
        "a @- b": np.minimum(af, bf),
        "where(b < a, a, b)": np.where(bf < af, af, bf),
        "fma(a, b, a)": af * bf + af,
        "a + b *. b": af + bf * bf,
    }
    for text, expected in cases.items():
        np.testing.assert_allclose(computed(ctx, op(text, a=a, b=b)), expected, rtol=RTOL,
                                   atol=ATOL, err_msg=text)  # fmt: skip


def test_op_star_is_compose(backend, rng):
    ctx = Context(backend)
    w_val, x_val = rng.normal(size=(2, 3)), rng.normal(size=3)
    w, x = literal(w_val, output=[2], inputs=[3]), literal(x_val, output=[3])
    np.testing.assert_allclose(computed(ctx, op("w * x", w=w, x=x)), f32(w_val) @ f32(x_val),
                               rtol=RTOL, atol=ATOL)  # fmt: skip


def test_op_einsum_operators(backend, rng):
    ctx = Context(backend)
    x_val, y_val = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    x, y = literal(x_val, output=[2, 3]), literal(y_val, output=[3, 4])
    xf, yf = f32(x_val), f32(y_val)
    cases = {
        'x +* "ab;bc=>ac" y': xf @ yf,
        'x ++ "ab=>ba"': xf.T,
        'x +++ "ab;bc=>ac" y': (xf[:, :, None] + yf[None]).sum(1),
        'x @^+ "ab;bc=>ac" y': (xf[:, :, None] + yf[None]).max(1),
        'x @^^ "ab=>a"': xf.max(1),
        '(x ++ "ab=>a") *. 2': 2 * xf.sum(1),
    }
    for text, expected in cases.items():
        np.testing.assert_allclose(computed(ctx, op(text, x=x, y=y)), expected, rtol=1e-5,
                                   atol=1e-5, err_msg=text)  # fmt: skip


# ---- the cd DSL ---------------------------------------------------------------------------------


def _terms(rng):
    a_val, b_val = rng.normal(size=(2, 3)), rng.normal(size=3)
    a = oc.term("a", batch_dims=[], input_dims=[3], output_dims=[2])
    b = oc.term("b", batch_dims=[], input_dims=[], output_dims=[3])
    c = oc.term("c", batch_dims=[], input_dims=[], output_dims=[2])
    a.set_value(a_val)
    b.set_value(b_val)
    return a, b, c, f32(a_val), f32(b_val)


def test_cd_api_example_is_a_matmul(backend, rng):
    ctx = Context(backend)
    a, b, c, av, bv = _terms(rng)
    routine = ctx.compile(cd('c =:+ a * b ~logic:"@"', a=a, b=b, c=c))
    routine.run()
    np.testing.assert_allclose(c.value, av @ bv, rtol=RTOL, atol=ATOL)
    routine.run()  # `=:+` clears first: running again gives the same
    np.testing.assert_allclose(c.value, av @ bv, rtol=RTOL, atol=ATOL)


def test_cd_accumulating_and_overwriting_assignments(backend, rng):
    ctx = Context(backend)
    a, b, c, av, bv = _terms(rng)
    ctx.compile(cd('c =:+ a * b ~logic:"@"', a=a, b=b, c=c)).run()
    accumulate = ctx.compile(cd('c =+ a * b ~logic:"@"', a=a, b=b, c=c))
    accumulate.run()
    np.testing.assert_allclose(c.value, 2 * (av @ bv), rtol=RTOL, atol=ATOL)
    d = oc.term("d", batch_dims=[], input_dims=[], output_dims=[3])
    ctx.compile(cd("d =: b * 2; d =+ b; d =- 1", b=b, d=d)).run()
    np.testing.assert_allclose(d.value, 3 * bv - 1, rtol=RTOL, atol=ATOL)


def test_cd_max_accumulation_and_einsum_logic(backend, rng):
    ctx = Context(backend)
    a, b, c, av, bv = _terms(rng)
    ctx.compile(cd('c =:@^ a ~logic:"i->o => o"', a=a, c=c)).run()
    np.testing.assert_array_equal(c.value, av.max(1).astype(np.float32))
    c.set_value(np.full(2, 100.0))
    ctx.compile(cd('c =@^ a ~logic:"i->o => o"', a=a, c=c)).run()
    np.testing.assert_array_equal(c.value, [100.0, 100.0])
    ctx.compile(cd('c =:+ a ~logic:"i->o => o"', a=a, c=c)).run()
    np.testing.assert_allclose(c.value, av.sum(1), rtol=RTOL, atol=ATOL)


def test_cd_transpose_logic(backend, rng):
    ctx = Context(backend)
    a, b, c, av, bv = _terms(rng)
    t = oc.term("t", batch_dims=[], input_dims=[2], output_dims=[3])
    ctx.compile(cd('t =: a ~logic:"T"', a=a, t=t)).run()
    np.testing.assert_array_equal(t.value, av.T.astype(np.float32))


def test_cd_grad_slot(backend):
    ctx = Context(backend)
    w = oc.param("w", [1.0, 2.0, 3.0], output_dims=[3])
    loss = oc.einsum1("i=>0", w * w)
    g = oc.term("g", batch_dims=[], input_dims=[], output_dims=[3])
    ctx.compile(train.grad_update(loss) + cd("g =: w.grad * 10", w=w, g=g)).run()
    np.testing.assert_allclose(g.value, [20.0, 40.0, 60.0], rtol=RTOL)
    np.testing.assert_allclose(w.grad, [2.0, 4.0, 6.0], rtol=RTOL)
    with pytest.raises(ValueError, match="no gradient"):
        cd("g =: x.grad", x=oc.term("x", output_dims=[3]), g=g)


def test_cd_an_sgd_step_by_hand(backend):
    """Optimizers are written with cd: `p =- lr * p.grad`."""
    ctx = Context(backend)
    w = oc.param("w", [1.0, -2.0], output_dims=[2])
    loss = oc.einsum1("i=>0", w * w)
    lr = oc.number(0.25)
    ctx.compile(train.grad_update(loss) + cd("w =- lr * w.grad", w=w, lr=lr)).run()
    np.testing.assert_allclose(w.value, [0.5, -1.0], rtol=RTOL)


def test_cd_reading_an_uncomputed_literal_is_not_silent(backend):
    ctx = Context(backend)
    a = literal(np.ones((2, 3)), output=[2], inputs=[3])
    b = literal([0.0, 1.0, 2.0], output=[3])
    c = oc.term("c", batch_dims=[], input_dims=[], output_dims=[2])
    ctx.compile(cd('c =:+ a * b ~logic:"@"', a=a, b=b, c=c)).run()
    np.testing.assert_array_equal(c.value, [3.0, 3.0])


def test_reading_a_tensor_no_routine_computed_is_an_error(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[2])
    y = oc.relu(x)
    z = oc.term("z", batch_dims=[], input_dims=[], output_dims=[2])
    routine = ctx.compile(cd("z =: y * 2", y=y, z=z))
    with pytest.raises(ValueError, match="'relu' is read by routine .* has no value"):
        routine.run()


# ---- compiling and running ----------------------------------------------------------------------


def test_codes_compose_with_plus_in_order(backend):
    ctx = Context(backend)
    d = oc.term("d", batch_dims=[], input_dims=[], output_dims=[2])
    first = cd("d =: 1", d=d)
    second = cd("d =* 3", d=d)
    third = cd("d =+ 2", d=d)
    ctx.compile(first + second + third).run()
    np.testing.assert_array_equal(d.value, [5.0, 5.0])
    ctx.compile(first + third + second).run()
    np.testing.assert_array_equal(d.value, [9.0, 9.0])


def test_forward_code_and_routine(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[2])
    y = oc.exp(x) * 2.0
    routine = ctx.compile(y.forward)
    assert isinstance(routine, oc.Routine)
    for v in ([0.0, 1.0], [2.0, -1.0]):
        x.set_value(v)
        routine.run()
        np.testing.assert_allclose(y.value, 2 * np.exp(v), rtol=RTOL)


def test_ctx_forward_compiles_once(backend):
    ctx = Context(backend)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[1])
    y = x + 1.0
    x.set_value([1.0])
    ctx.forward(y)
    x.set_value([5.0])
    ctx.forward(y)
    assert y.item() == 6.0


def test_training_step_form_from_api(backend):
    ctx = Context(backend)
    w = oc.param("w", [2.0], output_dims=[1])
    loss = oc.einsum1("i=>0", w * w)
    step = ctx.compile(train.grad_update(loss) + train.sgd_update(loss, 0.1))
    step.run()
    np.testing.assert_allclose(w.value, [2.0 - 0.1 * 4.0], rtol=RTOL)
    np.testing.assert_allclose(loss.value, [4.0], rtol=RTOL)


def test_default_context_picks_a_backend():
    ctx = Context()
    y = oc.identity(literal([1.0, 2.0], output=[2]))
    np.testing.assert_array_equal(computed(ctx, y), [1.0, 2.0])


# ---- errors -------------------------------------------------------------------------------------


def test_error_types_are_exported():
    assert issubclass(oc.SpecSyntaxError, ValueError)
    assert issubclass(oc.ShapeError, ValueError)
    assert issubclass(oc.CompileError, RuntimeError)


@pytest.mark.parametrize(
    "text,line,column",
    [("1 +", 1, 4), ("x + * y", 1, 5), ("relu(x\n  + )", 2, 5), ("{w = }", 1, 6)],
)
def test_op_syntax_error_has_line_column_caret(text, line, column):
    with pytest.raises(oc.SpecSyntaxError) as err:
        op(text, x=literal([1.0], output=[1]), y=literal([1.0], output=[1]))
    assert (err.value.line, err.value.column) == (line, column)
    message = str(err.value)
    assert f"line {line}, column {column}" in message
    shown = text.splitlines()[line - 1]
    assert f"  {shown}\n  {' ' * (column - 1)}^" in message


def test_cd_syntax_error_has_line_column_caret():
    d = oc.term("d", output_dims=[1])
    with pytest.raises(oc.SpecSyntaxError) as err:
        cd("d =: d +", d=d)
    assert err.value.line == 1 and err.value.column == 9
    assert "^" in str(err.value)


def test_bad_einsum_spec_is_a_syntax_error():
    with pytest.raises(oc.SpecSyntaxError, match=r"line 1, column \d+"):
        oc.einsum1("a,b c=>a", literal([1.0], output=[1]))


def test_unbound_names_say_which():
    x = literal([1.0], output=[1])
    with pytest.raises(oc.SpecSyntaxError, match="unbound name 'zz'"):
        op("x + zz", x=x)
    with pytest.raises(oc.SpecSyntaxError, match="unbound name 'qq'"):
        cd("x =: qq", x=x)


def test_shape_error_names_tensors_kind_and_dims():
    with pytest.raises(oc.ShapeError) as err:
        op("[1;2] + [1;2;3]")
    message = str(err.value)
    assert "[1, 2]" in message and "[1, 2, 3]" in message
    assert "output" in message
    assert re.search(r"\b3\b.*\b2\b|\b2\b.*\b3\b", message)


def test_shape_error_compose_mismatch():
    a = literal(np.ones((2, 3)), output=[2], inputs=[3], label="mat")
    b = literal(np.ones(4), output=[4], label="vec")
    with pytest.raises(oc.ShapeError, match=r"(?s)(mat.*vec|vec.*mat)"):
        a @ b


def test_uninferable_param_says_specify_its_dims(backend):
    ctx = Context(backend)
    w = oc.param("lonely")
    y = w @ literal([1.0, 2.0], output=[2])
    with pytest.raises(oc.ShapeError, match="specify its dims") as err:
        ctx.forward(y)
    assert "lonely" in str(err.value)

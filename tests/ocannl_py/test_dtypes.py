"""Dtypes of tensors: `dtype=` on leaves, the widest float type of the operands for a result,
`oc.cast`, float32 accumulation of 16-bit sums and products, int32 tensors where an op allows
them; against torch on every backend."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import ocannl_py as oc
from ocannl_py import Context, train

HALF = ["float16", "bfloat16"]
NUMPY = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: The distance from 1 to the next value: 2**-10 and 2**-7.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}


def as_torch(values: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.tensor(values.astype(np.float32)).to(TORCH[dtype])


def test_leaves_take_a_dtype_and_values_come_back_in_numpy_types():
    for name, numpy_dtype in [*NUMPY.items(), ("float64", np.dtype(np.float64))]:
        t = oc.term("t", output_dims=[3], dtype=name)
        t.set_value([1.0, 2.5, -3.0])
        assert t.dtype.name == name and t.value.dtype == numpy_dtype
    p = oc.param("p", np.ones(2), dtype="bfloat16")
    Context("c").forward(p)
    assert p.value.dtype == ml_dtypes.bfloat16
    with pytest.raises(TypeError, match="'q': unknown dtype 'float8'"):
        oc.term("q", output_dims=[2], dtype="float8")
    with pytest.raises(TypeError, match="param 'w': parameters hold float values, not int32"):
        oc.param("w", output_dims=[2], dtype="int32")


@pytest.mark.parametrize(
    ("a", "b", "result"),
    [
        ("float16", "float16", "float16"),
        ("bfloat16", "float32", "float32"),
        ("float16", "bfloat16", "float32"),  # neither holds the other's values, as in torch
        ("float32", "float64", "float64"),
        ("int32", "int32", "int32"),
    ],
)
def test_results_take_the_widest_float_type(a, b, result):
    x = oc.term("x", output_dims=[2], dtype=a)
    y = oc.term("y", output_dims=[2], dtype=b)
    assert (x + y).dtype.name == result
    # A number takes the type of the tensor it meets.
    assert (x * 2).dtype.name == a and (3 - y).dtype.name == b
    # As torch's type promotion says, for the floats.
    if "int32" not in (a, b) and "float64" not in (a, b):
        promoted = torch.promote_types(TORCH[a], TORCH[b])
        assert promoted == TORCH[result]


def test_int32_in_a_float_only_op_is_an_error_naming_the_tensor():
    ids = oc.term("ids", batch_dims=[2], output_dims=[3], dtype="int32")
    x = oc.term("x", batch_dims=[2], output_dims=[3])
    with pytest.raises(TypeError, match="exp: tensor 'ids' holds int32 values.*floats only.*cast"):
        oc.exp(ids)
    w = oc.param("w", output_dims=[4])
    with pytest.raises(TypeError, match="tensor 'ids' holds int32 values"):
        _ = w @ ids
    with pytest.raises(TypeError, match="tensor 'ids' holds int32 values and 'x' float32 values"):
        _ = ids + x


def test_int32_arithmetic_and_comparisons(backend):
    a = oc.term("a", output_dims=[5], dtype="int32")
    b = oc.term("b", output_dims=[5], dtype="int32")
    a.set_value([3, -7, 0, 2**30, 5])
    b.set_value([2, 2, -1, 3, 5])
    total, largest, below = a + b * 2, oc.max(a, b), oc.lt(a, b)
    assert total.dtype.name == largest.dtype.name == below.dtype.name == "int32"
    ctx = Context(backend)
    for t in (total, largest, below):
        ctx.forward(t)
    av, bv = np.array([3, -7, 0, 2**30, 5]), np.array([2, 2, -1, 3, 5])
    np.testing.assert_array_equal(total.value, av + bv * 2)
    np.testing.assert_array_equal(largest.value, np.maximum(av, bv))
    np.testing.assert_array_equal(below.value, (av < bv).astype(np.int32))
    assert total.value.dtype == np.int32


@pytest.mark.parametrize("dtype", HALF)
def test_cast_rounds_to_nearest_even_and_is_differentiable(backend, dtype):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(64,)) * 10.0 ** rng.integers(-3, 4, 64)
    w = oc.param("w", values)
    half = oc.cast(w, dtype)
    assert half.dtype.name == dtype
    weights = oc.ndarray(np.arange(64.0), output_dims=[64], label="weights")
    loss = oc.einsum1("...|...->... => 0", oc.cast(half, "float32") * weights)
    Context(backend).compile(train.grad_update(loss)).run()
    expected = torch.tensor(values, dtype=torch.float32).to(TORCH[dtype])
    np.testing.assert_array_equal(half.value.astype(np.float32), expected.float().numpy())
    # d loss / d w: the weights, through two casts (float32 -> 16 bits -> float32).
    np.testing.assert_array_equal(w.grad, np.arange(64.0, dtype=np.float32))
    assert half.grad.dtype == NUMPY[dtype]


def test_cast_between_float_and_int32():
    x = oc.term("x", output_dims=[6])
    x.set_value([1.9, -1.9, 0.5, 3e9, -3e9, np.nan])
    ints = oc.cast(x, "int32")
    back = oc.cast(oc.term("i", output_dims=[2], dtype="int32"), "float32")
    assert not ints.requires_grad and ints.dtype.name == "int32"
    ctx = Context("c")
    ctx.forward(ints)
    # Toward zero, saturated, NaN to 0 (a C conversion is undefined there).
    np.testing.assert_array_equal(ints.value, [1, -1, 0, 2**31 - 1, -(2**31), 0])
    back.operands[0].set_value([7, -2])
    ctx.forward(back)
    np.testing.assert_array_equal(back.value, [7.0, -2.0])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("n", "k", "m"), [(3, 17, 5), (40, 300, 33), (1, 1, 1)])
def test_16_bit_matmul_and_gradients_match_torch(backend, dtype, n, k, m):
    """`w @ x` on 16-bit operands accumulates in float32 and rounds once: within one rounding
    of the result (eps/2 relative) plus float32 summation-order differences (k * eps32 of the
    terms' magnitudes) of torch's own 16-bit matmul."""
    rng = np.random.default_rng(n * k * m)
    w_values = rng.normal(size=(m, k)).astype(NUMPY[dtype])
    x_values = rng.normal(size=(n, k)).astype(NUMPY[dtype])
    w = oc.param("w", w_values, output_dims=[m], input_dims=[k], dtype=dtype)
    x = oc.term("x", batch_dims=[n], output_dims=[k], dtype=dtype)
    x.set_value(x_values)
    y = w @ x
    assert y.dtype.name == dtype
    loss = oc.einsum1("...|...->... => 0", oc.cast(y * y, "float32"))
    Context(backend).compile(train.grad_update(loss)).run()

    tw = as_torch(w_values, dtype).requires_grad_()
    tx = as_torch(x_values, dtype)
    ty = tx @ tw.T
    (ty * ty).float().sum().backward()
    magnitude = np.abs(x_values.astype(np.float64)) @ np.abs(w_values.astype(np.float64)).T
    bound = EPS[dtype] * np.abs(ty.float().detach().numpy()) + k * EPS["float32"] * magnitude
    diff = np.abs(y.value.astype(np.float64) - ty.float().detach().numpy())
    assert y.value.dtype == NUMPY[dtype]
    assert (diff <= bound).all(), f"max excess {np.max(diff - bound)}"
    # The gradient w.grad = 2 * y^T x: each of y's values is within the bound above, each term
    # then rounds once more in 16 bits.
    assert w.grad.dtype == NUMPY[dtype]
    grad = w.grad.astype(np.float64)
    reference = tw.grad.float().numpy().astype(np.float64)
    y_bound = 2 * bound.T @ np.abs(x_values.astype(np.float64))
    grad_bound = (
        2 * EPS[dtype] * np.abs(reference)
        + y_bound
        + n
        * EPS["float32"]
        * np.abs(2 * ty.float().detach().numpy().T @ x_values.astype(np.float64))
    )
    assert (np.abs(grad - reference) <= grad_bound + 1e-30).all()


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_pointwise_ops_match_torch(backend, dtype):
    rng = np.random.default_rng(9)
    values = rng.uniform(0.1, 4, 200).astype(NUMPY[dtype])
    x = oc.term("x", output_dims=[200], dtype=dtype)
    x.set_value(values)
    results = {
        "exp": (oc.exp(x), torch.exp),
        "log": (oc.log(x), torch.log),
        "sqrt": (oc.sqrt(x), torch.sqrt),
        "tanh": (oc.tanh(x), torch.tanh),
        "square_plus_half": (x * x + 0.5, lambda t: t * t + 0.5),
    }
    ctx = Context(backend)
    tx = as_torch(values, dtype)
    for name, (ours, theirs) in results.items():
        ctx.forward(ours)
        expected = theirs(tx)
        assert ours.value.dtype == NUMPY[dtype], name
        # torch rounds `t * t` to 16 bits before adding 0.5; we round once: one more eps/2.
        tolerance = EPS[dtype] * (1.0 if name == "square_plus_half" else 0.5)
        np.testing.assert_allclose(
            ours.value.astype(np.float32), expected.float().numpy(), rtol=tolerance, err_msg=name
        )


@pytest.mark.parametrize("dtype", HALF)
def test_long_16_bit_sum_accumulates_in_float32(backend, dtype):
    """4096 values alternating 1 and 0.25: a 16-bit accumulator loses the 0.25s (and more) once
    the sum passes 2048 (float16) or 256 (bfloat16); float32 accumulation gives the exact sum,
    2560, rounded once to 16 bits."""
    values = np.tile([1.0, 0.25], 2048).astype(NUMPY[dtype])
    x = oc.term("x", output_dims=[4096], dtype=dtype)
    x.set_value(values)
    total = oc.einsum1("i => 0", x)
    assert total.dtype.name == dtype
    Context(backend).forward(total)
    assert float(total.value[0]) == float(np.asarray(2560.0).astype(NUMPY[dtype]))
    in_16_bits = NUMPY[dtype].type(0)
    for v in values:
        in_16_bits = NUMPY[dtype].type(in_16_bits + v)
    assert float(in_16_bits) != float(total.value[0])  # what a 16-bit accumulator gives


def test_mixed_16_bit_and_float32_computes_in_float32(backend):
    """bf16 + float32 is float32: the bf16 values are widened, nothing rounds to 16 bits."""
    h = oc.term("h", output_dims=[3], dtype="bfloat16")
    f = oc.term("f", output_dims=[3])
    h.set_value([1.0, 256.0, -3.0])
    f.set_value([1e-3, 1.0, 2.0**-20])
    total = h + f
    Context(backend).forward(total)
    assert total.value.dtype == np.float32
    np.testing.assert_array_equal(total.value, np.float32([1.0, 256.0, -3.0]) + f.value)

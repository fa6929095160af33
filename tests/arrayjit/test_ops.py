"""Every primitive op of `arrayjit.ops.OPS`, compiled by each backend, against its numpy reference.

Each op runs as one pointwise `Accum` over a 1-D buffer holding random values and edge values
(zeros of both signs, negatives, huge values, infinities, NaN), in float32 and float64; the
integer-safe ops also in int32. The accumulate ops (`=+`, `=*`, max, min...) run as reductions
and as pointwise updates, with and without `zero_first`.
"""

from __future__ import annotations

import numpy as np
import pytest

from arrayjit import ops
from arrayjit.assignments import Accum
from arrayjit.codegen.c_syntax import SPELLINGS
from arrayjit.indexing import Iterator, Projections, identity_projections
from arrayjit.tnode import TNode

FLOAT_DTYPES = ("float32", "float64")


# Tolerances, in units in the last place of the reference. Arithmetic, comparisons, sqrt and the
# selection ops are correctly rounded (IEEE 754) in both C and numpy, so they must agree to the
# bit; 1 ulp only leaves room for -0.0/+0.0 and an FMA contraction. The transcendental functions
# are not correctly rounded: glibc's libm and numpy's SIMD implementations (AVX2/AVX-512 paths for
# exp, log, sin, cos, tanh in float32) each promise about 1-2 ulp, so they can differ by ~4.
EXACT_ULPS = 1
TRANSCENDENTAL_ULPS = 4
TRANSCENDENTAL = {"exp", "log", "exp2", "log2", "sin", "cos", "tanh", "erf", "pow"}

INT_OPS = [
    "add",
    "sub",
    "mul",
    "max",
    "min",
    "lt",
    "eq",
    "ne",
    "neg",
    "where",
    "identity",
    "relu",
    "not",
    "relu_gate",
]


def edge_values(dtype: str) -> np.ndarray:
    big = 1e30 if dtype == "float32" else 1e300
    values = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 3.0, -3.0, 100.0, -100.0, 1000.0, -1000.0]
    values += [big, -big, 1e-30, -1e-30, np.nan, np.inf, -np.inf]
    return np.array(values, dtype=dtype)


def operands(name: str, dtype: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Random values plus every combination of edge values for the op's arity."""
    arity = ops.OPS[name].arity
    edges = edge_values(dtype)
    n_random = 64
    if name == "fma":
        # Positive random operands: no cancellation, so one rounding (C) vs the reference agrees.
        random = [rng.uniform(0.1, 10, n_random) for _ in range(3)]
    elif name == "pow":
        # Negative bases with integer exponents are finite, with fractional ones NaN.
        exponents = rng.uniform(-4, 4, n_random)
        exponents[::2] = np.round(exponents[::2])
        random = [rng.uniform(-4, 4, n_random), exponents]
    elif name == "where":
        conditions = rng.normal(size=n_random) * rng.integers(0, 2, n_random)
        random = [conditions, rng.normal(0, 3, n_random), rng.normal(0, 3, n_random)]
    else:
        random = [rng.normal(0, 3, n_random) for _ in range(arity)]
    random = [r.astype(dtype) for r in random]
    if arity == 1:
        return (np.concatenate([random[0], edges]),)
    if arity == 2:
        a, b = np.meshgrid(edges, edges, indexing="ij")
        return (np.concatenate([random[0], a.ravel()]), np.concatenate([random[1], b.ravel()]))
    shifted = [np.roll(edges, s) for s in range(3)]
    return tuple(np.concatenate([r, s]) for r, s in zip(random, shifted, strict=True))


def reference(name: str, dtype: str, args: tuple[np.ndarray, ...]) -> np.ndarray:
    if name == "fma":
        # C's fma rounds once; compute the reference wide enough that a*b is exact, round once.
        wide = np.float64 if dtype == "float32" else np.longdouble
        with np.errstate(over="ignore"):
            return ops.OPS[name].apply(*(a.astype(wide) for a in args)).astype(dtype)
    return ops.OPS[name].apply(*args)


def run_pointwise(ctx, name: str, dtype: str, args: tuple[np.ndarray, ...]) -> np.ndarray:
    """Compile `out =: op(args)` as one Accum over a 1-D buffer and run it."""
    n = len(args[0])
    rhses = tuple(TNode(f"x{k}", (n,), dtype) for k in range(len(args)))
    out = TNode("out", (n,), dtype)
    for tnode, values in zip(rhses, args, strict=True):
        tnode.set_host(values)
    routine = ctx.compile(Accum(out, None, name, rhses, identity_projections((n,), len(args))))
    routine.run()
    return out.host().copy()


def assert_matches(
    actual: np.ndarray,
    expected: np.ndarray,
    ulps: int,
    what: str,
    scale: np.ndarray | None = None,
) -> None:
    """NaN and infinity positions (and signs) exactly; finite values within `ulps` ulp of the
    reference, or of `scale` (the magnitude of the terms, where a sum may cancel)."""
    assert actual.dtype == expected.dtype, what
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), f"{what}: NaN positions")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(np.isinf(actual), infinite, f"{what}: infinity positions")
    np.testing.assert_array_equal(actual[infinite], expected[infinite], f"{what}: infinity signs")
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(actual, expected, what)
        return
    finite = np.isfinite(expected)
    atol = 0.0 if scale is None else float(ulps * np.spacing(scale[finite]).max(initial=0))
    rtol = ulps * float(np.finfo(expected.dtype).eps)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    diff = np.abs(actual[finite].astype(np.float64) - expected[finite].astype(np.float64))
    magnitude = np.abs(expected if scale is None else np.maximum(np.abs(expected), scale))
    allowed = ulps * np.spacing(magnitude[finite]).astype(np.float64)
    bad = np.flatnonzero(diff > allowed)
    assert bad.size == 0, (
        f"{what}: {bad.size} values beyond {ulps} ulp, e.g. got {actual[finite][bad[:5]]}, "
        f"expected {expected[finite][bad[:5]]}"
    )


POINTWISE_OPS = sorted(name for name in ops.OPS if name not in ops.RANDOM_OPS)


def test_every_op_is_covered():
    """A new op in the table must come with an entry here (or be a random op tested elsewhere)."""
    assert set(POINTWISE_OPS) | ops.RANDOM_OPS == set(ops.OPS)
    assert set(INT_OPS) <= set(POINTWISE_OPS)


def test_every_op_has_a_spelling_in_the_c_printer():
    """The C and CUDA printers spell every op of the table, and nothing else."""
    assert set(SPELLINGS) == set(ops.OPS)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", POINTWISE_OPS)
def test_float_op_matches_numpy(context, name, dtype):
    rng = np.random.default_rng(sum(map(ord, name + dtype)))
    args = operands(name, dtype, rng)
    actual = run_pointwise(context, name, dtype, args)
    expected = reference(name, dtype, args)
    ulps = TRANSCENDENTAL_ULPS if name in TRANSCENDENTAL else EXACT_ULPS
    assert_matches(actual, expected, ulps, f"{name} in {dtype}")


def test_float_edge_values_are_ieee(context):
    """The edge cases called out in the docs, checked by value rather than only against numpy."""
    x = np.array([-1.0, 0.0, -0.0, 1000.0, 4.0], dtype=np.float32)
    assert np.isnan(run_pointwise(context, "log", "float32", (x,))[0])
    assert run_pointwise(context, "log", "float32", (x,))[1] == -np.inf
    assert np.isnan(run_pointwise(context, "sqrt", "float32", (x,))[0])
    recip_sqrt = run_pointwise(context, "recip_sqrt", "float32", (x,))
    assert np.isnan(recip_sqrt[0]) and recip_sqrt[1] == np.inf and recip_sqrt[2] == -np.inf
    assert recip_sqrt[4] == 0.5
    assert run_pointwise(context, "exp", "float32", (x,))[3] == np.inf
    assert run_pointwise(context, "recip", "float32", (x,))[1] == np.inf
    nan_first = np.array([np.nan, 1.0, np.nan], dtype=np.float32)
    nan_second = np.array([1.0, np.nan, np.nan], dtype=np.float32)
    for name in ("max", "min"):
        # numpy's maximum/minimum propagate NaN from either side (C's fmax would drop it).
        assert np.isnan(run_pointwise(context, name, "float32", (nan_first, nan_second))).all()


@pytest.mark.parametrize("name", INT_OPS)
def test_int32_op_matches_numpy(context, name):
    rng = np.random.default_rng(sum(map(ord, name)))
    arity = ops.OPS[name].arity
    info = np.iinfo(np.int32)
    # Small values (no signed overflow, which is undefined in C) plus the extremes for the ops
    # that cannot overflow on them.
    edges = [0, 1, -1, 7, -7, 1000, -1000]
    if name in ("max", "min", "lt", "eq", "ne", "identity", "relu", "not", "relu_gate", "where"):
        edges += [info.min, info.max]
    edges = np.array(edges, dtype=np.int32)
    random = [rng.integers(-1000, 1000, 64, dtype=np.int32) for _ in range(arity)]
    if arity == 1:
        args = (np.concatenate([random[0], edges]),)
    else:
        grids = np.meshgrid(*([edges] * arity), indexing="ij")
        args = tuple(np.concatenate([r, g.ravel()]) for r, g in zip(random, grids, strict=True))
    actual = run_pointwise(context, name, "int32", args)
    expected = ops.OPS[name].apply(*args)
    assert_matches(actual, expected, 0, f"{name} in int32")


def test_transcendental_op_on_int32_is_a_type_error(context):
    x, out = TNode("x", (3,), "int32"), TNode("out", (3,), "int32")
    with pytest.raises(TypeError, match="'exp' is not defined for int32"):
        context.compile(Accum(out, None, "exp", (x,), identity_projections((3,), 1)))


# ---- accumulate ops ------------------------------------------------------------------------

ACCUMULATE = ["add", "mul", "max", "min", "sub"]


def sequential_reference(
    accum: str, start: np.ndarray, terms: np.ndarray, dtype: str
) -> np.ndarray:
    """`start accum terms[..., 0] accum terms[..., 1] ...`, in order, as the loops do it."""
    acc = start.astype(dtype)
    for k in range(terms.shape[-1]):
        acc = ops.OPS[accum].apply(acc, terms[..., k])
    return acc


def accumulate_operands(accum: str, dtype: str, shape: tuple[int, ...], rng) -> np.ndarray:
    if accum == "mul":
        values = rng.uniform(0.5, 1.5, shape)  # products stay far from overflow and underflow
    else:
        values = rng.normal(0, 3, shape)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("zero_first", [True, False], ids=["zero_first", "into_existing"])
@pytest.mark.parametrize("accum", ACCUMULATE)
def test_accumulate_reduction(context, accum, zero_first, dtype):
    """`out[i] accum= x[i, k]` over k, the reduction innermost (a register accumulator)."""
    rng = np.random.default_rng(7)
    m, k = 6, 5
    x = TNode("x", (m, k), dtype)
    out = TNode("out", (m,), dtype)
    values = accumulate_operands(accum, dtype, (m, k), rng)
    if accum in ("max", "min"):
        values[2, 3] = np.nan  # must propagate, as numpy's maximum.reduce does
    initial = accumulate_operands(accum, dtype, (m,), rng)
    x.set_host(values)
    out.set_host(initial)
    i, r = Iterator(name="i"), Iterator(name="r")
    projections = Projections((m, k), (i, r), (i,), ((i, r),))
    routine = context.compile(Accum(out, accum, "identity", (x,), projections, zero_first))
    routine.run()
    start = np.full(m, ops.neutral(accum, out.dtype), dtype) if zero_first else initial
    expected = sequential_reference(accum, start, values, dtype)
    assert_matches(out.host(), expected, EXACT_ULPS, f"=+{accum} reduction")
    if accum in ("max", "min"):
        assert np.isnan(out.host()[2])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("zero_first", [True, False], ids=["zero_first", "into_existing"])
@pytest.mark.parametrize("accum", ACCUMULATE)
def test_accumulate_pointwise(context, accum, zero_first, dtype):
    """`out[i] accum= a[i] * b[i]`: no reduction; run twice to accumulate twice."""
    rng = np.random.default_rng(11)
    n = 9
    a, b, out = TNode("a", (n,), dtype), TNode("b", (n,), dtype), TNode("out", (n,), dtype)
    a_values = accumulate_operands(accum, dtype, (n,), rng)
    b_values = accumulate_operands(accum, dtype, (n,), rng)
    initial = accumulate_operands(accum, dtype, (n,), rng)
    a.set_host(a_values)
    b.set_host(b_values)
    out.set_host(initial)
    projections = identity_projections((n,), 2)
    routine = context.compile(Accum(out, accum, "mul", (a, b), projections, zero_first))
    term = ops.OPS["mul"].apply(a_values, b_values)
    expected = initial
    for _ in range(2):
        routine.run()
        start = np.full(n, ops.neutral(accum, out.dtype), dtype) if zero_first else expected
        expected = ops.OPS[accum].apply(start, term)
        # gcc contracts `out + a * b` into one fma (-ffp-contract=fast is its default, and
        # -march=native has FMA): one rounding instead of two, so allow 1 ulp of the terms.
        scale = np.maximum(np.abs(start), np.abs(term)) if accum in ("add", "sub") else None
        assert_matches(out.host(), expected, EXACT_ULPS, f"{accum} pointwise", scale)


@pytest.mark.parametrize("accum", ["add", "max", "min"])
def test_int32_accumulate_starts_from_neutral(context, accum):
    """int32 max/min start from the int32 extremes (there is no infinity)."""
    x = TNode("x", (3, 4), "int32")
    out = TNode("out", (3,), "int32")
    values = np.array([[-5, -9, -2, -7], [3, 8, 1, 0], [-1, 2, -3, 4]], dtype=np.int32)
    x.set_host(values)
    out.set_host(np.full(3, 123, np.int32))
    i, r = Iterator(name="i"), Iterator(name="r")
    projections = Projections((3, 4), (i, r), (i,), ((i, r),))
    context.compile(Accum(out, accum, "identity", (x,), projections, True)).run()
    reduce = {"add": np.sum, "max": np.max, "min": np.min}[accum]
    np.testing.assert_array_equal(out.host(), reduce(values, axis=1))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_where_in_a_loop_nest(context, dtype):
    """`where` reading a buffer in one branch, in a nest whose inner loop is short: gcc 12.2 at
    -O3 with AVX2 miscompiled the masked load it made of a `?:` (zeros where the mask was 1),
    which a causal attention mask hits; the select is a helper function for that reason."""
    dims = (12, 3)
    mask = (np.arange(36).reshape(dims) % 3 <= (np.arange(36).reshape(dims) // 3) % 3).astype(dtype)
    values = np.arange(1.0, 37.0).reshape(dims).astype(dtype)
    m, s, out = TNode("m", dims, dtype), TNode("s", dims, dtype), TNode("out", dims, dtype)
    infinity = TNode("minus_inf", dims, dtype)
    m.set_host(mask)
    s.set_host(values)
    infinity.set_host(np.full(dims, -np.inf, dtype))
    projections = identity_projections(dims, 3)
    context.compile(Accum(out, None, "where", (m, s, infinity), projections)).run()
    np.testing.assert_array_equal(out.host(), np.where(mask != 0, values, -np.inf))


# ---- 16-bit floats: stored in 16 bits, computed in float32, rounded once per store ----------

HALF_DTYPES = ("float16", "bfloat16")
#: Where 16-bit code runs: C with `_Float16` (where the compiler has it), C with the bits in a
#: `uint16_t` and the conversion helpers, the CUDA printer (`__half`, `__nv_bfloat16`) on the
#: emulator.
HALF_STORAGE = ("c-native", "c-bits", "emulator")


def half_runner(storage: str, c_context):
    """A function running code on `storage`."""
    if storage == "emulator":
        from cuda_runners import RUNNERS, runner

        if "emulator" not in RUNNERS:
            pytest.skip("emulator runs left out by request")
        run = runner("emulator")
        return lambda code: run(code)
    from arrayjit.backends.cc import CBackend, has_float16
    from arrayjit.runtime.runtime import Runtime

    if storage == "c-native" and not has_float16():
        pytest.skip("the C compiler has no _Float16")
    runtime = Runtime("c")
    runtime.backend = CBackend(native_float16=storage == "c-native")
    return lambda code: runtime.compile(code).run()


def half_edge_values(dtype: str) -> np.ndarray:
    big, tiny = (60000.0, 1e-6) if dtype == "float16" else (1e30, 1e-30)
    values = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 3.0, -3.0, 100.0, -100.0, big, -big]
    return np.array([*values, tiny, -tiny, np.nan, np.inf, -np.inf], np.float32)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many 16-bit values lie between `a` and `b` (16-bit arrays; zeros of both signs are
    one value)."""
    ordered = []
    for x in (a, b):
        bits = x.view(np.uint16).astype(np.int64)
        magnitude = bits & 0x7FFF
        ordered.append(np.where(bits & 0x8000, -magnitude, magnitude))
    return np.abs(ordered[0] - ordered[1])


def half_operands(name: str, dtype: str, rng) -> tuple[np.ndarray, ...]:
    """The float32 operands of `operands`, with 16-bit edge values, rounded to `dtype`."""
    numpy_dtype = TNode("probe", (1,), dtype).dtype.numpy
    arity = ops.OPS[name].arity
    args = list(operands(name, "float32", rng))
    edges = half_edge_values(dtype)
    n_random = 64
    if arity == 1:
        args = [np.concatenate([args[0][:n_random], edges])]
    elif arity == 2:
        a, b = np.meshgrid(edges, edges, indexing="ij")
        args = [
            np.concatenate([r[:n_random], e.ravel()]) for r, e in zip(args, (a, b), strict=True)
        ]
    else:
        args = [np.concatenate([r[:n_random], np.roll(edges, s)]) for s, r in enumerate(args)]
    return tuple(a.astype(numpy_dtype) for a in args)


def half_reference(name: str, args: tuple[np.ndarray, ...], numpy_dtype) -> np.ndarray:
    """The op on the values widened to float32, rounded to the 16-bit type once."""
    wide = tuple(a.astype(np.float32) for a in args)
    with np.errstate(all="ignore"):
        return reference(name, "float32", wide).astype(np.float32).astype(numpy_dtype)


@pytest.mark.parametrize("storage", HALF_STORAGE)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_op_matches_numpy_through_float32(storage, dtype, c_context):
    """Every op in 16 bits, one routine holding all of them: exactly numpy's float32 result
    rounded to the 16-bit type, to 1 ulp of that type for the functions that are not correctly
    rounded (a few float32 ulps can move the rounding to 16 bits by one)."""
    run = half_runner(storage, c_context)
    code, results = None, []
    for name in POINTWISE_OPS:
        rng = np.random.default_rng(sum(map(ord, name + dtype)))
        args = half_operands(name, dtype, rng)
        n = len(args[0])
        rhses = tuple(TNode(f"{name}{k}", (n,), dtype) for k in range(len(args)))
        out = TNode(f"{name}_out", (n,), dtype)
        for tnode, values in zip(rhses, args, strict=True):
            tnode.set_host(values)
        accum = Accum(out, None, name, rhses, identity_projections((n,), len(args)))
        code = accum if code is None else code + accum
        results.append((name, args, out))
    run(code)
    for name, args, out in results:
        actual = out.host()
        expected = half_reference(name, args, out.dtype.numpy)
        assert actual.dtype == expected.dtype
        nan = np.isnan(expected.astype(np.float32))
        np.testing.assert_array_equal(np.isnan(actual.astype(np.float32)), nan, f"{name}: NaN")
        ulps = 1 if name in TRANSCENDENTAL else 0
        distance = ulp_distance(actual[~nan], expected[~nan])
        bad = np.flatnonzero(distance > ulps)
        assert bad.size == 0, (
            f"{name} in {dtype} on {storage}: {bad.size} values beyond {ulps} ulp, e.g. got "
            f"{actual[~nan][bad[:5]]} for {expected[~nan][bad[:5]]}"
        )


@pytest.mark.parametrize("storage", HALF_STORAGE)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_half_sums_accumulate_in_float32(storage, dtype, layout, c_context):
    """A long sum of 16-bit values: in 16 bits it would stop growing (1 + 1 + ... sticks at 256
    in bfloat16, 2048 in float16); accumulated in float32 and rounded once it is the float32 sum
    rounded. `rows` sums along the contiguous axis (a register accumulator), `columns` across
    it (the C backend keeps the reduction outside: a float32 scratch buffer)."""
    run = half_runner(storage, c_context)
    m, k = 3, 5000
    rng = np.random.default_rng(5)
    values = (1 + rng.integers(0, 4, (m, k)) / 4).astype(np.float32)
    values[1] = 1.0
    numpy_dtype = TNode("probe", (1,), dtype).dtype.numpy
    values16 = values.astype(numpy_dtype)
    i, r = Iterator(name="i"), Iterator(name="r")
    if layout == "rows":
        x = TNode("x", (m, k), dtype)
        x.set_host(values16)
        index = (i, r)
    else:
        x = TNode("x", (k, m), dtype)
        x.set_host(values16.T.copy())
        index = (r, i)
    out = TNode("out", (m,), dtype)
    out.set_host(np.full(m, 7, np.float32))
    run(Accum(out, "add", "identity", (x,), Projections((m, k), (i, r), (i,), (index,)), True))
    expected = values16.astype(np.float32).sum(axis=1, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(out.host(), expected.astype(numpy_dtype))
    assert float(out.host()[1]) == float(np.asarray(5000.0).astype(numpy_dtype))


@pytest.mark.parametrize("storage", HALF_STORAGE)
def test_half_matmul_into_float32_is_exact_on_small_integers(storage, c_context):
    """bf16 x bf16 summed into float32 (the products of small integers are exact)."""
    run = half_runner(storage, c_context)
    m, k, n = 33, 70, 40
    rng = np.random.default_rng(1)
    a, b, c = TNode("a", (m, k), "bfloat16"), TNode("b", (k, n), "bfloat16"), TNode("c", (m, n))
    x, y = rng.integers(-4, 5, (m, k)), rng.integers(-4, 5, (k, n))
    a.set_host(x)
    b.set_host(y)
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="r")
    projections = Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j)))
    run(Accum(c, "add", "mul", (a, b), projections, True))
    np.testing.assert_array_equal(c.host(), (x @ y).astype(np.float32))


def test_half_conversions_of_the_c_helpers_round_to_nearest_even(c_context):
    """Every float16 and bfloat16 value converts to float32 and back unchanged through the bit
    helpers, and float32 values between two 16-bit values round as numpy / ml_dtypes do."""
    run = half_runner("c-bits", c_context)
    for dtype in HALF_DTYPES:
        numpy_dtype = TNode("probe", (1,), dtype).dtype.numpy
        every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(numpy_dtype)
        n = every.size
        x, out = TNode("x", (n,), dtype), TNode("out", (n,), dtype)
        x.set_host(every)
        run(Accum(out, None, "identity", (x,), identity_projections((n,), 1)))
        same = ~np.isnan(every.astype(np.float32))
        np.testing.assert_array_equal(out.host().view(np.uint16)[same], every.view(np.uint16)[same])
        assert np.isnan(out.host().astype(np.float32)[~same]).all()
        # float32 values: random bits (every exponent), rounded by the store.
        rng = np.random.default_rng(2)
        bits = rng.integers(0, 1 << 32, 200000, dtype=np.uint64).astype(np.uint32)
        wide = bits.view(np.float32)
        wide = wide[~np.isnan(wide)]
        src, dst = TNode("src", wide.shape), TNode("dst", wide.shape, dtype)
        src.set_host(wide)
        run(Accum(dst, None, "identity", (src,), identity_projections(wide.shape, 1)))
        with np.errstate(over="ignore"):  # huge float32 values round to infinity
            expected = wide.astype(numpy_dtype)
        np.testing.assert_array_equal(dst.host().view(np.uint16), expected.view(np.uint16))

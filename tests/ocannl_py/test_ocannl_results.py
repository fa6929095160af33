"""OCANNL's own recorded results, reproduced with ocannl-py.

Each test cites the OCANNL file (repository ahrefs/ocannl) whose printed output it compares to.
OCANNL prints three significant digits (`2.47e+1`); where the exact value is known (integer
results, micrograd's README) the test compares to it, otherwise to the printed digits with a
tolerance of half a unit in the last printed place.

Axis numbering in printed shapes differs: OCANNL numbers axes in memory order across kinds
(batch 4, input 2, output 3 prints `0:4|2:2->1:3`), ocannl-py restarts at 0 for the outputs as
API.md specifies (`0:4|1:2->0:3`). The tests compare the dims of each kind, not the strings.
"""

from __future__ import annotations

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, op, train


def computed(ctx: Context, t: oc.Tensor) -> np.ndarray:
    ctx.forward(t)
    return t.value


def dims(t: oc.Tensor) -> tuple[list[int], list[int], list[int]]:
    return t.shape.batch, t.shape.input, t.shape.output


def assert_printed(actual, printed, units: float = 0.5) -> None:
    """Equal to OCANNL's 3-significant-digit print: within `units` of the last printed digit
    (half a unit is correct rounding)."""
    actual, printed = np.asarray(actual, float), np.asarray(printed, float)
    unit = 10.0 ** (np.floor(np.log10(np.maximum(np.abs(printed), 1e-30))) - 2)
    assert np.all(np.abs(actual - printed) <= units * unit + 1e-9), (actual, printed)


# ---- test/hello_world_op.ml ---------------------------------------------------------------------


def test_hello_world_pointwise(backend):
    # test/hello_world_op.ml, "Pointwise multiplication dims 1": `2 *. { hey = 7.0 }`, hey a
    # scalar.
    y = op("2 *. {hey = 7.0}")
    assert computed(Context(backend), y).item() == 14.0
    assert y.item() == 14.0


def test_hello_world_matrix_multiplication_dims_2x3(backend):
    # test/hello_world_op.ml, "Matrix multiplication dims 2x3":
    # `({ hey = 7.0 } * [ 2; 3 ]) + [ 4; 5; 6 ]`; hey is inferred to be a 2 -> 3 matrix.
    y = op("({hey = 7.0} * [2;3]) + [4;5;6]")
    np.testing.assert_array_equal(computed(Context(backend), y), [39.0, 40.0, 41.0])
    hey = y.params["hey"]
    assert dims(hey) == ([], [2], [3])
    np.testing.assert_array_equal(hey.value, np.full((3, 2), 7.0))


def test_hello_world_matrix_multiplication_dims_1x1(backend):
    # test/hello_world_op.ml, "Matrix multiplication dims 1x1":
    # `({ hey = 7.0 } * 'q' 2.0) + 'p' 1.0`: hey is a 1 -> 1 matrix, the result 15.
    y = op("({hey = 7.0} * [2]) + [1]")
    np.testing.assert_array_equal(computed(Context(backend), y), [15.0])
    assert dims(y.params["hey"]) == ([], [1], [1])


def test_hello_world_big_matrix(backend):
    # test/hello_world_op.ml, "Big matrix": `hey` a parameter of value 0.5,
    # `(hey * zero_to_twenty) + zero_to_twenty` with `zero_to_twenty = range 20`.
    r = oc.range(20)
    y = op("({hey = 0.5} * r) + r", r=r)
    np.testing.assert_array_equal(computed(Context(backend), y), 0.5 * 190 + np.arange(20.0))
    assert dims(y.params["hey"]) == ([], [20], [20])


def test_hello_world_print_constant_tensor(backend):
    # test/hello_world_op.ml, "Print constant tensor": `[ (1, 2, 3); (4, 5, 6) ]` has shape
    # 1:3->0:2 and `[| [ 1; 2; 3 ]; [ 4; 5; 6 ] |]` a batch axis of 2 and an output axis of 3.
    ctx = Context(backend)
    hey = op("[(1, 2, 3); (4, 5, 6)]")
    np.testing.assert_array_equal(computed(ctx, oc.identity(hey)), [[1, 2, 3], [4, 5, 6]])
    assert dims(hey) == ([], [3], [2]) and str(hey.shape) == "1:3->0:2"
    hoo = op("[| [1; 2; 3]; [4; 5; 6] |]")
    np.testing.assert_array_equal(computed(ctx, oc.identity(hoo)), [[1, 2, 3], [4, 5, 6]])
    assert dims(hoo) == ([2], [], [3])


# ---- test/micrograd_demo.ml ---------------------------------------------------------------------


def test_micrograd_readme_example_op_dsl(backend):
    # test/micrograd_demo.ml, "Micrograd README basic example", written with %op as there;
    # OCANNL prints g = 2.47e+1, a.grad = 1.39e+2, b.grad = 6.46e+2, and micrograd's README gives
    # 24.7041, 138.8338, 645.5773.
    c = op("{a = -4.0} + {b = 2.0}")
    a, b = c.params["a"], c.params["b"]
    d = op("(a *. b) + (b **. 3)", a=a, b=b)
    c = op("c + c + 1", c=c)
    c = op("c + 1 + c + -a", c=c, a=a)
    d = op("d + (d *. 2) + relu(b + a)", d=d, a=a, b=b)
    d = op("d + (3 *. d) + relu(b - a)", d=d, a=a, b=b)
    e = op("c - d", c=c, d=d)
    f = op("e **. 2", e=e)
    g = op("f /. 2", f=f)
    g = op("g + (10. /. f)", g=g, f=f)
    Context(backend).compile(train.grad_update(g)).run()
    assert g.item() == pytest.approx(24.7041, abs=1e-4)
    assert a.grad.item() == pytest.approx(138.8338, abs=1e-3)
    assert b.grad.item() == pytest.approx(645.5773, abs=1e-3)
    assert_printed([g.item(), a.grad.item(), b.grad.item()], [24.7, 139.0, 646.0])
    assert a.value.item() == -4.0 and b.value.item() == 2.0


def test_micrograd_readme_example_python_operators(backend):
    a = oc.param("a", -4.0)
    b = oc.param("b", 2.0)
    c = a + b
    d = a * b + b**3
    c = c + c + 1
    c = c + 1 + c + (-a)
    d = d + d * 2 + (b + a).relu()
    d = d + 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g = g + 10.0 / f
    Context(backend).compile(train.grad_update(g)).run()
    assert g.item() == pytest.approx(24.7041, abs=1e-4)
    assert a.grad.item() == pytest.approx(138.8338, abs=1e-3)
    assert b.grad.item() == pytest.approx(645.5773, abs=1e-3)


# ---- test/zero2hero_1of7.ml ---------------------------------------------------------------------


def test_zero2hero_graph_values_and_gradients(backend):
    # test/zero2hero_1of7.ml, "Graph drawing recompile":
    # `f = (3 *. ("x" [ 5 ] **. 2)) - (4 *. x) + 5`, after grad_update:
    # f 6.00e+1; `-` 5.50e+1; `3 *. x**2` 7.50e+1 (grad 1); `x **. 2` 2.50e+1 (grad 3);
    # `4 *. x` 2.00e+1 (grad -1); x 5.00e+0 with grad 2.60e+1.
    x = oc.param("x", 5.0)
    square = op("x **. 2", x=x)
    cubic_term = op("3 *. square", square=square)
    linear_term = op("4 *. x", x=x)
    difference = op("cubic_term - linear_term", cubic_term=cubic_term, linear_term=linear_term)
    f = op("difference + 5", difference=difference)
    Context(backend).compile(train.grad_update(f)).run()
    assert f.item() == 60.0 and difference.item() == 55.0
    assert cubic_term.item() == 75.0 and square.item() == 25.0 and linear_term.item() == 20.0
    assert f.grad.item() == 1.0 and difference.grad.item() == 1.0
    assert cubic_term.grad.item() == 1.0 and square.grad.item() == 3.0
    assert linear_term.grad.item() == -1.0
    assert x.grad.item() == 26.0


def test_zero2hero_plot_points(backend):
    # test/zero2hero_1of7.ml, "Graph drawing recompile" and "Graph drawing fetch": f over
    # xs = -5..4 (the plot spans 4.0 to 100.0) and f, f' over 100 points -5.0, -4.9, ..., 4.9
    # (f from 1.00e+2, f' from -3.40e+1).
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[])
    y = oc.param("y", 0.0)  # makes the expression differentiable in a parameter too
    f = op("(3 *. (x **. 2)) - (4 *. x) + 5 + y", x=x, y=y)
    routine = Context(backend).compile(f.forward)
    ys = []
    for v in np.arange(10.0) - 5.0:
        x.set_value(v)
        routine.run()
        ys.append(f.item())
    xs = np.arange(10.0) - 5.0
    np.testing.assert_allclose(ys, 3 * xs**2 - 4 * xs + 5, rtol=1e-6)
    assert max(ys) == 100.0 and min(ys) == 4.0

    xs = np.arange(100) / 10.0 - 5.0
    xt = oc.param("xt", xs, output_dims=[100])
    fx = op("(3 *. (x **. 2)) - (4 *. x) + 5", x=xt)
    loss = oc.einsum1("i=>0", fx)
    Context(backend).compile(train.grad_update(loss)).run()
    np.testing.assert_allclose(fx.value, 3 * xs**2 - 4 * xs + 5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xt.grad, 6 * xs - 4, rtol=1e-5, atol=1e-5)
    assert fx.value[0] == 100.0 and xt.grad[0] == -34.0


def _simple_graph():
    e = op("{a = 2.0} *. {b = -3.0}")
    d = op("e + {c = 10.0}", e=e)
    l_ = op("d *. {f = -2.0}", d=d)
    params = {name: l_.params[name] for name in "abcf"}
    return l_, d, e, params


def test_zero2hero_simple_gradients_and_sgd_step(backend):
    # test/zero2hero_1of7.ml, "Simple gradients hosted": `e = a [2] *. b [-3]`,
    # `d = e + c [10]`, `l = d *. f [-2]`, learning rate 0.1, grad and SGD as separate routines.
    l_, d, e, p = _simple_graph()
    ctx = Context(backend)
    grad_routine = ctx.compile(train.grad_update(l_))
    sgd_routine = ctx.compile(train.sgd_update(l_, 0.1))

    grad_routine.run()
    # l -8.00e+0; d 4.00e+0 (grad -2.00e+0); f -2.00e+0 (grad 4.00e+0); e -6.00e+0 (grad -2);
    # c 1.00e+1 (grad -2); a 2.00e+0 (grad 6.00e+0); b -3.00e+0 (grad -4.00e+0).
    assert (l_.item(), d.item(), e.item()) == (-8.0, 4.0, -6.0)
    assert l_.grad.item() == 1.0 and d.grad.item() == -2.0 and e.grad.item() == -2.0
    grads = {name: t.grad.item() for name, t in p.items()}
    assert grads == {"a": 6.0, "b": -4.0, "c": -2.0, "f": 4.0}

    sgd_routine.run()
    # Only the parameters change: a 1.40e+0, b -2.60e+0, c 1.02e+1, f -2.40e+0.
    values = {name: t.value.item() for name, t in p.items()}
    assert values == pytest.approx({"a": 1.4, "b": -2.6, "c": 10.2, "f": -2.4}, abs=1e-6)
    assert l_.item() == -8.0 and d.item() == 4.0

    grad_routine.run()
    # l -1.57e+1; d 6.56e+0 (grad -2.40e+0); f grad 6.56e+0; e -3.64e+0 (grad -2.40e+0);
    # c grad -2.40e+0; a grad 6.24e+0; b grad -3.36e+0.
    assert l_.item() == pytest.approx(6.56 * -2.4, abs=1e-5)
    assert_printed(l_.item(), -15.7)
    assert d.item() == pytest.approx(6.56, abs=1e-5)
    assert e.item() == pytest.approx(-3.64, abs=1e-5)
    grads = {name: t.grad.item() for name, t in p.items()}
    assert grads == pytest.approx({"a": 6.24, "b": -3.36, "c": -2.4, "f": 6.56}, abs=1e-5)


# ---- test/einsum/einsum_trivia_exec.ml and .expected ---------------------------------------------


def range_of_shape(batch=(), inputs=(), output=()) -> oc.Tensor:
    return oc.range_of_shape(batch_dims=list(batch), input_dims=list(inputs),
                             output_dims=list(output))  # fmt: skip


def test_einsum_permute_kinds(backend):
    # einsum_trivia_exec.ml:20: `hey ++ "b|i->o => o|b->i"`, hey batch 2, input 3, output 4:
    # shape 0:4|2:2->1:3, first batch slice [[0, 12], [1, 13], [2, 14]], last [[9, 21], ...].
    hey = range_of_shape(batch=[2], inputs=[3], output=[4])
    ho = oc.einsum1("b|i->o => o|b->i", hey)
    value = computed(Context(backend), ho)
    assert dims(ho) == ([4], [2], [3])
    np.testing.assert_array_equal(value[0], [[0, 12], [1, 13], [2, 14]])
    np.testing.assert_array_equal(value[3], [[9, 21], [10, 22], [11, 23]])
    np.testing.assert_array_equal(value, np.arange(24.0).reshape(2, 4, 3).transpose(1, 2, 0))


def test_einsum_permute_two_axes_per_kind(backend):
    # einsum_trivia_exec.ml:26: `hey2 ++ "ab|cd->ef => cf|ae->db"`, hey2 batch [2; 3],
    # input [4; 5], output [6; 7]: shape 0:4,1:7|4:2,5:6->2:5,3:3; printed corners of the first
    # block 0.00, 1.40e+2, 5.60e+2, 7.00e+2 and of the second batch row 2.00e+1.
    hey2 = range_of_shape(batch=[2, 3], inputs=[4, 5], output=[6, 7])
    ho2 = oc.einsum1("ab|cd->ef => cf|ae->db", hey2)
    value = computed(Context(backend), ho2)
    assert dims(ho2) == ([4, 7], [2, 6], [5, 3])
    full = np.arange(2 * 3 * 6 * 7 * 4 * 5, dtype=float).reshape(2, 3, 6, 7, 4, 5)
    np.testing.assert_array_equal(value, np.einsum("abefcd->cfdbae", full))
    np.testing.assert_array_equal(value[0, 0, 0, 0, 0, :2], [0.0, 140.0])
    np.testing.assert_array_equal(value[0, 0, 0, 0, 0, -2:], [560.0, 700.0])
    assert value[0, 1, 0, 0, 0, 0] == 20.0


def test_einsum_fixed_index_contraction(backend):
    # einsum_trivia_exec.ml:31 (and :172): `a +* "...|i->1; ...|...->i => ...|i" b`,
    # a batch 3 input 4 output 2, b batch 3 input 1 output 4: shape 0:3|1:4.
    a = range_of_shape(batch=[3], inputs=[4], output=[2])
    b = range_of_shape(batch=[3], inputs=[1], output=[4])
    c = oc.einsum("...|i->1; ...|...->i => ...|i", a, b)
    np.testing.assert_array_equal(
        computed(Context(backend), c),
        [[0, 5, 12, 21], [48, 65, 84, 105], [160, 189, 220, 253]],
    )
    assert dims(c) == ([3], [], [4])


def test_einsum_reduce_input_axis(backend):
    # einsum_trivia_exec.ml:41: `hey ++ "b|i->o => b|i"`: [[18, 22, 26], [66, 70, 74]].
    hey = range_of_shape(batch=[2], inputs=[3], output=[4])
    ho = oc.einsum1("b|i->o => b|i", hey)
    np.testing.assert_array_equal(computed(Context(backend), ho), [[18, 22, 26], [66, 70, 74]])


def test_einsum_reduce_to_mixed_kinds(backend):
    # einsum_trivia_exec.ml:49: `hey2 ++ "ab|cd->ef => c|a->d"`: shape 0:4|2:2->1:5, printed
    # values 1.57e+5 .. 1.59e+5 (a = 0) and 4.75e+5 .. 4.77e+5 (a = 1).
    hey2 = range_of_shape(batch=[2, 3], inputs=[4, 5], output=[6, 7])
    ho2 = oc.einsum1("ab|cd->ef => c|a->d", hey2)
    value = computed(Context(backend), ho2)
    assert dims(ho2) == ([4], [2], [5])
    full = np.arange(2 * 3 * 6 * 7 * 4 * 5, dtype=float).reshape(2, 3, 6, 7, 4, 5)
    np.testing.assert_array_equal(value, np.einsum("abefcd->cda", full))
    # The exact sums (integers, exact in float32) are 157500 + 630 c + 126 d + 317520 a. OCANNL's
    # printed digits for a = 0 sit just below correct rounding (157500 and 157626 print as
    # 1.57e+5, 159894 as 1.59e+5), so they are compared within one unit of the last digit.
    assert value[0, 0, 0] == 157500.0
    assert_printed(value[0, :, 0], [1.57e5, 1.57e5, 1.57e5, 1.57e5, 1.58e5], units=1)
    assert_printed(value[0, :, 1], [4.75e5] * 5, units=1)
    assert_printed(value[3, 4, :], [1.59e5, 4.77e5], units=1)


def test_einsum_outer_product_to_matrix(backend):
    # einsum_trivia_exec.ml:60: `(a + 1) +* "i; j => i->j" b`, a = range 2, b = range 3:
    # shape 1:2->0:3, [[0, 0], [1, 2], [2, 4]].
    a = range_of_shape(output=[2])
    b = range_of_shape(output=[3])
    c = oc.einsum("i; j => i->j", a + 1, b)
    np.testing.assert_array_equal(computed(Context(backend), c), [[0, 0], [1, 2], [2, 4]])
    assert dims(c) == ([], [2], [3])


def test_einsum_outer_product_all_kinds(backend):
    # einsum_trivia_exec.ml:65: `a +* "i|j->k; l|m->n => il|jm->kn" b`, a 2|3->4, b 5|6->7:
    # shape 0:2,1:5|4:3,5:6->2:4,3:7; printed block i=0, l=0, k=0, n=0: j=1 gives 0.00 1.00 ... 5.00,
    # j=2 gives 0.00 2.00 ... 1.00e+1; k=1, j=0 gives 0.00 3.00 ... 1.50e+1.
    a = range_of_shape(batch=[2], inputs=[3], output=[4])
    b = range_of_shape(batch=[5], inputs=[6], output=[7])
    c = oc.einsum("i|j->k; l|m->n => il|jm->kn", a, b)
    value = computed(Context(backend), c)
    av = np.arange(24.0).reshape(2, 4, 3)
    bv = np.arange(210.0).reshape(5, 7, 6)
    np.testing.assert_array_equal(value, np.einsum("ikj,lnm->ilknjm", av, bv))
    np.testing.assert_array_equal(value[0, 0, 0, 0, 1, :], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(value[0, 0, 0, 0, 2, :], [0, 2, 4, 6, 8, 10])
    np.testing.assert_array_equal(value[0, 0, 1, 0, 0, :], [0, 3, 6, 9, 12, 15])


def test_einsum_batched_contractions(backend):
    # einsum_trivia_exec.ml:72-87: a batch 2 input 3 output 4, b batch 2 input 4 output 5;
    # a2 = `a +* "b|i->o; b|i->o => b|i->o" a` (pointwise square), c = `b +* "b|h->o; b|i->h =>
    # b|i->o" a` (batched compose), d = `a +* "a|i->h; b|h->o => ab|i->o" b`, e = `a +* "b|i->h;
    # b|h->o => i->o" b` (reduced over the batch), f = `a +* "a|i->h; b|h->o => i->o" b`.
    a = range_of_shape(batch=[2], inputs=[3], output=[4])
    b = range_of_shape(batch=[2], inputs=[4], output=[5])
    av, bv = np.arange(24.0).reshape(2, 4, 3), np.arange(40.0).reshape(2, 5, 4)
    ctx = Context(backend)
    cases = [
        ("b|i->o; b|i->o => b|i->o", a, a, av * av),
        ("b|h->o; b|i->h => b|i->o", b, a, np.einsum("boh,bhi->boi", bv, av)),
        ("a|i->h; b|h->o => ab|i->o", a, b, np.einsum("ahi,boh->aboi", av, bv)),
        ("b|i->h; b|h->o => i->o", a, b, np.einsum("bhi,boh->oi", av, bv)),
        ("a|i->h; b|h->o => i->o", a, b, np.einsum("ahi,boh->oi", av, bv)),
    ]
    for spec, x, y, expected in cases:
        np.testing.assert_array_equal(computed(ctx, oc.einsum(spec, x, y)), expected, spec)


def test_einsum_row_variables(backend):
    # einsum_trivia_exec.ml:94-123: ho5 = `hey ++ "...|...->...o => o"` = [42; 60; 78; 96];
    # ho6 on output [3; 4] = [12; 15; 18; 21]; ho7 = `hey4 ++ "i->...o => ...io"` with hey4
    # input 2 output [3; 4]: shape 0:3,1:2,2:4 with rows [0 2 4 6], [1 3 5 7], [8 10 12 14], ...
    ctx = Context(backend)
    hey = range_of_shape(batch=[2], inputs=[3], output=[4])
    ho5 = oc.einsum1("...|...->...o => o", hey)
    np.testing.assert_array_equal(computed(ctx, ho5), [42, 60, 78, 96])
    ho6 = oc.einsum1("...|...->...o => o", range_of_shape(output=[3, 4]))
    np.testing.assert_array_equal(computed(ctx, ho6), [12, 15, 18, 21])
    hey4 = range_of_shape(inputs=[2], output=[3, 4])
    ho7 = oc.einsum1("i->...o => ...io", hey4)
    np.testing.assert_array_equal(
        computed(ctx, ho7),
        [[[0, 2, 4, 6], [1, 3, 5, 7]], [[8, 10, 12, 14], [9, 11, 13, 15]],
         [[16, 18, 20, 22], [17, 19, 21, 23]]],
    )  # fmt: skip
    # ho = `hey ++ "...|i->o => ...|o->i"`, ho2 = `hey ++ "b|...->o => o|...->b"`: permutations.
    heyv = np.arange(24.0).reshape(2, 4, 3)
    ho = oc.einsum1("...|i->o => ...|o->i", hey)
    np.testing.assert_array_equal(computed(ctx, ho), heyv.transpose(0, 2, 1))
    ho2 = oc.einsum1("b|...->o => o|...->b", hey)
    np.testing.assert_array_equal(computed(ctx, ho2), heyv.transpose(1, 0, 2))


def test_einsum_row_variable_contractions(backend):
    # einsum_trivia_exec.ml:130-140: c = `a +* "...|i->...; ...|...->i => ...|i" b` = [[0 6 16
    # 30]; [80 110 144 182]; [288 342 400 462]]; f = `d +* "i->...;j->... => ...ij" e` with d
    # input 2 output 3, e input 4 output 3: shape 0:3,1:2,2:4, f[0] = [[0 0 0 0]; [0 1 2 3]].
    ctx = Context(backend)
    a = range_of_shape(batch=[3], inputs=[4], output=[2])
    b = range_of_shape(batch=[3], inputs=[1], output=[4])
    c = oc.einsum("...|i->...; ...|...->i => ...|i", a, b)
    np.testing.assert_array_equal(
        computed(ctx, c), [[0, 6, 16, 30], [80, 110, 144, 182], [288, 342, 400, 462]]
    )
    d = range_of_shape(inputs=[2], output=[3])
    e = range_of_shape(inputs=[4], output=[3])
    f = oc.einsum("i->...;j->... => ...ij", d, e)
    np.testing.assert_array_equal(
        computed(ctx, f),
        [[[0, 0, 0, 0], [0, 1, 2, 3]], [[8, 10, 12, 14], [12, 15, 18, 21]],
         [[32, 36, 40, 44], [40, 45, 50, 55]]],
    )  # fmt: skip


def test_einsum_fixed_indices(backend):
    # einsum_trivia_exec.ml:146-161: ho = `hey ++ "...|1->... => ...|..."` = [[1 4 7 10];
    # [13 16 19 22]]; ho2 = `hey ++ "...|...->... => ...|...->0"`: shape 0:2|2:3->1:1 with
    # [18 22 26] and [66 70 74]; ho3 = `hey2 ++ "...|...->... => 0"` (hey2 input 2 output 3) =
    # 15; ho4 = `hey2 ++ "i->j => i0j"`: shape 0:2,1:1,2:3, [[0 2 4]] and [[1 3 5]].
    ctx = Context(backend)
    hey = range_of_shape(batch=[2], inputs=[3], output=[4])
    ho = oc.einsum1("...|1->... => ...|...", hey)
    np.testing.assert_array_equal(computed(ctx, ho), [[1, 4, 7, 10], [13, 16, 19, 22]])
    ho2 = oc.einsum1("...|...->... => ...|...->0", hey)
    np.testing.assert_array_equal(computed(ctx, ho2), [[[18, 22, 26]], [[66, 70, 74]]])
    assert dims(ho2) == ([2], [3], [1])
    hey2 = range_of_shape(inputs=[2], output=[3])
    ho3 = oc.einsum1("...|...->... => 0", hey2)
    np.testing.assert_array_equal(computed(ctx, ho3), [15])
    ho4 = oc.einsum1("i->j => i0j", hey2)
    np.testing.assert_array_equal(computed(ctx, ho4), [[[0, 2, 4]], [[1, 3, 5]]])
    assert dims(ho4) == ([], [], [2, 1, 3])

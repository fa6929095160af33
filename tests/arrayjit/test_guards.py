"""Bounds guards: an accumulation whose affine indices may leave their buffers (a padded
convolution) runs only where they are inside, on the C backend, on the CUDA backend's kernels
(emulated on the CPU, and on a GPU where one is usable) and in the CUDA compiler; unguarded
projections that leave a buffer are still refused.

Values are small integers, so every sum is exact in any order and must equal numpy's."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, nvcc_cubin, runner

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Seq
from arrayjit.codegen.cuda_syntax import generate
from arrayjit.indexing import Iterator, Projections, affine
from arrayjit.lowering import compile_to_ir
from arrayjit.tnode import TNode


def padded_conv(x: TNode, w: TNode, y: TNode, stride: int, pad: int, accum="add") -> Accum:
    """`y[b, o, c] accum= x[b, stride*o + k - pad, c] * w[k]` over k (zeros outside x)."""
    batch, _, channels = x.dims
    b, o, c, k = (Iterator(name=n) for n in "bock")
    index = affine((stride, o), (1, k), offset=-pad)
    p = Projections(
        (batch, y.dims[1], channels, w.dims[0]), (b, o, c, k), (b, o, c),
        ((b, index, c), (k,)), guarded=True,
    )  # fmt: skip
    return Accum(y, accum, "mul" if accum == "add" else "add", (x, w), p, zero_first=True)


def input_gradient(g: TNode, w: TNode, gx: TNode, stride: int, pad: int) -> Accum:
    """`gx[b, stride*o + k - pad, c] += g[b, o, c] * w[k]`: the lhs index leaves gx."""
    batch, outs, channels = g.dims
    b, o, c, k = (Iterator(name=n) for n in "bock")
    index = affine((stride, o), (1, k), offset=-pad)
    p = Projections(
        (batch, outs, channels, w.dims[0]), (b, o, c, k), (b, index, c),
        ((b, o, c), (k,)), guarded=True,
    )  # fmt: skip
    return Accum(gx, "add", "mul", (g, w), p)


def reference_conv(xv, wv, stride, pad, outs, op=np.add):
    batch, size, channels = xv.shape
    fill = 0.0 if op is np.add else -np.inf
    padded = np.full((batch, size + 2 * pad + len(wv) + stride * outs, channels), fill)
    padded[:, pad : pad + size] = xv
    out = np.full((batch, outs, channels), 0.0 if op is np.add else -np.inf)
    for o in range(outs):
        for k, wk in enumerate(wv):
            cell = padded[:, stride * o + k]
            out[:, o] = op(out[:, o], cell * wk if op is np.add else cell + wk)
    return out


def reference_input_gradient(gv, wv, size, stride, pad):
    batch, outs, channels = gv.shape
    gx = np.zeros((batch, size + 2 * pad + len(wv) + stride * outs, channels))
    for o in range(outs):
        for k, wk in enumerate(wv):
            gx[:, stride * o + k] += gv[:, o] * wk
    return gx[:, pad : pad + size]


def _nodes(rng, size=7, kernel=3, stride=2, pad=1, batch=2, channels=3):
    outs = -(-size // stride)
    x = TNode("x", (batch, size, channels))
    w = TNode("w", (kernel,))
    y = TNode("y", (batch, outs, channels))
    x.set_host(rng.integers(-4, 5, x.dims).astype(np.float32))
    w.set_host(rng.integers(-3, 4, w.dims).astype(np.float32))
    y.set_host(np.full(y.dims, np.nan, np.float32))
    return x, w, y, outs


def test_an_unguarded_index_outside_its_buffer_is_refused():
    x, w, y = TNode("x", (2, 7, 3)), TNode("w", (3,)), TNode("y", (2, 4, 3))
    b, o, c, k = (Iterator(name=n) for n in "bock")
    index = affine((2, o), (1, k), offset=-1)
    space = ((2, 4, 3, 3), (b, o, c, k), (b, o, c), ((b, index, c), (k,)))
    with pytest.raises(ValueError, match=r"rhs1 axis 1 has dim 7 but index .* ranges over -1\.\.7"):
        Accum(y, "add", "mul", (x, w), Projections(*space), zero_first=True)
    Accum(y, "add", "mul", (x, w), Projections(*space, guarded=True), zero_first=True)


def test_guards_wrap_only_what_can_leave_its_buffer():
    rng = np.random.default_rng(0)
    x, w, y, _ = _nodes(rng)
    stmt = compile_to_ir(padded_conv(x, w, y, 2, 1), reductions_innermost=True)
    guards = [s for s in ir.walk(stmt) if isinstance(s, ir.If)]
    assert len(guards) == 1
    assert [str(c) for c in guards[0].conditions] == ["0 <= 2*o + k + -1 < 7"]
    # Only the term of the reduction is skipped: the store of each cell is not under it.
    assert not any(isinstance(s, ir.Set) for s in ir.walk(guards[0]))
    # Accumulating into memory (channels innermost), the lhs is filled first, unguarded.
    stmt = compile_to_ir(padded_conv(x, w, y, 2, 1))
    fill, update = stmt.stmts
    assert not any(isinstance(s, ir.If) for s in ir.walk(fill))
    assert [type(s) for s in ir.walk(update)].count(ir.If) == 1
    valid = compile_to_ir(padded_conv(x, w, TNode("v", (2, 3, 3)), 2, 0))
    assert not any(isinstance(s, ir.If) for s in ir.walk(valid))


def test_padded_conv_and_its_input_gradient_on_c(c_context):
    rng = np.random.default_rng(1)
    x, w, y, outs = _nodes(rng)
    gx = TNode("gx", x.dims)
    gx.set_host(np.zeros(x.dims, np.float32))
    c_context.compile(Seq((padded_conv(x, w, y, 2, 1), input_gradient(y, w, gx, 2, 1)))).run()
    expected = reference_conv(x.host(), w.host(), 2, 1, outs)
    np.testing.assert_array_equal(y.host(), expected)
    grad = reference_input_gradient(expected, w.host(), 7, 2, 1)
    np.testing.assert_array_equal(gx.host(), grad)


def test_padded_max_skips_the_outside_on_c(c_context):
    rng = np.random.default_rng(2)
    x, w, y, outs = _nodes(rng, size=5, kernel=3, stride=1, pad=1)
    x.set_host(-np.abs(x.host()) - 1)
    c_context.compile(padded_conv(x, w, y, 1, 1, accum="max")).run()
    expected = reference_conv(x.host(), w.host(), 1, 1, outs, op=np.maximum)
    np.testing.assert_array_equal(y.host(), expected)


@pytest.fixture(params=RUNNERS)
def run(request):
    return runner(request.param)


@pytest.mark.parametrize(("size", "stride", "pad"), [(7, 2, 1), (9, 1, 2), (1, 1, 1)])
def test_padded_conv_and_its_input_gradient_on_cuda_kernels(run, size, stride, pad):
    rng = np.random.default_rng(size)
    x, w, y, _ = _nodes(rng, size=size, stride=stride, pad=pad)
    outs = y.dims[1]
    gx = TNode("gx", x.dims)
    gx.set_host(np.zeros(x.dims, np.float32))
    run(Seq((padded_conv(x, w, y, stride, pad), input_gradient(y, w, gx, stride, pad))))
    expected = reference_conv(x.host(), w.host(), stride, pad, outs)
    np.testing.assert_array_equal(y.host(), expected)
    grad = reference_input_gradient(expected, w.host(), size, stride, pad)
    np.testing.assert_array_equal(gx.host(), grad)


def test_guarded_kernels_compile_with_nvcc(tmp_path):
    rng = np.random.default_rng(3)
    x, w, y, _ = _nodes(rng)
    gx = TNode("gx", x.dims)
    code = Seq((padded_conv(x, w, y, 2, 1), input_gradient(y, w, gx, 2, 1)))
    generated = generate(compile_to_ir(code, reductions_innermost=True), "guarded")
    assert "if (0 <= " in generated.source
    nvcc_cubin(generated.source, tmp_path)


def test_conv2d_training_step_on_cuda_kernels(run):
    """A padded, strided conv2d's forward and both gradients, built by ocannl_py, lowered as
    the CUDA backend does and run on its kernels, against PyTorch."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
    import ocannl_py as oc
    from ocannl_py import train

    rng = np.random.default_rng(9)
    xv, wv = rng.integers(-3, 4, (2, 5, 6, 2)), rng.integers(-2, 3, (3, 3, 2, 2))
    x = oc.param("x", value=xv, batch_dims=[2], output_dims=[5, 6, 2])
    w = oc.param("w", value=wv, input_dims=[3, 2, 2], output_dims=[3])
    spec = "...|2*oh=+kh, ow=+kw, ..ic..; kh, kw, ..ic.. -> ..oc.. => ...|oh, ow, ..oc.."
    y = oc.einsum(spec, x, w)
    loss = oc.einsum1("...|... => 0", y)
    run((x.init_code + w.init_code + train.grad_update(loss)).lower())

    xt = torch.tensor(xv, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(wv, dtype=torch.float64, requires_grad=True)
    # SAME padding: rows (5 -> 3 at stride 2): 2 in all, 1 before; columns (kernel 2): 1, after.
    padded = torch.nn.functional.pad(xt.movedim(-1, 1), (0, 1, 1, 1))
    ref = torch.nn.functional.conv2d(padded, wt.movedim(-1, 1), stride=(2, 1)).movedim(1, -1)
    ref.sum().backward()
    np.testing.assert_array_equal(y.value_node.host(), ref.detach().numpy())
    np.testing.assert_array_equal(x.grad_node.host(), xt.grad.numpy())
    np.testing.assert_array_equal(w.grad_node.host(), wt.grad.numpy())

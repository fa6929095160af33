"""Convolution and pooling through affine einsum axes, against PyTorch: values and the gradients
for both the input and the kernel, on every backend.

Images are `batch | height, width, channels` (outputs); a kernel is `kh, kw, ic -> oc`, so its
value's axes are (oc, kh, kw, ic) and PyTorch's weight is its permutation (oc, ic, kh, kw).
The computation is float32 and the reference float64: each cell sums at most a few dozen
products (relative error ~1e-6 of the magnitudes summed), so `rtol=atol=1e-4` leaves a wide
margin while a wrong index, a missing or doubled term, or a read of padding is off by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from ocannl_py import Context, train
from ocannl_py.errors import ShapeError

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's SAME padding (PyTorch's "same" at stride 1): (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _torch_conv(x, w, stride, dilation, padding):
    """`x` (batch, *spatial, ic), `w` (oc, *kernel, ic) as torch tensors; channels-last result."""
    spatial = x.dim() - 2
    xs = x.movedim(-1, 1)
    ws = w.movedim(-1, 1)
    if padding == "same":
        pads = []
        for size, kernel in reversed(list(zip(xs.shape[2:], ws.shape[2:], strict=True))):
            pads.extend(_same_padding(size, kernel, stride, dilation))
        xs = F.pad(xs, pads)
    conv = F.conv2d if spatial == 2 else F.conv1d
    return conv(xs, ws, stride=stride, dilation=dilation).movedim(1, -1)


def _axis(over: str, kernel: str, stride: int, dilation: int, padding: str) -> str:
    scaled = f"{stride}*{over}" if stride != 1 else over
    kern = f"{dilation}*{kernel}" if dilation != 1 else kernel
    return f"{scaled}{'<' if padding == 'valid' else '='}+{kern}"


def _check_conv(backend, xv, wv, stride, dilation, padding, ctx=None):
    """Build the conv of `xv` (batch, *spatial, ic) by `wv` (oc, *kernel, ic), run its forward
    and backward on `backend`, and compare all three with PyTorch."""
    spatial = xv.ndim - 2
    overs, kernels = ["oh", "ow"][:spatial], ["kh", "kw"][:spatial]
    axes = ", ".join(
        _axis(o, k, stride, dilation, padding) for o, k in zip(overs, kernels, strict=True)
    )
    spec = (
        f"...|{axes}, ..ic..; {', '.join(kernels)}, ..ic.. -> ..oc.. "
        f"=> ...|{', '.join(overs)}, ..oc.."
    )
    x = oc.param("x", value=xv, batch_dims=[xv.shape[0]], output_dims=list(xv.shape[1:]))
    w = oc.param("w", value=wv, input_dims=list(wv.shape[1:]), output_dims=[wv.shape[0]])
    y = oc.einsum(spec, x, w)
    weights = np.random.default_rng(1).normal(size=y.shape.batch + y.shape.output)
    c = oc.ndarray(weights, batch_dims=y.shape.batch, output_dims=y.shape.output, label="c")
    loss = oc.einsum1("...|... => 0", y * c)
    ctx = ctx or Context(backend)
    ctx.compile(train.grad_update(loss)).run()

    xt = torch.tensor(xv, requires_grad=True)
    wt = torch.tensor(wv, requires_grad=True)
    ref = _torch_conv(xt, wt, stride, dilation, padding)
    (ref * torch.tensor(weights)).sum().backward()
    assert y.shape.output == list(ref.shape[1:]), spec
    np.testing.assert_allclose(y.value, ref.detach().numpy(), **TOL, err_msg=spec)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), **TOL, err_msg=spec)
    np.testing.assert_allclose(w.grad, wt.grad.numpy(), **TOL, err_msg=spec)
    return y


GEOMETRIES = [
    # stride, dilation, padding
    (1, 1, "valid"),
    (2, 1, "valid"),
    (1, 2, "valid"),
    (1, 1, "same"),
    (2, 1, "same"),
    (1, 2, "same"),
    (2, 2, "same"),
]


@pytest.mark.parametrize(("stride", "dilation", "padding"), GEOMETRIES)
def test_conv2d_matches_torch(backend, stride, dilation, padding):
    rng = np.random.default_rng(stride * 10 + dilation)
    xv = rng.normal(size=(2, 9, 8, 3))  # batch 2, 9x8 image, 3 channels
    wv = rng.normal(size=(4, 3, 2, 3))  # 4 output channels, 3x2 kernel
    _check_conv(backend, xv, wv, stride, dilation, padding)


def test_api_example_conv(backend):
    """The API's example, exactly as written: stride 2, valid."""
    rng = np.random.default_rng(7)
    xv, wv = rng.normal(size=(3, 7, 7, 2)), rng.normal(size=(5, 3, 3, 2))
    x = oc.param("x", value=xv, batch_dims=[3], output_dims=[7, 7, 2])
    w = oc.param("w", value=wv, input_dims=[3, 3, 2], output_dims=[5])
    y = oc.einsum(
        "...|2*oh<+kh, 2*ow<+kw, ..ic..; kh, kw, ..ic.. -> ..oc.. => ...|oh, ow, ..oc..", x, w
    )
    assert str(y.shape) == "0:3|0:3,1:3,2:5"
    Context(backend).forward(y)
    ref = _torch_conv(torch.tensor(xv), torch.tensor(wv), 2, 1, "valid")
    np.testing.assert_allclose(y.value, ref.numpy(), **TOL)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv1d_matches_torch(backend, padding):
    rng = np.random.default_rng(3)
    _check_conv(backend, rng.normal(size=(2, 17, 3)), rng.normal(size=(2, 4, 3)), 2, 1, padding)


def test_conv_shapes_are_inferred_for_a_parameter_kernel():
    """The kernel's input dims come from the spec and the image; its output dims are given."""
    x = oc.term("x", batch_dims=[2], output_dims=[10, 3])
    w = oc.param("w", input_dims=[3], output_dims=[4])
    y = oc.einsum("...|oh=+kh, ..ic..; kh, ..ic.. -> ..oc.. => ...|oh, ..oc..", x, w)
    assert y.shape.output == [10, 4]  # padded: ceil(10 / 1)
    x2 = oc.term("x2", batch_dims=[2], output_dims=[10, 3])
    y2 = oc.einsum("...|3*oh<+kh, ..ic..; kh, ..ic.. -> ..oc.. => ...|oh, ..oc..", x2, w)
    assert y2.shape.output == [3, 4]  # valid: (10 - 3) // 3 + 1


def test_an_input_is_inferred_from_its_output_and_kernel():
    """A valid convolution whose input nothing else gives takes the fewest cells that fit."""
    x = oc.param("x")
    w = oc.param("w", output_dims=[3])
    y = oc.einsum("2*o<+k; k => o", x, w)
    r = oc.term("r", output_dims=[4])
    z = y + r
    r.set_value(np.zeros(4))
    Context("c").forward(z)
    assert x.shape.output == [2 * 3 + 3]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    padding=st.sampled_from(["valid", "same"]),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_random_conv1d_geometries_match_torch(
    c_context_shared, size, kernel, stride, dilation, padding, channels, seed
):
    span = dilation * (kernel - 1) + 1
    rng = np.random.default_rng(seed)
    xv = rng.normal(size=(2, size, channels[0]))
    wv = rng.normal(size=(channels[1], kernel, channels[0]))
    if padding == "valid" and span > size:
        with pytest.raises(ShapeError, match="the kernel of dim .* spans"):
            _check_conv("c", xv, wv, stride, dilation, padding, c_context_shared)
        return
    _check_conv("c", xv, wv, stride, dilation, padding, c_context_shared)


@pytest.fixture(scope="module")
def c_context_shared():
    return Context("c")


# ---- pooling ----------------------------------------------------------------------------------


def _image(values: np.ndarray, label: str = "x") -> oc.Tensor:
    return oc.param(label, value=values, batch_dims=[values.shape[0]],
                    output_dims=list(values.shape[1:]))  # fmt: skip


def _pool_loss(pooled: oc.Tensor, seed: int = 2):
    weights = np.random.default_rng(seed).normal(size=pooled.shape.batch + pooled.shape.output)
    c = oc.ndarray(
        weights, batch_dims=pooled.shape.batch, output_dims=pooled.shape.output, label="c"
    )
    return oc.einsum1("...|... => 0", pooled * c), weights


def _torch_pool(pool, xv, weights, **kw):
    xt = torch.tensor(xv, requires_grad=True)
    ref = pool(xt.movedim(-1, 1), **kw).movedim(1, -1)
    (ref * torch.tensor(weights)).sum().backward()
    return ref.detach().numpy(), xt.grad.numpy()


MAX_POOL = "...|{s}*oh<+wh, {s}*ow<+ww, ..c..; wh, ww => ...|oh, ow, ..c.."


@pytest.mark.parametrize(("window", "stride"), [(2, 2), (3, 2), (2, 1)])
def test_max_pool2d_matches_torch(backend, window, stride):
    """A max-plus product with a window of zeros; distinct values, so the max is unique."""
    rng = np.random.default_rng(window * 10 + stride)
    xv = rng.permutation(2 * 7 * 6 * 3).reshape(2, 7, 6, 3) / 10.0
    x = _image(xv)
    window_t = oc.ndarray(np.zeros((window, window)), output_dims=[window, window], label="win")
    pooled = oc.tropical(MAX_POOL.format(s=stride), x, window_t)
    loss, weights = _pool_loss(pooled)
    Context(backend).compile(train.grad_update(loss)).run()
    ref, ref_grad = _torch_pool(F.max_pool2d, xv, weights, kernel_size=window, stride=stride)
    np.testing.assert_allclose(pooled.value, ref, **TOL)
    np.testing.assert_allclose(x.grad, ref_grad, **TOL)


def test_max_pool_ties_send_the_gradient_to_the_maxima_only(backend):
    xv = np.array([[[[1.0], [3.0]], [[3.0], [0.0]]]])  # one 2x2 window, max 3 twice
    x = _image(xv)
    window = oc.ndarray(np.zeros((2, 2)), output_dims=[2, 2], label="win")
    pooled = oc.tropical(MAX_POOL.format(s=2), x, window)
    loss = oc.einsum1("...|... => 0", pooled)
    Context(backend).compile(train.grad_update(loss)).run()
    assert pooled.value.ravel().tolist() == [3.0]
    grad = x.grad.reshape(2, 2)
    assert grad[0, 0] == 0 and grad[1, 1] == 0
    assert grad[0, 1] > 0 and grad[0, 1] == grad[1, 0]


def test_ocannl_recorded_max_pool(backend):
    """OCANNL's test_max_pool2d: a 4x4x1 range_of_shape, window 2, stride 2 -> [[5,7],[13,15]]."""
    x = oc.range_of_shape(output_dims=[4, 4, 1])
    window = oc.ndarray(np.zeros((2, 2)), output_dims=[2, 2], label="win")
    pooled = oc.tropical("2*oh<+wh, 2*ow<+ww, ..c..; wh, ww => oh, ow, ..c..", x, window)
    Context(backend).forward(pooled)
    assert pooled.value.reshape(2, 2).tolist() == [[5.0, 7.0], [13.0, 15.0]]


def test_padded_max_pool_reads_nothing_outside(backend):
    """`=+` pooling of negative values: the padding contributes nothing (not a 0)."""
    rng = np.random.default_rng(5)
    xv = -rng.permutation(2 * 5 * 6 * 2).reshape(2, 5, 6, 2) - 1.0
    x = _image(xv)
    window = oc.ndarray(np.zeros((3, 3)), output_dims=[3, 3], label="win")
    pooled = oc.tropical("...|oh=+wh, ow=+ww, ..c..; wh, ww => ...|oh, ow, ..c..", x, window)
    loss, weights = _pool_loss(pooled)
    Context(backend).compile(train.grad_update(loss)).run()
    # Stride 1, odd window: SAME padding is torch's symmetric padding of 1.
    ref, ref_grad = _torch_pool(F.max_pool2d, xv, weights, kernel_size=3, stride=1, padding=1)
    assert (pooled.value < 0).all()
    np.testing.assert_allclose(pooled.value, ref, **TOL)
    np.testing.assert_allclose(x.grad, ref_grad, **TOL)


@pytest.mark.parametrize(("window", "stride"), [(2, 2), (3, 1)])
def test_avg_pool2d_matches_torch(backend, window, stride):
    rng = np.random.default_rng(11)
    xv = rng.normal(size=(2, 7, 8, 3))
    x = _image(xv)
    mean = oc.ndarray(np.full((window, window), 1.0 / window**2), output_dims=[window, window])
    spec = f"...|{stride}*oh<+wh, {stride}*ow<+ww, ..c..; wh, ww => ...|oh, ow, ..c.."
    pooled = oc.einsum(spec, x, mean)
    loss, weights = _pool_loss(pooled)
    Context(backend).compile(train.grad_update(loss)).run()
    ref, ref_grad = _torch_pool(F.avg_pool2d, xv, weights, kernel_size=window, stride=stride)
    np.testing.assert_allclose(pooled.value, ref, **TOL)
    np.testing.assert_allclose(x.grad, ref_grad, **TOL)


def test_a_window_that_nothing_gives_closes_to_1():
    """`2*o+w` in a one-operand max: the output's dim comes from elsewhere, the window's from
    nothing, so it is 1 (the input needs only to hold the 3 windows: `+` without `<`)."""
    x = oc.range_of_shape(output_dims=[6])
    pooled = oc.einmax1("2*o+w => o", x)
    r = oc.term("r", output_dims=[3])
    total = pooled + r
    r.set_value(np.zeros(3))
    Context("c").forward(total)
    assert pooled.value.tolist() == [0.0, 2.0, 4.0]


# ---- bad input ----------------------------------------------------------------------------------


def test_a_kernel_larger_than_its_input_is_a_clear_error():
    x = oc.term("x", batch_dims=[1], output_dims=[3, 3, 2])
    w = oc.param("w", input_dims=[5, 5, 2], output_dims=[4])
    spec = "...|oh<+kh, ow<+kw, ..ic..; kh, kw, ..ic.. -> ..oc.. => ...|oh, ow, ..oc.."
    with pytest.raises(ShapeError) as info:
        oc.einsum(spec, x, w)
    message = str(info.value)
    assert "'x'" in message and "'w'" in message and "output axes" in message
    assert "the kernel of dim 5 spans 5 cells, more than the input's 3" in message
    assert "`=+` pads" in message


def test_an_output_that_the_input_cannot_give_is_a_clear_error():
    x = oc.term("x", output_dims=[8])
    w = oc.term("w", output_dims=[3])
    y = oc.term("y", output_dims=[5])
    with pytest.raises(ShapeError, match=r"input dim 8 gives 3 output cells, not 5"):
        oc.cd('y =:+ x * w ~logic:"2*o<+k; k => o"', x=x, w=w, y=y)


def test_an_affine_axis_in_the_result_is_refused():
    x = oc.term("x", output_dims=[8])
    with pytest.raises(ShapeError, match="affine axis .* indexes an operand"):
        oc.einsum1("o => 2*o+1", x)


# ---- slices fall out of affine axes ------------------------------------------------------------


def test_offset_and_stride_slice_an_axis(backend):
    """`o+2` reads from index 2 on (`x[2:]`), `2*o` every other cell (`x[::2]`); gradients go
    back to the cells read."""
    xv = np.arange(7.0) * 3
    x = oc.param("x", value=xv)
    tail = oc.einsum1("o+2 => o", x)
    every_other = oc.einsum1("2*o => o", x)
    assert tail.shape.output == [5] and every_other.shape.output == [4]
    loss = oc.einsum1("o => 0", tail) + oc.einsum1("o => 0", every_other) * 10
    Context(backend).compile(train.grad_update(loss)).run()
    np.testing.assert_array_equal(tail.value, xv[2:])
    np.testing.assert_array_equal(every_other.value, xv[::2])
    expected = np.zeros(7)
    expected[2:] += 1
    expected[::2] += 10
    np.testing.assert_array_equal(x.grad, expected)

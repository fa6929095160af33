"""conv2d, max/avg pooling and LeNet against PyTorch with the same weights: values and the
gradients of the image and of every parameter, on every backend. Images are `batch | height,
width, channels`; a kernel's value is (out, kh, kw, in), PyTorch's weight permuted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_reference import compare, torch

import ocannl_py as oc
from ocannl_py import nn
from ocannl_py.errors import ShapeError

F = torch.nn.functional
RNG = np.random.default_rng(0)


def nchw(x: torch.Tensor) -> torch.Tensor:
    """`..b.., h, w, c` (batch axes merged) to PyTorch's N, C, H, W."""
    return x.reshape(-1, *x.shape[-3:]).movedim(-1, 1)


def nhwc(y: torch.Tensor, batch: list[int]) -> torch.Tensor:
    return y.movedim(1, -1).reshape(*batch, *y.shape[2:], y.shape[1])


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Zeros before and after so that the output has ceil(size / stride) cells (TF's SAME)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def torch_conv(x, w, b, stride, padding, dilation):
    """`x` NCHW, `w` our (out, kh, kw, in) layout."""
    weight = w.permute(0, 3, 1, 2)
    if padding == "same":
        (top, bottom), (left, right) = (
            same_padding(x.shape[i + 2], weight.shape[i + 2], stride[i], dilation[i])
            for i in range(2)
        )
        x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, weight, b, stride=stride, dilation=dilation)


def as_pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


# ---- conv2d --------------------------------------------------------------------------------------

CONVS = [
    # batch, (h, w, in), out, kernel, stride, padding, dilation
    ([2], (9, 8, 3), 4, 3, 1, "valid", 1),
    ([2], (9, 8, 3), 4, (3, 2), 2, "valid", 1),
    ([1], (7, 7, 2), 5, 3, 1, "same", 1),
    ([3], (8, 9, 1), 2, 5, 2, "same", 1),
    ([2], (9, 9, 2), 3, 3, (1, 2), "valid", 2),
    ([2], (6, 5, 3), 1, 3, 1, "same", 2),
    ([2, 3], (5, 5, 1), 3, 1, 1, "valid", 1),
    ([1], (17, 3, 2), 3, (5, 3), (3, 1), "valid", 1),
]


@pytest.mark.parametrize(
    ("batch", "image", "out", "kernel", "stride", "padding", "dilation"), CONVS
)
def test_conv2d(backend, batch, image, out, kernel, stride, padding, dilation):
    x = RNG.normal(size=(*batch, *image))

    def reference(x, params):
        y = torch_conv(nchw(x), params["c.w"], params["c.b"], as_pair(stride), padding,
                       as_pair(dilation))  # fmt: skip
        return nhwc(y, batch)

    y = compare(backend, lambda x: nn.conv2d(x, out, kernel, "c", stride, padding, dilation),
                reference, {"x": (x, len(batch))})  # fmt: skip
    kh, kw = as_pair(kernel)
    assert y.params["c.w"].shape.input == [kh, kw, image[2]]
    assert y.params["c.w"].shape.output == [out]
    assert y.params["c.b"].shape.output == [out]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 3)),
    out=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["valid", "same"]),
)
def test_conv2d_geometries(image, out, kernel, stride, dilation, padding):
    spans = [dilation * (k - 1) + 1 for k in kernel]
    if padding == "valid" and (spans[0] > image[0] or spans[1] > image[1]):
        x = oc.term("x", batch_dims=[2], output_dims=list(image))
        with pytest.raises(ShapeError):
            nn.conv2d(x, out, kernel, "c", stride, padding, dilation)
        return
    test_conv2d("c", [2], image, out, kernel, stride, padding, dilation)


def test_conv2d_initialisation_is_pytorchs():
    """Weight and bias uniform in +-1/sqrt(kh kw in), as nn.Conv2d (kaiming_uniform, a=sqrt 5)."""
    oc.set_seed(4)
    x = oc.term("x", batch_dims=[2], output_dims=[12, 12, 7])
    x.set_value(np.zeros((2, 12, 12, 7)))
    y = nn.conv2d(x, 40, (3, 5), "c")
    oc.Context("c").forward(y)
    bound = 1 / math.sqrt(3 * 5 * 7)
    for name in ("c.w", "c.b"):
        values = y.params[name].value
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound, name
    np.testing.assert_allclose(y.params["c.w"].value.std(), bound / math.sqrt(3), rtol=0.05)


# ---- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "size", "stride"),
    [((7, 6, 3), 2, None), ((7, 6, 3), 3, 2), ((5, 5, 1), 2, 1), ((9, 4, 2), (3, 2), (2, 1))],
)
@pytest.mark.parametrize("which", ["max", "avg"])
def test_pool2d(backend, image, size, stride, which):
    # Distinct values, so that each window's max is unique (PyTorch picks one of equal maxima).
    x = RNG.permutation(2 * math.prod(image)).reshape(2, *image) / 7.0
    block = {"max": nn.max_pool2d, "avg": nn.avg_pool2d}[which]
    torch_pool = {"max": F.max_pool2d, "avg": F.avg_pool2d}[which]

    def reference(x, params):
        return nhwc(torch_pool(nchw(x), size, stride), [2])

    compare(backend, lambda x: block(x, size, stride), reference, {"x": (x, 1)})


# ---- LeNet ---------------------------------------------------------------------------------------


def torch_lenet(x, params, padding):
    h = x
    for i in (1, 2):
        pad = 2 if padding == "same" else 0
        w = params[f"net.conv{i}.w"].permute(0, 3, 1, 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, w, params[f"net.conv{i}.b"], padding=pad)), 2)
    h = h.movedim(1, -1).flatten(1)  # our h, w, c order
    for name in ("fc1", "fc2"):
        w = params[f"net.{name}.w"]
        h = F.relu(F.linear(h, w.reshape(w.shape[0], -1), params[f"net.{name}.b"]))
    return F.linear(h, params["net.logits.w"], params["net.logits.b"])


@pytest.mark.parametrize(("image", "padding"), [((8, 8, 1), "same"), ((20, 17, 3), "valid")])
def test_lenet(backend, image, padding):
    x = RNG.normal(size=(3, *image))
    y = compare(
        backend,
        lambda x: nn.lenet(x, "net", 7, padding=padding),
        lambda x, params: torch_lenet(nchw(x), params, padding),
        {"x": (x, 1)},
    )
    names = sorted({label.rsplit(".", 1)[0] for label in y.params if label != "x"})
    assert names == ["net.conv1", "net.conv2", "net.fc1", "net.fc2", "net.logits"]
    assert y.shape.output == [7]


# ---- bad input -----------------------------------------------------------------------------------


def test_bad_arguments():
    x = oc.term("x", batch_dims=[2], output_dims=[8, 8, 1])
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        nn.conv2d(x, 0, 3, "c")
    with pytest.raises(ValueError, match="kernel"):
        nn.conv2d(x, 4, (3, 3, 3), "c")
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        nn.conv2d(x, 4, 3, "c", padding="full")
    with pytest.raises(ValueError, match="stride"):
        nn.max_pool2d(x, 2, 0)
    flat = oc.term("flat", batch_dims=[2], output_dims=[64])
    with pytest.raises(ShapeError, match="at least 3 output axes"):
        nn.conv2d(flat, 4, 3, "c")
    with pytest.raises(ShapeError, match="at least 3 output axes"):
        nn.avg_pool2d(flat, 2)
    with pytest.raises(ShapeError, match="output dims of 'unknown' must be known"):
        nn.conv2d(oc.term("unknown"), 4, 3, "c")


def test_a_kernel_larger_than_the_image_is_a_shape_error():
    x = oc.term("x", batch_dims=[1], output_dims=[3, 3, 2])
    with pytest.raises(ShapeError, match="spans"):
        nn.conv2d(x, 4, 5, "c")

"""The row-fused CUDA kernels (arrayjit.schedule.gpu_rows) through ocannl_py's nn on a CUDA
context: softmax, log-softmax, layer and RMS norm, cross-entropy and attention, values and the
gradients of the input and every parameter against PyTorch (float64), for each form of the
kernel: a team of 4 to 32 lanes or the whole block per row, the register form and the strided
one (rows over two axes), fewer rows than a block has teams, short rows whose last chunk one lane
holds. They run on the kernel emulator (wherever g++ is) and on a GPU where one is usable
(`ARRAYJIT_CUDA_TEST_RUNNERS=gpu` keeps only the GPU)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from torch_reference import compare_routine, torch

import ocannl_py as oc
from arrayjit.runtime.runtime import cuda_usable
from ocannl_py import Context, nn

sys.path.insert(0, str(Path(__file__).parent.parent / "arrayjit"))
from cuda_runners import RUNNERS  # noqa: E402

F = torch.nn.functional


@pytest.fixture(params=RUNNERS)
def context(request) -> Context:
    """A CUDA context: on a GPU, or on the kernel emulator."""
    if request.param == "gpu":
        if not cuda_usable():
            pytest.skip("CUDA backend: no usable NVIDIA GPU, driver or cuda-python here")
        return Context("cuda")
    if shutil.which("g++") is None:
        pytest.skip("CUDA emulator: no C++ compiler (g++) here")
    from cuda_emulator import emulated_runtime

    ctx = Context("c")
    ctx.runtime = emulated_runtime()
    return ctx


def check(ctx: Context, build, reference, inputs: dict, rtol: float = 1e-4) -> list:
    """`build(**leaves)`'s value and the gradients of `sum(y * W)` (random W) w.r.t. the inputs
    and the block's parameters against `reference(**inputs, params=...)` in float64
    (torch_reference.compare); the kernel plans of the gradient routine."""
    _, routine = compare_routine(ctx, build, reference, inputs, rtol=rtol)
    return routine.executable.compiled.plans


def row_plans(plans: list) -> list:
    rows = [p.rows for p in plans if p.rows is not None]
    assert rows, "no row-fused kernel in the routine"
    return rows


def team_for(length: int) -> int:
    """The team gpu_rows gives a row of `length` values."""
    return (
        256 if length > 1024 else min(32, max(4, 1 << max(0, (-(-length // 4) - 1).bit_length())))
    )


def build_and_reference(kind: str, features: list[int]):
    """The nn block of `kind` over output axes `features`, and PyTorch's over the same axes."""
    axes = tuple(range(-len(features), 0))

    def flat(x):
        return x.reshape(*x.shape[: x.dim() - len(features)], -1)

    if kind == "softmax":
        return nn.softmax, lambda x, params: F.softmax(flat(x), -1).reshape(x.shape)
    if kind == "log_softmax":
        return nn.log_softmax, lambda x, params: F.log_softmax(flat(x), -1).reshape(x.shape)
    if kind == "layer_norm":
        return (
            lambda x: nn.layer_norm(x, "ln"),
            lambda x, params: F.layer_norm(x, features, params["ln.w"], params["ln.b"], 1e-5),
        )
    assert kind == "rms_norm" and len(axes) >= 1
    return (
        lambda x: nn.rms_norm(x, "rn"),
        lambda x, params: F.rms_norm(x, features, params["rn.w"], 1e-6),
    )


KINDS = ["softmax", "log_softmax", "layer_norm", "rms_norm"]
#: (rows, row length): lengths 1 to 4096 (team of 4, 8, 16, 32 lanes, or the block), rows fewer
#: than a block's teams (1, 3), and more (17 rows of 33: the warp holds one team).
SIZES = [(3, 1), (1, 3), (3, 5), (17, 17), (3, 31), (1, 32), (17, 33), (3, 1000), (1, 4096)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rows", "length"), SIZES)
def test_rows_match_torch(context, kind, rows, length):
    x = np.random.default_rng(rows * 7 + length).normal(scale=2.0, size=(rows, length)) + 1.0
    build, reference = build_and_reference(kind, [length])
    plans = row_plans(check(context, build, reference, {"x": (x, 1)}))
    assert any(p.team == team_for(length) for p in plans)
    if length > 3:  # the input is read by several stages: held in registers
        assert any(p.per_thread for p in plans)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rows", "features"), [(3, [2, 3]), (17, [3, 5]), (1, [5, 17])])
def test_rows_over_two_axes_take_the_strided_form(context, kind, rows, features):
    x = np.random.default_rng(rows).normal(scale=2.0, size=(rows, *features))
    build, reference = build_and_reference(kind, features)
    plans = row_plans(check(context, build, reference, {"x": (x, 1)}))
    assert all(p.per_thread == 0 for p in plans)


@pytest.mark.parametrize(("rows", "classes"), [(3, 5), (17, 17), (1, 33), (3, 1000), (3, 4096)])
def test_cross_entropy_matches_torch(context, rows, classes):
    rng = np.random.default_rng(classes)
    logits = rng.normal(scale=2.0, size=(rows, classes))
    targets = np.eye(classes)[rng.integers(0, classes, size=rows)]
    t = oc.term("targets", batch_dims=[rows], input_dims=[], output_dims=[classes])
    t.set_value(targets)

    def reference(logits, params):
        return F.cross_entropy(logits, torch.tensor(targets))

    build = lambda logits: nn.cross_entropy(logits, t)  # noqa: E731
    row_plans(check(context, build, reference, {"logits": (logits, 1)}))


def heads_first(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(-2, -3)


@pytest.mark.parametrize(
    ("batch", "s", "t", "h", "d", "causal"),
    [(3, 5, 5, 2, 4, True), (1, 17, 17, 1, 3, True), (2, 3, 33, 2, 4, False)],
)
def test_attention_matches_sdpa(context, batch, s, t, h, d, causal):
    rng = np.random.default_rng(s * t)
    inputs = {
        "q": (rng.normal(size=(batch, s, h, d)), 2),
        "k": (rng.normal(size=(batch, t, h, d)), 2),
        "v": (rng.normal(size=(batch, t, h, d)), 2),
    }

    def reference(q, k, v, params):
        out = F.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v), is_causal=causal
        )
        return heads_first(out)

    build = lambda q, k, v: nn.attention(q, k, v, causal=causal)  # noqa: E731
    row_plans(check(context, build, reference, inputs))

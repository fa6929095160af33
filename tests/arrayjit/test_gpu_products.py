"""Products written through ocannl_py take the CUDA backend's tiled matmul kernel once their loops
are merged (`arrayjit.passes.loop_merging`) and the hoisted locals of a fused operand are
substituted into it (`gpu_matmul.matmul_shape`): a `b t c; c -> h d => b t h d` projection, a
layer norm feeding a linear layer, and the products of a small GPT-2 (planned, no GPU needed).
Values against numpy on the C backend and on CUDA (emulator, and a GPU where one is usable)."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_runners import RUNNERS, runner

import ocannl_py as oc
from arrayjit import loop_ir as ir
from arrayjit.dtypes import float32
from arrayjit.indexing import Fixed, Iterator
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule.gpu_kernels import plan_kernels
from arrayjit.schedule.gpu_matmul import matmul_shape
from arrayjit.schedule.kernel_plan import KernelPlan
from arrayjit.tnode import TNode
from ocannl_py import Context, fusion, nn, train
from ocannl_py.models import gpt2

BACKENDS = ["c", *(f"cuda-{kind}" for kind in RUNNERS)]


def lowered(code, ctx: Context):
    """What a routine of `ctx` compiles for `code`: intermediates fused, parameters set."""
    code = code.with_constants()
    fused = fusion.fused(code, ctx.read_elsewhere)
    out = code.lower(fusion.private_values(code, fused))
    ctx.initialize(code.tensors())
    return out


def compute(y: oc.Tensor, backend: str):
    """y's value computed by `backend`, and the CUDA kernel plans (None on C)."""
    if backend == "c":
        Context("c").forward(y)
        return y.value, None
    ran = runner(backend.removeprefix("cuda-"))(lowered(y.forward, Context("c")))
    return y.value_node.host(), ran.plans


def term(label, rng, batch, inputs, outputs):
    t = oc.term(label, batch_dims=batch, input_dims=inputs, output_dims=outputs)
    values = rng.integers(-3, 4, (*batch, *outputs, *inputs)).astype(np.float32)
    t.set_value(values)
    return t, values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "t", "c", "h", "d"), [(3, 17, 5, 3, 17), (1, 40, 3, 1, 33)])
def test_projection_to_heads(backend, b, t, c, h, d):
    """`w @ x` with x over (b, t | c) and w (c -> h, d): one 2-D product of (b t) x (h d)."""
    rng = np.random.default_rng(b * t + c)
    x, xv = term("x", rng, [b, t], [], [c])
    w, wv = term("w", rng, [], [c], [h, d])
    value, plans = compute(w @ x, backend)
    np.testing.assert_array_equal(value, np.einsum("btc,hdc->bthd", xv, wv))
    if plans is not None:
        assert [p.matmul.extents for p in plans if p.matmul] == [(1, b * t, h * d, c)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("b", "t", "c", "o"), [(3, 17, 17, 33), (2, 20, 1, 40)])
def test_layer_norm_then_linear(backend, b, t, c, o):
    """The layer norm is fused into the product's operand, reading the row's mean and scale:
    still the tiled kernel, the normalization computed as the tiles are filled."""
    rng = np.random.default_rng(c + o)
    x, xv = term("x", rng, [b, t], [], [c])
    xv = xv + rng.normal(size=xv.shape).astype(np.float32)
    x.set_value(xv)
    gain = oc.param("ln.w", 0.0, batch_dims=[], input_dims=[], output_dims=[c])
    gv = rng.normal(size=c).astype(np.float32)
    gain.set_value(gv)
    w, wv = term("w", rng, [], [c], [o])
    value, plans = compute(w @ nn.layer_norm(x, "ln", params={"ln.w": gain}), backend)
    x64 = xv.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    normed = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * gv
    np.testing.assert_allclose(value, np.einsum("btc,oc->bto", normed, wv), rtol=2e-5, atol=2e-5)
    if plans is not None and c > 1:
        assert [p.matmul.extents for p in plans if p.matmul] == [(1, b * t, o, c)]


# ---- the recognizer: locals of a side, rows and columns among the grid loops ------------------


def cell(grid, locals_, x, y, out, index):
    """The plan of `(locals); acc := 0; for k < 8: acc += x * y; out[index] := acc`."""
    acc = ir.Local("acc", float32)
    product = ir.Apply("add", (acc, ir.Apply("mul", (x, y), float32)), float32)
    body = [
        *(ir.DeclLocal(name, float32, init) for name, init in locals_),
        ir.DeclLocal("acc", float32, ir.Const(0.0, float32)),
        ir.For(Kt, 8, ir.SetLocal("acc", product)),
        ir.Set(out, index, acc),
    ]
    return KernelPlan([ir.For(it, n, ir.Block()) for it, n in grid], body)


It, Jt, Kt, Ht = (Iterator(name=n) for n in "ijkh")  # row, column, reduction, heads


def test_locals_of_the_row_are_substituted_into_x():
    x, y, mean, out = (
        TNode("x", (64, 8)),
        TNode("y", (8, 48)),
        TNode("mean", (64,)),
        TNode("out", (64, 48)),
    )
    centred = ir.Apply("sub", (ir.Get(x, (It, Kt)), ir.Local("m", float32)), float32)
    plan = cell([(It, 64), (Jt, 48)], [("h", ir.Get(mean, (It,))), ("m", ir.Local("h", float32))],
                centred, ir.Get(y, (Kt, Jt)), out, (It, Jt))  # fmt: skip
    shape = matmul_shape(plan)
    assert shape is not None and (shape.row.iterator, shape.col.iterator) == (It, Jt)
    assert shape.x == ir.Apply("sub", (ir.Get(x, (It, Kt)), ir.Get(mean, (It,))), float32)


@pytest.mark.parametrize("bad", ["column", "output"])
def test_a_local_of_the_other_side_or_of_the_output_is_refused(bad):
    x, y, out = TNode("x", (64, 8)), TNode("y", (8, 48)), TNode("out", (64, 48))
    if bad == "column":
        local = ir.Get(TNode("scale", (48,)), (Jt,))
    else:
        local = ir.Get(out, (It, Fixed(0)))
    scaled = ir.Apply("mul", (ir.Get(x, (It, Kt)), ir.Local("s", float32)), float32)
    plan = cell([(It, 64), (Jt, 48)], [("s", local)], scaled, ir.Get(y, (Kt, Jt)), out, (It, Jt))
    assert matmul_shape(plan) is None


def test_rows_and_columns_are_the_grid_loops_one_operand_reads():
    """`out[i, h, j] = sum_k p[h, i, k] * v[k, h, j]`: heads `h` are a batch axis between rows
    and columns."""
    p, v, out = TNode("p", (4, 40, 8)), TNode("v", (8, 4, 32)), TNode("out", (40, 4, 32))
    plan = cell([(It, 40), (Ht, 4), (Jt, 32)], [], ir.Get(p, (Ht, It, Kt)), ir.Get(v, (Kt, Ht, Jt)),
                out, (It, Ht, Jt))  # fmt: skip
    shape = matmul_shape(plan)
    assert shape is not None
    assert (shape.row.iterator, shape.col.iterator) == (It, Jt)
    assert [b.iterator for b in shape.batch] == [Ht]


# ---- a small GPT-2, planned ----------------------------------------------------------------

BATCH, SEQ, EMBD, HEADS, VOCAB = 2, 40, 64, 2, 97
ROWS = BATCH * SEQ


def gpt2_loss(seed: int = 0):
    """A one-layer GPT-2's logits and cross-entropy loss on random tokens."""
    config = gpt2.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=EMBD, n_layer=1,
                             n_head=HEADS, n_inner=4 * EMBD)  # fmt: skip
    rows = {"batch_dims": [BATCH, SEQ], "input_dims": []}
    ids = oc.term("ids", output_dims=[], dtype="int32", **rows)
    positions = oc.term("positions", output_dims=[], dtype="int32", **rows)
    logits = gpt2.logits(ids, positions, config)
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ + 1))
    ids.set_value(tokens[:, :-1].astype(np.int32))
    positions.set_value(np.broadcast_to(np.arange(SEQ, dtype=np.int32), (BATCH, SEQ)).copy())
    targets = oc.term("targets", output_dims=[VOCAB], **rows)
    one_hot = np.zeros((BATCH, SEQ, VOCAB), np.float32)
    np.put_along_axis(one_hot, tokens[:, 1:, None], 1.0, axis=-1)
    targets.set_value(one_hot)
    return logits, nn.cross_entropy(logits, targets)


def gpt2_plans(step: bool):
    """The CUDA kernel plans of a one-layer GPT-2's forward (or training step)."""
    logits, loss = gpt2_loss()
    code = train.grad_update(loss) + train.adam_update(loss, 1e-4) if step else logits.forward
    stmt = compile_to_ir(lowered(code, Context("c")), reductions_innermost=True)
    return plan_kernels(stmt)


def products(plans) -> list[tuple[int, int, int, int]]:
    return sorted(p.matmul.extents for p in plans if p.matmul is not None)


def test_gpt2_forward_plans_its_projections_and_head_as_matmuls():
    found = products(gpt2_plans(step=False))
    projections = [
        *[(1, ROWS, EMBD, EMBD)] * 4,  # q, k, v; the output projection
        (1, ROWS, 4 * EMBD, EMBD),  # MLP fc, the layer norm fused into its operand
        (1, ROWS, EMBD, 4 * EMBD),  # MLP proj
        (1, ROWS, VOCAB, EMBD),  # the tied head, the final layer norm fused
    ]
    for shape in projections:
        assert found.count(shape) >= projections.count(shape), (shape, found)
    # Attention: scores and their mix with the values, batched over (batch, heads).
    head_dim = EMBD // HEADS
    assert (BATCH * HEADS, SEQ, SEQ, head_dim) in found
    assert (BATCH * HEADS, SEQ, head_dim, SEQ) in found


def test_gpt2_training_step_plans_its_weight_gradients_as_matmuls():
    found = products(gpt2_plans(step=True))
    gradients = [
        (1, EMBD, EMBD, ROWS),  # q, k, v, o: dW[o, c] = sum over (b, t)
        (1, 4 * EMBD, EMBD, ROWS),  # fc
        (1, EMBD, 4 * EMBD, ROWS),  # proj
    ]
    for shape in gradients:
        assert shape in found, (shape, found)
    assert any(e[1:] in ((EMBD, VOCAB, ROWS), (VOCAB, EMBD, ROWS)) for e in found), found


@pytest.mark.parametrize("kind", RUNNERS)
def test_gpt2_gradients_on_cuda_equal_the_c_backends(kind):
    """Every kernel of a one-layer GPT-2's forward and backward, products tiled, against the C
    backend from the same parameters (gradients poisoned first: each must be written)."""
    run = runner(kind)
    _, loss = gpt2_loss()
    ctx = Context("c")
    code = train.grad_update(loss)
    cuda_code = lowered(code, ctx)
    start = {t: t.host().copy() for t in ir.tnodes_in(compile_to_ir(cuda_code, True))}
    ctx.compile(code).run()
    params = [t for t in code.tensors() if t.is_param]
    expected = {p.label: p.grad_node.host().copy() for p in params}
    for t, values in start.items():
        t.set_host(values)
    for p in params:
        p.grad_node.set_host(np.full(p.grad_node.dims, np.nan, np.float32))
    ran = run(cuda_code)
    assert sum(p.matmul is not None for p in ran.plans) >= 20
    for p in params:
        np.testing.assert_allclose(
            p.grad_node.host(), expected[p.label], rtol=1e-4, atol=1e-6, err_msg=p.label
        )

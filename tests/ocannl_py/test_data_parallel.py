"""Data-parallel training (train.data_parallel): the bucketing and ordering logic, and equal
results: N replicas on shards (C backend, host all-reduce) train an MLP exactly as one ordinary
routine on the whole batch, to float32 rounding, over 20 steps; the same through `fit`. The
NCCL run on two GPUs is skipped without them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocannl_py as oc
from arrayjit.runtime import collectives
from arrayjit.runtime.index_checks import IndexOutOfRange
from ocannl_py import Context, train
from ocannl_py.code import Code
from ocannl_py.train.autodiff import grad_update
from ocannl_py.train.data_parallel import backward_segments, grad_ready, plan_buckets

FEATURES, HIDDEN, OUTPUTS = 3, 8, 2


def mlp(size: int):
    """A two-hidden-layer MLP, its parameters created here (fresh for every replica), with the
    mean squared error over a batch of `size`."""
    x = oc.term("x", batch_dims=[size], input_dims=[], output_dims=[FEATURES])
    y = oc.term("y", batch_dims=[size], input_dims=[], output_dims=[OUTPUTS])
    w1 = oc.param("w1", output_dims=[HIDDEN], input_dims=[FEATURES])
    b1 = oc.param("b1", output_dims=[HIDDEN], batch_dims=[])
    w2 = oc.param("w2", output_dims=[HIDDEN], input_dims=[HIDDEN])
    b2 = oc.param("b2", output_dims=[HIDDEN], batch_dims=[])
    w3 = oc.param("w3", output_dims=[OUTPUTS], input_dims=[HIDDEN])
    h = (w2 @ (w1 @ x + b1).relu() + b2).relu()
    diff = w3 @ h - y
    return oc.einsum1("...|... => 0", diff * diff) / float(size), {"x": x, "y": y}


def momentum(loss):
    return train.sgd_update(loss, 0.05, momentum=0.9)


def data(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, FEATURES)).astype(np.float32),
        "y": rng.normal(size=(n, OUTPUTS)).astype(np.float32),
    }


def reference(batch: int, initial: list[np.ndarray], update=momentum):
    """The ordinary single-routine training step on the whole batch, from `initial`."""
    loss, inputs = mlp(batch)
    step = Context("c").compile(grad_update(loss) + update(loss))
    for p, value in zip(loss.param_list(), initial, strict=True):
        p.set_value(value)
    return loss, inputs, step


# ---- bucketing and ordering -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 1000), max_size=30), st.one_of(st.none(), st.integers(1, 3000)))
def test_plan_buckets(sizes, bucket_bytes):
    buckets = plan_buckets(sizes, bucket_bytes)
    assert [k for b in buckets for k in b] == list(range(len(sizes)))
    if bucket_bytes is None:
        assert len(buckets) == (1 if sizes else 0)
        return
    for b in buckets[:-1]:
        held = sum(sizes[k] for k in b)
        assert held >= bucket_bytes and held - sizes[b[-1]] < bucket_bytes
    if buckets:
        assert sum(sizes[k] for k in buckets[-1][:-1]) < bucket_bytes


def test_plan_buckets_rejects_bad_size():
    with pytest.raises(ValueError, match="bucket_bytes must be positive"):
        plan_buckets([4], 0)


def test_gradients_ready_in_backward_order():
    loss, _ = mlp(3)
    labels = [p.label for p, _ in grad_ready(loss)]
    # The last layer's gradients are complete first, the first layer's last.
    assert labels.index("w3") < labels.index("w2") < labels.index("w1")
    assert labels.index("b2") < labels.index("b1")


@pytest.mark.parametrize("bucket_bytes", [None, 1, 40, 300, 10**6])
def test_segments_are_grad_update_split(bucket_bytes):
    loss, _ = mlp(3)
    segments = backward_segments(loss, bucket_bytes)
    joined = Code([s for code, _ in segments for s in code.statements])
    whole = grad_update(loss)
    assert len(joined.statements) == len(whole.statements) and str(joined) == str(whole)
    assert sorted(p.label for _, ps in segments for p in ps) == sorted(loss.params)
    if bucket_bytes == 1:
        assert len(segments) == len(loss.param_list())
    # Once a bucket's routine has run, no later routine writes its gradients.
    for n, (_, params) in enumerate(segments):
        written_later = {s.lhs.tnode for code, _ in segments[n + 1 :] for s in code.statements}
        for p in params:
            assert p.grad_node not in written_later, p.label


# ---- equal results ----------------------------------------------------------------------


@pytest.mark.parametrize(("replicas", "bucket_bytes"), [(2, None), (3, 100), (4, 1), (1, 100)])
def test_replicas_train_as_one_routine_on_the_whole_batch(replicas, bucket_bytes):
    batch, steps = 12, 20
    arrays = data(batch * steps)
    oc.set_seed(5)
    dp = train.data_parallel(mlp, momentum, batch_size=batch, replicas=replicas, backend="c",
                             bucket_bytes=bucket_bytes)  # fmt: skip
    assert len(dp.replicas) == replicas
    initial = [p.value for p in dp.params]
    for replica in dp.replicas[1:]:
        for p, value in zip(replica.params, initial, strict=True):
            np.testing.assert_array_equal(p.value, value)
    loss, inputs, step = reference(batch, initial)
    for k in range(steps):
        rows = slice(k * batch, (k + 1) * batch)
        got = dp.step({name: a[rows] for name, a in arrays.items()})
        for name, a in arrays.items():
            inputs[name].set_value(a[rows])
        step.run()
        np.testing.assert_allclose(got, loss.item(), rtol=2e-5, atol=1e-6)
    for p_ref, *copies in zip(loss.param_list(), *(r.params for r in dp.replicas), strict=True):
        for p in copies:
            np.testing.assert_allclose(p.value, p_ref.value, rtol=2e-5, atol=2e-6)
        # Identical, not merely close, across replicas.
        for p in copies[1:]:
            np.testing.assert_array_equal(p.value, copies[0].value)


def test_fit_takes_the_data_parallel_step():
    batch, n, epochs = 6, 30, 2
    arrays = data(n, seed=11)
    dp = train.data_parallel(mlp, momentum, batch_size=batch, replicas=3, backend="c")
    loss, inputs, step = reference(batch, [p.value for p in dp.params])
    losses = train.fit(dp, arrays, batch_size=batch, epochs=epochs, seed=4, progress=False)
    rng, expected = np.random.default_rng(4), []
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            for name, a in arrays.items():
                inputs[name].set_value(a[order[start : start + batch]])
            step.run()
            expected.append(loss.item())
    np.testing.assert_allclose(losses, expected, rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="built for batches of 6"):
        train.fit(dp, arrays, batch_size=5, drop_last=True, progress=False)
    with pytest.raises(ValueError, match="drop_last=True"):
        train.fit(dp, data(31), batch_size=batch, progress=False)


# ---- bad input and the fallback ---------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of the 2 replicas, got 5"):
        train.data_parallel(mlp, momentum, batch_size=5, replicas=2, backend="c")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"replicas must be a positive int, got {bad!r}"):
            train.data_parallel(mlp, momentum, batch_size=4, replicas=bad, backend="c")
    dp = train.data_parallel(mlp, momentum, batch_size=4, replicas=2, backend="c")
    with pytest.raises(ValueError, match="input 'x' has 3 examples"):
        dp.step(data(3))
    with pytest.raises(ValueError, match=r"inputs \['x', 'y'\] and the data's names \['x'\]"):
        dp.step({"x": data(4)["x"]})
    sizes = iter([HIDDEN, HIDDEN + 1])

    def changing(size):
        global HIDDEN
        saved, HIDDEN = HIDDEN, next(sizes)
        try:
            return mlp(size)
        finally:
            HIDDEN = saved

    with pytest.raises(ValueError, match="replica 1 built a different model"):
        train.data_parallel(changing, momentum, batch_size=4, replicas=2, backend="c")


@pytest.mark.skipif(collectives.gpu_count() > 0, reason="this machine has a GPU")
def test_no_gpu_falls_back_to_one_replica(caplog):
    with caplog.at_level(logging.WARNING, logger="ocannl_py"):
        dp = train.data_parallel(mlp, momentum, batch_size=4)
    assert len(dp.replicas) == 1 and dp.replicas[0].context.name == "c"
    assert "no usable GPU: training runs as one replica" in caplog.text
    assert np.isfinite(dp.step(data(4)))


# ---- GPUs -------------------------------------------------------------------------------


@pytest.mark.skipif(collectives.gpu_count() < 2, reason="needs two CUDA GPUs (NCCL)")
@pytest.mark.parametrize("bucket_bytes", [None, 100])
def test_two_gpus_train_as_one_routine_on_the_whole_batch(bucket_bytes):
    batch, steps = 12, 20
    arrays = data(batch * steps)
    dp = train.data_parallel(mlp, momentum, batch_size=batch, replicas=2, backend="cuda",
                             bucket_bytes=bucket_bytes)  # fmt: skip
    assert len(dp.replicas) == 2 and isinstance(dp.collective, collectives.NcclMean)
    loss, inputs, step = reference(batch, [p.value for p in dp.params])
    for k in range(steps):
        rows = slice(k * batch, (k + 1) * batch)
        got = dp.step({name: a[rows] for name, a in arrays.items()})
        for name, a in arrays.items():
            inputs[name].set_value(a[rows])
        step.run()
        np.testing.assert_allclose(got, loss.item(), rtol=1e-4, atol=1e-5)
    for p_ref, p0, p1 in zip(loss.param_list(), dp.replicas[0].params, dp.replicas[1].params,
                             strict=True):  # fmt: skip
        dp.replicas[0].context.backend.device.set_current()
        v0 = p0.value
        dp.replicas[1].context.backend.device.set_current()
        v1 = p1.value
        np.testing.assert_allclose(v0, p_ref.value, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(v0, v1)


def small_gpt2(size: int):
    """A small GPT-2 (models.gpt2.logits: embeddings, one block, ln_f, the tied head) and the
    cross-entropy of the next tokens, over sequences of 5 tokens: bench/data_parallel.py's model."""
    from ocannl_py import nn
    from ocannl_py.models import gpt2

    config = gpt2.GPT2Config(vocab_size=11, n_positions=5, n_embd=16, n_layer=1, n_head=2,
                             n_inner=64)  # fmt: skip
    rows = {"batch_dims": [size, 5], "input_dims": []}
    ids = oc.term("ids", output_dims=[], dtype="int32", **rows)
    positions = oc.term("positions", output_dims=[], dtype="int32", **rows)
    targets = oc.term("targets", output_dims=[11], **rows)
    loss = nn.cross_entropy(gpt2.logits(ids, positions, config), targets)
    return loss, {"ids": ids, "positions": positions, "targets": targets}


def token_batch(rng, batch: int) -> dict[str, np.ndarray]:
    tokens = rng.integers(0, 11, (batch, 6))
    return {
        "ids": tokens[:, :-1].astype(np.int32),
        "positions": np.broadcast_to(np.arange(5, dtype=np.int32), (batch, 5)),
        "targets": np.eye(11, dtype=np.float32)[tokens[:, 1:]],
    }


C_AND_TWO_GPUS = [
    "c",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(collectives.gpu_count() < 2, reason="needs two CUDA GPUs (NCCL)"),
    ),
]


@pytest.mark.parametrize("backend", C_AND_TWO_GPUS)
def test_small_gpt2_replicas_train_as_one_routine(backend):
    # On GPUs: NCCL buckets, and the embedding lookups' index checks deferred to the next step.
    batch, steps = 4, 20
    rng = np.random.default_rng(2)
    dp = train.data_parallel(small_gpt2, momentum, batch_size=batch, replicas=2, backend=backend,
                             bucket_bytes=2000)  # fmt: skip
    assert len(dp.replicas[0].backward) > 2
    loss, inputs = small_gpt2(batch)
    dp.activate(dp.replicas[0])
    initial = [p0.value for p0 in dp.params]
    step = Context("c").compile(grad_update(loss) + momentum(loss))
    for p, value in zip(loss.param_list(), initial, strict=True):
        p.set_value(value)
    for _ in range(steps):
        arrays = token_batch(rng, batch)
        got = dp.step(arrays)
        for name, array in arrays.items():
            inputs[name].set_value(array)
        step.run()
        np.testing.assert_allclose(got, loss.item(), rtol=2e-5)
    for r, replica in enumerate(dp.replicas):
        dp.activate(replica)
        for p_ref, p in zip(loss.param_list(), replica.params, strict=True):
            np.testing.assert_allclose(
                p.value, p_ref.value, rtol=1e-4, atol=2e-6, err_msg=f"replica {r}: {p.label}"
            )


@pytest.mark.parametrize("backend", C_AND_TWO_GPUS)
def test_a_bad_token_id_of_a_replica_is_reported(backend):
    dp = train.data_parallel(small_gpt2, momentum, batch_size=4, replicas=2, backend=backend)
    arrays = token_batch(np.random.default_rng(0), 4)
    arrays["ids"][3, 1] = 11  # replica 1's shard, outside the vocabulary of 11
    with pytest.raises(IndexOutOfRange, match="index 11 read from"):
        dp.step(arrays)


def test_each_bucket_reduced_once_its_routines_ran_and_before_the_next():
    """The order of work in a step: bucket n's routine on every replica, then its all-reduce
    (over exactly bucket n's gradients), then bucket n + 1; the updates after the last."""
    dp = train.data_parallel(mlp, momentum, batch_size=4, replicas=2, backend="c", bucket_bytes=1)
    events: list[tuple] = []

    class Recording(collectives.HostMean):
        def all_reduce(self, buffers, streams=None):
            events.append(("reduce", tuple(tuple(t.label for t in b) for b in buffers)))
            return super().all_reduce(buffers, streams)

    dp.collective = Recording(2)

    def logged(routine, event: tuple) -> None:
        run = routine.run
        routine.run = lambda: (events.append(event), run())

    for r, replica in enumerate(dp.replicas):
        for n, routine in enumerate(replica.backward):
            logged(routine, ("backward", n, r))
        logged(replica.update, ("update", r))
    dp.step(data(4))
    buckets = dp.replicas[0].buckets
    assert len(buckets) == 5  # one parameter a bucket
    expected: list[tuple] = []
    for n, bucket in enumerate(buckets):
        labels = tuple(t.label for t in bucket)
        assert labels == tuple(t.label for t in dp.replicas[1].buckets[n])
        expected += [("backward", n, 0), ("backward", n, 1), ("reduce", (labels, labels))]
    expected += [("update", 0), ("update", 1)]
    assert events == expected
    assert buckets[0][0].label == "w3.grad"  # the last layer's gradient is complete first

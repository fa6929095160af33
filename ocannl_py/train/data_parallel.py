"""Data-parallel training: the same training step on every GPU of the host (one process drives
them all), each replica on its shard of the batch, gradients averaged through NCCL before each
replica's optimizer update, so the parameters stay identical (docs/data_parallel.md).

A replica is the model built again in its own `Context` on its own GPU, over its own parameter
and gradient buffers; replica 0's initial parameters are copied to the others. The backward pass
is split into routines at bucket boundaries: the all-reduce of a bucket's gradients is queued on
a communication stream as soon as its routine is queued, and runs while the next one computes.
On the C backend (or for tests) the replicas run one after the other and the gradients are
averaged on the host (`arrayjit.runtime.collectives.HostMean`), with the same results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from arrayjit.runtime import collectives
from arrayjit.runtime.runtime import cuda_usable
from ocannl_py.code import Code
from ocannl_py.context import Context
from ocannl_py.tensor import Tensor
from ocannl_py.train.autodiff import grad_update

log = logging.getLogger("ocannl_py")

#: `model(shard_size) -> (loss, inputs)`: builds a fresh model, parameters included, for
#: batches of `shard_size` examples; called once per replica. The loss must be a mean over the
#: batch, so that the mean of the shards' gradients is the gradient on the whole batch.
ReplicaModel = Callable[[int], tuple[Tensor, Mapping[str, Tensor]]]

#: Default bucket size: PyTorch DDP's 25 MiB.
BUCKET_BYTES = 25 * 2**20


def plan_buckets(sizes: Sequence[int], bucket_bytes: int | None) -> list[list[int]]:
    """Group gradients, given by their byte sizes in the order the backward pass completes
    them, into consecutive buckets: a bucket closes once it holds `bucket_bytes` (None: one
    bucket)."""
    if bucket_bytes is not None and bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be positive or None, got {bucket_bytes}")
    buckets: list[list[int]] = []
    current: list[int] = []
    held = 0
    for k, size in enumerate(sizes):
        current.append(k)
        held += size
        if bucket_bytes is not None and held >= bucket_bytes:
            buckets.append(current)
            current, held = [], 0
    if current:
        buckets.append(current)
    return buckets


def grad_ready(loss: Tensor) -> list[tuple[Tensor, int]]:
    """The parameters of `loss` in the order the backward pass completes their gradients, each
    with the position (in reverse topological order) of the last backward code adding to it."""
    order = list(reversed(loss.subgraph()))
    last: dict[int, int] = {}
    for position, t in enumerate(order):
        if t.backprop_code:
            for operand in t.operands:
                if operand.is_param:
                    last[operand.id] = position
    params = loss.param_list()
    ready = [(p, last.get(p.id, -1)) for p in params]
    return sorted(ready, key=lambda pair: pair[1])


def backward_segments(loss: Tensor, bucket_bytes: int | None) -> list[tuple[Code, list[Tensor]]]:
    """`grad_update(loss)` split into routines' code, each with the parameters whose gradients
    are complete once it has run (a bucket): forward, zeroing and the first backward part
    first, the rest of the backward pass in order."""
    ready = grad_ready(loss)
    sizes = [p.grad_node.size * p.grad_node.dtype.itemsize for p, _ in ready]
    buckets = plan_buckets(sizes, bucket_bytes)
    order = list(reversed(loss.subgraph()))
    full = grad_update(loss)
    head_length = len(full.statements) - sum(len(t.backprop_code.statements) for t in order)
    segments = []
    start = 0
    for n, bucket in enumerate(buckets):
        end = len(order) if n == len(buckets) - 1 else max(ready[k][1] for k in bucket) + 1
        code = Code(label=f"backward{n}_{loss.label}")
        if n == 0:
            code = code + Code(full.statements[:head_length])
        for t in order[start:end]:
            code = code + t.backprop_code
        segments.append((code, [ready[k][0] for k in bucket]))
        start = end
    return segments


class _Replica:
    """One replica: its context, model, backward routines (one per bucket) and update routine."""

    def __init__(self, context: Context, model: ReplicaModel, shard: int, update, buckets):
        built = model(shard)
        if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], Tensor)):
            raise TypeError(
                f"data_parallel: the model function must return (loss, inputs), got "
                f"{type(built).__name__}"
            )
        self.context = context
        self.loss, self.inputs = built
        self.params = self.loss.param_list()
        segments = backward_segments(self.loss, buckets)
        name = self.loss.label
        self.backward = [context.compile(c, f"dp_backward{n}_{name}") for n, (c, _) in enumerate(segments)]  # fmt: skip
        self.buckets = [[p.grad_node for p in params] for _, params in segments]
        self.bucket_labels = [[p.label for p in params] for _, params in segments]
        self.update = context.compile(update(self.loss), f"dp_update_{name}")


class DataParallel:
    """A data-parallel training step (`data_parallel`): `step(batch)` trains on one batch and
    returns its loss; `fit` takes it like a compiled routine."""

    def __init__(
        self,
        replicas: list[_Replica],
        collective: collectives.Collective,
        batch_size: int,
        comm_streams: list | None,
    ) -> None:
        self.replicas = replicas
        self.collective = collective
        self.batch_size = batch_size
        self.shard = batch_size // len(replicas)
        self.comm_streams = comm_streams
        first = replicas[0]
        self._on_gpus = first.context.name == "cuda"
        if self._on_gpus:
            # A run's index checks (embedding lookups) are read at the next step or at
            # `synchronize`: reading them at once would make the host wait for each GPU in turn.
            for replica in replicas:
                replica.context.runtime.defer_index_checks = True
        self.activate(first)
        for r, replica in enumerate(replicas[1:], 1):
            if replica.bucket_labels != first.bucket_labels or [p.value_node.dims for p in replica.params] != [p.value_node.dims for p in first.params]:  # fmt: skip
                raise ValueError(
                    f"data_parallel: replica {r} built a different model than replica 0 (its "
                    f"parameters: {[p.label for p in replica.params]}, replica 0's: "
                    f"{[p.label for p in first.params]}); the model function must build the same "
                    "model each time"
                )
            for p, p0 in zip(replica.params, first.params, strict=True):
                p.set_value(p0.value)

    def activate(self, replica: _Replica) -> None:
        """Make `replica`'s GPU current for this thread (before reading or setting its tensors;
        the step's own methods do it themselves)."""
        if self._on_gpus:
            replica.context.backend.device.set_current()

    @property
    def params(self) -> list[Tensor]:
        """Replica 0's parameters (every replica holds the same values after a step)."""
        return self.replicas[0].params

    @property
    def loss(self) -> Tensor:
        return self.replicas[0].loss

    def step(self, batch: Mapping[str, np.ndarray]) -> float:
        """Train on `batch` (input name -> array of `batch_size` examples along the first
        axis): replica r takes the r-th shard. Returns the loss on the whole batch."""
        arrays = {name: np.asarray(a) for name, a in batch.items()}
        for name, a in arrays.items():
            if len(a) != self.batch_size:
                raise ValueError(
                    f"DataParallel.step: input {name!r} has {len(a)} examples, the step takes "
                    f"batches of {self.batch_size}"
                )
        return self.run_indices(arrays, np.arange(self.batch_size))

    def run_indices(self, arrays: Mapping[str, np.ndarray], indices: np.ndarray) -> float:
        """Train on the examples `indices` of `arrays` (names -> arrays): each replica's shard
        goes straight from the arrays to its inputs, never through a whole-batch array."""
        for r, replica in enumerate(self.replicas):
            if set(arrays) != set(replica.inputs):
                raise ValueError(
                    f"data_parallel: the model's inputs {sorted(replica.inputs)} and the data's "
                    f"names {sorted(arrays)} differ"
                )
            rows = indices[r * self.shard : (r + 1) * self.shard]
            self.activate(replica)
            for name, a in arrays.items():
                replica.inputs[name].set_value(a[rows])
        self.run()
        losses = []
        for replica in self.replicas:
            self.activate(replica)
            replica.context.runtime.raise_index_errors()
            losses.append(replica.loss.item())
        return float(np.mean(losses))

    def run(self) -> None:
        """One step on the inputs as they are set (each replica's own `replicas[r].inputs`,
        e.g. data kept on its GPU): backward routines bucket by bucket, each bucket's
        all-reduce queued as soon as its routine is, then the updates. Asynchronous on GPUs."""
        waits = None
        for n in range(len(self.replicas[0].backward)):
            for replica in self.replicas:
                self.activate(replica)
                replica.backward[n].run()
            waits = self.collective.all_reduce(
                [replica.buckets[n] for replica in self.replicas], self.comm_streams
            )
        # The update waits for the last bucket's all-reduce, hence for all before it.
        for k, replica in enumerate(self.replicas):
            self.activate(replica)
            if waits is not None:
                replica.context.backend.stream.wait(waits[k])
            replica.update.run()

    def synchronize(self) -> None:
        """Wait until every replica's queued work is done."""
        for replica in self.replicas:
            self.activate(replica)
            replica.context.synchronize()

    def close(self) -> None:
        """Release the communicators (NCCL); the step cannot run after."""
        close = getattr(self.collective, "close", None)
        if close is not None:
            close()

    def fit_steps(self, arrays: Mapping, batch_size: int) -> _FitSteps:
        """The steps `train.fit` runs (batches of `batch_size`, this step's batch size)."""
        if batch_size != self.batch_size:
            raise ValueError(
                f"fit: batch_size={batch_size}, but the data-parallel step was built for batches "
                f"of {self.batch_size}"
            )
        for key in arrays:
            if not isinstance(key, str):
                raise TypeError(
                    f"fit: with a data-parallel step, `data` maps input names to arrays; got the "
                    f"key {key!r}"
                )
        return _FitSteps(self, arrays)

    def __repr__(self) -> str:
        return (
            f"<data-parallel step: {len(self.replicas)} replicas on "
            f"{self.replicas[0].context.name}, batch {self.batch_size}, "
            f"{len(self.replicas[0].backward)} buckets>"
        )


class _FitSteps:
    def __init__(self, step: DataParallel, arrays: Mapping) -> None:
        self.step, self.arrays = step, arrays

    def run(self, batch: np.ndarray) -> float:
        return self.step.run_indices(self.arrays, batch)


def _replica_count(backend: str | None, replicas: int | None) -> tuple[str, int]:
    if replicas is not None and (
        isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1
    ):
        raise ValueError(f"data_parallel: replicas must be a positive int, got {replicas!r}")
    if backend is None:
        backend = "cuda" if cuda_usable() else "c"
    if backend == "c":
        if replicas is None:
            log.warning(
                "data_parallel: no usable GPU: training runs as one replica on the C backend"
            )
            return backend, 1
        return backend, replicas
    available = collectives.gpu_count()
    if available == 0:
        return backend, replicas or 1  # Context("cuda") says why no GPU can be used
    if replicas is None:
        replicas = available
    if replicas > available:
        log.warning(
            "data_parallel: %d replicas asked for, but this host has %d GPU(s): using %d",
            replicas,
            available,
            available,
        )
        replicas = available
    if replicas == 1 and available == 1:
        log.warning("data_parallel: one GPU here: training runs as one replica, no all-reduce")
    return backend, replicas


def data_parallel(
    model: ReplicaModel,
    update: Callable[[Tensor], Code],
    *,
    batch_size: int,
    replicas: int | None = None,
    backend: str | None = None,
    bucket_bytes: int | None = BUCKET_BYTES,
) -> DataParallel:
    """A training step over `replicas` replicas (None: every GPU of the host; one, with a
    logged notice, without GPUs), each on `batch_size // replicas` examples of each batch.
    `model(shard_size) -> (loss, inputs)` builds the model, parameters included, once per
    replica; `update(loss) -> code` is the optimizer (e.g. `lambda l: train.sgd_update(l, 0.1)`).
    `backend="c"` runs the replicas one after the other, averaging on the host.
    `bucket_bytes`: gradient bytes per all-reduce (None: one all-reduce after the backward)."""
    backend, count = _replica_count(backend, replicas)
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size % count:
        raise ValueError(
            f"data_parallel: batch_size must be a positive multiple of the {count} replicas, got "
            f"{batch_size!r}"
        )
    shard = batch_size // count
    built, streams = [], []
    for k in range(count):
        context = Context(backend, device=k)  # a CUDA context makes its GPU current
        built.append(_Replica(context, model, shard, update, bucket_bytes))
        if backend == "cuda":
            streams.append(context.backend.device.create_stream())
    if backend == "cuda" and count > 1:
        collective = collectives.NcclMean([replica.context.backend for replica in built])
    else:
        collective, streams = collectives.HostMean(count), None
    return DataParallel(built, collective, batch_size, streams)

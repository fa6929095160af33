"""The training loop: batches of data through compiled training routines, with a progress bar.

Shapes are fixed when a routine is compiled, so a last batch smaller than the others needs a
routine of its own: give `fit` a function that builds the model for a batch size, and it compiles
one routine per size, all sharing the parameters and one optimizer update (so momentum and Adam's
moments carry across them). Or drop the last batch with `drop_last=True`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ocannl_py.code import Code
from ocannl_py.tensor import Tensor
from ocannl_py.train.autodiff import grad_update

#: `model(batch_size) -> (loss, inputs)`: builds the loss for batches of that size on the
#: parameters created once outside it; `inputs` names the terms that the data fills.
ModelForBatch = Callable[[int], tuple[Tensor, Mapping[str, Tensor]]]


def fit(
    routine,
    data: Mapping[Tensor, np.ndarray] | Mapping[str, np.ndarray],
    *,
    batch_size: int,
    epochs: int = 1,
    loss: Tensor | None = None,
    update: Callable[[Tensor], Code] | None = None,
    context=None,
    shuffle: bool = True,
    seed: int = 0,
    progress: bool = True,
    drop_last: bool = False,
) -> list[float]:
    """Train over `data` (examples along the first axis of every array) in batches of
    `batch_size`, for `epochs` epochs, with a progress bar showing the loss; returns the losses.

    `routine` is either a compiled training routine, a data-parallel step
    (`train.data_parallel`, `data` mapping its input names to arrays), `data` mapping its terms to arrays and
    `loss` (optional) the tensor read after each run; or a function `batch_size -> (loss,
    inputs)`, `data` mapping the names in `inputs` to arrays, `update` a function `loss -> code`
    (e.g. `lambda loss: train.sgd_update(loss, 0.1)`) called once, and `context` the Context that
    compiles one routine per batch size. A last batch smaller than `batch_size` needs the second
    form, or `drop_last=True` to skip it."""
    from tqdm.auto import tqdm

    arrays = {key: np.asarray(a) for key, a in data.items()}
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"fit: the arrays have different numbers of examples: {sorted(sizes)}")
    (n,) = sizes
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    rest = 0 if drop_last else n % batch_size
    if hasattr(routine, "fit_steps"):  # a data-parallel step (train.data_parallel)
        if rest:
            raise ValueError(
                f"fit: {n} examples do not split into batches of {batch_size}: pass "
                f"drop_last=True to skip the last {rest} (a data-parallel step takes one size)"
            )
        if loss is not None or update is not None:
            raise ValueError("fit: a data-parallel step has its loss and update; drop them")
        steps = routine.fit_steps(arrays, batch_size)
    elif hasattr(routine, "run") or routine is None:
        if rest:
            raise ValueError(
                f"fit: {n} examples do not split into batches of {batch_size}: pass "
                f"drop_last=True to skip the last {rest}, or pass a function batch_size -> "
                "(loss, inputs) with update=... so that it runs through a routine compiled for "
                "its size"
            )
        steps = _CompiledStep(routine, arrays, loss)
    elif callable(routine):
        if loss is not None:
            raise ValueError("fit: with a model function, the losses come from it; drop `loss=`")
        if update is None:
            raise ValueError("fit: with a model function, give `update` (loss -> update code)")
        steps = _StepsPerSize(routine, arrays, update, context)
    else:
        raise TypeError(
            f"fit: expected a compiled routine or a function batch_size -> (loss, inputs), got "
            f"{type(routine).__name__}"
        )
    if n < batch_size and drop_last:
        raise ValueError(f"fit: {n} examples make no batch of {batch_size} with drop_last=True")
    starts = list(range(0, n - n % batch_size if drop_last else n, batch_size))
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    with tqdm(
        total=epochs * len(starts), disable=not progress, desc="training", unit="step"
    ) as bar:
        for _ in range(epochs):
            order = rng.permutation(n) if shuffle else np.arange(n)
            for start in starts:
                value = steps.run(order[start : start + batch_size])
                if value is not None:
                    losses.append(value)
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                bar.update()
    return losses


class _CompiledStep:
    """One routine the user compiled; `data` maps its terms to arrays."""

    def __init__(self, routine, arrays: dict, loss: Tensor | None) -> None:
        for key in arrays:
            if not isinstance(key, Tensor):
                raise TypeError(
                    f"fit: with a compiled routine, `data` maps terms (Tensors) to arrays; got "
                    f"the key {key!r} (names go with a model function)"
                )
        self.routine, self.arrays, self.loss = routine, arrays, loss

    def run(self, batch: np.ndarray) -> float | None:
        for t, a in self.arrays.items():
            t.set_value(a[batch])
        self.routine.run()
        return None if self.loss is None else self.loss.item()


class _StepsPerSize:
    """A routine per batch size, built from the model function on first use; every one runs the
    same update code, built once from the first loss."""

    def __init__(self, model: ModelForBatch, arrays: dict, update, context) -> None:
        for key in arrays:
            if not isinstance(key, str):
                raise TypeError(
                    f"fit: with a model function, `data` maps input names to arrays; got the key "
                    f"{key!r}"
                )
        if context is None:
            from ocannl_py.context import Context

            context = Context()
        self.model, self.arrays, self.update, self.context = model, arrays, update, context
        self.built: dict[int, tuple] = {}
        self.update_code: Code | None = None
        self.params: list[Tensor] | None = None

    def _build(self, size: int) -> tuple:
        built = self.model(size)
        if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], Tensor)):
            raise TypeError(
                f"fit: the model function must return (loss, inputs), got {type(built).__name__}"
            )
        loss, inputs = built
        if set(inputs) != set(self.arrays):
            raise ValueError(
                f"fit: the model's inputs {sorted(inputs)} and the data's names "
                f"{sorted(self.arrays)} differ"
            )
        params = loss.param_list()
        if self.params is None:
            self.params = params
            self.update_code = self.update(loss)
        elif {p.id for p in params} != {p.id for p in self.params}:
            labels = sorted(p.label for p in set(params) ^ set(self.params))
            raise ValueError(
                f"fit: the model for batches of {size} does not use the same parameters as the "
                f"first one (differing: {', '.join(labels)}); create the parameters once, "
                "outside the model function"
            )
        step = grad_update(loss) + self.update_code
        return self.context.compile(step, f"train_step_batch{size}"), inputs, loss

    def run(self, batch: np.ndarray) -> float:
        size = len(batch)
        if size not in self.built:
            self.built[size] = self._build(size)
        routine, inputs, loss = self.built[size]
        for name, a in self.arrays.items():
            inputs[name].set_value(a[batch])
        routine.run()
        return loss.item()

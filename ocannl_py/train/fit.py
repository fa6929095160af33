"""The training loop: batches of data through a compiled training routine, with a progress bar."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ocannl_py.tensor import Tensor


def fit(
    routine,
    data: Mapping[Tensor, np.ndarray],
    *,
    batch_size: int,
    epochs: int = 1,
    loss: Tensor | None = None,
    shuffle: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Run a training `routine` over `data` (tensor -> array, examples along the first axis) in
    batches, for `epochs` epochs, with a progress bar showing the loss. Returns the losses."""
    from tqdm.auto import tqdm

    arrays = {t: np.asarray(a) for t, a in data.items()}
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"fit: the arrays have different numbers of examples: {sorted(sizes)}")
    (n,) = sizes
    if n % batch_size:
        raise ValueError(f"fit: {n} examples do not split into batches of {batch_size}")
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    steps = epochs * (n // batch_size)
    with tqdm(total=steps, disable=not progress, desc="training", unit="step") as bar:
        for _ in range(epochs):
            order = rng.permutation(n) if shuffle else np.arange(n)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                for t, a in arrays.items():
                    t.set_value(a[batch])
                routine.run()
                if loss is not None:
                    losses.append(loss.item())
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update()
    return losses

"""Token ids as model inputs: int32 terms of batch axes only (`batch, seq |`, what `oc.embed`
looks up), filled after a host-side check that every id is in range."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ocannl_py import operation as ops
from ocannl_py.tensor import Tensor


def ids_term(label: str, batch_dims: Sequence[int]) -> Tensor:
    """An int32 term of ids (token, position or token type) with these batch dims."""
    return ops.term(label, batch_dims=list(batch_dims), input_dims=[], output_dims=[],
                    dtype="int32")  # fmt: skip


def set_ids(term: Tensor, ids: np.ndarray, vocab: int, what: str) -> None:
    """Fill `term` with `ids`, after checking each is an integer in `[0, vocab)`: an id out of
    range is an error naming `what`, the id and where it is, raised before anything runs."""
    ids = np.asarray(ids)
    bad = (ids < 0) | (ids >= vocab) | (ids != np.round(ids))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what}: id {ids[where].item()!r} at {where} is not in [0, {vocab}) (the table has "
            f"{vocab} rows)"
        )
    term.set_value(ids.astype(np.int32))

"""Embedding lookups: the rows of a table (`d` outputs, `vocab` input) at integer ids held in a
float term, and the host-side check that every id is in range.

The lookup is the table composed with the ids' one-hot rows (`eq(ids, range(vocab))`), so it is
differentiable and runs on every backend with the operations that exist; `oc.embed`'s gather on
int32 ids replaces it here, in one place, when it lands.
"""

from __future__ import annotations

import numpy as np

from ocannl_py import operation as ops
from ocannl_py.tensor import Tensor


def lookup(table: Tensor, ids: Tensor, vocab: int) -> Tensor:
    """`table`'s column at each id: `ids` is `..b.. |` (no output axes), the result `..b.. | d`."""
    one_hot = ops.eq(ids, ops.range(vocab, label=f"{table.label}.vocab"))
    return table @ one_hot


def set_ids(term: Tensor, ids: np.ndarray, vocab: int, what: str) -> None:
    """Fill `term` with `ids`, after checking each is an integer in `[0, vocab)`: an id out of
    range is an error naming `what`, the id and where it is, never a silent zero row."""
    ids = np.asarray(ids)
    bad = (ids < 0) | (ids >= vocab) | (ids != np.round(ids))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what}: id {ids[where].item()!r} at {where} is not in [0, {vocab}) (the table has {vocab} "
            "rows)"
        )
    term.set_value(ids.astype(np.float32))

"""Embeddings: rows of a table picked by int32 ids (`oc.embed`, a gather)."""

from __future__ import annotations

from ocannl_py import operation as ops
from ocannl_py.nn import init
from ocannl_py.nn.linear import Dims, check_label, dims_list
from ocannl_py.tensor import Tensor


def embedding(
    ids: Tensor, vocab: int, dim: Dims, label: str, *, params: init.Params = None
) -> Tensor:
    """The rows of `{label}.w` (`dim -> vocab`, drawn from N(0, 1) as `nn.Embedding`) picked by
    the int32 `ids` (batch axes only): the result is `ids' batch | dim`. An id outside
    `[0, vocab)` is an error at run time naming `ids` and the id."""
    check_label(label, "embedding")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise ValueError(f"embedding {label!r}: vocab must be a positive int, got {vocab!r}")
    out = dims_list(dim, f"embedding {label!r}: dim")
    table = init.parameter(params, f"{label}.w", batch_dims=[], input_dims=[vocab],
                           output_dims=out, init=("normal", 1.0))  # fmt: skip
    return ops.embed(table, ids)

"""A key/value cache for decoding: one compiled routine per number of new tokens runs every step.

The cache keeps, per attention layer, keys and values of `max_len` positions (`..b.., max_len |
heads, d`, zeros at first) and one `position` tensor: the number of positions written so far.
A step with `n` new tokens writes their keys and values at `position .. position + n - 1`
(selected by comparing position tensors, so the routine does not depend on the position),
attends causally over the cache, and `cache.update(y)` stores the new keys and values and
advances `position` by `n`. The position lives in a tensor, so the same routine decodes every
step; `reset()` starts a new sequence.
"""

from __future__ import annotations

import math

from arrayjit import assignments as asg
from ocannl_py import operation as ops
from ocannl_py import shape as shapes
from ocannl_py.code import Code, Fill, Slot
from ocannl_py.dsl.cd import cd
from ocannl_py.nn import dims
from ocannl_py.nn.attention import SEQ
from ocannl_py.tensor import Tensor

PLACE = "..b.., i | h, d; t | i => ..b.., t | h, d"


class KVCache:
    """Keys and values of the positions decoded so far, for every layer that uses it."""

    def __init__(self, max_len: int, label: str = "cache") -> None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"KVCache: max_len must be a positive int, got {max_len!r}")
        self.max_len = max_len
        self.label = label
        self.position = ops.term(f"{label}.position", batch_dims=[], input_dims=[], output_dims=[])
        self.position.set_value(0.0)
        self._stored: dict[str, tuple[Tensor, Tensor]] = {}
        # By the id of each tensor `extend` returns: (that tensor, the buffer it is stored into,
        # the number of new tokens).
        self._writes: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def reset(self) -> None:
        """Start a new sequence: the next step writes at position 0."""
        self.position.set_value(0.0)

    def extend(self, layer: str, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The cache of `layer` with `keys` and `values` (`..b.., n | heads, d`, the new tokens)
        written at `position`: what attention reads this step."""
        place = self._placement(keys)
        written = ops.einsum1("t | i => t |", place)
        count = dims.constant("new_tokens", _seq_len(keys))
        placed = [ops.einsum(PLACE, new, place) for new in (keys, values)]
        if layer not in self._stored:
            names = (f"{self.label}.{layer}.keys", f"{self.label}.{layer}.values")
            self._stored[layer] = tuple(
                _zeros_like(n, p) for n, p in zip(names, placed, strict=True)
            )
        results = []
        for new, stored in zip(placed, self._stored[layer], strict=True):
            # A later graph (another number of new tokens) must write buffers of the same shape.
            label = f"KV cache {stored.label!r}"
            shapes.propagate(
                shapes.Pointwise(exact=True), stored.shape, [new.shape], op_label=label
            )
            result = ops.where(written, new, stored)
            self._writes[result.id] = (result, stored, count)
            results.append(result)
        return results[0], results[1]

    def guard(self, y: Tensor, keys: Tensor) -> Tensor:
        """`y`, or NaN everywhere when the new tokens do not fit in the cache: a step past
        `max_len` shows as NaN rather than as attention that silently missed the new keys."""
        last = dims.constant("last_start", lambda: self.max_len - _seq_len(keys)() + 0.5)
        return dims.same_shape(ops.where(ops.lt(last, self.position), math.nan, y), y)

    def update(self, y: Tensor) -> Code:
        """The code that stores the keys and values that `y`'s computation wrote and advances
        `position`: compile `y.forward + cache.update(y)` as one decoding step."""
        graph = {t.id for t in y.subgraph()}
        writes = [w for key, w in self._writes.items() if key in graph]
        if not writes:
            raise ValueError(
                f"KVCache {self.label!r}: {y.label!r} does not use this cache (build it with "
                "multi_head_attention(..., cache=cache))"
            )
        code = Code(label=f"update_{self.label}")
        for result, stored, _ in writes:
            code = code + cd("stored =: result", stored=stored, result=result)
        return code + cd("position =+ count", position=self.position, count=writes[0][2])

    def _placement(self, keys: Tensor) -> Tensor:
        """`place[t | i]` = 1 where cache position t receives new token i (t = position + i)."""
        slots = ops.range(self.max_len, label=f"{self.label}.slots")
        new = dims.positions(keys, SEQ, "new_token")
        return ops.eq(ops.outer_sum("t; i => t | i", slots, -new), self.position)


def _zeros_like(label: str, like: Tensor) -> Tensor:
    """A state tensor of the shape of `like`, zeros until written."""
    t = Tensor(label, shapes.Shape(label), differentiable=False)
    shapes.propagate(shapes.Pointwise(exact=True), t.shape, [like.shape], op_label=label)
    t.init_code = Code([Fill(Slot(t), asg.Constant(0.0))])
    return t


def _seq_len(keys: Tensor):
    """The number of new tokens: the last batch dim of `keys`, once solved."""
    return lambda: keys.shape.batch[-1]

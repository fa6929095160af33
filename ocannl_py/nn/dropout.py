"""Dropout with counter-based random bits: Threefry of (a seed that advances on every run, the
cell's offset), computed inside the compiled code, a fresh mask each run."""

from __future__ import annotations

import numpy as np

from arrayjit import assignments as asg
from arrayjit.threefry import threefry4x32
from arrayjit.tnode import MemoryMode
from ocannl_py import operation as ops
from ocannl_py import shape as shapes
from ocannl_py.code import Code, Fill, Raw, Slot
from ocannl_py.nn.dims import same_shape
from ocannl_py.tensor import Tensor

#: Seeds and cell offsets are carried in float32 by the generated code: exact below 2^24.
EXACT = 2**24


def dropout(x: Tensor, p: float, train: bool) -> Tensor:
    """When `train`, zero each cell of `x` with probability `p` and scale the others by
    `1 / (1 - p)`; otherwise return `x` itself. Every run of code containing it draws a new mask
    (its seed advances), and the gradient flows through the same mask."""
    if not isinstance(train, bool):
        raise TypeError(f"dropout: train must be a bool, got {train!r}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ValueError(f"dropout: p must be a probability in [0, 1), got {p!r}")
    if not train or p == 0:
        return x
    seed = _seed(f"{x.label}.dropout_seed")
    counter = _cell_offsets(x, f"{x.label}.dropout_cells")
    # Advance the seed (wrapping below 2^24), then keep the cells whose uniform is >= p.
    mask = ops.operation(
        "dropout_mask", shapes.Pointwise(), [seed, counter],
        f'v1 =: where(v1 < {EXACT - 1}, v1 + 1, 0) ~logic:"."; '
        f"v =: not(uniform_at(v1, v2) < {float(p)!r}) * {1.0 / (1.0 - p)!r}",
        None,
    )  # fmt: skip
    return same_shape(x * mask, x)


def initial_seed(stream: int) -> int:
    """A seed below 2^24 for the random stream `stream` (see `oc.param`'s keys), hashed so that
    neighbouring streams do not walk into each other's seeds."""
    key = np.array([stream & 0xFFFFFFFF, stream >> 32, 0, 0], dtype=np.uint32)
    return int(threefry4x32(key, np.zeros(4, np.uint32))[0]) >> 8


def _seed(label: str) -> Tensor:
    """A scalar state tensor, set once to a seed derived from `oc.set_seed`."""
    shape = shapes.Shape(label, batch_dims=[], input_dims=[], output_dims=[])
    seed = Tensor(label, shape, differentiable=False)
    seed.init_code = Code(
        [Fill(Slot(seed), asg.Constant(float(initial_seed(ops.random_stream()))))]
    )
    return seed


def _cell_offsets(x: Tensor, label: str) -> Tensor:
    """The row-major offset of each cell of `x`, computed inline."""
    offsets = Tensor(label, shapes.Shape(label), differentiable=False,
                     memory_mode=MemoryMode.VIRTUAL)  # fmt: skip
    shapes.propagate(shapes.Pointwise(exact=True), offsets.shape, [x.shape], op_label=label)

    def build() -> asg.Assignments:
        size = offsets.value_node.size
        if size > EXACT:
            raise ValueError(
                f"dropout of {x.label!r} ({x.shape}): {size} cells, more than the 2^24 that "
                "float32 counters number exactly; apply dropout to smaller tensors"
            )
        return asg.Fetch(offsets.value_node, asg.RangeOfShape())

    offsets.forward_code = Code([Raw(build, (offsets,))])
    return offsets

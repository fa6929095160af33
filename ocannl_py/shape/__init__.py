"""Shape inference: rows of axes per tensor (`rows`), the constraint solver (`solver`), the
shape logic of operations (`logic`) and the projections derived from solved shapes
(`projections`)."""

from ocannl_py.shape.logic import (
    AxisRef,
    Compose,
    Concat,
    Einsum,
    Logic,
    Pointwise,
    RowLayout,
    Transpose,
    UpdateStep,
    close,
    propagate,
    settle,
)
from ocannl_py.shape.rows import KINDS, MEMORY_ORDER, DimSpec, Shape, given_dim

__all__ = [
    "KINDS",
    "MEMORY_ORDER",
    "AxisRef",
    "DimSpec",
    "Compose",
    "Concat",
    "Einsum",
    "Logic",
    "Pointwise",
    "RowLayout",
    "Shape",
    "Transpose",
    "UpdateStep",
    "close",
    "given_dim",
    "propagate",
    "settle",
]

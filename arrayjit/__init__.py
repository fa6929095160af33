"""arrayjit: buffers, assignments, a loop IR, passes and backends (C, CUDA).

arrayjit knows nothing about axis kinds or labels: it receives buffers (tnodes) and assignments
whose index spaces (projections) are already solved.
"""

from arrayjit.dtypes import DType, dtype_of, float32, float64, int32
from arrayjit.tnode import MemoryMode, TNode

__all__ = ["DType", "float32", "float64", "int32", "dtype_of", "MemoryMode", "TNode"]

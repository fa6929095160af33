"""Element types: their numpy dtype, their names in generated code, and how they promote.

The 16-bit float types (`float16`, `bfloat16`) are storage types: values are converted to
float32 when read, every operation computes in float32, and a store rounds once (to nearest
even). Generated code holds them as 16-bit integers (their bits) unless the backend has a native
type for them (`_Float16` in C where the compiler has it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    """An element type. `c_name` is the type of a buffer's elements in generated C and CUDA
    (the bits, for a 16-bit float); `math_suffix` selects libm variants; `compute_name` names
    the type its values are computed in, when that is another one."""

    name: str
    numpy: np.dtype
    c_name: str
    is_float: bool
    # Suffix of C math functions for this type: "f" for expf, "" for exp. None: no libm variant
    # (integers compute through double; 16-bit floats never compute in their own type).
    math_suffix: str | None
    literal_suffix: str
    compute_name: str | None = None

    def __repr__(self) -> str:
        return self.name

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def compute(self) -> DType:
        """The type values of this type are computed in: float32 for 16-bit floats."""
        return ALL[self.compute_name] if self.compute_name else self

    @property
    def storage_only(self) -> bool:
        """Whether values are only stored in this type, never computed in it."""
        return self.compute_name is not None


float32 = DType("float32", np.dtype(np.float32), "float", True, "f", "f")
float64 = DType("float64", np.dtype(np.float64), "double", True, "", "")
int32 = DType("int32", np.dtype(np.int32), "int", False, None, "")
float16 = DType("float16", np.dtype(np.float16), "uint16_t", True, None, "", "float32")
bfloat16 = DType("bfloat16", np.dtype(ml_dtypes.bfloat16), "uint16_t", True, None, "", "float32")

ALL: dict[str, DType] = {d.name: d for d in (float32, float64, float16, bfloat16, int32)}

#: Floats by how many values they hold exactly; float16 and bfloat16 share a rank (neither holds
#: the other's values), so mixing them gives float32, as in PyTorch.
_FLOAT_RANK = {"float16": 1, "bfloat16": 1, "float32": 2, "float64": 3}


def dtype_of(value: str | DType | np.dtype | type) -> DType:
    """Resolve a name, numpy dtype or DType to a DType; a clear TypeError otherwise."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        if value in ALL:
            return ALL[value]
        raise TypeError(f"unknown dtype {value!r}; expected one of {sorted(ALL)}")
    try:
        np_dtype = np.dtype(value)
    except TypeError as exc:
        raise TypeError(f"not a dtype: {value!r}") from exc
    for d in ALL.values():
        if d.numpy == np_dtype:
            return d
    raise TypeError(f"unsupported dtype {np_dtype}; expected one of {sorted(ALL)}")


def holds_numbers(np_dtype: np.dtype) -> bool:
    """Whether numpy arrays of `np_dtype` hold numbers: numpy's bool, int and float kinds, or
    one of the element types (`ml_dtypes.bfloat16` is of no numeric kind)."""
    return np_dtype.kind in "biuf" or any(np_dtype == d.numpy for d in ALL.values())


def widest_float(dtypes: Iterable[DType]) -> DType:
    """The float type that holds the values of all of `dtypes` (floats): the widest one, or
    float32 for float16 with bfloat16."""
    floats = list(dict.fromkeys(dtypes))
    if not floats:
        raise ValueError("widest_float: no dtypes given")
    for d in floats:
        if not d.is_float:
            raise TypeError(f"widest_float: {d} is not a float type")
    top = max(_FLOAT_RANK[d.name] for d in floats)
    widest = [d for d in floats if _FLOAT_RANK[d.name] == top]
    return widest[0] if len(widest) == 1 else float32

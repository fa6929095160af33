"""Element types: their numpy dtype and their names in generated code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """An element type. `c_name` is the C/CUDA type; `math_suffix` selects libm variants."""

    name: str
    numpy: np.dtype
    c_name: str
    is_float: bool
    # Suffix of C math functions for this type: "f" for expf, "" for exp. None: no libm variant
    # (integers compute through double; half types will go through float).
    math_suffix: str | None
    literal_suffix: str

    def __repr__(self) -> str:
        return self.name

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


float32 = DType("float32", np.dtype(np.float32), "float", True, "f", "f")
float64 = DType("float64", np.dtype(np.float64), "double", True, "", "")
int32 = DType("int32", np.dtype(np.int32), "int", False, None, "")

# float16 and bfloat16 are planned: their C names differ per backend (__half on CUDA, _Float16 in
# gcc), and their math goes through float, so they will carry math_suffix="f" and a conversion.
ALL: dict[str, DType] = {d.name: d for d in (float32, float64, int32)}


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

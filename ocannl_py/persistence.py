"""Saving and loading tensors as safetensors files: `save` writes atomically, `load` checks names,
shapes and dtypes, and settles the dims of tensors that shape inference has not settled yet."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from arrayjit import cache
from arrayjit.tnode import MemoryMode
from ocannl_py import shape as shapes
from ocannl_py.errors import ShapeError
from ocannl_py.shape import terms
from ocannl_py.tensor import Tensor

#: Metadata key of the rows (batch, input, output dims) of each tensor saved by `save`.
ROWS_KEY = "ocannl.rows"
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the tensors: a missing or extra name, a wrong dtype kind,
    an unreadable file. Names the file and the tensor."""


def named_tensors(tensors: Tensor | Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """A Tensor's `params`, or a dict name -> Tensor checked for its types."""
    if isinstance(tensors, Tensor):
        params = tensors.params
        if not params:
            raise ValueError(f"{what}: tensor {tensors.label!r} uses no parameters")
        return params
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"{what}: expected a Tensor or a dict name -> Tensor, got {type(tensors).__name__}"
        )
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what}: names must be non-empty strings, got {name!r}")
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: {name!r} is a {type(t).__name__}, not a Tensor")
    return dict(tensors)


def save(tensors: Tensor | Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Write the values of `tensors` (a Tensor's `params`, or a dict name -> Tensor) to a
    safetensors file, through a temporary file in the same folder and a rename."""
    named = named_tensors(tensors, f"save {path}")
    arrays: dict[str, np.ndarray] = {}
    rows: dict[str, dict[str, list[int]]] = {}
    for name, t in named.items():
        try:
            arrays[name] = t.value  # a fresh C-ordered copy
        except ValueError as exc:
            raise ValueError(f"save {path}: tensor {name!r}: {exc}") from None
        rows[name] = {kind: getattr(t.shape, kind) for kind in shapes.KINDS}
    write_arrays(arrays, path, {ROWS_KEY: json.dumps(rows, sort_keys=True)})


def write_arrays(
    arrays: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write numpy arrays (any dtype safetensors knows, bfloat16 through ml_dtypes) atomically."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"save: {path} is a folder; give a file name (e.g. model.safetensors)"
        )
    tmp = cache.temp_path(path)
    try:
        save_file(dict(arrays), tmp, metadata={"format": "np", **(metadata or {})})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(
    tensors: Tensor | Mapping[str, Tensor], path: str | os.PathLike, strict: bool = True
) -> None:
    """Fill `tensors` (a Tensor's `params`, or a dict name -> Tensor) from a safetensors file.
    A name missing from the file, a file tensor not asked for (with `strict`) or a shape that
    does not fit is an error naming it; nothing is written unless every tensor fits."""
    named = named_tensors(tensors, f"load {path}")
    with open_safetensors(path) as f:
        names = set(f.keys())
        rows = _saved_rows(f.metadata(), path)
        check_names(named, names, str(path), strict)
        arrays = {name: f.get_tensor(name) for name in named}
    assign(named, arrays, str(path), rows)


def open_safetensors(path: str | os.PathLike):
    """`safe_open` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}")
    try:
        return safe_open(str(path), framework="np")
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None


def _saved_rows(metadata: dict[str, str] | None, path) -> dict[str, dict[str, list[int]]]:
    text = (metadata or {}).get(ROWS_KEY)
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {ROWS_KEY!r} is not valid JSON: {exc}") from None


def _some(names, limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_names(named: Mapping[str, Tensor], names: set[str], source: str, strict: bool) -> None:
    """A tensor asked for and absent is always an error; a file tensor not asked for is one
    with `strict`."""
    missing = set(named) - names
    if missing:
        raise CheckpointError(
            f"load {source}: no tensor {_some(missing)} in the file (it holds {len(names)}: "
            f"{_some(names)})"
        )
    extra = names - set(named)
    if strict and extra:
        raise CheckpointError(
            f"load {source}: the file holds tensors that are not being loaded: {_some(extra)}; "
            "pass strict=False to ignore them"
        )


def assign(
    named: Mapping[str, Tensor],
    arrays: Mapping[str, np.ndarray],
    source: str,
    rows: Mapping[str, Mapping[str, list[int]]] | None = None,
) -> None:
    """Check every array against its tensor (settling dims not known yet), then write them all.
    `rows` gives, per name, the file's batch/input/output split of the array's dims."""
    rows = rows or {}
    for name, t in named.items():
        if t.memory_mode is MemoryMode.VIRTUAL:
            raise CheckpointError(f"load {source}: tensor {name!r} is virtual (never stored)")
        settle_dims(t, arrays[name].shape, f"load {source}: tensor {name!r}", rows.get(name))
    converted = {name: convert(arrays[name], t, f"load {source}: tensor {name!r}")
                 for name, t in named.items()}  # fmt: skip
    for name, t in named.items():
        t.set_value(converted[name])


def _known(shape: shapes.Shape, kind: str) -> list[int] | None:
    try:
        return getattr(shape, kind)
    except ShapeError:
        return None


def _fewest(shape: shapes.Shape, kind: str) -> list[int] | None:
    """The settled axes of an open row (None when it has none, or one is not settled)."""
    row = shape.row(kind)
    axes = (*row.beg, *row.end)
    if not axes or not all(isinstance(d, terms.Dim) for d in axes):
        return None
    return [d.size for d in axes]


def _show(rows: Mapping[str, list[int]]) -> str:
    return f"batch {rows['batch']} | input {rows['input']} -> output {rows['output']}"


def settle_dims(
    t: Tensor, dims: tuple[int, ...], where: str, saved: Mapping[str, list[int]] | None = None
) -> None:
    """Check `dims` (memory order: batch, output, input) against `t`'s shape; rows of `t` not
    known yet are settled from `saved` (the file's split) or, when a single row is unknown, from
    the dims its known rows leave."""
    dims = tuple(int(d) for d in dims)
    known = {kind: _known(t.shape, kind) for kind in shapes.KINDS}
    if all(v is not None for v in known.values()):
        mine = tuple(known["batch"] + known["output"] + known["input"])
        differs = saved is not None and any(known[k] != list(saved[k]) for k in shapes.KINDS)
        if mine != dims or differs:
            raise ShapeError(
                f"{where} has dims {mine} here ({_show(known)}) but {dims} in the file"
                + (f" ({_show(saved)})" if saved else "")
            )
        return
    if saved is not None:
        rows = {kind: [int(d) for d in saved[kind]] for kind in shapes.KINDS}
        if tuple(rows["batch"] + rows["output"] + rows["input"]) != dims:
            raise CheckpointError(
                f"{where}: its saved rows {_show(rows)} do not match its dims {dims}"
            )
    else:
        # An open row whose axes are all settled closes to them unless a later use adds more:
        # read the file with those, and let the one row nothing is known of take the rest.
        fewest = {k: v if v is not None else _fewest(t.shape, k) for k, v in known.items()}
        rows = _split(fewest, dims, where, t)
    try:
        shapes.propagate(
            shapes.Pointwise(exact=True),
            shapes.Shape(f"{t.label} (file)", **{f"{k}_dims": v for k, v in rows.items()}),
            [t.shape],
            op_label=f"{where}",
        )
    except ShapeError as exc:
        raise ShapeError(
            f"{where} has shape {t.shape} here, which does not fit {_show(rows)} from the file: "
            f"{exc}"
        ) from None


def _split(known: dict[str, list[int] | None], dims: tuple[int, ...], where: str, t: Tensor):
    unknown = [kind for kind, v in known.items() if v is None]
    if len(unknown) > 1:
        raise ShapeError(
            f"{where}: cannot tell how the file's dims {dims} split into the {' and '.join(unknown)} "
            f"rows of {t.label!r} (shape {t.shape}, not inferred yet): give its dims when creating "
            "it, or load a file written by oc.save (which records the split)"
        )
    (missing,) = unknown
    order = list(shapes.MEMORY_ORDER)
    before = sum(len(known[k]) for k in order[: order.index(missing)])
    after = sum(len(known[k]) for k in order[order.index(missing) + 1 :])
    if before + after > len(dims):
        raise ShapeError(
            f"{where} has at least {before + after} axes here (shape {t.shape}) but {len(dims)} "
            f"in the file: dims {dims}"
        )
    rows = {k: v for k, v in known.items() if v is not None}
    rows[missing] = list(dims[before : len(dims) - after])
    if tuple(rows["batch"] + rows["output"] + rows["input"]) != dims:
        raise ShapeError(f"{where} has shape {t.shape} here but dims {dims} in the file")
    return rows


def number_kind(dtype: np.dtype) -> str:
    """`float` (including ml_dtypes' bfloat16), `int`, or the dtype's name for anything else."""
    if dtype.kind == "f" or dtype == _BFLOAT16:
        return "float"
    if dtype.kind in "iu":
        return "int"
    return dtype.name


def convert(array: np.ndarray, t: Tensor, where: str) -> np.ndarray:
    """`array` in `t`'s dtype: floats convert to floats (as PyTorch's load_state_dict), integers
    to integers when every value fits; anything else is an error."""
    target = t.value_node.dtype.numpy
    if array.dtype == target:
        return array
    source_kind, target_kind = number_kind(array.dtype), number_kind(target)
    if source_kind != target_kind or source_kind not in ("float", "int"):
        raise CheckpointError(
            f"{where} holds {target.name} values here but {array.dtype.name} in the file"
        )
    if source_kind == "int" and array.size:
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise CheckpointError(
                f"{where}: the file's {array.dtype.name} values span [{low}, {high}], outside "
                f"{target.name}"
            )
    return array.astype(target)

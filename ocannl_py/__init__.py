"""ocannl_py: a tensor compiler in the spirit of OCANNL.

Write models with the einsum-based `op` DSL or Python operators, let shape inference type them
(batch | input -> output axes), and compile forward and backward code with a `Context`.
"""

from ocannl_py import operation as _operation
from ocannl_py import train
from ocannl_py.context import Context, Routine, StreamedRoutine, forward_stages
from ocannl_py.dsl.cd import cd
from ocannl_py.dsl.op import op
from ocannl_py.errors import CompileError, ShapeError, SpecSyntaxError
from ocannl_py.persistence import CheckpointError, load, save
from ocannl_py.tensor import Tensor

# Every registered operation (`oc.relu`, `oc.einsum`, `oc.param`...) is a name of the package.
globals().update({name: entry.function for name, entry in _operation.REGISTRY.items()})

__all__ = [
    "CheckpointError", "CompileError", "Context", "Routine", "ShapeError", "SpecSyntaxError",
    "StreamedRoutine", "forward_stages",
    "Tensor", "cd", "load", "op", "save", "train", *sorted(_operation.REGISTRY),
]  # fmt: skip

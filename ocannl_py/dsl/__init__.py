"""The op DSL (OCANNL's %op) and the cd DSL (%cd), in strings: `syntax` parses both, `op` and
`cd` give the trees their meaning (tensors, assignment code)."""

from ocannl_py.dsl.cd import cd
from ocannl_py.dsl.op import op

__all__ = ["cd", "op"]

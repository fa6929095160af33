"""Tensor: a value buffer, an optional gradient buffer, forward and backprop code, and a shape."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from arrayjit.dtypes import DType, dtype_of, float32, holds_numbers
from arrayjit.runtime import residency
from arrayjit.tnode import MemoryMode, TNode
from ocannl_py import fusion
from ocannl_py import shape as shapes
from ocannl_py.code import Code
from ocannl_py.errors import ShapeError

_ids = itertools.count(1)


class Tensor:
    """A node of the computation graph. Build tensors with `ocannl_py` functions, the Python
    operators, or the `op` DSL; compute them with a `Context`. The operators and methods such
    as `t.relu()` are bound by `ocannl_py.operation`."""

    #: A number's type is weak: an operation takes the type of its other operands.
    weak_dtype = False

    def __init__(
        self,
        label: str,
        shape: shapes.Shape,
        operands: tuple[Tensor, ...] = (),
        *,
        is_param: bool = False,
        differentiable: bool = True,
        memory_mode: MemoryMode = MemoryMode.HOST,
        dtype: DType | str = float32,
    ) -> None:
        self.id = next(_ids)
        #: The element type of the value (and of the gradient).
        self.dtype = dtype_of(dtype)
        self.label = label
        self.shape = shape
        #: References to this tensor held by the graph itself: operand tuples of other tensors
        #: and code slots (`ocannl_py.fusion` tells the user's references from these).
        self.graph_refs = 0
        self.operands = operands
        for o in operands:
            o.graph_refs += 1
        self.is_param = is_param
        # A gradient exists for parameters and for what depends on them differentiably (floats).
        self.requires_grad = self.dtype.is_float and (
            is_param or (differentiable and any(o.requires_grad for o in operands))
        )
        self.memory_mode = memory_mode
        self.forward_code = Code()
        self.backprop_code = Code()
        self.init_code = Code()  # run once before first use (parameters)
        self._value_node: TNode | None = None
        self._grad_node: TNode | None = None
        #: Stored by every routine that computes it (see `keep`).
        self.kept = False
        #: The last routine that computed this tensor without storing it (`ocannl_py.fusion`).
        self.fused_into: str | None = None

    def __del__(self) -> None:
        for o in getattr(self, "operands", ()):
            o.graph_refs -= 1

    def keep(self) -> Tensor:
        """Store this tensor's values wherever they are computed, so that `value` can be read:
        an intermediate of a routine is otherwise fused into the code that reads it. Routines
        compiled before are compiled again at their next run. Returns the tensor."""
        if not self.kept:
            self.kept = True
            fusion.changed()
        return self

    # ---- buffers ---------------------------------------------------------------------------

    def _dims(self) -> tuple[int, ...]:
        return self.shape.dims()

    @property
    def value_node(self) -> TNode:
        if self._value_node is None:
            self._value_node = TNode(self.label, self._dims(), self.dtype, self.memory_mode)
        return self._value_node

    @property
    def grad_node(self) -> TNode:
        if not self.requires_grad:
            raise ValueError(
                f"tensor {self.label!r} has no gradient (it does not depend on a parameter)"
            )
        if self._grad_node is None:
            self._grad_node = TNode(f"{self.label}.grad", self._dims(), self.dtype)
        return self._grad_node

    @property
    def value(self) -> np.ndarray:
        """The values, axes in batch, output, input order."""
        node = self._value_node
        if (node is None or not residency.computed(node)) and self.fused_into is not None:
            raise ValueError(
                f"tensor {self.label!r} has no stored value: routine {self.fused_into!r} "
                "computes it as an intermediate, fused into the code that reads it. Call "
                f"`.keep()` on it to store it (the routine is compiled again at its next run)"
            )
        if node is None or not residency.computed(node):
            raise ValueError(
                f"tensor {self.label!r} has no value yet: no routine has computed it. Run "
                "`ctx.forward(t)` on it with a Context (or compile and run code that computes it)"
            )
        if node.memory_mode is MemoryMode.VIRTUAL:
            raise ValueError(
                f"tensor {self.label!r} is virtual: it is computed inline, never stored"
            )
        return node.host().copy()

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient in the layout of `value`, or None for a tensor without one."""
        if not self.requires_grad:
            return None
        node = self._grad_node
        if node is None or not residency.computed(node):
            raise ValueError(
                f"the gradient of {self.label!r} has not been computed: compile and run "
                "`train.grad_update(loss)` first"
            )
        return node.host().copy()

    def item(self) -> float:
        value = self.value
        if value.size != 1:
            raise ValueError(f"item(): tensor {self.label!r} has {value.size} values, not 1")
        return float(value.reshape(()))

    def set_value(self, values: Any) -> None:
        """Write values (an array in batch, output, input axis order, or a scalar). Rows of a
        tensor that were not given and are not inferred yet are settled by the array: they take
        no axes, so the array's shape must be the given dims."""
        try:
            array = np.asarray(values)
        except (TypeError, ValueError):  # e.g. ragged nested lists
            array = np.asarray(None)
        if not holds_numbers(array.dtype):
            if isinstance(values, np.ndarray):
                got = f"an array of dtype {values.dtype}"
            elif isinstance(values, Tensor):
                got = f"tensor {values.label!r} (pass its `.value`)"
            else:
                got = f"{type(values).__name__} {values!r:.60}"
            raise TypeError(
                f"set_value: tensor {self.label!r} takes a number or an array (or nested lists) "
                f"of numbers, got {got}"
            )
        if not self.shape.is_solved and array.shape != ():
            shapes.settle(self.shape, array.shape, f"set_value: tensor {self.label!r}")
        try:
            dims = self._dims()
        except ShapeError as exc:
            raise ShapeError(
                f"set_value: the dims of {self.label!r} are not known yet; specify them when "
                f"creating it, or give an array. ({exc})"
            ) from None
        if array.shape not in (dims, ()):
            # Raises the ShapeError that names the rows and both shapes: the array does not fit.
            shapes.settle(self.shape, array.shape, f"set_value: tensor {self.label!r}")
        self.value_node.set_host(array)

    # ---- graph -----------------------------------------------------------------------------

    def subgraph(self) -> list[Tensor]:
        """This tensor and everything it depends on, operands before users."""
        order: list[Tensor] = []
        seen: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            t, done = stack.pop()
            if done:
                order.append(t)
                continue
            if t.id in seen:
                continue
            seen.add(t.id)
            stack.append((t, True))
            stack.extend((o, False) for o in reversed(t.operands) if o.id not in seen)
        return order

    @property
    def forward(self) -> Code:
        """The code that computes this tensor from its leaves."""
        code = Code(label=f"forward {self.label}")
        for t in self.subgraph():
            code = code + t.forward_code
        return code

    @property
    def params(self) -> dict[str, Tensor]:
        """Label -> parameter, over everything this tensor uses. Distinct parameters that share
        a label get the keys `w`, `w#2`, `w#3`... in the order they were created."""
        out: dict[str, Tensor] = {}
        for t in sorted(self.param_list(), key=lambda t: t.id):
            key, n = t.label, 1
            while key in out:
                n += 1
                key = f"{t.label}#{n}"
            out[key] = t
        return out

    def param_list(self) -> list[Tensor]:
        """Every parameter this tensor uses, each once (by identity)."""
        return [t for t in self.subgraph() if t.is_param]

    def __repr__(self) -> str:
        try:
            shape_text = str(self.shape)
        except ShapeError:
            shape_text = "?"
        kind = "param " if self.is_param else ""
        dtype = "" if self.dtype == float32 else f" {self.dtype}"
        return f"<{kind}tensor {self.label!r} shape {shape_text}{dtype}>"

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of tensor {self.label!r} is not defined; use oc.lt / oc.eq for "
            "comparisons and read `.value` for numbers"
        )

    __hash__ = object.__hash__

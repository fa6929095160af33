"""The numpy reference of fuzzed programs: forward values and reverse-mode gradients in float64.

Written from the documented semantics (docs/shape_inference.md, docs/einsum.md, the operations'
gradients), independently of ocannl_py: this module never imports it. A value's axes are batch,
then output, then input, as `t.value`. Einsums are given here in concrete form (each operand's
axes as labels or fixed indices, row variables already expanded by the generator) and computed
over their whole product space, so diagonals, fixed indices and max ties need no special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

KINDS = ("batch", "output", "input")  # the memory order of a value's axes


@dataclass(frozen=True)
class TensorType:
    """The dims of each row; a value has the shape `batch + output + input`."""

    batch: tuple[int, ...]
    output: tuple[int, ...]
    input: tuple[int, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        return self.batch + self.output + self.input

    @property
    def cells(self) -> int:
        return math.prod(self.dims)

    def row(self, kind: str) -> tuple[int, ...]:
        return getattr(self, kind)


@dataclass(frozen=True)
class EinsumForm:
    """An einsum in concrete form: `reduce` is "sum" or "max", `combine` "mul", "add" or None
    (one operand); each operand's axes (layout order) are labels or fixed indices; the result's
    axes are distinct labels."""

    reduce: str
    combine: str | None
    operands: tuple[tuple[str | int, ...], ...]
    result: tuple[str, ...]
    dims: dict[str, int]


@dataclass
class Node:
    """One tensor of a program. `op` and `attrs` say how it is computed from `args` (names of
    earlier nodes); `grad` says whether it has a gradient (OCANNL's rule: parameters, and what
    depends on one through differentiable operations)."""

    name: str
    type: TensorType
    op: str
    args: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)
    grad: bool = False


NON_DIFFERENTIABLE = {"term", "literal", "compare", "stop_gradient"}
LN2 = math.log(2.0)

UNARY = {
    "neg": lambda x: -x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sat01": lambda x: np.clip(x, 0.0, 1.0),
    "exp": np.exp,
    "log": np.log,
    "exp2": np.exp2,
    "log2": np.log2,
    "sin": np.sin,
    "cos": np.cos,
    "sqrt": np.sqrt,
    "recip": lambda x: 1.0 / x,
    "recip_sqrt": lambda x: 1.0 / np.sqrt(x),
    "tanh": np.tanh,
    "identity": lambda x: x,
}

# d out / d in, times the upstream gradient g, from the input x and the output y.
UNARY_BACKWARD = {
    "neg": lambda g, x, y: -g,
    "relu": lambda g, x, y: np.where(x > 0, g, 0.0),
    "sat01": lambda g, x, y: np.where((x < 0) | (x > 1), 0.0, g),
    "exp": lambda g, x, y: g * y,
    "log": lambda g, x, y: g / x,
    "exp2": lambda g, x, y: g * y * LN2,
    "log2": lambda g, x, y: g / (x * LN2),
    "sin": lambda g, x, y: g * np.cos(x),
    "cos": lambda g, x, y: -g * np.sin(x),
    "sqrt": lambda g, x, y: g * 0.5 / y,
    "recip": lambda g, x, y: -g * y * y,
    "recip_sqrt": lambda g, x, y: -g * 0.5 * y / x,
    "tanh": lambda g, x, y: g * (1.0 - y * y),
    "identity": lambda g, x, y: g,
}

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "max": lambda a, b: np.where(a < b, b, a),
    "min": lambda a, b: np.where(b < a, b, a),
    "relu_gate": lambda a, b: np.where(a > 0, b, 0.0),
}

# (d/da, d/db) times g; None where no gradient flows. At ties max and min give all to `a`.
BINARY_BACKWARD = {
    "add": (lambda g, a, b, y: g, lambda g, a, b, y: g),
    "sub": (lambda g, a, b, y: g, lambda g, a, b, y: -g),
    "mul": (lambda g, a, b, y: g * b, lambda g, a, b, y: g * a),
    "div": (lambda g, a, b, y: g / b, lambda g, a, b, y: -g * y / b),
    "pow": (lambda g, a, b, y: g * b * a ** (b - 1), lambda g, a, b, y: g * y * np.log(a)),
    "max": (lambda g, a, b, y: np.where(a < b, 0.0, g), lambda g, a, b, y: np.where(a < b, g, 0.0)),
    "min": (lambda g, a, b, y: np.where(b < a, 0.0, g), lambda g, a, b, y: np.where(b < a, g, 0.0)),
    "relu_gate": (None, lambda g, a, b, y: np.where(a > 0, g, 0.0)),
}

COMPARE = {
    "lt": lambda a, b: (a < b).astype(np.float64),
    "eq": lambda a, b: (a == b).astype(np.float64),
    "ne": lambda a, b: (a != b).astype(np.float64),
}


# ---- broadcasting (per row, aligned on the right; a dim of 1 broadcasts) -------------------


def broadcast_type(*types: TensorType) -> TensorType:
    rows = []
    for kind in KINDS:
        length = max(len(t.row(kind)) for t in types)
        row = []
        for k in range(length):
            dims = {t.row(kind)[k - length + len(t.row(kind))] for t in types
                    if k - length + len(t.row(kind)) >= 0}  # fmt: skip
            dims.discard(1)
            if len(dims) > 1:
                raise ValueError(f"{kind} rows do not broadcast: {[t.row(kind) for t in types]}")
            row.append(dims.pop() if dims else 1)
        rows.append(tuple(row))
    return TensorType(*rows)


def _padded_dims(t: TensorType, result: TensorType) -> tuple[int, ...]:
    """`t`'s dims with each row padded on the left by 1s to the length of `result`'s row."""
    out: tuple[int, ...] = ()
    for kind in KINDS:
        out += (1,) * (len(result.row(kind)) - len(t.row(kind))) + t.row(kind)
    return out


def expand(value: np.ndarray, t: TensorType, result: TensorType) -> np.ndarray:
    return np.broadcast_to(value.reshape(_padded_dims(t, result)), result.dims)


def unbroadcast(grad: np.ndarray, t: TensorType, result: TensorType) -> np.ndarray:
    """The gradient of `expand`: sum over the broadcast axes."""
    padded = _padded_dims(t, result)
    axes = tuple(k for k, (p, r) in enumerate(zip(padded, result.dims, strict=True)) if p != r)
    return grad.sum(axis=axes, keepdims=True).reshape(t.dims)


# ---- einsum over the product space -------------------------------------------------------


class ProductSpace:
    """Every combination of the labels' values, and each axis list's index into it."""

    def __init__(self, form: EinsumForm) -> None:
        self.form = form
        self.labels = sorted(form.dims)
        shape = tuple(form.dims[label] for label in self.labels)
        self.size = math.prod(shape)
        grids = np.indices(shape).reshape(len(shape), -1) if shape else np.zeros((0, 1), int)
        self.index = {label: grids[k] for k, label in enumerate(self.labels)}

    def flat(self, axes: tuple[str | int, ...], dims: tuple[int, ...]) -> np.ndarray:
        """For each point of the space, the flat offset it reads in an array of `dims`."""
        if not axes:
            return np.zeros(self.size, dtype=np.int64)
        columns = [self.index[a] if isinstance(a, str) else np.full(self.size, a) for a in axes]
        return np.ravel_multi_index(columns, dims)


def einsum_forward(form: EinsumForm, values: list[np.ndarray]) -> np.ndarray:
    space = ProductSpace(form)
    points = [
        v.reshape(-1)[space.flat(axes, v.shape)]
        for v, axes in zip(values, form.operands, strict=True)
    ]
    combined = _combine(form.combine, points)
    result_dims = tuple(form.dims[label] for label in form.result)
    target = space.flat(form.result, result_dims)
    if form.reduce == "sum":
        out = np.zeros(math.prod(result_dims))
        np.add.at(out, target, combined)
    else:
        out = np.full(math.prod(result_dims), -np.inf)
        np.maximum.at(out, target, combined)
    return out.reshape(result_dims)


def _combine(combine: str | None, points: list[np.ndarray]) -> np.ndarray:
    if combine is None:
        return points[0]
    return points[0] * points[1] if combine == "mul" else points[0] + points[1]


def einsum_backward(
    form: EinsumForm, values: list[np.ndarray], result: np.ndarray, grad: np.ndarray
) -> list[np.ndarray]:
    """Each operand's gradient. A max sends each result cell's gradient to the points that
    reach it, split evenly among them (as torch.amax)."""
    space = ProductSpace(form)
    flats = [space.flat(axes, v.shape) for v, axes in zip(values, form.operands, strict=True)]
    points = [v.reshape(-1)[f] for v, f in zip(values, flats, strict=True)]
    target = space.flat(form.result, result.shape)
    upstream = grad.reshape(-1)[target]
    if form.reduce == "max":
        winners = _combine(form.combine, points) == result.reshape(-1)[target]
        ties = np.zeros(result.size)
        np.add.at(ties, target, winners.astype(np.float64))
        upstream = np.where(winners, upstream / np.maximum(ties[target], 1), 0.0)
    grads = []
    for k, (v, f) in enumerate(zip(values, flats, strict=True)):
        share = upstream * points[1 - k] if form.combine == "mul" else upstream
        g = np.zeros(v.size)
        np.add.at(g, f, share)
        grads.append(g.reshape(v.shape))
    return grads


# ---- compose and transpose -----------------------------------------------------------------


def _as_matrices(value: np.ndarray, t: TensorType, batch: tuple[int, ...]):
    """`value` as a stack of (output x input) matrices over the broadcast batch row."""
    padded = (1,) * (len(batch) - len(t.batch)) + t.batch
    rows, cols = math.prod(t.output), math.prod(t.input)
    return value.reshape(padded + (rows, cols))


def compose_forward(a: np.ndarray, b: np.ndarray, ta: TensorType, tb: TensorType, tr: TensorType):
    """The input axes of `a` contract with the output axes of `b`; batch rows broadcast."""
    product = _as_matrices(a, ta, tr.batch) @ _as_matrices(b, tb, tr.batch)
    return product.reshape(tr.dims)


def compose_backward(a, b, ta: TensorType, tb: TensorType, tr: TensorType, g: np.ndarray):
    ma, mb = _as_matrices(a, ta, tr.batch), _as_matrices(b, tb, tr.batch)
    mg = g.reshape(tr.batch + (math.prod(tr.output), math.prod(tr.input)))
    ga, gb = mg @ np.swapaxes(mb, -1, -2), np.swapaxes(ma, -1, -2) @ mg
    return _sum_to(ga, ma.shape).reshape(ta.dims), _sum_to(gb, mb.shape).reshape(tb.dims)


def _sum_to(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    axes = tuple(k for k, (s, g) in enumerate(zip(shape, grad.shape, strict=True)) if s != g)
    return grad.sum(axis=axes, keepdims=True)


def transpose_axes(t: TensorType) -> tuple[int, ...]:
    """The permutation of `t`'s axes giving the transposed layout (batch, input, output)."""
    nb, no, ni = len(t.batch), len(t.output), len(t.input)
    return (*range(nb), *range(nb + no, nb + no + ni), *range(nb, nb + no))


# ---- a whole program -----------------------------------------------------------------------


def forward(node: Node, values: dict[str, np.ndarray], types: dict[str, TensorType]) -> np.ndarray:
    """The value of `node` from the values of its arguments."""
    op, attrs = node.op, node.attrs
    args = [values[a] for a in node.args]
    arg_types = [types[a] for a in node.args]
    if op in ("param", "term", "literal"):
        return np.asarray(attrs["value"], dtype=np.float64).reshape(node.type.dims)
    if op == "unary":
        return UNARY[attrs["fn"]](args[0])
    if op in ("binary", "compare"):
        a, b = _binary_operands(node, args, arg_types)
        table = BINARY if op == "binary" else COMPARE
        return table[attrs["fn"]](a, b)
    if op == "where":
        c, a, b = (expand(v, t, node.type) for v, t in zip(args, arg_types, strict=True))
        return np.where(c != 0, a, b)
    if op == "fma":
        a, b, c = (expand(v, t, node.type) for v, t in zip(args, arg_types, strict=True))
        return a * b + c
    if op == "stop_gradient":
        return args[0]
    if op == "compose":
        return compose_forward(*args, *arg_types, node.type)
    if op == "transpose":
        return np.transpose(args[0], transpose_axes(arg_types[0])).reshape(node.type.dims)
    if op == "einsum":
        return einsum_forward(attrs["form"], args).reshape(node.type.dims)
    raise ValueError(f"unknown op {op!r}")


def _binary_operands(node: Node, args, arg_types):
    """The two operands expanded to the result; a Python number stands in for a missing one."""
    if "constant" in node.attrs:
        x = expand(args[0], arg_types[0], node.type)
        c = np.float64(node.attrs["constant"])
        return (c, x) if node.attrs["constant_first"] else (x, c)
    return tuple(expand(v, t, node.type) for v, t in zip(args, arg_types, strict=True))


def backward(
    node: Node,
    values: dict[str, np.ndarray],
    types: dict[str, TensorType],
    g: np.ndarray,
) -> list[np.ndarray | None]:
    """The gradient of each argument of `node` given the gradient `g` of its value."""
    op, attrs = node.op, node.attrs
    args = [values[a] for a in node.args]
    arg_types = [types[a] for a in node.args]
    y = values[node.name]
    if op == "unary":
        return [UNARY_BACKWARD[attrs["fn"]](g, args[0], y)]
    if op == "binary":
        a, b = _binary_operands(node, args, arg_types)
        rules = BINARY_BACKWARD[attrs["fn"]]
        if "constant" in attrs:
            rule = rules[1] if attrs["constant_first"] else rules[0]
            return [None if rule is None else unbroadcast(
                np.broadcast_to(rule(g, a, b, y), node.type.dims), arg_types[0], node.type)]  # fmt: skip
        return [
            None if rule is None
            else unbroadcast(np.broadcast_to(rule(g, a, b, y), node.type.dims), t, node.type)
            for rule, t in zip(rules, arg_types, strict=True)
        ]  # fmt: skip
    if op == "where":
        c = expand(args[0], arg_types[0], node.type)
        return [None, unbroadcast(np.where(c != 0, g, 0.0), arg_types[1], node.type),
                unbroadcast(np.where(c != 0, 0.0, g), arg_types[2], node.type)]  # fmt: skip
    if op == "fma":
        a, b, _ = (expand(v, t, node.type) for v, t in zip(args, arg_types, strict=True))
        return [unbroadcast(g * b, arg_types[0], node.type),
                unbroadcast(g * a, arg_types[1], node.type),
                unbroadcast(g, arg_types[2], node.type)]  # fmt: skip
    if op == "compose":
        return list(compose_backward(*args, *arg_types, node.type, g))
    if op == "transpose":
        t = arg_types[0]
        moved = g.reshape(t.batch + t.input + t.output)
        return [np.transpose(moved, np.argsort(transpose_axes(t))).reshape(t.dims)]
    if op == "einsum":
        return einsum_backward(attrs["form"], args, y, g)
    return [None] * len(args)  # leaves, comparisons, stop_gradient


def gradients(
    nodes: list[Node], values: dict[str, np.ndarray], seeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """d loss / d node for every node with a gradient, where d loss / d s = seeds[s]."""
    types = {n.name: n.type for n in nodes}
    grads = {n.name: np.zeros(n.type.dims) for n in nodes if n.grad}
    for name, seed in seeds.items():
        if name in grads:
            grads[name] = grads[name] + seed
    for node in reversed(nodes):
        if not node.grad or not node.args:
            continue
        for arg, g in zip(node.args, backward(node, values, types, grads[node.name]), strict=True):
            if g is not None and arg in grads:
                grads[arg] = grads[arg] + g
    return grads


def has_grad(op: str, args: list[Node]) -> bool:
    return op not in NON_DIFFERENTIABLE and any(a.grad for a in args)

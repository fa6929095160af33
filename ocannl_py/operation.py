"""Every operation: its shape logic, its forward code and its backward code, side by side.

Forward and backward code is written in the cd DSL with the slots `v`, `g` (the result's value
and gradient) and `v1`, `g1`, `v2`, `g2`, `v3`, `g3` (the operands'). A backward statement whose
target gradient does not exist (the operand does not depend on a parameter) is dropped.

Each public operation is registered with `@public`: `ocannl_py.__all__`, the op DSL's function
table and the Tensor methods read `REGISTRY`, so adding an operation is one definition here (and,
for a new primitive, one entry in `arrayjit.ops`). The Python operators of `Tensor` are bound at
the end of this file.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from arrayjit import assignments as asg
from arrayjit.dtypes import DType, dtype_of, float32, holds_numbers, widest_float
from arrayjit.indexing import Projections, identity_projections
from arrayjit.tnode import MemoryMode
from ocannl_py import shape as shapes
from ocannl_py.code import Assign, Code, Fill, Raw, Slot
from ocannl_py.dsl.cd import op_code
from ocannl_py.tensor import Tensor

Operand = Tensor | float | int


@dataclass(frozen=True)
class Entry:
    """A public operation: its function, its name in the op DSL's function table (None: not
    called by name there) and whether it is also a Tensor method (`t.relu()`)."""

    function: Callable[..., Tensor]
    dsl_name: str | None
    method: bool


#: Every public operation by its Python name.
REGISTRY: dict[str, Entry] = {}
#: The op DSL's function table: name in the DSL -> function.
DSL_FUNCTIONS: dict[str, Callable[..., Tensor]] = {}


def public(*, dsl: bool | str = False, method: bool = False) -> Callable:
    """Register the decorated function in `REGISTRY`; `dsl=True` makes it callable in the op DSL
    under its own name, `dsl="name"` under another; `method=True` makes it a Tensor method.
    Its arguments annotated `Operand`, `str`, `str | None`, `float` or `int` are type-checked."""

    def register(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        function = checked_arguments(function)
        name = function.__name__
        dsl_name = name if dsl is True else dsl or None
        REGISTRY[name] = Entry(function, dsl_name, method)
        if dsl_name:
            DSL_FUNCTIONS[dsl_name] = function
        if method:
            setattr(Tensor, name, function)
        return function

    return register


def _is_number(x: object) -> bool:
    return isinstance(x, int | float | np.floating | np.integer) and not isinstance(x, bool)


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


#: What an annotation of a public function's argument accepts, and how to say it.
_ARGUMENT_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "Operand": (lambda x: isinstance(x, Tensor) or _is_number(x), "a Tensor or a number"),
    "str": (lambda x: isinstance(x, str), "a string"),
    "str | None": (lambda x: x is None or isinstance(x, str), "a string or None"),
    "float": (_is_number, "a number"),
    "int": (_is_int, "an int"),
}


def describe(value: object) -> str:
    """`type value` for an error message, the value cut short."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def checked_arguments(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`function` checking its annotated arguments (see `_ARGUMENT_CHECKS`): a TypeError naming
    the function, the argument and what it expects."""
    signature = inspect.signature(function)
    checks = {
        name: _ARGUMENT_CHECKS[p.annotation]
        for name, p in signature.parameters.items()
        if p.annotation in _ARGUMENT_CHECKS
    }
    if not checks:
        return function

    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return function(*args, **kwargs)  # Python's own message for a wrong call
        for name, value in bound.arguments.items():
            if name in checks and not checks[name][0](value):
                raise TypeError(
                    f"{function.__name__}: argument {name!r} must be {checks[name][1]}, "
                    f"got {describe(value)}"
                )
        return function(*args, **kwargs)

    return checked


def as_tensor(x: Operand) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, int | float | np.floating | np.integer) and not isinstance(x, bool):
        return inline_number(float(x))
    raise TypeError(f"expected a Tensor or a number, got {type(x).__name__}: {x!r}")


def result_dtype(label: str, args: Sequence[Tensor], kinds: str = "float") -> DType:
    """The element type of an operation's result: the widest float type of its operands (numbers
    take the others' type). `kinds`: "float" for an op computing on floats only (an int32
    operand is a TypeError naming it); "int" for one that computes on int32 too, when every
    operand is int32; "compare" for a comparison, which may mix them (computing in float)."""
    typed = [a for a in args if not a.weak_dtype]
    ints = [a for a in typed if not a.dtype.is_float]
    floats = [a for a in typed if a.dtype.is_float]
    if ints and kinds == "float":
        raise TypeError(
            f"{label}: tensor {ints[0].label!r} holds {ints[0].dtype} values, but this operation "
            f'computes on floats only; convert it with oc.cast(t, "float32")'
        )
    if ints and floats and kinds == "int":
        raise TypeError(
            f"{label}: tensor {ints[0].label!r} holds {ints[0].dtype} values and "
            f"{floats[0].label!r} {floats[0].dtype} values; convert one with oc.cast first"
        )
    if floats:
        return widest_float(a.dtype for a in floats)
    return ints[0].dtype if ints else float32


def operation(
    label: str,
    logic: shapes.Logic,
    operands: Sequence[Operand],
    forward: str,
    backward: str | None,
    *,
    scratch: Sequence[str] = (),
    kinds: str = "float",
    dtype: DType | None = None,
) -> Tensor:
    """Build the tensor of one operation: constrain shapes, then attach its code. Each name of
    `scratch` is a slot of the backward code for a buffer shaped like the result (scratch of the
    routine that runs the backward code, e.g. a count per result cell). The result's type is
    `dtype`, or follows the operands (see `result_dtype`)."""
    args = tuple(as_tensor(o) for o in operands)
    dtype = dtype or result_dtype(label, args, kinds)
    result_shape = shapes.Shape(label)
    step = shapes.propagate(logic, result_shape, [a.shape for a in args], op_label=label)
    t = Tensor(label, result_shape, args, differentiable=backward is not None, dtype=dtype)
    t.forward_code = op_code(forward, t, args, step)
    if t.requires_grad and backward:
        buffers = {
            name: Tensor(f"{label}.{name}", result_shape, differentiable=False,
                         memory_mode=MemoryMode.LOCAL, dtype=dtype.compute)
            for name in scratch
        }  # fmt: skip
        t.backprop_code = op_code(backward, t, args, step, buffers)
    return t


def unary(label: str, a: Operand, forward: str, backward: str | None, kinds="float") -> Tensor:
    return operation(label, shapes.Pointwise(), [a], forward, backward, kinds=kinds)


def binary(
    label: str,
    a: Operand,
    b: Operand,
    forward: str,
    backward: str | None,
    *,
    logic=None,
    kinds: str = "float",
) -> Tensor:
    return operation(label, logic or shapes.Pointwise(), [a, b], forward, backward, kinds=kinds)


# ---- leaves ------------------------------------------------------------------------------------

_seed = 0
_param_counter = itertools.count()


@public()
def set_seed(seed) -> None:
    """Make parameter initialisation reproducible: the k-th parameter created after
    `set_seed(n)` always gets the same values."""
    global _seed, _param_counter
    # A ValueError for any bad seed, as documented before type checks came.
    if not _is_int(seed) or seed < 0 or seed >= 2**32:
        raise ValueError(f"set_seed: expected an int in [0, 2**32), got {seed!r}")
    _seed = int(seed)
    _param_counter = itertools.count()


def _dims_arg(dims, what: str, where: str):
    """`dims` (None, an int, or a sequence of ints and (label, int) pairs) as a list with numpy
    integers made ints; `where` names the call. Types are checked here, values by `shape.Shape`."""
    if dims is None:
        return None
    if _is_int(dims):
        dims = [dims]
    if isinstance(dims, str | bytes) or not isinstance(dims, Sequence | np.ndarray):
        raise TypeError(
            f"{where}: argument {what!r} must be an int or a sequence of ints, got {describe(dims)}"
        )

    def plain(size):
        return int(size) if isinstance(size, np.integer) else size

    dims = list(dims)
    for d in dims:
        if not (_is_int(d) or isinstance(d, tuple)):
            raise TypeError(
                f"{where}: argument {what!r} must hold ints or (label, int) pairs, got "
                f"{describe(d)} in {dims}"
            )
    return [(d[0], plain(d[1])) if isinstance(d, tuple) and len(d) == 2 else plain(d) for d in dims]


def _sizes(dims) -> list[int]:
    return [d[1] if isinstance(d, tuple) else d for d in dims]


def _numbers_arg(values, what: str, function: str) -> np.ndarray:
    """`values` (a number, or nested lists or an array of numbers) as a float64 array."""
    try:
        array = np.asarray(values)
        if not holds_numbers(array.dtype):
            raise TypeError
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{function}: argument {what!r} must be a number or an array (or nested lists) of "
            f"numbers, got {describe(values)}"
        ) from None


def _leaf_shape(
    function: str, label: str, batch_dims, input_dims, output_dims, **kw
) -> shapes.Shape:
    where = f"{function} {label!r}"
    return shapes.Shape(
        label,
        batch_dims=_dims_arg(batch_dims, "batch_dims", where),
        input_dims=_dims_arg(input_dims, "input_dims", where),
        output_dims=_dims_arg(output_dims, "output_dims", where),
        **kw,
    )


@public()
def number(value: float, label: str | None = None) -> Tensor:
    """A constant with one output axis of dim 1 (as in OCANNL), which broadcasts, even into no
    axis (`p + 3.0` has p's shape); its input row takes no axes unless compose asks for some
    (`2 * m` sums m's output axes). Computed inline, never stored."""
    label = label or f"{value:g}"
    shape = shapes.Shape(
        label, batch_dims=[], output_dims=[1], fewest_axes=("input",), weak_axes=("output",)
    )
    t = Tensor(label, shape, differentiable=False, memory_mode=MemoryMode.VIRTUAL)
    t.weak_dtype = True  # takes the type of what it is combined with
    t.forward_code = Code([Fill(Slot(t), asg.Constant(float(value)))])
    return t


def inline_number(value: float, label: str | None = None) -> Tensor:
    """A number written in an expression (a Python float, a DSL literal): no other operation can
    use it, so an operation with it need not wait for compose to give its input row axes."""
    t = number(value, label)
    t.shape.single_use = True
    return t


def _values_fill(t: Tensor, values: np.ndarray) -> Code:
    def build() -> asg.Assignments:
        dims = t.value_node.dims
        if values.size != t.value_node.size:
            raise ValueError(
                f"{t.label!r}: {values.size} values given for a shape {t.shape} of {t.value_node.size} cells"
            )
        return asg.Fetch(t.value_node, asg.Values(values.reshape(dims)))

    return Code([Raw(build, (t,))])


@public()
def param(
    label: str,
    value=None,
    *,
    batch_dims=None,
    input_dims=None,
    output_dims=None,
    init: tuple[str, float | Callable[[], float]] | None = None,
    dtype: str | DType = "float32",
) -> Tensor:
    """A trainable parameter of a float `dtype`. Unspecified dims are inferred from use;
    parameters have no batch axes unless `batch_dims` says so. `value` fills it: a scalar (any dims), or an array in
    batch, output, input axis order (with no dims given, its axes are output axes). Otherwise it
    is drawn uniformly from [-1/sqrt(fan_in), 1/sqrt(fan_in)], fan_in being the product of its
    input dims, by the counter-based generator seeded with `oc.set_seed`; `init=("uniform", b)`
    draws from [-b, b] instead and `init=("normal", std)` from N(0, std^2), where `b` or `std` is
    a number or a function of no arguments called once the dims are known."""
    if not isinstance(label, str) or not label:
        raise TypeError(f"param: the label must be a non-empty string, got {label!r}")
    _check_init(label, init, value)
    array = None if value is None else _numbers_arg(value, "value", f"param {label!r}")
    if array is not None and array.ndim > 0:
        # Dims not given come from the value's axes: batch, then output, then input.
        rest = list(array.shape[len(batch_dims or []) :])
        if output_dims is None:
            output_dims = rest[: len(rest) - len(input_dims or [])]
        if input_dims is None:
            input_dims = rest[len(output_dims) :]
    shape = _leaf_shape(
        "param", label, [] if batch_dims is None else batch_dims, input_dims, output_dims,
        is_param=True, dims_required=array is None or array.ndim > 0,
    )  # fmt: skip
    if array is not None and array.ndim > 0:
        shapes.settle(shape, array.shape, f"param {label!r}")
    dtype = _leaf_dtype(dtype, label)
    if not dtype.is_float:
        raise TypeError(f"param {label!r}: parameters hold float values, not {dtype}")
    t = Tensor(label, shape, is_param=True, dtype=dtype)
    if array is None:
        t.init_code = _random_init(t, random_stream(), init)
    elif array.ndim == 0:
        t.init_code = Code([Fill(Slot(t), asg.Constant(float(array)))])
    else:
        t.init_code = _values_fill(t, array)
    return t


def random_stream() -> int:
    """The key of the next random stream: `(seed << 20) + k` for the k-th parameter (or other
    user of random numbers, such as a dropout) created since `oc.set_seed(seed)`."""
    return (_seed << 20) + next(_param_counter)


def _check_init(label: str, init, value) -> None:
    if init is None:
        return
    if value is not None:
        raise ValueError(f"param {label!r}: give either a value or init=, not both")
    ok = isinstance(init, tuple) and len(init) == 2 and init[0] in ("uniform", "normal")
    if not ok or not (callable(init[1]) or _is_scale(init[1])):
        raise ValueError(
            f"param {label!r}: init must be ('uniform', bound) or ('normal', std) with a "
            f"non-negative number or a function returning one, got {init!r}"
        )


def _is_scale(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, int | float | np.floating | np.integer):
        return False
    return bool(np.isfinite(x)) and x >= 0


def _random_init(t: Tensor, seed: int, init=None) -> Code:
    from arrayjit.tnode import TNode

    def build() -> asg.Assignments:
        node = t.value_node
        kind, scale = init or ("uniform", lambda: 1.0 / np.sqrt(_fan_in(t)))
        scale = scale() if callable(scale) else scale
        if not _is_scale(scale):
            raise ValueError(
                f"param {t.label!r}: the {kind} init's scale must be a non-negative number, its "
                f"function gave {scale!r}"
            )
        seed_node = TNode(f"{t.label}_seed", (), "float64", MemoryMode.VIRTUAL)
        counter = TNode(f"{t.label}_counter", node.dims, "float64", MemoryMode.VIRTUAL)
        # Drawn in float64 (a virtual buffer, inlined): seeds and counters stay exact integers
        # (in float32, seeds of 2^24 and more would round, and parameters would share values).
        draw = TNode(f"{t.label}_draw", node.dims, "float64", MemoryMode.VIRTUAL)
        cells = identity_projections(node.dims, 0)
        # The seed is a scalar (no axes); the counter walks the parameter's cells.
        proj = Projections(cells.product_space, cells.product_iterators, cells.project_lhs,
                           ((), cells.project_lhs))  # fmt: skip
        expr = _uniform(float(scale)) if kind == "uniform" else _normal(float(scale))
        # The seed is read from a buffer rather than printed as a literal, so that parameters of
        # equal dims share one compiled init function.
        return asg.seq([
            asg.Fetch(seed_node, asg.Values(np.array(float(seed)))),
            asg.Fetch(counter, asg.RangeOfShape()),
            asg.Accum(draw, None, expr, (seed_node, counter), proj),
            asg.Accum(node, None, asg.Arg(0), (draw,), identity_projections(node.dims, 1)),
        ])  # fmt: skip

    return Code([Raw(build, (t,))])


def _leaf_dtype(dtype, label: str) -> DType:
    try:
        return dtype_of(dtype)
    except TypeError as exc:
        raise TypeError(f"{label!r}: {exc}") from None


def _fan_in(t: Tensor) -> int:
    return int(np.prod(t.shape.input, dtype=np.int64)) if t.shape.input else 1


def _call(op: str, *args) -> asg.Call:
    return asg.Call(op, args)


def _uniform(bound: float) -> asg.Call:
    """U(-bound, bound) from Threefry of (seed, counter) = (Arg 0, Arg 1)."""
    uniform = _call("uniform_at", asg.Arg(0), asg.Arg(1))
    return _call("sub", _call("mul", uniform, asg.Lit(2 * bound)), asg.Lit(bound))


def _normal(std: float) -> asg.Call:
    """N(0, std^2) by Box-Muller from the uniforms at counters 2c and 2c + 1."""
    even = _call("mul", asg.Arg(1), asg.Lit(2.0))
    u1 = _call("uniform_at", asg.Arg(0), even)
    u2 = _call("uniform_at", asg.Arg(0), _call("add", even, asg.Lit(1.0)))
    radius = _call(
        "sqrt", _call("mul", asg.Lit(-2.0), _call("log", _call("sub", asg.Lit(1.0), u1)))
    )
    angle = _call("cos", _call("mul", asg.Lit(2 * np.pi), u2))
    return _call("mul", asg.Lit(std), _call("mul", radius, angle))


@public()
def term(
    label: str, *, batch_dims=None, input_dims=None, output_dims=None, dtype="float32"
) -> Tensor:
    """A non-trainable input (data, targets, int32 token ids), filled with `set_value`."""
    shape = _leaf_shape("term", label, batch_dims, input_dims, output_dims)
    return Tensor(label, shape, differentiable=False, dtype=_leaf_dtype(dtype, label))


@public()
def ndarray(
    values,
    *,
    batch_dims=(),
    input_dims=(),
    output_dims=(),
    label: str | None = None,
    dtype="float32",
) -> Tensor:
    """A constant literal of `dtype`; the dims must multiply to the number of values."""
    array = _numbers_arg(values, "values", "ndarray")
    batch_dims, input_dims, output_dims = (
        _dims_arg(dims, what, "ndarray") or []
        for dims, what in ((batch_dims, "batch_dims"), (input_dims, "input_dims"),
                           (output_dims, "output_dims"))
    )  # fmt: skip
    dims = _sizes([*batch_dims, *output_dims, *input_dims])
    if int(np.prod(dims, dtype=np.int64)) != array.size:
        raise ValueError(
            f"ndarray: dims batch {list(batch_dims)}, output {list(output_dims)}, input "
            f"{list(input_dims)} hold {int(np.prod(dims))} values, got {array.size}"
        )
    label = (
        label
        or f"[{', '.join(f'{v:g}' for v in array.ravel()[:4])}{', ...' if array.size > 4 else ''}]"
    )
    shape = _leaf_shape("ndarray", label, batch_dims, input_dims, output_dims)
    t = Tensor(label, shape, differentiable=False, dtype=_leaf_dtype(dtype, label))
    t.forward_code = _values_fill(t, array)
    return t


@public()
def range(n: int, label: str | None = None, dtype="float32") -> Tensor:  # noqa: A001
    """Values 0..n-1 along one output axis (OCANNL's name)."""
    if n < 1:
        raise ValueError(f"range: n must be a positive int, got {n!r}")
    return range_of_shape(output_dims=[n], label=label or f"range{n}", dtype=dtype)


@public()
def range_of_shape(
    *, batch_dims=(), input_dims=(), output_dims=(), label: str | None = None, dtype="float32"
) -> Tensor:
    """Each cell holds its row-major offset, in batch, output, input order."""
    label = label or "range_of_shape"
    shape = _leaf_shape("range_of_shape", label, batch_dims, input_dims, output_dims)
    t = Tensor(label, shape, differentiable=False, dtype=_leaf_dtype(dtype, label))
    t.forward_code = Code([Fill(Slot(t), asg.RangeOfShape())])
    return t


# ---- pointwise binary ----------------------------------------------------------------------------


@public()
def add(a: Operand, b: Operand) -> Tensor:
    return binary("+", a, b, "v =: v1 + v2", "g1 =+ g; g2 =+ g", kinds="int")


@public()
def sub(a: Operand, b: Operand) -> Tensor:
    return binary("-", a, b, "v =: v1 - v2", "g1 =+ g; g2 =- g", kinds="int")


@public()
def pointmul(a: Operand, b: Operand) -> Tensor:
    return binary("*.", a, b, "v =: v1 * v2", "g1 =+ g * v2; g2 =+ v1 * g", kinds="int")


@public()
def pointdiv(a: Operand, b: Operand) -> Tensor:
    return binary("/.", a, b, "v =: v1 / v2", "g1 =+ g / v2; g2 =- g * v / v2")


@public()
def pointpow(a: Operand, b: Operand) -> Tensor:
    """`a ** b` pointwise; the gradient for `b` needs `a > 0` (it uses log a)."""
    return binary(
        "**.", a, b, "v =: v1 ** v2",
        "g1 =+ g * v2 * v1 ** (v2 - 1); g2 =+ g * v * log(v1)",
    )  # fmt: skip


@public(dsl=True)
def max(a: Operand, b: Operand) -> Tensor:  # noqa: A001 - OCANNL's name
    return binary("max", a, b, "v =: max(v1, v2)",
                  "g1 =+ where(v1 < v2, 0, g); g2 =+ where(v1 < v2, g, 0)", kinds="int")  # fmt: skip


@public(dsl=True)
def min(a: Operand, b: Operand) -> Tensor:  # noqa: A001 - OCANNL's name
    return binary("min", a, b, "v =: min(v1, v2)",
                  "g1 =+ where(v2 < v1, 0, g); g2 =+ where(v2 < v1, g, 0)", kinds="int")  # fmt: skip


@public()
def relu_gate(a: Operand, b: Operand) -> Tensor:
    """`a > 0 ? b : 0`; the gradient flows to `b` only."""
    return binary("-?/", a, b, "v =: v1 -?/ v2", "g2 =+ v1 -?/ g")


@public(dsl=True)
def lt(a: Operand, b: Operand) -> Tensor:
    return binary("<", a, b, "v =: v1 < v2", None, kinds="compare")


@public(dsl=True)
def eq(a: Operand, b: Operand) -> Tensor:
    return binary("=", a, b, "v =: v1 == v2", None, kinds="compare")


@public(dsl=True)
def ne(a: Operand, b: Operand) -> Tensor:
    return binary("<>", a, b, "v =: v1 <> v2", None, kinds="compare")


# ---- pointwise unary -----------------------------------------------------------------------------


@public(dsl=True, method=True)
def neg(a: Operand) -> Tensor:
    return unary("neg", a, "v =: -v1", "g1 =- g", kinds="int")


@public(dsl=True, method=True)
def relu(a: Operand) -> Tensor:
    return unary("relu", a, "v =: relu(v1)", "g1 =+ v1 -?/ g", kinds="int")


@public(dsl=True, method=True)
def sat01(a: Operand) -> Tensor:
    return unary("sat01", a, "v =: sat01(v1)", "g1 =+ where(v1 < 0, 0, where(1 < v1, 0, g))")


@public(dsl=True, method=True)
def exp(a: Operand) -> Tensor:
    return unary("exp", a, "v =: exp(v1)", "g1 =+ g * v")


@public(dsl=True, method=True)
def log(a: Operand) -> Tensor:
    return unary("log", a, "v =: log(v1)", "g1 =+ g / v1")


@public(dsl=True, method=True)
def exp2(a: Operand) -> Tensor:
    return unary("exp2", a, "v =: exp2(v1)", "g1 =+ g * v * 0.6931471805599453")


@public(dsl=True, method=True)
def log2(a: Operand) -> Tensor:
    return unary("log2", a, "v =: log2(v1)", "g1 =+ g / (v1 * 0.6931471805599453)")


@public(dsl=True, method=True)
def sin(a: Operand) -> Tensor:
    return unary("sin", a, "v =: sin(v1)", "g1 =+ g * cos(v1)")


@public(dsl=True, method=True)
def cos(a: Operand) -> Tensor:
    return unary("cos", a, "v =: cos(v1)", "g1 =- g * sin(v1)")


@public(dsl=True, method=True)
def sqrt(a: Operand) -> Tensor:
    return unary("sqrt", a, "v =: sqrt(v1)", "g1 =+ g * 0.5 / v")


@public(dsl=True, method=True)
def recip(a: Operand) -> Tensor:
    return unary("recip", a, "v =: recip(v1)", "g1 =- g * v * v")


@public(dsl=True, method=True)
def recip_sqrt(a: Operand) -> Tensor:
    return unary("recip_sqrt", a, "v =: recip_sqrt(v1)", "g1 =- g * 0.5 * v / v1")


@public(dsl=True, method=True)
def tanh(a: Operand) -> Tensor:
    return unary("tanh", a, "v =: tanh(v1)", "g1 =+ g * (1 - v * v)")


@public(dsl=True, method=True)
def erf(a: Operand) -> Tensor:
    """The error function; d/dx erf(x) = 2 / sqrt(pi) * exp(-x^2)."""
    return unary("erf", a, "v =: erf(v1)", "g1 =+ g * 1.1283791670955126 * exp(-v1 * v1)")


@public(dsl="not")
def not_(a: Operand) -> Tensor:
    return unary("not", a, "v =: not(v1)", None, kinds="int")


@public(dsl=True)
def identity(a: Operand) -> Tensor:
    return unary("identity", a, "v =: v1", "g1 =+ g", kinds="int")


@public(dsl=True, method=True)
def stop_gradient(a: Operand) -> Tensor:
    """The same values; no gradient flows back through it."""
    return unary("stop_gradient", a, "v =: v1", None, kinds="int")


@public(method=True)
def cast(a: Operand, dtype: str | DType) -> Tensor:
    """`a`'s values converted to `dtype`: floats round to nearest even, a float becomes an int32
    toward zero (saturating, NaN to 0). Differentiable between float types (the gradient is
    converted back)."""
    a = as_tensor(a)
    target = dtype_of(dtype)
    differentiable = a.dtype.is_float and target.is_float
    backward = "g1 =+ g" if differentiable else None
    return operation(f"cast_{target}", shapes.Pointwise(), [a], "v =: v1", backward, dtype=target)


# ---- ternary -------------------------------------------------------------------------------------


@public(dsl=True)
def where(cond: Operand, a: Operand, b: Operand) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    return operation("where", shapes.Pointwise(), [cond, a, b], "v =: where(v1, v2, v3)",
                     "g2 =+ where(v1, g, 0); g3 =+ where(v1, 0, g)",
                     dtype=result_dtype("where", [a, b], "int"))  # fmt: skip


@public(dsl=True)
def fma(a: Operand, b: Operand, c: Operand) -> Tensor:
    return operation("fma", shapes.Pointwise(), [a, b, c], "v =: fma(v1, v2, v3)",
                     "g1 =+ g * v2; g2 =+ v1 * g; g3 =+ g")  # fmt: skip


# ---- compose, transpose, einsum ----------------------------------------------------------------


@public()
def compose(a: Operand, b: Operand) -> Tensor:
    """OCANNL's `*`: the input axes of `a` contract with the output axes of `b`."""
    return binary("*", a, b, "v =:+ v1 * v2", "g1 =+ g * v2; g2 =+ v1 * g", logic=shapes.Compose())


@public(dsl=True)
def transpose(a: Operand) -> Tensor:
    """Swap input and output axes."""
    return operation("T", shapes.Transpose(), [a], "v =: v1", "g1 =+ g", kinds="int")


@public()
def einsum(spec: str, a: Operand, b: Operand) -> Tensor:
    """Multiply then sum (OCANNL `+*`), as the spec `"rhs1;rhs2=>lhs"` says."""
    return binary(f"+*{spec}", a, b, "v =:+ v1 * v2", "g1 =+ g * v2; g2 =+ v1 * g",
                  logic=shapes.Einsum(spec))  # fmt: skip


@public()
def einsum1(spec: str, a: Operand) -> Tensor:
    """Permute, reduce (by summing), take diagonals or fixed indices (OCANNL `++`)."""
    return operation(f"++{spec}", shapes.Einsum(spec), [a], "v =:+ v1", "g1 =+ g")


@public()
def outer_sum(spec: str, a: Operand, b: Operand) -> Tensor:
    """Add then sum (OCANNL `+++`)."""
    return binary(
        f"+++{spec}", a, b, "v =:+ v1 + v2", "g1 =+ g; g2 =+ g", logic=shapes.Einsum(spec)
    )


@public()
def einmax1(spec: str, a: Operand) -> Tensor:
    """Reduce by max (OCANNL `@^^`). The gradient splits evenly among the cells equal to the
    max, as PyTorch's amax: `ties` counts them per result cell."""
    return operation(
        f"@^^{spec}", shapes.Einsum(spec), [a], "v =:@^ v1",
        "ties =:+ v1 == v; g1 =+ where(v1 == v, g / ties, 0)", scratch=["ties"],
    )  # fmt: skip


@public()
def tropical(spec: str, a: Operand, b: Operand) -> Tensor:
    """Add then reduce by max (OCANNL `@^+`, the max-plus product). The gradient splits evenly
    among the pairs whose sum is the max (as amax over the sums), each operand of a pair
    getting its share."""
    return operation(
        f"@^+{spec}", shapes.Einsum(spec), [a, b], "v =:@^ v1 + v2",
        "ties =:+ v1 + v2 == v; g1 =+ where(v1 + v2 == v, g / ties, 0); "
        "g2 =+ where(v1 + v2 == v, g / ties, 0)",
        scratch=["ties"],
    )  # fmt: skip


# ---- gather ------------------------------------------------------------------------------------

#: ids `B | ` (no input or output axes), table `vocab -> d` => `B | d`: the vocab axis is then
#: indexed by the ids' values rather than iterated over (`code.Assign.lookup`).
_EMBED_SPEC = "...|; v -> ..d.. => ...|..d.."


@public()
def embed(table: Tensor, ids: Tensor) -> Tensor:
    """Rows of `table` (input axis: the vocabulary, output axes `d`) picked by the int32 `ids`
    (batch axes only): the result is `ids' batch | d`. An id outside the vocabulary is an
    `IndexOutOfRange` error at run time. The gradient adds each row's gradient into
    `table.grad` (in order on the C backend: deterministic)."""
    if not isinstance(table, Tensor) or not isinstance(ids, Tensor):
        raise TypeError("embed(table, ids): both must be Tensors")
    if ids.dtype.name != "int32":
        raise TypeError(f"embed: the ids {ids.label!r} must be an int32 tensor, not {ids.dtype}")
    if not table.dtype.is_float:
        raise TypeError(f"embed: the table {table.label!r} must hold floats, not {table.dtype}")
    label = f"embed({table.label})"
    result_shape = shapes.Shape(label)
    step = shapes.propagate(
        shapes.Einsum(_EMBED_SPEC), result_shape, [ids.shape, table.shape], op_label=label
    )
    t = Tensor(label, result_shape, (ids, table), dtype=table.dtype)
    text = f"{label} =: {table.label}[{ids.label}]"
    t.forward_code = Code(
        [Assign(Slot(t), None, False, asg.Arg(1), (Slot(ids), Slot(table)), step, 0, (1, 2),
                text, lookup=(1, 2))]
    )  # fmt: skip
    if t.requires_grad:
        text = f"{table.label}.grad[{ids.label}] =+ {label}.grad"
        t.backprop_code = Code(
            [Assign(Slot(table, True), "add", False, asg.Arg(1), (Slot(ids), Slot(t, True)),
                    step, 2, (1, 0), text, lookup=(1, 2))]
        )  # fmt: skip
    return t


# ---- concatenation -----------------------------------------------------------------------------


def _check_operands(function: str, tensors: Sequence[object]) -> None:
    """A TypeError naming `function` and the position of an operand that is not one."""
    accepts, expected = _ARGUMENT_CHECKS["Operand"]
    for k, x in enumerate(tensors):
        if not accepts(x):
            raise TypeError(f"{function}: operand {k + 1} must be {expected}, got {describe(x)}")


@public()
def concat(spec: str, *tensors: Tensor | float) -> Tensor:
    """Concatenate along the result's `^` axis (OCANNL's `^`): `"a, ...; b, ... => a^b, ..."`
    puts `x` then `y` along the first output axis; each operand is copied to its own range."""
    _check_operands("concat", tensors)
    n = len(tensors)
    forward = "; ".join(f"v =: v{k}" for k in builtins.range(1, n + 1))
    backward = "; ".join(f"g{k} =+ g" for k in builtins.range(1, n + 1))
    return operation(f"^{spec}", shapes.Concat(spec), tensors, forward, backward)


@public()
def stack(tensors: Sequence[Tensor | float], kind: str = "output") -> Tensor:
    """Stack tensors of the same shape along a new first axis of `kind` (batch, input or
    output): the result's axis k holds tensor k."""
    if kind not in shapes.KINDS:
        raise ValueError(f"stack: kind must be one of {', '.join(shapes.KINDS)}, got {kind!r}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    _check_operands("stack", tensors)
    rows = {"batch": "..b..", "input": "..i..", "output": "..o.."}

    def shape_spec(first: str) -> str:
        row = {k: f"{first}, {v}" if k == kind and first else v for k, v in rows.items()}
        return f"{row['batch']} | {row['input']} -> {row['output']}"

    # Each tensor gets the new axis (of dim 1, a fixed index), then they are concatenated.
    expanded = [einsum1(f"{shape_spec('')} => {shape_spec('0')}", t) for t in tensors]
    if len(expanded) == 1:
        return expanded[0]
    names = [f"s{k}" for k in builtins.range(len(tensors))]
    spec = "; ".join(shape_spec(name) for name in names) + f" => {shape_spec('^'.join(names))}"
    return concat(spec, *expanded)


# ---- Python operators of Tensor (numpy conventions; `@` is compose) -----------------------------


def _bind_tensor_operators() -> None:
    Tensor.__add__ = add
    Tensor.__radd__ = lambda self, other: add(other, self)
    Tensor.__sub__ = sub
    Tensor.__rsub__ = lambda self, other: sub(other, self)
    Tensor.__mul__ = pointmul
    Tensor.__rmul__ = lambda self, other: pointmul(other, self)
    Tensor.__truediv__ = pointdiv
    Tensor.__rtruediv__ = lambda self, other: pointdiv(other, self)
    Tensor.__pow__ = pointpow
    Tensor.__neg__ = neg
    Tensor.__matmul__ = compose
    Tensor.__rmatmul__ = lambda self, other: compose(other, self)


_bind_tensor_operators()

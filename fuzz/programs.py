"""Random well-typed programs over ocannl_py's public API, NNSmith-style: each step picks an
operation and operands whose types fit (random shapes and axis kinds), writes the Python line
that builds it with ocannl_py (operators, functions or the op DSL, at random) and records what it
computes for the numpy reference. A step whose values would make the comparison meaningless
(overflow, a point near a kink or a near tie, a value outside a function's domain) is dropped, so
every kept program has one right answer up to float32 rounding.

Two value modes: "float" (random floats) and "ties" (small integers, exact in float32, with
only exact operations: max ties, relu at 0 and equal operands happen and must agree exactly).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from fuzz import reference as ref
from fuzz.reference import KINDS, Node, TensorType
from fuzz.specs import random_einsum

MAX_CELLS = 48
LEAVES = ("param", "term", "literal")
KINK_GAP = 1e-3  # float mode: inputs this close to a kink (but not on it) are dropped
MAX_MAGNITUDE = 1e4

UNARY_FLOAT = ["neg", "relu", "sat01", "exp", "log", "exp2", "log2", "sin", "cos", "sqrt",
               "recip", "recip_sqrt", "tanh", "identity"]  # fmt: skip
UNARY_EXACT = ["neg", "relu", "sat01", "identity"]
BINARY_FLOAT = ["add", "sub", "mul", "div", "max", "min", "relu_gate"]
BINARY_EXACT = ["add", "sub", "mul", "max", "min", "relu_gate"]

# How each binary function is written: (Python operator, op DSL operator, function name).
BINARY_FORMS = {
    "add": ("+", "+", "add"),
    "sub": ("-", "-", "sub"),
    "mul": ("*", "*.", "pointmul"),
    "div": ("/", "/.", "pointdiv"),
    "pow": ("**", "**.", "pointpow"),
    "max": (None, "@^", "max"),
    "min": (None, "@-", "min"),
    "relu_gate": (None, "-?/", "relu_gate"),
}
COMPARE_FORMS = {"lt": "<", "eq": "=", "ne": "<>"}
EINSUMS = {  # function: (reduce, combine, op DSL operator)
    "einsum": ("sum", "mul", "+*"),
    "outer_sum": ("sum", "add", "+++"),
    "tropical": ("max", "add", "@^+"),
    "einsum1": ("sum", None, "++"),
    "einmax1": ("max", None, "@^^"),
}


class Rejected(Exception):
    """The step would not have one right answer (see the module docstring)."""


@dataclass
class Program:
    nodes: list[Node] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    mode: str = "float"
    ops: list[str] = field(default_factory=list)  # the operation of each step, for reports

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


class Generator:
    def __init__(self, rng: random.Random, mode: str, include_known: bool = False) -> None:
        self.rng = rng
        self.mode = mode
        self.include_known = include_known
        self.program = Program(mode=mode)
        self.counter = 0

    # ---- types and leaves ---------------------------------------------------------------

    def random_type(self, max_axes: int = 4) -> TensorType:
        rng = self.rng
        while True:
            rows = []
            for kind in KINDS:
                n = rng.choice([0, 0, 1, 1, 2]) if kind != "output" else rng.choice([0, 1, 1, 2])
                rows.append(tuple(rng.choice([1, 2, 2, 3, 3, 4, 5]) for _ in range(n)))
            t = TensorType(*rows)
            if len(t.dims) <= max_axes and t.cells <= MAX_CELLS:
                return t

    def random_values(self, t: TensorType) -> np.ndarray:
        rng = np.random.default_rng(self.rng.getrandbits(32))
        if self.mode == "ties":
            return rng.integers(-2, 4, t.dims).astype(np.float64)
        values = rng.normal(size=t.dims) * self.rng.choice([0.5, 1.0, 2.0])
        return values.astype(np.float32).astype(np.float64)  # exact in both

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def leaf(self, t: TensorType | None = None) -> Node:
        t = t or self.random_type()
        values = self.random_values(t)
        kind = self.rng.choices(["param", "term", "literal"], [6, 3, 1])[0]
        name = self.fresh({"param": "p", "term": "x", "literal": "c"}[kind])
        dims = (
            f"batch_dims={list(t.batch)}, input_dims={list(t.input)}, output_dims={list(t.output)}"
        )
        data = _array_text(values)
        if kind == "param":
            line = f'{name} = oc.param("{name}", {data}, {dims})'
        elif kind == "term":
            line = f'{name} = oc.term("{name}", {dims})\n{name}.set_value({data})'
        else:
            line = f"{name} = oc.ndarray({data}, {dims})"
        node = Node(name, t, kind, attrs={"value": values}, grad=kind == "param")
        return self.add(node, line, check=False)

    def add(self, node: Node, line: str, check: bool = True) -> Node:
        program = self.program
        types = {n.name: n.type for n in program.nodes}
        with np.errstate(all="ignore"):  # a value out of a domain is rejected below
            value = ref.forward(node, program.values, types)
        if check:
            self.check(node, value)
        program.nodes.append(node)
        program.lines.append(line)
        program.values[node.name] = value
        program.ops.append(node.attrs.get("fn", node.op))
        return node

    # ---- what keeps the comparison meaningful -------------------------------------------

    def check(self, node: Node, value: np.ndarray) -> None:
        if not np.all(np.isfinite(value)) or np.any(np.abs(value) > MAX_MAGNITUDE):
            raise Rejected("overflow")
        if self.mode == "ties":
            return
        values = [self.program.values[a] for a in node.args]
        fn = node.attrs.get("fn")
        if node.op == "unary":
            x = values[0]
            if fn in ("relu",):
                _away_from(x, 0.0)
            if fn == "sat01":
                _away_from(x, 0.0)
                _away_from(x, 1.0)
            if fn in ("log", "log2", "sqrt", "recip_sqrt") and np.any(x < 0.1):
                raise Rejected("domain")
            if fn == "recip" and np.any(np.abs(x) < 0.1):
                raise Rejected("domain")
            if fn in ("exp", "exp2") and np.any(x > 6):
                raise Rejected("overflow")
        if node.op in ("binary", "compare"):
            a, b = ref._binary_operands(
                node, values, [self.program.node(n).type for n in node.args]
            )
            if fn in ("max", "min", "lt", "eq", "ne"):
                _away_from(np.asarray(a - b), 0.0)
            if fn == "relu_gate":
                _away_from(np.asarray(a), 0.0)
            if fn == "div" and np.any(np.abs(b) < 0.1):
                raise Rejected("domain")
            if fn == "pow" and np.any(np.asarray(a) < 0.1):
                raise Rejected("domain")
        if node.op == "einsum" and node.attrs["form"].reduce == "max":
            _no_near_ties(node.attrs["form"], values, value, self.mode == "ties")

    # ---- operations ---------------------------------------------------------------------

    def operand(self, t: TensorType | None = None) -> Node:
        """An earlier node (of type `t` when given), or a new leaf."""
        nodes = [n for n in self.program.nodes if t is None or n.type == t]
        if nodes and self.rng.random() < 0.75:
            recent = nodes[-4:]
            return self.rng.choice(recent if self.rng.random() < 0.7 else nodes)
        return self.leaf(t)

    def step(self) -> None:
        rng = self.rng
        builders = [
            (self.unary, 4), (self.binary, 5), (self.with_number, 2), (self.compare_where, 1),
            (self.fma, 1), (self.compose, 3), (self.transpose, 1), (self.einsum, 6),
            (self.stop_gradient, 0.3),
            # Hooks: convolution (affine axes), concat and gather once ocannl_py has them.
            (self.convolution, 0), (self.concat, 0), (self.gather, 0),
        ]  # fmt: skip
        build = rng.choices([b for b, _ in builders], [w for _, w in builders])[0]
        build()

    def unary(self) -> None:
        a = self.operand()
        fn = self.rng.choice(UNARY_EXACT if self.mode == "ties" else UNARY_FLOAT)
        name = self.fresh("t")
        style = self.rng.randrange(3)
        if style == 0:
            line = f"{name} = oc.{fn}({a.name})"
        elif style == 1 and fn not in ("identity",):
            line = f"{name} = {a.name}.{fn}()"
        else:
            line = f'{name} = op("{fn}(a)", a={a.name})'
        node = Node(name, a.type, "unary", (a.name,), {"fn": fn}, ref.has_grad("unary", [a]))
        self.add(node, line)

    def broadcast_partner(self, t: TensorType) -> TensorType:
        """A type that broadcasts with `t`: the same, a row cut on the left or with dims of
        1, or `t` widened by a leading axis."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return t
        rows = []
        for kind in KINDS:
            row = list(t.row(kind))
            if r < 0.85:
                row = row[rng.randint(0, len(row)) :] if rng.random() < 0.4 else row
                row = [1 if rng.random() < 0.3 else d for d in row]
            elif rng.random() < 0.4 and len(t.dims) < 4:
                row = [rng.choice([2, 3])] + row
            rows.append(tuple(row))
        other = TensorType(*rows)
        return other if ref.broadcast_type(t, other).cells <= MAX_CELLS else t

    def binary(self) -> None:
        a = self.operand()
        b = self.operand(self.broadcast_partner(a.type))
        if self.rng.random() < 0.5:
            a, b = b, a
        fn = self.rng.choice(BINARY_EXACT if self.mode == "ties" else BINARY_FLOAT)
        result = ref.broadcast_type(a.type, b.type)
        name = self.fresh("t")
        python, dsl, function = BINARY_FORMS[fn]
        style = self.rng.randrange(3)
        if style == 0 and python:
            line = f"{name} = {a.name} {python} {b.name}"
        elif style == 1:
            line = f'{name} = op("a {dsl} b", a={a.name}, b={b.name})'
        else:
            line = f"{name} = oc.{function}({a.name}, {b.name})"
        node = Node(name, result, "binary", (a.name, b.name), {"fn": fn},
                    ref.has_grad("binary", [a, b]))  # fmt: skip
        self.add(node, line)

    def with_number(self) -> None:
        """A pointwise operation with a Python number (a constant that broadcasts)."""
        a = self.operand()
        rng = self.rng
        fns = ["add", "sub", "mul"] + ([] if self.mode == "ties" else ["div", "pow", "max"])
        fn = rng.choice(fns)
        constant = float(
            rng.choice([2, -1, 3]) if self.mode == "ties" else rng.choice([0.5, 2.0, -1.5, 3.0])
        )
        first = fn != "pow" and rng.random() < 0.4
        if fn == "div" and first:
            first = False
        if fn == "pow":
            constant = rng.choice([2.0, 3.0, 0.5])
        name = self.fresh("t")
        python, dsl, function = BINARY_FORMS[fn]
        x, c = a.name, repr(constant)
        left, right = (c, x) if first else (x, c)
        if python and rng.random() < 0.6:
            line = f"{name} = {left} {python} {right}"
        else:
            line = f"{name} = oc.{function}({left}, {right})"
        attrs = {"fn": fn, "constant": constant, "constant_first": first}
        self.add(Node(name, a.type, "binary", (a.name,), attrs, ref.has_grad("binary", [a])), line)

    def compare_where(self) -> None:
        a = self.operand()
        b = self.operand(self.broadcast_partner(a.type))
        fn = self.rng.choice(list(COMPARE_FORMS))
        mask_type = ref.broadcast_type(a.type, b.type)
        mask = self.fresh("m")
        if self.rng.random() < 0.5:
            line = f"{mask} = oc.{fn}({a.name}, {b.name})"
        else:
            line = f'{mask} = op("a {COMPARE_FORMS[fn]} b", a={a.name}, b={b.name})'
        cond = self.add(Node(mask, mask_type, "compare", (a.name, b.name), {"fn": fn}), line)
        if self.rng.random() < 0.3:
            return
        x, y = self.operand(mask_type), self.operand(mask_type)
        name = self.fresh("t")
        line = f"{name} = oc.where({cond.name}, {x.name}, {y.name})"
        self.add(Node(name, mask_type, "where", (cond.name, x.name, y.name), {},
                      ref.has_grad("where", [cond, x, y])), line)  # fmt: skip

    def fma(self) -> None:
        a = self.operand()
        b, c = self.operand(a.type), self.operand(a.type)
        name = self.fresh("t")
        line = f"{name} = oc.fma({a.name}, {b.name}, {c.name})"
        self.add(Node(name, a.type, "fma", (a.name, b.name, c.name), {},
                      ref.has_grad("fma", [a, b, c])), line)  # fmt: skip

    def compose(self) -> None:
        rng = self.rng
        a = self.operand()
        input_row = a.type.input
        batch = a.type.batch
        if rng.random() < 0.3:
            batch = ()
        elif rng.random() < 0.2:
            batch = tuple(1 if rng.random() < 0.5 else d for d in batch)
        right_input = tuple(rng.choice([1, 2, 3]) for _ in range(rng.choice([0, 1, 1, 2])))
        b_type = TensorType(batch, input_row, right_input)
        if b_type.cells > MAX_CELLS:
            raise Rejected("size")
        b = self.operand(b_type)
        result = TensorType(ref.broadcast_type(TensorType(a.type.batch, (), ()),
                                               TensorType(b.type.batch, (), ())).batch,
                            a.type.output, b.type.input)  # fmt: skip
        if result.cells > MAX_CELLS * 2:
            raise Rejected("size")
        name = self.fresh("t")
        style = rng.randrange(3)
        if style == 0:
            line = f"{name} = {a.name} @ {b.name}"
        elif style == 1:
            line = f'{name} = op("a * b", a={a.name}, b={b.name})'
        else:
            line = f"{name} = oc.compose({a.name}, {b.name})"
        self.add(Node(name, result, "compose", (a.name, b.name), {},
                      ref.has_grad("compose", [a, b])), line)  # fmt: skip

    def transpose(self) -> None:
        a = self.operand()
        t = TensorType(a.type.batch, a.type.input, a.type.output)
        name = self.fresh("t")
        if self.rng.random() < 0.5:
            line = f"{name} = oc.transpose({a.name})"
        else:
            line = f'{name} = op("transpose(a)", a={a.name})'
        self.add(Node(name, t, "transpose", (a.name,), {}, ref.has_grad("transpose", [a])), line)

    def stop_gradient(self) -> None:
        a = self.operand()
        name = self.fresh("t")
        line = f"{name} = oc.stop_gradient({a.name})"
        self.add(Node(name, a.type, "stop_gradient", (a.name,), {}, False), line)

    def einsum(self) -> None:
        rng = self.rng
        function = rng.choice(list(EINSUMS))
        reduce, combine, dsl = EINSUMS[function]
        operands = [self.operand()]
        if combine is not None:
            operands.append(self.operand())
        made = random_einsum(rng, [o.type for o in operands], reduce, combine)
        if made is None:
            raise Rejected("spec")
        spec, form, result = made
        name = self.fresh("t")
        names = [o.name for o in operands]
        if rng.random() < 0.35:
            if len(names) == 2:
                line = f"{name} = op('a {dsl} \"{spec}\" b', a={names[0]}, b={names[1]})"
            else:
                line = f"{name} = op('a {dsl} \"{spec}\"', a={names[0]})"
        else:
            line = f"{name} = oc.{function}({spec!r}, {', '.join(names)})"
        node = Node(name, result, "einsum", tuple(names), {"form": form, "fn": function},
                    ref.has_grad("einsum", operands))  # fmt: skip
        self.add(node, line)

    # Hooks for operations ocannl_py does not have yet: each builds nothing until then.
    def convolution(self) -> None:
        raise Rejected("convolution: affine axes are not supported by shape inference yet")

    def concat(self) -> None:
        raise Rejected("concat: not in ocannl_py yet")

    def gather(self) -> None:
        raise Rejected("gather (oc.embed): not in ocannl_py yet")


def _away_from(x: np.ndarray, kink: float) -> None:
    distance = np.abs(np.asarray(x) - kink)
    if np.any((distance > 0) & (distance < KINK_GAP * (1 + abs(kink)))):
        raise Rejected("near a kink")


def _no_near_ties(
    form: ref.EinsumForm, values: list[np.ndarray], result: np.ndarray, exact_ties: bool
) -> None:
    """Every candidate of a max is the max exactly or clearly below it. Without `exact_ties`
    (float values), candidates tied for one result cell must read the same operand cells
    (broadcast copies): an exact tie of different cells in float64 may be broken by float32's
    rounding (`p / (c * p)`), and the gradient then goes to one of them."""
    space = ref.ProductSpace(form)
    reads = [space.flat(a, v.shape) for v, a in zip(values, form.operands, strict=True)]
    points = [v.reshape(-1)[r] for v, r in zip(values, reads, strict=True)]
    combined = ref._combine(form.combine, points)
    target = space.flat(form.result, result.shape)
    best = result.reshape(-1)[target]
    gap = best - combined
    if np.any((gap > 0) & (gap < KINK_GAP * (1 + np.abs(best)))):
        raise Rejected("near tie")
    if not exact_ties:
        tied = gap == 0
        keys = np.stack([target[tied]] + [r[tied] for r in reads], axis=1)
        if len(np.unique(keys, axis=0)) > len(np.unique(target[tied])):
            raise Rejected("tie of different cells")


def _array_text(values: np.ndarray) -> str:
    """A literal numpy can read back exactly (floats exact in float32 print exactly)."""
    return repr(values.tolist())


def generate(seed: int, max_steps: int = 8, include_known: bool = False) -> Program:
    """A random program: a few leaves and up to `max_steps` operations."""
    rng = random.Random(seed)
    gen = Generator(rng, "ties" if rng.random() < 0.3 else "float", include_known)
    gen.leaf()
    steps = rng.randint(1, max_steps)
    attempts = 0
    while sum(n.op not in LEAVES for n in gen.program.nodes) < steps:
        attempts += 1
        if attempts > 20 * steps:
            break
        saved = (list(gen.program.nodes), list(gen.program.lines), dict(gen.program.values),
                 list(gen.program.ops), gen.counter)  # fmt: skip
        try:
            gen.step()
        except Rejected:
            (gen.program.nodes, gen.program.lines, gen.program.values, gen.program.ops,
             gen.counter) = saved  # fmt: skip
    return gen.program


def used(program: Program) -> list[Node]:
    """The nodes the sinks depend on (leaves no operation reads are left out)."""
    needed = {n.name for n in sinks(program)}
    for node in reversed(program.nodes):
        if node.name in needed:
            needed.update(node.args)
    return [n for n in program.nodes if n.name in needed]


def sinks(program: Program) -> list[Node]:
    """The computed nodes no other node reads: the loss sums them (weighted)."""
    read = {a for n in program.nodes for a in n.args}
    return [n for n in program.nodes if n.name not in read and n.op not in LEAVES]

"""Parser fuzzing: valid spec, op DSL and cd DSL texts, mutated, fed to the parsers and to the
functions that interpret them. The only errors allowed are SpecSyntaxError, ShapeError and
TypeError with a message (a SpecSyntaxError says where: line and column), and when a text is
interpreted (`op`, `cd`), a ValueError with a message for a meaning error such as `x.grad` of a
tensor without a gradient; anything else, a RecursionError above all, is a failure. A text that parses must print back to text that parses
to the same thing (`print_spec`, `format_op`, `format_cd`)."""

from __future__ import annotations

import random

import numpy as np

from fuzz.reference import TensorType
from fuzz.specs import random_einsum

TARGETS = ("parse_spec", "parse_op", "parse_cd", "op", "cd", "einsum")
ALPHABET = list("abcxyzijkABC_0123456789 ,;|->=.*+^&<@/?~\"'()[]{}:\t\n\r") + [
    "...", "..v..", "=>", "->", "+*", "++", "@^^", "@^+", "**.", "*.", "/.", "-?/", "[|", "|]",
    "~logic:", "é", "ⸯ", "\x00", "\u2028", "\U0001f600", "1e999", "nan", "inf", "9" * 30,
]  # fmt: skip
OP_FUNCTIONS = ["relu", "exp", "tanh", "max", "where", "transpose", "fma", "not"]


def random_spec(rng: random.Random) -> str:
    while True:
        types = [_random_type(rng) for _ in range(rng.choice([1, 2]))]
        reduce, combine = ("sum", "mul") if len(types) == 2 else ("sum", None)
        made = random_einsum(rng, types, reduce, combine, include_known=True)
        if made:
            return made[0]


def _random_type(rng: random.Random) -> TensorType:
    def row() -> tuple[int, ...]:
        return tuple(rng.choice([1, 2, 3]) for _ in range(rng.choice([0, 1, 2])))

    return TensorType(row(), row(), row())


def random_op_text(rng: random.Random, depth: int = 0) -> str:
    """A syntactically valid op DSL expression over the names a, b, x (types aside)."""
    r = rng.random()
    if depth > 3 or r < 0.25:
        return rng.choice(["a", "b", "x", "2", "0.5", "-1.5", "[1;2]", "(1,2)", "[|3;4|]",
                           "[[1;2];[3;4]]", "{w}", "{w = 1.0}", "{b = 0.; o = [2]}",
                           "{u; i = [2]; o = 3}", "{v = [1;2]}"])  # fmt: skip
    sub = lambda: random_op_text(rng, depth + 1)  # noqa: E731
    if r < 0.45:
        op = rng.choice(["+", "-", "*", "*.", "/.", "**.", "-?/", "@^", "@-", "<", "=", "<>"])
        return f"{sub()} {op} {sub()}"
    if r < 0.6:
        return (
            f"{rng.choice(OP_FUNCTIONS)}({', '.join(sub() for _ in range(rng.choice([1, 2, 3])))})"
        )
    if r < 0.7:
        return f"-{sub()}" if rng.random() < 0.5 else f"({sub()})"
    spec = random_spec(rng)
    if rng.random() < 0.5:
        return f'{sub()} {rng.choice(["+*", "+++", "@^+"])} "{spec}" ({sub()})'
    return f'({sub()}) {rng.choice(["++", "@^^"])} "{spec}"'


def random_cd_text(rng: random.Random) -> str:
    statements = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        lhs = rng.choice(["a", "b", "c", "a.grad", "c"])
        assign = rng.choice(["=:", "=+", "=-", "=*", "=/", "=:+", "=:*", "=@^", "=:@^", "=@-"])
        x, y = rng.choice(["a", "b", "c", "b.grad", "2"]), rng.choice(["a", "b", "c", "0.5"])
        rhs = rng.choice([x, f"{x} * {y}", f"{x} + {y}", f"relu({x})", f"{x} < {y}",
                          f"where({x}, {y}, 0)", f"-{x}", f"{x} ** 2", f"{x} -?/ {y}",
                          f"{x} @^ {y}", f"({x} + {y}) * {y}"])  # fmt: skip
        logic = rng.choice(["", "", ' ~logic:"."', ' ~logic:"@"', ' ~logic:"T"',
                            f' ~logic:"{random_spec(rng)}"'])  # fmt: skip
        statements.append(f"{lhs} {assign} {rhs}{logic}")
    return rng.choice(["; ", ";", " ;\n"]).join(statements)


def seed_text(rng: random.Random, target: str) -> str:
    if target in ("parse_spec", "einsum"):
        return random_spec(rng)
    if target in ("parse_op", "op"):
        return random_op_text(rng)
    return random_cd_text(rng)


def mutate(rng: random.Random, text: str) -> str:
    """One to three random edits, or a deep or long form of the text."""
    r = rng.random()
    n = rng.choice([10, 100, 300, 1000, 5000])
    if r < 0.04:
        return "(" * n + text + ")" * n
    if r < 0.07:
        return "-" * n + text
    if r < 0.10:
        return f" {rng.choice(['+', '*.', '**.', '@^', '<'])} ".join([text] * min(n, 1000))
    if r < 0.12:
        return "[" * n + "1" + "]" * n
    if r < 0.14:
        return "relu(" * n + text + ")" * n
    if r < 0.16:
        return text * min(n, 200)
    if r < 0.25:
        return text  # unmutated: the round trip is checked too
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not text:
            text = rng.choice(ALPHABET)
        k = rng.randrange(len(text) + 1)
        j = min(len(text), k + rng.choice([1, 1, 2, 5]))
        edit = rng.randrange(5)
        if edit == 0:
            text = text[:k] + text[j:]
        elif edit == 1:
            text = text[:k] + rng.choice(ALPHABET) + text[k:]
        elif edit == 2:
            text = text[:k] + rng.choice(ALPHABET) + text[j:]
        elif edit == 3:
            text = text[:k] + text[k:j] * rng.choice([2, 3, 50]) + text[j:]
        else:
            text = text[k:] + text[:k]
    return text


def check(target: str, text: str) -> str | None:
    """None if `target` handled `text` well, else what went wrong. Runs in a worker process."""
    import importlib

    import ocannl_py as oc
    from ocannl_py.dsl import syntax
    from ocannl_py.errors import ShapeError, SpecSyntaxError

    einsum = importlib.import_module("ocannl_py.einsum")  # `oc.einsum` is the operation

    try:
        if target == "parse_spec":
            spec = einsum.parse_spec(text)
            printed = einsum.print_spec(spec)
            again = einsum.parse_spec(printed)
            if einsum.print_spec(again) != printed or again.operands != spec.operands:
                return f"print_spec round trip: {text!r} -> {printed!r}"
        elif target == "parse_op":
            tree = syntax.parse_op(text)
            printed = syntax.format_op(tree)
            if syntax.format_op(syntax.parse_op(printed)) != printed:
                return f"format_op round trip: {text!r} -> {printed!r}"
        elif target == "parse_cd":
            statements = syntax.parse_cd(text)
            printed = syntax.format_cd(statements)
            if syntax.format_cd(syntax.parse_cd(printed)) != printed:
                return f"format_cd round trip: {text!r} -> {printed!r}"
        else:
            a = oc.term("a", batch_dims=[], input_dims=[], output_dims=[2])
            b = oc.param("b", value=np.ones((2, 2)), input_dims=[2], output_dims=[2])
            c = oc.term("c", batch_dims=[], input_dims=[], output_dims=[2])
            if target == "op":
                oc.op(text, a=a, b=b, x=b)
            elif target == "cd":
                oc.cd(text, a=b, b=a, c=c)
            else:
                oc.einsum(text, a, b)
    except SpecSyntaxError as e:
        message = str(e)
        if "line" not in message or "column" not in message:
            return f"SpecSyntaxError without a position: {message[:300]!r}"
    except (ShapeError, TypeError) as e:
        if not str(e).strip():
            return f"{type(e).__name__} without a message"
    except ValueError as e:
        # Interpreting may also find a meaning error (`x.grad` of a tensor without one).
        if target in ("parse_spec", "parse_op", "parse_cd") or not str(e).strip():
            return f"ValueError: {str(e)[:300]}"
    except RecursionError:
        return "RecursionError"
    except Exception as e:  # noqa: BLE001 - any other error is what this looks for
        return f"{type(e).__name__}: {str(e)[:300]}"
    return None

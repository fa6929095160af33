"""Parsing the op and cd DSLs (OCANNL's %op and %cd, in strings) into syntax trees.

Only syntax lives here: `parse_op` and `parse_cd` turn text into the frozen dataclasses below, and
every malformed text raises `SpecSyntaxError` with the line, column and what was expected. What
the trees mean (tensors, assignment code) is the business of `dsl/op.py` and `dsl/cd.py`;
errors are worded by `ocannl_py/parsing.py`. docs/dsl.md is the reference for the syntax.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field

import lark
import numpy as np
from lark import Token, v_args
from lark.exceptions import UnexpectedInput

from arrayjit import ops
from ocannl_py import parsing
from ocannl_py.errors import SpecSyntaxError

Pos = tuple[int, int]  # (line, column), both 1-based


def _pos_field() -> Pos:
    # Positions do not take part in equality: two trees are equal when they say the same thing.
    # (0, 0) marks a tree built by hand rather than parsed.
    return field(default=(0, 0), compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# op DSL syntax tree


@dataclass(frozen=True)
class Number:
    """A numeric constant (in both DSLs); `-2.5` is one number, not a negation."""

    value: float
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Name:
    """A tensor (or, in a dims field, an int) passed to `op` by keyword."""

    name: str
    pos: Pos = _pos_field()


@dataclass(frozen=True, eq=False)
class Literal:
    """An n-dimensional array literal. `values` has one numpy axis per nesting level, outermost
    first; `kinds[k]` is "output" (`[..]`), "input" (`(..)`) or "batch" (`[|..|]`) for axis k."""

    values: np.ndarray
    kinds: tuple[str, ...]
    pos: Pos = _pos_field()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Literal):
            return NotImplemented
        return (
            self.kinds == other.kinds
            and self.values.shape == other.values.shape
            and bool(np.array_equal(self.values, other.values))
        )

    def __hash__(self) -> int:
        return hash((self.kinds, self.values.shape, self.values.tobytes()))


Dims = tuple[int | str, ...]  # an int, or a Name's name bound to an int by keyword


@dataclass(frozen=True)
class Param:
    """An inline parameter `{w}`, `{w = 0.5}`, `{w = [1; 2]}`, `{b = 0.; o = [16]}`.
    `init` None means random initialisation; dims None means inferred."""

    name: str
    init: float | Literal | None = None
    output: Dims | None = None
    input: Dims | None = None
    batch: Dims | None = None
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Neg:
    """Prefix minus of a non-constant operand."""

    operand: OpExpr
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Binary:
    """`left op right` with op one of OP_BINARY_OPERATORS; pos is the operator's."""

    op: str
    left: OpExpr
    right: OpExpr
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class EinsumExpr:
    """`left op "spec" right` with op one of OP_EINSUM_OPERATORS; pos is the operator's."""

    op: str
    spec: str
    left: OpExpr
    right: OpExpr
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Einsum1Expr:
    """`operand op "spec"` with op one of OP_EINSUM1_OPERATORS; pos is the operator's."""

    op: str
    spec: str
    operand: OpExpr
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class FunctionCall:
    """`name(arg, ...)`; the name is not checked here."""

    name: str
    args: tuple[OpExpr, ...]
    pos: Pos = _pos_field()


OpExpr = Number | Name | Literal | Param | Neg | Binary | EinsumExpr | Einsum1Expr | FunctionCall

# Infix operators of the op DSL, with the operation each stands for.
OP_BINARY_OPERATORS: dict[str, str] = {
    "*": "compose",
    "*.": "pointmul",
    "/.": "pointdiv",
    "**.": "pointpow",
    "+": "add",
    "-": "sub",
    "-?/": "relu_gate",
    "<": "lt",
    "=": "eq",
    "<>": "ne",
    "@^": "max",
    "@-": "min",
}
OP_EINSUM_OPERATORS: dict[str, str] = {"+*": "einsum", "+++": "outer_sum", "@^+": "tropical"}
OP_EINSUM1_OPERATORS: dict[str, str] = {"++": "einsum1", "@^^": "einmax1"}

# ---------------------------------------------------------------------------------------------
# cd DSL syntax tree


@dataclass(frozen=True)
class Ref:
    """A tensor's value (`a`, `v1`) or its gradient (`a.grad`, written `g`, `g1` in slots)."""

    name: str
    grad: bool = False
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Unop:
    """`op(arg)`, or `-arg` (op "neg"); op is an arrayjit.ops name."""

    op: str
    arg: CdExpr
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Binop:
    """`left op right` or `op(left, right)`; op is an arrayjit.ops name ("add", "relu_gate"...)."""

    op: str
    left: CdExpr
    right: CdExpr
    pos: Pos = _pos_field()


@dataclass(frozen=True)
class Ternop:
    """`op(a, b, c)`: "where" or "fma"."""

    op: str
    a: CdExpr
    b: CdExpr
    c: CdExpr
    pos: Pos = _pos_field()


CdExpr = Ref | Number | Unop | Binop | Ternop
# Operands of an operation are expressions themselves: `g * v1 / (v2 * v2)` nests.


@dataclass(frozen=True)
class CdStatement:
    """`lhs ASSIGN rhs [~logic:"..."]`. accum None is overwrite (`=:`); zero_first is the `:` of
    `=:+`; logic is the `~logic` string as written ("." "@" "T" or a spec), None when absent."""

    lhs: Ref
    accum: str | None
    zero_first: bool
    rhs: CdExpr
    logic: str | None = None
    pos: Pos = _pos_field()


# Infix operators of the cd DSL and their arrayjit.ops names.
CD_BINARY_OPERATORS: dict[str, str] = {
    "+": "add",
    "-": "sub",
    "*": "mul",
    "/": "div",
    "**": "pow",
    "-?/": "relu_gate",
    "<": "lt",
    "=": "eq",
    "==": "eq",
    "<>": "ne",
    "@^": "max",
    "@-": "min",
}
# The accumulation operator of `=+`, `=:+` ... and its arrayjit.ops name.
CD_ACCUMULATE_OPERATORS: dict[str, str] = {
    "+": "add",
    "-": "sub",
    "*": "mul",
    "/": "div",
    "@^": "max",
    "@-": "min",
}
# Function names accepted besides arrayjit.ops names, as OCANNL spells them.
_CD_FUNCTION_ALIASES = {"id": "identity"}

# numpy arrays have at most this many axes.
_MAX_LITERAL_DEPTH = 32


class _NodeError(Exception):
    """A malformed construct found while building the tree; becomes a SpecSyntaxError."""

    def __init__(self, message: str, pos: Pos) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


def _tok_pos(token: Token) -> Pos:
    return (token.line, token.column)


def _number(token: Token) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NodeError(f"number {token} is out of range", _tok_pos(token))
    return value


# ---------------------------------------------------------------------------------------------
# op DSL: parse tree to syntax tree

_KIND_BRACKETS = {
    "output": ("[", "; ", "]"),
    "input": ("(", ", ", ")"),
    "batch": ("[|", "; ", "|]"),
}


def _literal(kind: str, elements: list[OpExpr], pos: Pos) -> Literal:
    opening, _, closing = _KIND_BRACKETS[kind]
    for element in elements:
        if not isinstance(element, Number | Literal):
            raise _NodeError(
                f"an array literal `{opening}..{closing}` holds numbers or nested array literals, "
                f"found `{format_op(element)}`",
                element.pos,
            )
    if all(isinstance(e, Number) for e in elements):
        values = np.array([e.value for e in elements], dtype=np.float64)
        kinds: tuple[str, ...] = (kind,)
    else:
        first = elements[0]
        for index, element in enumerate(elements):
            if not isinstance(first, Literal) or not isinstance(element, Literal):
                raise _NodeError(
                    "ragged array literal: it mixes numbers and nested literals", element.pos
                )
            if element.kinds != first.kinds or element.values.shape != first.values.shape:
                raise _NodeError(
                    f"ragged array literal: element {index + 1} is "
                    f"`{format_op(element)}` but element 1 is `{format_op(first)}`; all elements "
                    "need the same shape and bracket kinds",
                    element.pos,
                )
        if len(first.kinds) >= _MAX_LITERAL_DEPTH:
            raise _NodeError(f"array literal nested deeper than {_MAX_LITERAL_DEPTH}", pos)
        values = np.stack([e.values for e in elements])  # type: ignore[union-attr]
        kinds = (kind, *first.kinds)
    values.setflags(write=False)
    return Literal(values, kinds, pos)


def _dim(token: Token) -> int | str:
    if token.type == "NAME":
        return str(token)
    if not re.fullmatch(r"\d+", token):
        raise _NodeError(
            f"a dimension is a whole number or a name, found `{token}`", _tok_pos(token)
        )
    return int(token)


_PARAM_FIELDS = {"o": "output", "i": "input", "b": "batch"}


@v_args(inline=True)
class _OpBuilder(lark.Transformer):
    def number(self, token):
        return Number(_number(token), _tok_pos(token))

    def name(self, token):
        return Name(str(token), _tok_pos(token))

    def group(self, lpar, inner):
        return inner

    def neg(self, minus, operand):
        if isinstance(operand, Number):
            return Number(-operand.value, _tok_pos(minus))
        return Neg(operand, _tok_pos(minus))

    def binary(self, left, op, right):
        if op.type == "SLASH":
            raise _NodeError(
                "`/` is not an op DSL operator: write `/.` for pointwise division", _tok_pos(op)
            )
        if op.type == "STARSTAR":
            raise _NodeError(
                "`**` is not an op DSL operator: write `**.` for pointwise power", _tok_pos(op)
            )
        return Binary(str(op), left, right, _tok_pos(op))

    def einsum(self, left, op, spec, right):
        return EinsumExpr(str(op), spec[1:-1], left, right, _tok_pos(op))

    def einsum1(self, operand, op, spec):
        return Einsum1Expr(str(op), spec[1:-1], operand, _tok_pos(op))

    def call(self, name, lpar, *args):
        return FunctionCall(str(name), tuple(args), _tok_pos(name))

    def input_literal(self, opening, *elements):
        return _literal("input", list(elements), _tok_pos(opening))

    def output_literal(self, opening, *elements):
        return _literal("output", list(elements), _tok_pos(opening))

    def batch_literal(self, opening, *elements):
        return _literal("batch", list(elements), _tok_pos(opening))

    def single_dim(self, token):
        return (_dim(token),)

    def dim_list(self, lsqb, *tokens):
        return tuple(_dim(t) for t in tokens if t is not None)

    def param_field(self, name, eq, dims):
        return (name, dims)

    def param(self, lbrace, name, *rest):
        pos = _tok_pos(lbrace)
        init: float | Literal | None = None
        fields = list(rest)
        if fields and isinstance(fields[0], Token) and fields[0].type == "EQ":
            value = fields[1]
            fields = fields[2:]
            if isinstance(value, Number):
                init = value.value
            elif isinstance(value, Literal):
                init = value
            elif not (isinstance(value, Name) and value.name == name):
                raise _NodeError(
                    f"the initial value of inline parameter `{name}` must be a number or an array "
                    f"literal (e.g. `{{{name} = 0.5}}` or `{{{name} = [1; 2]}}`), "
                    f"found `{format_op(value)}`",
                    value.pos,
                )
        dims: dict[str, Dims] = {}
        for field_name, field_dims in fields:
            kind = _PARAM_FIELDS.get(str(field_name))
            if kind is None:
                raise _NodeError(
                    f"unknown field `{field_name}` of inline parameter `{name}`: use `o` (output "
                    "dims), `i` (input dims) or `b` (batch dims)",
                    _tok_pos(field_name),
                )
            if kind in dims:
                raise _NodeError(
                    f"field `{field_name}` given twice in inline parameter `{name}`",
                    _tok_pos(field_name),
                )
            dims[kind] = field_dims
        return Param(str(name), init, dims.get("output"), dims.get("input"), dims.get("batch"), pos)


# ---------------------------------------------------------------------------------------------
# cd DSL: parse tree to syntax tree


def _cd_function(name: Token, arity: int) -> str:
    op_name = _CD_FUNCTION_ALIASES.get(str(name), str(name))
    if op_name not in ops.OPS:
        raise _NodeError(
            f"unknown operation `{name}`; known: {', '.join(sorted(ops.OPS))}", _tok_pos(name)
        )
    expected = ops.OPS[op_name].arity
    if expected != arity:
        raise _NodeError(
            f"operation `{name}` takes {expected} operand(s), got {arity}", _tok_pos(name)
        )
    return op_name


@v_args(inline=True)
class _CdBuilder(lark.Transformer):
    def start(self, *statements):
        return [s for s in statements if s is not None]

    def number(self, token):
        return Number(_number(token), _tok_pos(token))

    def ref(self, name, suffix=None):
        if suffix is not None and suffix not in ("grad", "value"):
            raise _NodeError(
                f"`{name}.{suffix}`: only `.grad` (the gradient) and `.value` can follow a name",
                _tok_pos(suffix),
            )
        return Ref(str(name), suffix == "grad", _tok_pos(name))

    def group(self, lpar, inner):
        return inner

    def neg(self, minus, operand):
        if isinstance(operand, Number):
            return Number(-operand.value, _tok_pos(minus))
        return Unop("neg", operand, _tok_pos(minus))

    def binary(self, left, op, right):
        return Binop(CD_BINARY_OPERATORS[str(op)], left, right, _tok_pos(op))

    def call(self, name, lpar, *args):
        op_name = _cd_function(name, len(args))
        operands = list(args)
        pos = _tok_pos(name)
        if len(operands) == 1:
            return Unop(op_name, operands[0], pos)
        if len(operands) == 2:
            return Binop(op_name, operands[0], operands[1], pos)
        return Ternop(op_name, operands[0], operands[1], operands[2], pos)

    def statement(self, lhs, assign, rhs, logic_label=None, logic=None):
        written = str(assign)[1:]
        zero_first = written.startswith(":") and written != ":"
        operator = written[1:] if written.startswith(":") else written
        accum = CD_ACCUMULATE_OPERATORS[operator] if operator else None
        return CdStatement(
            lhs, accum, zero_first, rhs, None if logic is None else logic[1:-1], lhs.pos
        )


# ---------------------------------------------------------------------------------------------
# Parsers and error reporting


@functools.cache
def _parser(dsl: str) -> lark.Lark:
    builder = _OpBuilder() if dsl == "op" else _CdBuilder()
    return lark.Lark(
        parsing.grammar(dsl),
        parser="lalr",
        lexer="contextual",
        maybe_placeholders=True,
        transformer=builder,
    )


_TERMINAL_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a string such as "ij;jk=>ik"',
    "ASSIGN": "an assignment operator (`=:`, `=+`, `=-`, `=*`, `=/`, `=@^`, `=@-`, `=:+`, ...)",
    "$END": "the end of the text",
}
# Tokens that can start an operand, and the binary operators: long lists, shown as one phrase.
_OPERAND_STARTS = {"NAME", "NUMBER", "LPAR", "LSQB", "LBB", "LBRACE", "MINUS"}
_OPERATORS = {
    "EQ", "EQEQ", "LT", "NE", "MAX", "MIN", "TROPICAL", "EINMAX1", "PLUS", "MINUS", "RELU_GATE",
    "EINSUM", "OUTER_SUM", "EINSUM1", "COMPOSE", "POINTMUL", "POINTDIV", "SLASH", "POINTPOW",
    "STARSTAR", "STAR",
}  # fmt: skip


def _describe_expected(parser: lark.Lark, expected: set[str]) -> str:
    expected = set(expected)
    phrases: list[str] = []
    if {"NAME", "NUMBER"} <= expected:
        phrases.append("an expression")
        expected -= _OPERAND_STARTS
    if {"PLUS", "MINUS"} <= expected:
        phrases.append("an operator")
        expected -= _OPERATORS
    return parsing.one_of(phrases + parsing.describe_terminals(parser, expected, _TERMINAL_NAMES))


def _character_hint(char: str) -> str:
    if char == '"':
        return ' (unterminated string: a string runs from `"` to the next `"` on its line)'
    return ""


def _token_hint(dsl: str):
    def hint(token: Token | None, expected: set[str], text: str) -> str:
        if token is None:
            return ""
        if token == "," and "SEMICOLON" in expected:
            return " (array literal elements are separated by `;`; `(1, 2)` is an input axis)"
        if token.type == "MINUS" and text[: token.start_pos].rstrip()[-1:] == '"':
            return " (the operand after an einsum spec is a single term: write `(-x)`)"
        if (
            dsl == "op"
            and token.type in _OPERATORS
            and token.type not in expected
            and '"' in text[: token.start_pos]
        ):
            # An einsum's `"spec" operand` tail binds as one term and refuses tighter operators.
            return (
                " (an einsum operator with its spec and right operand binds as one term, as in"
                ' OCaml: add parentheses, e.g. `(a +* "spec" b) * c` or `a +* "spec" (b * c)`)'
            )
        return ""

    return hint


_LANGUAGES = {
    dsl: parsing.Language(
        prefix=f"{dsl} DSL: ",
        end="end of text",
        expected=_describe_expected,
        character_hint=_character_hint,
        token_hint=_token_hint(dsl),
    )
    for dsl in ("op", "cd")
}


def _parse(dsl: str, text: str):
    if not text.strip():
        raise SpecSyntaxError(f"{dsl} DSL: the text is empty", text, 1, 1)
    try:
        tree = _parser(dsl).parse(text)
        check_nesting(tree, text, dsl)
        return tree
    except _NodeError as error:
        raise SpecSyntaxError(f"{dsl} DSL: {error.message}", text, *error.pos) from None
    except UnexpectedInput as error:
        raise parsing.syntax_error(error, text, _parser(dsl), _LANGUAGES[dsl]) from None


#: The deepest expression the DSLs build: the interpreters and printers recurse once per level,
#: and Python's stack allows about a thousand frames.
MAX_NESTING = 200


def check_nesting(tree: object, text: str, dsl: str) -> None:
    """A SpecSyntaxError at the first node nested deeper than MAX_NESTING (walked without
    recursion, so that a deep tree gives this error rather than a RecursionError)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend((child, depth) for child in node)
            continue
        if not dataclasses.is_dataclass(node) or isinstance(node, type):
            continue
        if depth > MAX_NESTING:
            raise SpecSyntaxError(
                f"{dsl} DSL: expression nested deeper than {MAX_NESTING} levels; build it in "
                "steps (name the parts and pass them by keyword)",
                text,
                *(getattr(node, "pos", None) or (1, 1)),
            )
        stack.extend((getattr(node, f.name), depth + 1) for f in dataclasses.fields(node))


def parse_op(text: str) -> OpExpr:
    """Parse an op DSL expression, e.g. `relu({w} * x + {b; o = [16]})`."""
    return _parse("op", text)


def parse_cd(text: str) -> list[CdStatement]:
    """Parse cd DSL statements, e.g. `g1 =+ g * v2; g2 =+ g * v1`."""
    statements = _parse("cd", text)
    if not statements:
        raise SpecSyntaxError("cd DSL: no statement in the text", text, 1, 1)
    return statements


# ---------------------------------------------------------------------------------------------
# Printing: text that parses back to the same tree

# Precedence levels, as in OCaml; higher binds tighter.
_CMP, _AT, _SUM, _PROD, _POW, _UNARY, _APP = 3, 4, 5, 6, 7, 8, 9
_OP_LEVELS = {"=": _CMP, "<": _CMP, "<>": _CMP, "==": _CMP, "@^": _AT, "@-": _AT, "@^+": _AT}
_OP_LEVELS |= {"@^^": _AT, "+": _SUM, "-": _SUM, "-?/": _SUM, "+*": _SUM, "+++": _SUM}
_OP_LEVELS |= {"++": _SUM, "*": _PROD, "*.": _PROD, "/.": _PROD, "/": _PROD}
_OP_LEVELS |= {"**.": _POW, "**": _POW}
_RIGHT_ASSOCIATIVE = {"@^", "@-", "**.", "**"}


def _format_number(value: float) -> str:
    return repr(float(value))


def _format_values(values: np.ndarray, kinds: tuple[str, ...]) -> str:
    opening, separator, closing = _KIND_BRACKETS[kinds[0]]
    if len(kinds) == 1:
        parts = [_format_number(v) for v in values]
    else:
        parts = [_format_values(v, kinds[1:]) for v in values]
    return opening + separator.join(parts) + closing


def _format_dims(dims: Dims) -> str:
    return "[" + "; ".join(str(d) for d in dims) + "]"


def _op_level(expr: OpExpr) -> int:
    if isinstance(expr, Binary | EinsumExpr | Einsum1Expr):
        return _OP_LEVELS[expr.op]
    if isinstance(expr, Neg) or (isinstance(expr, Number) and math.copysign(1, expr.value) < 0):
        return _UNARY
    return _APP


def _op_at(expr: OpExpr, level: int) -> str:
    text = format_op(expr)
    return f"({text})" if _op_level(expr) < level else text


def format_op(expr: OpExpr) -> str:
    """The op DSL text of a tree; `parse_op(format_op(e)) == e`."""
    match expr:
        case Number(value):
            return _format_number(value)
        case Name(name):
            return name
        case Literal(values, kinds):
            return _format_values(values, kinds)
        case Param(name, init, output, input_, batch):
            parts = [name if init is None else f"{name} = {_format_init(init)}"]
            for key, dims in (("o", output), ("i", input_), ("b", batch)):
                if dims is not None:
                    parts.append(f"{key} = {_format_dims(dims)}")
            return "{" + "; ".join(parts) + "}"
        case Neg(operand):
            text = _op_at(operand, _UNARY)
            return f"- {text}" if text.startswith("-") else f"-{text}"
        case Binary(op, left, right):
            level = _OP_LEVELS[op]
            right_assoc = op in _RIGHT_ASSOCIATIVE
            left_text = _op_at(left, level + 1 if right_assoc else level)
            right_text = _op_at(right, level if right_assoc else level + 1)
            return f"{left_text} {op} {right_text}"
        case EinsumExpr(op, spec, left, right):
            return f'{_op_at(left, _SUM)} {op} "{spec}" {_op_at(right, _APP)}'
        case Einsum1Expr(op, spec, operand):
            return f'{_op_at(operand, _SUM)} {op} "{spec}"'
        case FunctionCall(name, args):
            return f"{name}({', '.join(format_op(a) for a in args)})"
    raise TypeError(f"not an op DSL tree: {expr!r}")


def _format_init(init: float | Literal) -> str:
    return format_op(init) if isinstance(init, Literal) else _format_number(init)


_CD_SYMBOLS = {name: symbol for symbol, name in CD_BINARY_OPERATORS.items() if symbol != "=="}
_CD_ACCUM_SYMBOLS = {name: symbol for symbol, name in CD_ACCUMULATE_OPERATORS.items()}


def _format_operand(operand: CdExpr) -> str:
    if isinstance(operand, Number):
        return _format_number(operand.value)
    if isinstance(operand, Ref):
        return f"{operand.name}.grad" if operand.grad else operand.name
    text = format_cd_expr(operand)
    # A call prints atomically; an infix or negated operand is parenthesized.
    infix = (isinstance(operand, Unop) and operand.op == "neg") or (
        isinstance(operand, Binop) and operand.op in _CD_SYMBOLS
    )
    return f"({text})" if infix else text


def format_cd_expr(expr: CdExpr) -> str:
    """The cd DSL text of a right-hand side."""
    match expr:
        case Ref() | Number():
            return _format_operand(expr)
        case Unop("neg", arg):
            text = _format_operand(arg)
            return f"-({text})" if text.startswith("-") else f"-{text}"
        case Unop(op, arg):
            return f"{op}({_format_operand(arg)})"
        case Binop(op, left, right) if op in _CD_SYMBOLS:
            return f"{_format_operand(left)} {_CD_SYMBOLS[op]} {_format_operand(right)}"
        case Binop(op, left, right):
            return f"{op}({_format_operand(left)}, {_format_operand(right)})"
        case Ternop(op, a, b, c):
            return f"{op}({', '.join(_format_operand(x) for x in (a, b, c))})"
    raise TypeError(f"not a cd DSL right-hand side: {expr!r}")


def format_cd(statements: list[CdStatement]) -> str:
    """The cd DSL text of statements; `parse_cd(format_cd(s)) == s`."""
    lines = []
    for s in statements:
        assign = "=" + (":" if s.zero_first or s.accum is None else "")
        assign += "" if s.accum is None else _CD_ACCUM_SYMBOLS[s.accum]
        logic = "" if s.logic is None else f' ~logic:"{s.logic}"'
        lines.append(f"{_format_operand(s.lhs)} {assign} {format_cd_expr(s.rhs)}{logic}")
    return ";\n".join(lines)


__all__ = [
    "Binary",
    "Binop",
    "CD_ACCUMULATE_OPERATORS",
    "CD_BINARY_OPERATORS",
    "FunctionCall",
    "CdExpr",
    "CdStatement",
    "EinsumExpr",
    "Einsum1Expr",
    "Literal",
    "Name",
    "Neg",
    "Number",
    "OP_BINARY_OPERATORS",
    "OP_EINSUM1_OPERATORS",
    "OP_EINSUM_OPERATORS",
    "OpExpr",
    "Param",
    "Ref",
    "Ternop",
    "Unop",
    "format_cd",
    "format_cd_expr",
    "format_op",
    "parse_cd",
    "parse_op",
]

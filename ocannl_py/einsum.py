"""OCANNL's generalized einsum spec language: parse a spec text into a `Spec`, print it back.

A spec is `rhs1 ; rhs2 ; ... => lhs`; each shape is `batch | input -> output`, `batch | output`,
`input -> output` or `output`. The grammar is `grammar/einsum.lark`. Parsing is purely syntactic;
`shape.py` gives the spec its meaning.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Literal

import lark

from ocannl_py import parsing
from ocannl_py.errors import SpecSyntaxError

ELLIPSIS = "..."
KINDS = ("batch", "input", "output")
Kind = Literal["batch", "input", "output"]


@dataclass(frozen=True)
class Label:
    """An axis variable: every axis with the same label has the same dim and the same index.
    `position`: (line, column) in the spec text, for errors; not part of its identity."""

    name: str
    position: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Placeholder:
    """`_`: aligns the other axes, says nothing about this one."""


@dataclass(frozen=True)
class FixedIndex:
    """An integer: the operand is read (or the result written) at this index only."""

    value: int


@dataclass(frozen=True)
class AffineAxis:
    """`stride*over + offset + dilation*kernel`, for convolutions and pooling.

    `padding`: "<" valid (no padding), "=" padded, "" unspecified. `kernel` is None when there is no
    kernel term, "_" for a placeholder kernel.
    """

    stride: int
    over: str
    offset: int = 0
    dilation: int = 1
    kernel: str | None = None
    padding: Literal["", "<", "="] = ""


@dataclass(frozen=True)
class Concat:
    """`a^b^c`: one axis that iterates over `a`, then `b`, then `c`."""

    parts: tuple[Label | FixedIndex | Placeholder, ...]


AxisSpec = Label | Placeholder | FixedIndex | AffineAxis | Concat


@dataclass(frozen=True)
class RowSpec:
    """The axes of one kind: `beg` axes, an optional row variable, `end` axes.

    `row_var` is `"..."` for the ellipsis (the row variable named after the row's kind) or the name
    of `..name..`. Without a row variable `beg` is empty.
    """

    beg: tuple[AxisSpec, ...] = ()
    row_var: str | None = None
    end: tuple[AxisSpec, ...] = ()

    @property
    def axes(self) -> tuple[AxisSpec, ...]:
        return self.beg + self.end

    def variable_name(self, kind: Kind) -> str | None:
        """The row variable's identity: `...` in the batch row is the same as `..batch..`."""
        return kind if self.row_var == ELLIPSIS else self.row_var


@dataclass(frozen=True)
class ShapeSpec:
    """One tensor's axes in a spec; a row that is not given is None (it must be empty)."""

    batch: RowSpec | None
    input: RowSpec | None
    output: RowSpec

    def row(self, kind: Kind) -> RowSpec | None:
        return getattr(self, kind)


@dataclass(frozen=True)
class Spec:
    """`operands[0] ; operands[1] ; ... => result`."""

    operands: tuple[ShapeSpec, ...]
    result: ShapeSpec
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return print_spec(self)


# ---------------------------------------------------------------------------------------------
# Parsing


_MULTICHAR_TRIGGERS = re.compile(r"[,*+^&<]|=(?!>)")


def is_multichar(text: str) -> bool:
    """OCANNL's rule: any of `,*+^&<`, or a `=` not in `=>`, switches on multi-char mode."""
    return _MULTICHAR_TRIGGERS.search(text) is not None


@functools.cache
def _parser(multichar: bool) -> lark.Lark:
    grammar = parsing.grammar("einsum")
    if not multichar:
        grammar += "\n%override IDENT: /[A-Za-z]/\n"
    return lark.Lark(
        grammar, parser="lalr", start=["start", "labels"], propagate_positions=True, cache=False
    )


def parse_spec(text: str) -> Spec:
    """Parse `rhs1;rhs2=>lhs` (any number of operands); raises SpecSyntaxError."""
    if not isinstance(text, str):
        raise TypeError(f"an einsum spec must be a string, got {type(text).__name__}")
    tree = _parse(text, "start")
    shapes = [_Builder(text).shape(child) for child in tree.children[0].children]
    return Spec(tuple(shapes[:-1]), shapes[-1], text)


def parse_shape_spec(text: str) -> ShapeSpec:
    """Parse the axes of one tensor, e.g. `b|i->o`; raises SpecSyntaxError."""
    if not isinstance(text, str):
        raise TypeError(f"a shape spec must be a string, got {type(text).__name__}")
    tree = _parse(text, "labels")
    return _Builder(text).shape(tree.children[0])


def _expected(parser: lark.Lark, expected: set[str]) -> str:
    phrases = parsing.describe_terminals(parser, expected)
    return "" if len(phrases) > 6 else parsing.one_of(phrases)


_LANGUAGE = parsing.Language(
    prefix="einsum spec: ",
    end="end of the spec",
    expected=_expected,
    token=lambda token: repr(str(token)),
    character_hint=lambda char: " (`&` is reserved)" if char == "&" else "",
)


def _parse(text: str, start: str) -> lark.Tree:
    parser = _parser(is_multichar(text))
    try:
        return parser.parse(text, start=start)
    except lark.exceptions.UnexpectedInput as e:
        raise parsing.syntax_error(e, text, parser, _LANGUAGE) from None
    except lark.exceptions.LarkError as e:
        raise SpecSyntaxError(f"invalid einsum spec: {e}", text, 1, 1) from None


class _Builder:
    """Turns a lark tree into spec values, checking what the grammar leaves open."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.multichar = is_multichar(text)

    def error(self, message: str, item: lark.Tree | lark.Token) -> SpecSyntaxError:
        return SpecSyntaxError(message, self.text, *parsing.position(item))

    def shape(self, tree: lark.Tree) -> ShapeSpec:
        rows = [self.row(r) for r in tree.children]
        if tree.data == "output_shape":
            return ShapeSpec(None, None, rows[0])
        if tree.data == "batch_output_shape":
            return ShapeSpec(rows[0], None, rows[1])
        if tree.data == "input_output_shape":
            return ShapeSpec(None, rows[0], rows[1])
        return ShapeSpec(rows[0], rows[1], rows[2])

    def row(self, tree: lark.Tree) -> RowSpec:
        beg: list[AxisSpec] = []
        end: list[AxisSpec] = []
        row_var: str | None = None
        previous_was_axis = False
        for item in tree.children:
            if isinstance(item, lark.Token) and item.type == "COMMA":
                previous_was_axis = False
                continue
            if isinstance(item, lark.Tree) and item.data == "row_var":
                if row_var is not None:
                    raise self.error("a row can have only one row variable", item)
                token = item.children[0]
                row_var = ELLIPSIS if token == ELLIPSIS else _row_var_name(str(token))
                beg, end = end, []
                previous_was_axis = False
                continue
            if previous_was_axis and self.multichar:
                raise self.error(
                    "in multi-char mode (the spec has a `,`, `*`, `+`, `^` or `<`), axes are "
                    "separated by commas",
                    item,
                )
            end.append(self.axis(item))
            previous_was_axis = True
        if row_var is None:
            return RowSpec((), None, tuple(end))
        return RowSpec(tuple(beg), row_var, tuple(end))

    def axis(self, tree: lark.Tree) -> AxisSpec:
        kind = tree.data
        if kind == "label":
            token = tree.children[0]
            return Label(str(token), (token.line or 1, token.column or 1))
        if kind == "fixed":
            return FixedIndex(int(tree.children[0]))
        if kind == "placeholder":
            return Placeholder()
        if kind == "concat":
            return Concat(tuple(self.concat_part(p) for p in tree.children))
        if kind == "affine":
            return self.affine(tree)
        raise self.error(f"unexpected axis {kind}", tree)

    def concat_part(self, tree: lark.Tree) -> Label | FixedIndex | Placeholder:
        token = tree.children[0]
        if token.type == "INT":
            return FixedIndex(int(token))
        if token.type == "UNDERSCORE":
            return Placeholder()
        return Label(str(token))

    def affine(self, tree: lark.Tree) -> AxisSpec:
        terms = [c for c in tree.children if isinstance(c, lark.Tree)]
        pluses = [str(c) for c in tree.children if isinstance(c, lark.Token)]
        first = self.term(terms[0])
        if first[1] is None or first[1] == "_":
            raise self.error("an affine axis starts with `stride*output` or `output`", tree)
        stride, over = first
        offset, kernel, dilation, padding = 0, None, 1, ""
        seen_offset = False
        for plus, term_tree in zip(pluses, terms[1:], strict=True):
            coeff, name = self.term(term_tree)
            if name is None:
                if seen_offset or kernel is not None or plus != "+":
                    raise self.error(
                        "an affine axis is `stride*output + offset + dilation*kernel`; the "
                        "offset comes once, before the kernel, after a plain `+`",
                        term_tree,
                    )
                offset, seen_offset = coeff, True
            else:
                if kernel is not None:
                    raise self.error("an affine axis has at most one kernel term", term_tree)
                kernel, dilation, padding = name, coeff, plus[:-1]
        if stride == 1 and kernel is None and offset == 0:
            return Label(over)
        return AffineAxis(stride, over, offset, dilation, kernel, padding)  # type: ignore[arg-type]

    def term(self, tree: lark.Tree) -> tuple[int, str | None]:
        """(coefficient, name) of `c*name`, (1, name) of `name`, (value, None) of an integer."""
        tokens = tree.children
        if tree.data == "scaled_term":
            return int(tokens[0]), str(tokens[1])
        token = tokens[0]
        if token.type == "INT":
            return int(token), None
        return 1, str(token)


def _row_var_name(token: str) -> str:
    return token.strip(".").replace(",", "").strip()


# ---------------------------------------------------------------------------------------------
# Printing


def print_spec(spec: Spec) -> str:
    """A text that parses back to `spec`; single-char mode when every name is one letter."""
    shapes = (*spec.operands, spec.result)
    multichar = any(_needs_multichar(s) for s in shapes)
    parts = [print_shape_spec(s, multichar=multichar) for s in shapes]
    text = "; ".join(parts[:-1]) + " => " + parts[-1]
    if multichar and not is_multichar(text):
        text += ","  # a trailing comma is allowed and switches on multi-char mode
    return text


def print_shape_spec(shape: ShapeSpec, *, multichar: bool | None = None) -> str:
    if multichar is None:
        multichar = _needs_multichar(shape)
    output = _print_row(shape.output, multichar)
    text = output
    if shape.input is not None:
        text = f"{_print_row(shape.input, multichar)} -> {output}"
    if shape.batch is not None:
        text = f"{_print_row(shape.batch, multichar)} | {text}"
    return text


def _needs_multichar(shape: ShapeSpec) -> bool:
    rows = [r for r in (shape.batch, shape.input, shape.output) if r is not None]
    for row in rows:
        for axis in row.axes:
            if isinstance(axis, AffineAxis | Concat):
                return True
            if isinstance(axis, Label) and len(axis.name) != 1:
                return True
    return False


def _print_axis(axis: AxisSpec) -> str:
    if isinstance(axis, Label):
        return axis.name
    if isinstance(axis, Placeholder):
        return "_"
    if isinstance(axis, FixedIndex):
        return str(axis.value)
    if isinstance(axis, Concat):
        return "^".join(_print_axis(p) for p in axis.parts)
    text = f"{axis.stride}*{axis.over}" if axis.stride != 1 else axis.over
    if axis.offset:
        text += f"+{axis.offset}"
    if axis.kernel is not None:
        kernel = f"{axis.dilation}*{axis.kernel}" if axis.dilation != 1 else axis.kernel
        text += f"{axis.padding}+{kernel}"
    return text


def _print_row(row: RowSpec, multichar: bool) -> str:
    items = [_print_axis(a) for a in row.beg]
    if row.row_var is not None:
        items.append(ELLIPSIS if row.row_var == ELLIPSIS else f"..{row.row_var}..")
    items.extend(_print_axis(a) for a in row.end)
    if multichar:
        return ", ".join(items)
    text = ""
    for item in items:
        # "1 2" is two fixed indices, "12" is one.
        if text and item[0].isdigit() and text[-1].isdigit():
            text += " "
        text += item
    return text


__all__ = [
    "AffineAxis",
    "AxisSpec",
    "Concat",
    "ELLIPSIS",
    "FixedIndex",
    "Label",
    "Placeholder",
    "RowSpec",
    "ShapeSpec",
    "Spec",
    "is_multichar",
    "parse_shape_spec",
    "parse_spec",
    "print_shape_spec",
    "print_spec",
]

"""The lark grammars (`grammar/*.lark`) and the one conversion of lark's errors into
`SpecSyntaxError`: where (line, column, caret) and what was expected there.

The einsum spec language and the op/cd DSLs share it; each passes a `Language` saying how it
names itself, its end of text and its tokens, and adds hints of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ocannl_py.errors import SpecSyntaxError

GRAMMAR_DIR = Path(__file__).parent / "grammar"

Position = tuple[int, int]  # (line, column), both 1-based


def grammar(name: str) -> str:
    """The text of `grammar/<name>.lark`."""
    return (GRAMMAR_DIR / f"{name}.lark").read_text()


def end_position(text: str) -> Position:
    """Just past the last character: where an early end of text is reported."""
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def position(item: lark.Tree | lark.Token) -> Position:
    """Where a parsed token or tree starts ((1, 1) when lark kept no position)."""
    if isinstance(item, lark.Token):
        return item.line or 1, item.column or 1
    if item.meta.empty:
        return 1, 1
    return getattr(item.meta, "line", 1), getattr(item.meta, "column", 1)


@dataclass(frozen=True)
class Language:
    """How one language words its syntax errors."""

    #: Prefix of every message, e.g. "op DSL: ".
    prefix: str
    #: What "unexpected <end>" says when the text ends too early.
    end: str
    #: Describes the terminals lark expected ("" when the list would not help).
    expected: Callable[[lark.Lark, set[str]], str]
    #: How an unexpected token is quoted.
    token: Callable[[lark.Token], str] = field(default=lambda t: f"`{t}`")
    #: Extra words for an unexpected character (e.g. why `&` is refused).
    character_hint: Callable[[str], str] = field(default=lambda char: "")
    #: Extra words for an unexpected token, given the text and what was expected.
    token_hint: Callable[[lark.Token | None, set[str], str], str] = field(
        default=lambda token, expected, text: ""
    )


def syntax_error(
    error: UnexpectedInput, text: str, parser: lark.Lark, language: Language
) -> SpecSyntaxError:
    """The SpecSyntaxError for a lark parse error of `text`."""
    if isinstance(error, UnexpectedCharacters):
        # No parser state comes with it, so no reliable list of what was expected.
        char = text[error.pos_in_stream] if 0 <= error.pos_in_stream < len(text) else ""
        message = f"unexpected character {char!r}{language.character_hint(char)}"
        return SpecSyntaxError(language.prefix + message, text, error.line, error.column)
    token = error.token if isinstance(error, UnexpectedToken) else None
    # `accepts` simulates the parser, so it lists only what can truly come next.
    expected = set(getattr(error, "accepts", None) or getattr(error, "expected", None) or ())
    if token is None or token.type == "$END":
        line, column = end_position(text)
        message = f"unexpected {language.end}"
    else:
        line, column = token.line, token.column
        message = f"unexpected {language.token(token)}"
    wanted = language.expected(parser, expected)
    if wanted:
        message += f"; expected {wanted}"
    message += language.token_hint(token, expected, text)
    return SpecSyntaxError(language.prefix + message, text, line, column)


def describe_terminals(
    parser: lark.Lark, expected: set[str], names: dict[str, str] | None = None
) -> list[str]:
    """Each expected terminal as a phrase: its name in `names`, its literal text in backticks,
    or its lower-cased terminal name."""
    patterns = {t.name: t.pattern for t in parser.terminals}
    names = names or {}
    phrases = []
    for name in sorted(expected):
        if name in names:
            phrases.append(names[name])
        elif name in patterns and patterns[name].type == "str":
            phrases.append(f"`{patterns[name].value}`")
        else:
            phrases.append(name.lower())
    return phrases


def one_of(phrases: list[str]) -> str:
    """`a`, `a or b`, `a, b or c`."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]

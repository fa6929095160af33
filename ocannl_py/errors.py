"""The errors a user of ocannl_py sees."""

from __future__ import annotations

from arrayjit.errors import CompileError


class SpecSyntaxError(ValueError):
    """A spec or DSL text that does not parse: says where, with the line and a caret."""

    def __init__(self, message: str, text: str, line: int, column: int) -> None:
        self.message = message
        self.text = text
        self.line = line  # 1-based
        self.column = column  # 1-based
        lines = text.splitlines() or [""]
        shown = lines[line - 1] if 0 < line <= len(lines) else ""
        caret = " " * (max(column, 1) - 1) + "^"
        super().__init__(f"{message} (line {line}, column {column})\n  {shown}\n  {caret}")


class ShapeError(ValueError):
    """Shapes that cannot agree: names the tensors, the operation, the axis kind and the dims."""


__all__ = ["CompileError", "ShapeError", "SpecSyntaxError"]

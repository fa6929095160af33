"""User text made inert for generated C and CUDA: identifiers from a safe alphabet, comment text
that cannot end its comment. Labels, routine names and comments pass through here."""

from __future__ import annotations

import re

LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SAFE_NAME = LETTERS | frozenset("0123456789")
# Printable ASCII but the backslash: with no backslash and no line break, a comment cannot be
# spliced onto the next line, and `*/`, `/*` and `??` (trigraphs) are broken up below.
_SAFE_COMMENT = frozenset(chr(c) for c in range(32, 127)) - {"\\"}
_COMMENT_BREAKS = re.compile(r"\*(?=/)|/(?=\*)|\?(?=\?)")


def identifier(text: str, limit: int = 32) -> str:
    """A C identifier made of ASCII letters, digits and `_`, readable from `text`: other
    characters become `_`, letters outside ASCII their code point (`ⸯ` -> `u2e2f`). Callers add
    a prefix or suffix, so a C keyword never stands alone."""
    parts = []
    for ch in text:
        if ch in _SAFE_NAME:
            parts.append(ch)
        elif ch.isalnum():
            parts.append(f"u{ord(ch):x}")
        else:
            parts.append("_")
    safe = "".join(parts)[:limit]
    # A letter first: a digit is not allowed there, and `__` or `_X` (even once a caller adds a
    # suffix to a bare `_`) are reserved names.
    return safe if safe and safe[0] in LETTERS else f"b{safe}"


def comment_text(text: str) -> str:
    """`text` as inert comment text: printable ASCII but the backslash kept, anything else as
    `<U+XXXX>`, and the pairs that could end a comment or start a trigraph split by a space."""
    safe = "".join(ch if ch in _SAFE_COMMENT else f"<U+{ord(ch):04X}>" for ch in text)
    return _COMMENT_BREAKS.sub(lambda m: m.group() + " ", safe)

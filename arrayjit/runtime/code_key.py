"""The structural key of assignment code: a digest of what determines its compiled form (the
statements' ops, projections and constants; the buffers' labels, dims, dtypes and memory modes,
in order of first appearance), not of the buffers' identities or the arrays of `Values`. The
same program in a fresh process has the same key, so its compiled routine is found in the cache
before anything is lowered or printed. Linear in the number of statements."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from arrayjit import assignments as asg
from arrayjit.indexing import Affine, Fixed, Iterator, Lookup, ProjectedIndex
from arrayjit.tnode import TNode


@dataclass(frozen=True)
class Structure:
    digest: str
    #: The code's buffers in order of first appearance.
    tnodes: tuple[TNode, ...]
    #: The fetches of `Values`, in order: their arrays become buffers of their own.
    values: tuple[asg.Fetch, ...]
    #: The Accums with lookups, in order: each has an error buffer of its own.
    checked: tuple[asg.Accum, ...] = ()


def _index(index: ProjectedIndex, its: dict[int, str]) -> str:
    """`index` with iterators named by their position in the statement (`its`: id -> name)."""
    if type(index) is Iterator:
        return its[index.id]
    if type(index) is Fixed:
        return str(index.value)
    if type(index) is Lookup:
        return f"@{index.operand}"
    assert isinstance(index, Affine)
    terms = "+".join(f"{c}*{its[it.id]}" for c, it in index.terms)
    return f"{terms}+{index.offset}"


def _rhs(expr: str | asg.RhsExpr) -> str:
    if isinstance(expr, str):
        return expr
    if isinstance(expr, asg.Arg):
        return f"#{expr.index}"
    if isinstance(expr, asg.Lit):
        return repr(expr.value)
    return f"{expr.op}({','.join(_rhs(a) for a in expr.args)})"


def structure(code: asg.Assignments) -> Structure:
    slots: dict[TNode, int] = {}
    tnodes: list[TNode] = []
    values: list[asg.Fetch] = []
    checked: list[asg.Accum] = []
    parts: list[str] = []

    def slot(t: TNode) -> int:
        k = slots.get(t)
        if k is None:
            k = slots[t] = len(tnodes)
            tnodes.append(t)
            parts.append(f"T{t.label!r}{t.dims}{t.dtype.name}/{t.memory_mode.value}")
        return k

    for s in asg.flatten(code):
        if isinstance(s, asg.Accum):
            p = s.projections
            its = {it.id: f"i{n}" for n, it in enumerate(p.product_iterators)}
            lhs = ",".join(_index(i, its) for i in p.project_lhs)
            rhs = ";".join(",".join(_index(i, its) for i in r) for r in p.project_rhs)
            operands = ",".join(str(slot(r)) for r in s.rhses)
            parts.append(
                f"A{slot(s.lhs)}{s.accum}{'!' if s.zero_first else ''}{_rhs(s.op)}({operands})"
                f"{p.product_space}[{lhs}][{rhs}]"
            )
            if "@" in lhs or "@" in rhs:
                checked.append(s)
        elif isinstance(s, asg.Fetch):
            source = s.source
            if isinstance(source, asg.Constant):
                what = repr(source.value)
            elif isinstance(source, asg.RangeOfShape):
                what = "range"
            else:
                what = f"values{len(values)}"
                values.append(s)
            parts.append(f"F{slot(s.lhs)}{what}")
        elif isinstance(s, asg.Comment):
            parts.append(f"C{s.text!r}")
        else:
            raise TypeError(f"not an assignment: {s!r}")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    return Structure(digest, tuple(tnodes), tuple(values), tuple(checked))


@functools.cache
def generator_version() -> str:
    """A fingerprint of arrayjit's own source files (names, sizes, modification times): compiled
    routines found by structure are valid only for the code generator that made them."""
    root = Path(__file__).resolve().parent.parent
    entries = []
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(folder, name))
                entries.append(
                    f"{folder[len(str(root)) :]}/{name}:{stat.st_size}:{stat.st_mtime_ns}"
                )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:32]

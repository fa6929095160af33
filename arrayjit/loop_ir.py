"""The loop IR: a small set of frozen node types between assignments and generated code.

Expressions compute one scalar; statements are loops, stores and scalar locals. Indices are the
affine `arrayjit.indexing.Index` values, so substituting iterators stays inside the IR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from arrayjit import ops
from arrayjit.dtypes import DType
from arrayjit.indexing import Index, Iterator
from arrayjit.tnode import TNode

# ---- expressions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Const:
    value: float
    dtype: DType


@dataclass(frozen=True)
class Get:
    tnode: TNode
    index: tuple[Index, ...]


@dataclass(frozen=True)
class Local:
    """Reads the scalar local `name` (declared by `DeclLocal`)."""

    name: str
    dtype: DType


@dataclass(frozen=True)
class IndexValue:
    """The value of an index expression, as a number of `dtype`."""

    index: Index
    dtype: DType


@dataclass(frozen=True)
class Apply:
    """A primitive op (see `arrayjit.ops`) applied to its operands."""

    op: str
    args: tuple[Expr, ...]
    dtype: DType


Expr = Const | Get | Local | IndexValue | Apply


def Unop(op: str, x: Expr, dtype: DType) -> Apply:  # noqa: N802 - IR constructor
    return Apply(op, (x,), dtype)


def Binop(op: str, a: Expr, b: Expr, dtype: DType) -> Apply:  # noqa: N802 - IR constructor
    return Apply(op, (a, b), dtype)


# ---- statements --------------------------------------------------------------------------


@dataclass(frozen=True)
class For:
    iterator: Iterator
    extent: int
    body: Stmt
    # Scheduling marks; backends may ignore them.
    parallel: bool = False


@dataclass(frozen=True)
class Set:
    tnode: TNode
    index: tuple[Index, ...]
    value: Expr


@dataclass(frozen=True)
class DeclLocal:
    name: str
    dtype: DType
    init: Expr


@dataclass(frozen=True)
class SetLocal:
    name: str
    value: Expr


@dataclass(frozen=True)
class Block:
    stmts: tuple[Stmt, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Comment:
    text: str


Stmt = For | Set | DeclLocal | SetLocal | Block | Comment


def block(stmts: list[Stmt] | tuple[Stmt, ...]) -> Stmt:
    """A block with nested blocks flattened; a single statement stays itself."""
    flat: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Block):
            flat.extend(s.stmts)
        else:
            flat.append(s)
    return flat[0] if len(flat) == 1 else Block(tuple(flat))


# ---- traversal ---------------------------------------------------------------------------


def map_expr(e: Expr, f: Callable[[Expr], Expr]) -> Expr:
    """Rebuild `e` bottom-up, applying `f` to every node after its children."""
    if isinstance(e, Apply):
        e = replace(e, args=tuple(map_expr(a, f) for a in e.args))
    return f(e)


def map_stmt_exprs(s: Stmt, f: Callable[[Expr], Expr]) -> Stmt:
    """Apply `map_expr(_, f)` to every expression of a statement tree."""
    if isinstance(s, For):
        return replace(s, body=map_stmt_exprs(s.body, f))
    if isinstance(s, Block):
        return Block(tuple(map_stmt_exprs(x, f) for x in s.stmts))
    if isinstance(s, Set):
        return replace(s, value=map_expr(s.value, f))
    if isinstance(s, DeclLocal):
        return replace(s, init=map_expr(s.init, f))
    if isinstance(s, SetLocal):
        return replace(s, value=map_expr(s.value, f))
    return s


def walk_exprs(e: Expr) -> list[Expr]:
    out = [e]
    if isinstance(e, Apply):
        for a in e.args:
            out.extend(walk_exprs(a))
    return out


def stmt_exprs(s: Stmt) -> list[Expr]:
    """Every expression node in a statement tree."""
    if isinstance(s, For):
        return stmt_exprs(s.body)
    if isinstance(s, Block):
        return [e for x in s.stmts for e in stmt_exprs(x)]
    if isinstance(s, Set):
        return walk_exprs(s.value)
    if isinstance(s, DeclLocal):
        return walk_exprs(s.init)
    if isinstance(s, SetLocal):
        return walk_exprs(s.value)
    return []


def written_tnodes(s: Stmt) -> set[TNode]:
    if isinstance(s, For):
        return written_tnodes(s.body)
    if isinstance(s, Block):
        return set().union(*(written_tnodes(x) for x in s.stmts)) if s.stmts else set()
    if isinstance(s, Set):
        return {s.tnode}
    return set()


def read_tnodes(s: Stmt) -> set[TNode]:
    return {e.tnode for e in stmt_exprs(s) if isinstance(e, Get)}


def tnodes_in(s: Stmt) -> list[TNode]:
    """Every buffer a statement tree reads or writes, in order of first appearance."""
    seen: dict[int, TNode] = {}

    def visit(x: Stmt) -> None:
        if isinstance(x, For):
            visit(x.body)
        elif isinstance(x, Block):
            for y in x.stmts:
                visit(y)
        else:
            for e in stmt_exprs(x):
                if isinstance(e, Get):
                    seen.setdefault(e.tnode.id, e.tnode)
            if isinstance(x, Set):
                seen.setdefault(x.tnode.id, x.tnode)

    visit(s)
    return list(seen.values())


# ---- printing ----------------------------------------------------------------------------


def expr_string(e: Expr) -> str:
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, Get):
        return f"{e.tnode.name}[{', '.join(map(str, e.index))}]"
    if isinstance(e, Local):
        return e.name
    if isinstance(e, IndexValue):
        return f"({e.index})"
    op = ops.get(e.op)
    args = [expr_string(a) for a in e.args]
    if op.arity == 2 and op.symbol and e.op != "relu_gate":
        return f"({args[0]} {op.symbol} {args[1]})"
    return f"{e.op}({', '.join(args)})"


def to_string(s: Stmt, indent: int = 0) -> str:
    """Pseudo-code for a statement tree."""
    pad = "  " * indent
    if isinstance(s, For):
        mark = " parallel" if s.parallel else ""
        return f"{pad}for {s.iterator} < {s.extent}{mark}:\n{to_string(s.body, indent + 1)}"
    if isinstance(s, Block):
        return "\n".join(to_string(x, indent) for x in s.stmts) if s.stmts else f"{pad}pass"
    if isinstance(s, Set):
        return f"{pad}{s.tnode.name}[{', '.join(map(str, s.index))}] := {expr_string(s.value)}"
    if isinstance(s, DeclLocal):
        return f"{pad}local {s.name}: {s.dtype} := {expr_string(s.init)}"
    if isinstance(s, SetLocal):
        return f"{pad}{s.name} := {expr_string(s.value)}"
    if isinstance(s, Comment):
        return f"{pad}# {s.text}"
    raise TypeError(f"not a statement: {s!r}")


def ops_used(s: Stmt) -> set[str]:
    return {e.op for e in stmt_exprs(s) if isinstance(e, Apply)}

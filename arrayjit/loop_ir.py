"""The loop IR: a small set of frozen node types between assignments and generated code.

Expressions compute one scalar; statements are loops, stores and scalar locals. Indices are the
affine `arrayjit.indexing.Index` values, so substituting iterators stays inside the IR, or a
`Dynamic` index: a value read from data at run time (a gather), checked against its axis.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator as PyIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from arrayjit import ops
from arrayjit.dtypes import DType
from arrayjit.indexing import Index, Iterator, affine, as_affine, iterators_of, substitute
from arrayjit.tnode import TNode

if TYPE_CHECKING:
    from arrayjit.schedule.cpu_matmul import Blocking

# ---- expressions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Const:
    value: float
    dtype: DType


@dataclass(frozen=True)
class Dynamic:
    """An index computed at run time by `value` (an int32 expression, e.g. a read of token ids).
    Generated code checks that it lies in `[0, bound)`: an index outside is recorded in the
    `errors` buffer (see `arrayjit.runtime.index_checks`) and replaced by 0, so nothing is ever
    read or written outside a buffer."""

    value: Expr
    bound: int
    errors: TNode
    #: Which check of `errors` this is (from 1): recorded with the index when it is outside.
    site: int = 1


#: The index of one axis of a read or a store.
AxisIndex = Index | Dynamic


def split_offset(
    dims: tuple[int, ...], index: tuple[AxisIndex, ...]
) -> tuple[Index, tuple[tuple[int, Dynamic], ...]]:
    """The row-major offset of `index` in a buffer of `dims`: its affine part, and the dynamic
    indices with their strides."""
    strides = [1] * len(dims)
    for k in range(len(dims) - 2, -1, -1):
        strides[k] = strides[k + 1] * dims[k + 1]
    terms: list[tuple[int, Iterator]] = []
    offset = 0
    dynamic: list[tuple[int, Dynamic]] = []
    for stride, idx in zip(strides, index, strict=True):
        if isinstance(idx, Dynamic):
            dynamic.append((stride, idx))
        else:
            its, off = as_affine(idx)
            terms.extend((stride * c, it) for c, it in its)
            offset += stride * off
    return affine(*terms, offset=offset), tuple(dynamic)


@dataclass(frozen=True)
class Get:
    tnode: TNode
    index: tuple[AxisIndex, ...]


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


@dataclass(frozen=True)
class Cast:
    """`value` converted to `dtype`: a 16-bit float widened to float32 when read or rounded (to
    nearest even) when stored, or a conversion between the computing types."""

    value: Expr
    dtype: DType


Expr = Const | Get | Local | IndexValue | Apply | Cast


def expr_dtype(e: Expr) -> DType:
    """The type of the value `e` computes."""
    return e.tnode.dtype if isinstance(e, Get) else e.dtype


def dynamic_values(index: tuple[AxisIndex, ...]) -> tuple[Expr, ...]:
    """The expressions of the dynamic indices among `index`."""
    return tuple(i.value for i in index if isinstance(i, Dynamic))


def index_iterators(index: AxisIndex) -> tuple[Iterator, ...]:
    """The iterators an axis index depends on; for a dynamic one, those its value reads at."""
    if not isinstance(index, Dynamic):
        return iterators_of(index)
    found: dict[Iterator, None] = {}
    for e in walk_expr(index.value):
        if isinstance(e, Get):
            for i in e.index:
                if not isinstance(i, Dynamic):
                    found.update(dict.fromkeys(iterators_of(i)))
        elif isinstance(e, IndexValue):
            found.update(dict.fromkeys(iterators_of(e.index)))
    return tuple(found)


def is_dynamic(index: tuple[AxisIndex, ...]) -> bool:
    return any(isinstance(i, Dynamic) for i in index)


# ---- statements --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reduction:
    """A scalar local that a vectorized loop combines across lanes: `name := name op ...`."""

    op: str
    name: str
    dtype: DType


@dataclass(frozen=True)
class For:
    iterator: Iterator
    extent: int
    body: Stmt
    # Scheduling marks; backends may ignore them.
    # Iterations write distinct cells (set by lowering; a GPU maps such loops to threads).
    parallel: bool = False
    # The CPU schedule's marks (the passes of `lowering.CPU_SCHEDULE`, for the C backend only):
    # iterations split into `threads` static chunks, one per thread; the loop vectorized
    # (`#pragma omp simd`), with `reductions` combined across lanes.
    threads: int = 1
    vectorize: bool = False
    reductions: tuple[Reduction, ...] = ()


@dataclass(frozen=True)
class Set:
    tnode: TNode
    index: tuple[AxisIndex, ...]
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


@dataclass(frozen=True)
class InRange:
    """`0 <= index < extent`: an affine index (convolution, padding) inside its buffer's axis."""

    index: Index
    extent: int

    def __str__(self) -> str:
        return f"0 <= {self.index} < {self.extent}"


@dataclass(frozen=True)
class If:
    """Runs `body` only where every condition holds: a padded read or write outside its buffer
    is skipped, so the cell contributes nothing (lowering adds it, never a pass)."""

    conditions: tuple[InRange, ...]
    body: Stmt


@dataclass(frozen=True)
class Matmul:
    """`tnode[index] := (tnode[index] +) sum over k < K of a * b`, for m < M and n < N: a matrix
    product that the CPU schedule packs and register-blocks (`arrayjit.schedule.cpu_matmul`).
    `a` reads `m` and `k`, `b` reads `k` and `n`, `index` uses `m` and `n` each as the index of
    one axis; other iterators are bound by loops around it. Without `accumulate` the product
    overwrites. `a_pack` and `b_pack` are the scratch buffers the operands are packed into."""

    tnode: TNode
    index: tuple[Index, ...]
    a: Expr
    b: Expr
    m: Iterator
    n: Iterator
    k: Iterator
    extents: tuple[int, int, int]
    accumulate: bool
    blocking: Blocking
    a_pack: TNode
    b_pack: TNode


Stmt = For | Set | DeclLocal | SetLocal | Block | Comment | Matmul | If


def guarded(conditions: tuple[InRange, ...] | list[InRange], body: Stmt) -> Stmt:
    """`body` under `conditions`, or `body` itself when there are none."""
    return If(tuple(conditions), body) if conditions else body


def block(stmts: list[Stmt] | tuple[Stmt, ...]) -> Stmt:
    """A block with nested blocks flattened; a single statement stays itself."""
    flat: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Block):
            flat.extend(s.stmts)
        else:
            flat.append(s)
    return flat[0] if len(flat) == 1 else Block(tuple(flat))


# ---- traversal: the one visitor and mutator of the IR -------------------------------------
# Passes and kernel planning read and rebuild trees only through these functions.


def children(s: Stmt) -> tuple[Stmt, ...]:
    """The statements directly inside `s`."""
    if isinstance(s, For | If):
        return (s.body,)
    if isinstance(s, Block):
        return s.stmts
    return ()


def walk(s: Stmt) -> PyIterator[Stmt]:
    """Every statement of the tree, parents before children, in program order."""
    stack = [s]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def walk_in_loops(s: Stmt) -> PyIterator[tuple[Stmt, tuple[For, ...]]]:
    """Every statement of the tree with the loops around it inside `s` (outermost first),
    parents before children, in program order."""
    stack: list[tuple[Stmt, tuple[For, ...]]] = [(s, ())]
    while stack:
        node, around = stack.pop()
        yield node, around
        inner = (*around, node) if isinstance(node, For) else around
        stack.extend((child, inner) for child in reversed(children(node)))


def root_exprs(s: Stmt) -> tuple[Expr, ...]:
    """The expressions `s` itself evaluates (not those of statements inside it): for a store,
    its value and the values of its dynamic indices."""
    if isinstance(s, Set):
        return (s.value, *dynamic_values(s.index))
    if isinstance(s, SetLocal):
        return (s.value,)
    if isinstance(s, DeclLocal):
        return (s.init,)
    if isinstance(s, Matmul):
        return (s.a, s.b, Get(s.tnode, s.index)) if s.accumulate else (s.a, s.b)
    return ()


def stores(s: Stmt) -> tuple[TNode, ...]:
    """The buffers `s` itself writes (not those of statements inside it)."""
    if isinstance(s, Set):
        return (s.tnode,)
    if isinstance(s, Matmul):
        return (s.tnode, s.a_pack, s.b_pack)
    return ()


def binds(s: Stmt) -> tuple[Iterator, ...]:
    """The iterators `s` itself binds."""
    if isinstance(s, For):
        return (s.iterator,)
    if isinstance(s, Matmul):
        return (s.m, s.n, s.k)
    return ()


def walk_expr(e: Expr) -> PyIterator[Expr]:
    """Every node of an expression, parents before children (the values of a read's dynamic
    indices are its children)."""
    stack = [e]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Apply):
            stack.extend(reversed(node.args))
        elif isinstance(node, Cast):
            stack.append(node.value)
        elif isinstance(node, Get):
            stack.extend(reversed(dynamic_values(node.index)))


def _map_index(index: tuple[AxisIndex, ...], f: Callable[[Expr], Expr]) -> tuple[AxisIndex, ...]:
    if not is_dynamic(index):
        return index
    return tuple(replace(i, value=f(i.value)) if isinstance(i, Dynamic) else i for i in index)


def map_stmt(s: Stmt, f: Callable[[Stmt], Stmt]) -> Stmt:
    """Rebuild `s` bottom-up: children first, then `f` on the rebuilt node. Nested blocks are
    flattened."""
    if isinstance(s, For | If):
        s = replace(s, body=map_stmt(s.body, f))
    elif isinstance(s, Block):
        s = Block(tuple(map_stmt(x, f) for x in s.stmts))
        s = block(s.stmts) if s.stmts else s
    return f(s)


def map_root_exprs(s: Stmt, f: Callable[[Expr], Expr]) -> Stmt:
    """Apply `f` to the root expression of every statement (`f` recurses if it needs to); a
    matmul's operands `a` and `b` (its read of its own buffer stays as it is)."""

    def rebuild(x: Stmt) -> Stmt:
        if isinstance(x, Set):
            return replace(x, value=f(x.value), index=_map_index(x.index, f))
        if isinstance(x, SetLocal):
            return replace(x, value=f(x.value))
        if isinstance(x, DeclLocal):
            return replace(x, init=f(x.init))
        if isinstance(x, Matmul):
            return replace(x, a=f(x.a), b=f(x.b))
        return x

    return map_stmt(s, rebuild)


def map_expr(e: Expr, f: Callable[[Expr], Expr]) -> Expr:
    """Rebuild `e` bottom-up, applying `f` to every node after its children."""
    if isinstance(e, Apply):
        e = replace(e, args=tuple(map_expr(a, f) for a in e.args))
    elif isinstance(e, Cast):
        e = replace(e, value=map_expr(e.value, f))
    elif isinstance(e, Get) and is_dynamic(e.index):
        e = replace(e, index=_map_index(e.index, lambda v: map_expr(v, f)))
    return f(e)


def map_stmt_exprs(s: Stmt, f: Callable[[Expr], Expr]) -> Stmt:
    """Apply `map_expr(_, f)` to every expression of a statement tree."""
    return map_root_exprs(s, lambda e: map_expr(e, f))


def stmt_exprs(s: Stmt) -> list[Expr]:
    """Every expression node in a statement tree."""
    return [e for x in walk(s) for root in root_exprs(x) for e in walk_expr(root)]


def written_tnodes(s: Stmt) -> set[TNode]:
    """The buffers a statement tree stores into, and the error buffers of its dynamic indices."""
    return {t for x in walk(s) for t in stores(x)} | set(index_checks(s))


def index_checks(s: Stmt) -> list[TNode]:
    """The error buffers of the dynamic indices of a statement tree, in order of appearance."""
    found: dict[TNode, None] = {}
    for x in walk(s):
        indices = [x.index] if isinstance(x, Set) else []
        indices += [
            e.index for root in root_exprs(x) for e in walk_expr(root) if isinstance(e, Get)
        ]
        for index in indices:
            found.update((i.errors, None) for i in index if isinstance(i, Dynamic))
    return list(found)


def read_tnodes(s: Stmt) -> set[TNode]:
    return {e.tnode for e in stmt_exprs(s) if isinstance(e, Get)}


def tnodes_in(s: Stmt) -> list[TNode]:
    """Every buffer a statement tree reads or writes, in order of first appearance."""
    seen: dict[int, TNode] = {}
    for x in walk(s):
        for root in root_exprs(x):
            for e in walk_expr(root):
                if isinstance(e, Get):
                    seen.setdefault(e.tnode.id, e.tnode)
        for t in stores(x):
            seen.setdefault(t.id, t)
    for t in index_checks(s):
        seen.setdefault(t.id, t)
    return list(seen.values())


def declared_locals(s: Stmt) -> set[str]:
    return {x.name for x in walk(s) if isinstance(x, DeclLocal)}


def assigned_locals(s: Stmt) -> set[str]:
    """Locals reassigned after their declaration."""
    return {x.name for x in walk(s) if isinstance(x, SetLocal)}


def read_locals(s: Stmt) -> set[str]:
    return {e.name for e in stmt_exprs(s) if isinstance(e, Local)}


def bound_iterators(s: Stmt) -> set[Iterator]:
    return {it for x in walk(s) for it in binds(x)}


def substitute_iterators(s: Stmt, env: dict[Iterator, Index]) -> Stmt:
    """`s` with every use of the iterators of `env` replaced by their index (a loop's iterator
    renamed, or an iterator made an affine function of others)."""

    def index(idx: tuple[AxisIndex, ...]) -> tuple[AxisIndex, ...]:
        # A dynamic index's value is an expression: `map_stmt_exprs` substitutes in it.
        return tuple(i if isinstance(i, Dynamic) else substitute(i, env) for i in idx)

    def expr(e: Expr) -> Expr:
        if isinstance(e, Get):
            return Get(e.tnode, index(e.index))
        if isinstance(e, IndexValue):
            return IndexValue(substitute(e.index, env), e.dtype)
        return e

    def stmt(x: Stmt) -> Stmt:
        if isinstance(x, Set | Matmul):
            return replace(x, index=index(x.index))
        if isinstance(x, If):
            conditions = tuple(InRange(substitute(c.index, env), c.extent) for c in x.conditions)
            return replace(x, conditions=conditions)
        return x

    return map_stmt(map_stmt_exprs(s, expr), stmt)


def rename_locals(s: Stmt, names: dict[str, str]) -> Stmt:
    """`s` with the locals of `names` renamed (declarations, assignments and reads)."""

    def expr(e: Expr) -> Expr:
        return Local(names[e.name], e.dtype) if isinstance(e, Local) and e.name in names else e

    def stmt(x: Stmt) -> Stmt:
        if isinstance(x, DeclLocal | SetLocal) and x.name in names:
            return replace(x, name=names[x.name])
        return x

    return map_stmt(map_stmt_exprs(s, expr), stmt)


# ---- printing ----------------------------------------------------------------------------


def index_string(index: tuple[AxisIndex, ...]) -> str:
    parts = [
        f"dynamic({expr_string(i.value)} < {i.bound})" if isinstance(i, Dynamic) else str(i)
        for i in index
    ]
    return ", ".join(parts)


def expr_string(e: Expr) -> str:
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, Get):
        return f"{e.tnode.name}[{index_string(e.index)}]"
    if isinstance(e, Local):
        return e.name
    if isinstance(e, IndexValue):
        return f"({e.index})"
    if isinstance(e, Cast):
        return f"{e.dtype}({expr_string(e.value)})"
    op = ops.get(e.op)
    args = [expr_string(a) for a in e.args]
    if op.arity == 2 and op.symbol and e.op != "relu_gate":
        return f"({args[0]} {op.symbol} {args[1]})"
    return f"{e.op}({', '.join(args)})"


def _marks(s: For) -> str:
    marks = ["parallel"] if s.parallel else []
    if s.threads > 1:
        marks.append(f"threads={s.threads}")
    if s.vectorize:
        marks.append("simd")
    marks += [f"reduce({r.op}: {r.name})" for r in s.reductions]
    return "".join(" " + m for m in marks)


def to_string(s: Stmt, indent: int = 0) -> str:
    """Pseudo-code for a statement tree."""
    pad = "  " * indent
    if isinstance(s, For):
        return f"{pad}for {s.iterator} < {s.extent}{_marks(s)}:\n{to_string(s.body, indent + 1)}"
    if isinstance(s, Matmul):
        m, n, k = s.extents
        lhs = f"{s.tnode.name}[{', '.join(map(str, s.index))}]"
        product = f"{expr_string(s.a)} * {expr_string(s.b)}"
        return (
            f"{pad}{lhs} {'+=' if s.accumulate else ':='} sum {product}"
            f"    matmul {s.m} < {m}, {s.n} < {n}, {s.k} < {k} ({s.blocking})"
        )
    if isinstance(s, Block):
        return "\n".join(to_string(x, indent) for x in s.stmts) if s.stmts else f"{pad}pass"
    if isinstance(s, Set):
        return f"{pad}{s.tnode.name}[{index_string(s.index)}] := {expr_string(s.value)}"
    if isinstance(s, DeclLocal):
        return f"{pad}local {s.name}: {s.dtype} := {expr_string(s.init)}"
    if isinstance(s, SetLocal):
        return f"{pad}{s.name} := {expr_string(s.value)}"
    if isinstance(s, Comment):
        return f"{pad}# {s.text}"
    if isinstance(s, If):
        conditions = " and ".join(map(str, s.conditions))
        return f"{pad}if {conditions}:\n{to_string(s.body, indent + 1)}"
    raise TypeError(f"not a statement: {s!r}")


def ops_used(s: Stmt) -> set[str]:
    return {e.op for e in stmt_exprs(s) if isinstance(e, Apply)}

"""Matrix products become packed, register-blocked `Matmul` statements (CPU schedule).

A top-level loop nest computing `c[..] = c[..] + x * y` (a row update with the reduction among
the loops) or `acc = init; for k..: acc = acc + x * y; c[..] = acc` (a register accumulator) is a
product when it has an iterator `m` that only `x` and `c` read, an iterator `n` that only `y`
and `c` read (each the plain index of one axis of `c`), and a reduction `k` that both `x` and
`y` read. The remaining iterators (batch axes, further reductions) stay loops around the
`Matmul`. Which of the candidates play m, n and k: `n` the one contiguous in `c` if any (so the
micro-kernel stores whole vectors), then the largest extents. How the product is blocked and
split over threads is `arrayjit.schedule.cpu_matmul`'s decision. An operand that is not a
read of a buffer (an inlined virtual tensor: `relu(h[b, k] + bias[k])`) is first computed into a
scratch buffer by its own loop nest, since the product reads its operands through strides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from arrayjit import loop_ir as ir
from arrayjit.dtypes import DType
from arrayjit.indexing import (
    Fixed,
    Index,
    Iterator,
    as_affine,
    iterators_of,
    row_major_offset,
    substitute,
)
from arrayjit.schedule import cpu_matmul
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import MemoryMode, TNode


@dataclass(frozen=True)
class Product:
    """A loop nest recognized as a product, before its roles are assigned."""

    loops: tuple[ir.For, ...]  # every loop of the nest, outermost first
    tnode: TNode
    index: tuple[Index, ...]
    x: ir.Expr
    y: ir.Expr
    accumulate: bool  # adds to the existing values (else the product overwrites)


@dataclass(frozen=True)
class Plan:
    """A product with its roles, and its operands as reads of buffers (`x` reads m, `y` n),
    each with the nest computing it into a scratch buffer first, if it needs one."""

    p: Product
    m: Iterator
    n: Iterator
    k: Iterator
    x: ir.Get
    y: ir.Get
    x_nest: ir.Stmt | None
    y_nest: ir.Stmt | None


def _plan(p: Product, roles: tuple[Iterator, Iterator, Iterator]) -> Plan:
    m, n, k = roles
    x, y = (p.x, p.y) if m in _iterators(p.x) else (p.y, p.x)
    (x, x_nest), (y, y_nest) = _stored(x, p.loops), _stored(y, p.loops)
    return Plan(p, m, n, k, x, y, x_nest, y_nest)


def run(stmt: ir.Stmt, target: CpuTarget) -> ir.Stmt:
    top = list(stmt.stmts) if isinstance(stmt, ir.Block) else [stmt]
    plans: dict[int, Plan] = {}
    last_touch: dict[TNode, int] = {}  # the last statement so far reading or writing a buffer
    for pos, s in enumerate(top):
        product = _as_product(s)
        roles = _roles(product, target) if product else None
        if roles is not None:
            previous = last_touch.get(product.tnode)
            if product.accumulate and previous is not None and _clears(top[previous], product):
                # Zeros, then nothing touches them before the product adds to them (`c =:+ x * y`
                # lowered as a fill and updates, or a gradient cleared at the start of a step):
                # the product overwrites instead.
                top[previous] = ir.Block(())
                product = replace(product, accumulate=False)
            plans[pos] = _plan(*_merged(product, *roles))
        for t in ir.written_tnodes(s) | ir.read_tnodes(s):
            last_touch[t] = pos
    if not plans:
        return stmt
    blockings = {pos: _blocking(plan, target) for pos, plan in plans.items()}
    packs = _pack_buffers([(plan.p.tnode.dtype, blockings[pos]) for pos, plan in plans.items()])
    out = [
        _rewrite(plans[pos], blockings[pos], packs) if pos in plans else s
        for pos, s in enumerate(top)
    ]
    return ir.block(out)


def _as_product(s: ir.Stmt) -> Product | None:
    """The nest `s` as `tnode[index] (+)= sum x * y`, or None."""
    loops: list[ir.For] = []
    while isinstance(s, ir.For):
        loops.append(s)
        s = s.body
    if isinstance(s, ir.Set):  # c[..] := c[..] + x * y, every loop around it
        terms = _update_terms(s.value, ir.Get(s.tnode, s.index))
        if terms is None:
            return None
        return Product(tuple(loops), s.tnode, s.index, *terms, accumulate=True)
    if not (isinstance(s, ir.Block) and len(s.stmts) == 3):
        return None
    decl, inner, store = s.stmts
    if not (
        isinstance(decl, ir.DeclLocal)
        and isinstance(store, ir.Set)
        and store.value == ir.Local(decl.name, decl.dtype)
    ):
        return None
    if decl.init == ir.Get(store.tnode, store.index):
        accumulate = True
    elif decl.init == ir.Const(0.0, decl.dtype):
        accumulate = False
    else:
        return None
    while isinstance(inner, ir.For):
        loops.append(inner)
        inner = inner.body
    if not (isinstance(inner, ir.SetLocal) and inner.name == decl.name):
        return None
    terms = _update_terms(inner.value, ir.Local(decl.name, decl.dtype))
    if terms is None:
        return None
    return Product(tuple(loops), store.tnode, store.index, *terms, accumulate=accumulate)


def _clears(s: ir.Stmt, p: Product) -> bool:
    """Whether `s` fills all of `p`'s buffer with zeros and `p` writes every cell of it (so the
    product may overwrite instead of adding to the zeros)."""
    loops: dict[Iterator, int] = {}
    while isinstance(s, ir.For):
        loops[s.iterator] = s.extent
        s = s.body
    return (
        isinstance(s, ir.Set)
        and s.tnode is p.tnode
        and s.value == ir.Const(0.0, p.tnode.dtype)
        and _covers(s.tnode, s.index, loops)
        and _covers(p.tnode, p.index, {loop.iterator: loop.extent for loop in p.loops})
    )


def _covers(tnode: TNode, index: tuple[Index, ...], extents: dict[Iterator, int]) -> bool:
    """Whether `index`, over iterators of `extents`, reaches every cell of `tnode`."""
    seen: set[Iterator] = set()
    for dim, idx in zip(tnode.dims, index, strict=True):
        if isinstance(idx, Fixed) and dim == 1:
            continue
        if not isinstance(idx, Iterator) or idx in seen or extents.get(idx) != dim:
            return False
        seen.add(idx)
    return True


def _update_terms(value: ir.Expr, target: ir.Expr) -> tuple[ir.Expr, ir.Expr] | None:
    """(x, y) if `value` is `target + x * y` over floats, with x and y free of locals."""
    if not (
        isinstance(value, ir.Apply)
        and value.op == "add"
        and value.dtype.is_float
        and value.args[0] == target
        and isinstance(value.args[1], ir.Apply)
        and value.args[1].op == "mul"
    ):
        return None
    x, y = value.args[1].args
    if any(isinstance(e, ir.Local) for operand in (x, y) for e in ir.walk_expr(operand)):
        return None
    return x, y


def _iterators(e: ir.Expr) -> set[Iterator]:
    out: set[Iterator] = set()
    for x in ir.walk_expr(e):
        if isinstance(x, ir.Get):
            out.update(it for idx in x.index for it in ir.index_iterators(idx))
        elif isinstance(x, ir.IndexValue):
            out.update(iterators_of(x.index))
    return out


def _reads(e: ir.Expr, tnode: TNode) -> bool:
    return any(isinstance(x, ir.Get) and x.tnode is tnode for x in ir.walk_expr(e))


def _lhs_stride(p: Product, it: Iterator) -> int:
    terms, _ = as_affine(row_major_offset(p.tnode.dims, p.index))
    return next((c for c, term in terms if term == it), 0)


def _roles(p: Product, target: CpuTarget) -> tuple[Iterator, Iterator, Iterator] | None:
    """(m, n, k) for the product, with `x` and `y` swapped so that `x` reads m; None if the
    nest is no product or too small to pack."""
    if _reads(p.x, p.tnode) or _reads(p.y, p.tnode) or ir.is_dynamic(p.index):
        return None
    extent = {loop.iterator: loop.extent for loop in p.loops}
    in_lhs = [it for idx in p.index for it in iterators_of(idx)]
    plain = {idx for idx in p.index if isinstance(idx, Iterator) and in_lhs.count(idx) == 1}
    x_its, y_its = _iterators(p.x), _iterators(p.y)
    only_x = [it for it in extent if it in plain and it in x_its and it not in y_its]
    only_y = [it for it in extent if it in plain and it in y_its and it not in x_its]
    shared = [it for it in extent if it not in in_lhs and it in x_its and it in y_its]
    if not (only_x and only_y and shared):
        return None
    largest = {it: (extent[it], -pos) for pos, it in enumerate(extent)}
    # n: contiguous in the result if one of the candidates is, else the largest.
    n = max(only_x + only_y, key=lambda it: (_lhs_stride(p, it) == 1, largest[it]))
    m = max(only_y if n in only_x else only_x, key=largest.__getitem__)
    k = max(shared, key=largest.__getitem__)
    if not cpu_matmul.worth_packing(extent[m], extent[n], extent[k], target):
        return None
    return m, n, k


def _merged(
    p: Product, m: Iterator, n: Iterator, k: Iterator
) -> tuple[Product, tuple[Iterator, Iterator, Iterator]]:
    """`p` with outer loops folded into m, n or k where every read and the store step through
    memory as if the role's loop were that much longer: an outer `o` joins role `r` when, in
    each of them, `o`'s stride is `r`'s stride times `r`'s extent (the batch of a linear layer
    joins its rows, the heads of a projection its columns or its depth). `o` is then 0 in the
    indices and `r` runs past its axis: the addresses are those of the nest's own loops."""
    loops = list(p.loops)
    fixed = _fixed_iterators(p)
    roles = [m, n, k]
    changed = True
    while changed:
        changed = False
        extent = {loop.iterator: loop.extent for loop in loops}
        strides = _strides(p)

        for pos in reversed(range(len(loops))):
            o = loops[pos].iterator
            if o in roles or o in fixed:
                continue
            for r_pos, r in enumerate(roles):
                # A loop of one iteration joins any role; `o` outside `r` or inside it.
                if extent[o] == 1 or _steps(strides, extent, o, r):
                    gone, kept = o, r
                elif r not in fixed and _steps(strides, extent, r, o):
                    gone, kept = r, o
                else:
                    continue
                zero = {gone: Fixed(0)}
                p = replace(
                    p,
                    x=_substituted(p.x, zero),
                    y=_substituted(p.y, zero),
                    index=tuple(substitute(idx, zero) for idx in p.index),
                )
                where = next(i for i, loop in enumerate(loops) if loop.iterator == r)
                loops[where] = replace(loops[where], iterator=kept, extent=extent[o] * extent[r])
                del loops[pos]
                p = replace(p, loops=tuple(loops))
                roles[r_pos] = kept
                changed = True
                break
            if changed:
                break
    m, n, k = roles
    return p, (m, n, k)


def _steps(
    strides: list[dict[Iterator, int]],
    extent: dict[Iterator, int],
    outer: Iterator,
    inner: Iterator,
) -> bool:
    """Whether `outer` steps over whole runs of `inner` in every access: its stride is
    `inner`'s times `inner`'s extent."""
    return all(s.get(outer, 0) == extent[inner] * s.get(inner, 0) for s in strides)


def _fixed_iterators(p: Product) -> set[Iterator]:
    """Iterators whose values the nest uses other than as a read's or the store's address."""
    used = set()
    for e in (*ir.walk_expr(p.x), *ir.walk_expr(p.y)):
        if isinstance(e, ir.IndexValue):
            used.update(iterators_of(e.index))
        elif isinstance(e, ir.Get) and ir.is_dynamic(e.index):
            used.update(it for idx in e.index for it in ir.index_iterators(idx))
    return used


def _strides(p: Product) -> list[dict[Iterator, int]]:
    """Each read's and the store's stride of each iterator, in elements of its buffer."""
    reads = [e for e in (*ir.walk_expr(p.x), *ir.walk_expr(p.y)) if isinstance(e, ir.Get)]
    out = []
    for tnode, index in [(p.tnode, p.index), *((g.tnode, g.index) for g in reads)]:
        terms, _ = as_affine(row_major_offset(tnode.dims, index))
        stride: dict[Iterator, int] = {}
        for c, it in terms:
            stride[it] = stride.get(it, 0) + c
        out.append(stride)
    return out


def _substituted(e: ir.Expr, env: dict[Iterator, Index]) -> ir.Expr:
    def f(x: ir.Expr) -> ir.Expr:
        if isinstance(x, ir.Get):
            return ir.Get(x.tnode, tuple(substitute(idx, env) for idx in x.index))
        return x

    return ir.map_expr(e, f)


def _blocking(plan: Plan, target: CpuTarget) -> cpu_matmul.Blocking:
    p, m, n, k = plan.p, plan.m, plan.n, plan.k
    extent = {loop.iterator: loop.extent for loop in p.loops}
    outer = _batch_loop(p, (m, n, k))
    batch = cpu_matmul.batch_threads(
        outer.extent if outer else 1, extent[m], extent[n], extent[k], target
    )
    contiguous = all(_stride(read, k) == 1 for read in (plan.x, plan.y))
    return cpu_matmul.blocking(
        extent[m], extent[n], extent[k], p.tnode.dtype, target, batch, contiguous
    )


def _stride(read: ir.Get, it: Iterator) -> int:
    terms, _ = as_affine(row_major_offset(read.tnode.dims, read.index))
    return sum(c for c, term in terms if term == it)


def _batch_loop(p: Product, roles: tuple[Iterator, Iterator, Iterator]) -> ir.For | None:
    """The outermost loop around the product if its iterations write distinct cells of the
    result (its iterator alone indexes an axis of it), so that they may run at once."""
    outer = [loop for loop in p.loops if loop.iterator not in roles]
    if not outer:
        return None
    it = outer[0].iterator
    axes = [ir.index_iterators(idx) for idx in p.index if it in ir.index_iterators(idx)]
    return outer[0] if axes == [(it,)] else None


def _pack_buffers(
    needs: list[tuple[DType, cpu_matmul.Blocking]],
) -> dict[DType, tuple[TNode, TNode]]:
    """One pair of packing buffers per dtype, shared by the routine's products (they run one
    after the other), as large as the largest needs."""
    packs: dict[DType, tuple[TNode, TNode]] = {}
    for dtype in {d for d, _ in needs}:
        # One element at least: products read in place pack nothing.
        a_size = max(1, *(b.a_pack_size for d, b in needs if d == dtype))
        b_size = max(1, *(b.b_pack_size for d, b in needs if d == dtype))
        packs[dtype] = (
            TNode("a_pack", (a_size,), dtype, MemoryMode.LOCAL),
            TNode("b_pack", (b_size,), dtype, MemoryMode.LOCAL),
        )
    return packs


def _rewrite(
    plan: Plan, blocking: cpu_matmul.Blocking, packs: dict[DType, tuple[TNode, TNode]]
) -> ir.Stmt:
    p, m, n, k, x, y = plan.p, plan.m, plan.n, plan.k, plan.x, plan.y
    extent = {loop.iterator: loop.extent for loop in p.loops}
    outer = [loop for loop in p.loops if loop.iterator not in (m, n, k)]
    in_lhs = {it for idx in p.index for it in iterators_of(idx)}
    # Further reductions run around the product, which then adds to values cleared first.
    fill = None
    accumulate = p.accumulate
    if not accumulate and any(loop.iterator not in in_lhs for loop in outer):
        lhs_loops = [loop for loop in p.loops if loop.iterator in in_lhs]
        fill = ir.Set(p.tnode, p.index, ir.Const(0.0, p.tnode.dtype))
        for loop in reversed(lhs_loops):
            fill = ir.For(loop.iterator, loop.extent, fill, loop.parallel)
        accumulate = True
    a_pack, b_pack = packs[p.tnode.dtype]
    body: ir.Stmt = ir.Matmul(
        p.tnode,
        p.index,
        x,
        y,
        m,
        n,
        k,
        (extent[m], extent[n], extent[k]),
        accumulate,
        blocking,
        a_pack,
        b_pack,
    )
    for pos, loop in reversed(list(enumerate(outer))):
        threads = blocking.batch_threads if pos == 0 else 1
        body = ir.For(loop.iterator, loop.extent, body, loop.parallel, threads=threads)
    return ir.block([s for s in (plan.x_nest, plan.y_nest, fill, body) if s is not None])


def _stored(operand: ir.Expr, loops: tuple[ir.For, ...]) -> tuple[ir.Get, ir.Stmt | None]:
    """`operand` as a read of a buffer: itself, or a read of a scratch buffer over the
    iterators it uses, and the loop nest that computes it there."""
    if isinstance(operand, ir.Get):
        return operand, None
    used = _iterators(operand)
    axes = [loop for loop in loops if loop.iterator in used]
    dtype = operand.dtype
    scratch = TNode("operand", tuple(loop.extent for loop in axes) or (1,), dtype, MemoryMode.LOCAL)
    index: tuple[Index, ...] = tuple(loop.iterator for loop in axes) or (Fixed(0),)
    nest: ir.Stmt = ir.Set(scratch, index, operand)
    for loop in reversed(axes):
        nest = ir.For(loop.iterator, loop.extent, nest, parallel=True)
    return ir.Get(scratch, index), nest

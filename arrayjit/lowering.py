"""Lowering: assignments -> loop IR, then the passes, in order.

Read top to bottom, this file is the pipeline: `lower` turns each assignment into a loop nest
(choosing a loop order, see `loop_order`), then `optimize` runs the passes of `arrayjit.passes`:
`PASSES`; for the C backend (given a `CpuTarget`) `cpu_passes`: the same with the CPU
schedule's passes in between; for the GPU (reductions innermost) `GPU_PASSES`: the same with
loop merging before hoisting. With `ARRAYJIT_DEBUG=1` the IR is logged after each step.
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable

import numpy as np

from arrayjit import assignments as asg
from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.dtypes import DType
from arrayjit.indexing import (
    Fixed,
    Index,
    Iterator,
    Lookup,
    ProjectedIndex,
    Projections,
    iterators_of,
    out_of_range,
    row_major_offset,
)
from arrayjit.passes import (
    hoisting,
    loop_merging,
    matmul_blocking,
    row_fusion,
    simplify,
    threads,
    vectorize,
    virtual_inlining,
    zero_fill,
)
from arrayjit.runtime import index_checks
from arrayjit.schedule.cpu_target import CpuTarget
from arrayjit.tnode import MemoryMode, TNode

log = logging.getLogger("arrayjit")

PASSES = [
    ("zero fills", zero_fill.run),
    ("virtual inlining", virtual_inlining.run),
    ("simplification", simplify.run),
    ("row fusion", row_fusion.run),
    ("loop-invariant hoisting", hoisting.run),
]
#: Nested loops merge before hoisting, which would put locals between them.
GPU_PASSES = [*PASSES[:3], ("loop merging", loop_merging.run), *PASSES[3:]]


def cpu_passes(target: CpuTarget) -> list[tuple[str, Callable[[ir.Stmt], ir.Stmt]]]:
    """`PASSES` with the CPU schedule for `target`: products are blocked before hoisting (which
    would split their nests); threads and vectorization mark the loops hoisting leaves."""
    generic = dict(PASSES)
    return [
        ("zero fills", generic["zero fills"]),
        ("virtual inlining", generic["virtual inlining"]),
        ("simplification", generic["simplification"]),
        ("row fusion", generic["row fusion"]),
        ("matmul blocking", functools.partial(matmul_blocking.run, target=target)),
        ("loop-invariant hoisting", generic["loop-invariant hoisting"]),
        ("threads", functools.partial(threads.run, target=target)),
        ("vectorization", functools.partial(vectorize.run, target=target)),
    ]


def debug_enabled() -> bool:
    return os.environ.get("ARRAYJIT_DEBUG", "") not in ("", "0")


def compile_to_ir(
    code: asg.Assignments, reductions_innermost: bool = False, cpu: CpuTarget | None = None
) -> ir.Stmt:
    """The whole pipeline: lower, then optimize. `reductions_innermost` asks for loop nests
    whose reductions are innermost (a GPU thread per result cell); `cpu` adds the CPU schedule
    for that target."""
    lowered = lower(code, reductions_innermost)
    _log("lowering", lowered)
    return optimize(lowered, cpu, gpu=reductions_innermost and cpu is None)


def optimize(stmt: ir.Stmt, cpu: CpuTarget | None = None, gpu: bool = False) -> ir.Stmt:
    """Run the passes: `PASSES`, `cpu_passes(cpu)`, or with `gpu` `GPU_PASSES`."""
    passes = cpu_passes(cpu) if cpu is not None else GPU_PASSES if gpu else PASSES
    for name, run in passes:
        stmt = run(stmt)
        _log(name, stmt)
    return stmt


def _log(step: str, stmt: ir.Stmt) -> None:
    if debug_enabled():
        _show_debug_messages()
        log.debug("after %s:\n%s", step, ir.to_string(stmt))


def _show_debug_messages() -> None:
    """`ARRAYJIT_DEBUG=1` asks to see the IR: unless the application configured logging for
    `arrayjit` itself, debug messages go to stderr."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.DEBUG)
    if not log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log.addHandler(handler)


# ---- assignments -> loop IR --------------------------------------------------------------


def lower(code: asg.Assignments, reductions_innermost: bool = False) -> ir.Stmt:
    return ir.block([lower_statement(s, reductions_innermost) for s in asg.flatten(code)])


def lower_statement(stmt: asg.Assignments, reductions_innermost: bool = False) -> ir.Stmt:
    if isinstance(stmt, asg.Comment):
        return ir.Comment(stmt.text)
    if isinstance(stmt, asg.Fetch):
        return lower_fetch(stmt)
    if isinstance(stmt, asg.Accum):
        return lower_accum(stmt, reductions_innermost)
    raise TypeError(f"cannot lower {stmt!r}")


def _nest(dims: tuple[int, ...], body_of) -> ir.Stmt:
    """Loops over `dims` (outermost first) around `body_of(index)`."""
    its = tuple(Iterator(name=f"i{k}") for k in range(len(dims)))
    index: tuple[Index, ...] = tuple(
        it if d > 1 else Fixed(0) for it, d in zip(its, dims, strict=True)
    )
    body = body_of(index)
    for it, d in reversed(list(zip(its, dims, strict=True))):
        if d > 1:
            body = ir.For(it, d, body, parallel=True)
    return body


def convert(e: ir.Expr, dtype: DType) -> ir.Expr:
    """`e` as a value of `dtype`: itself, or cast."""
    return e if ir.expr_dtype(e) == dtype else ir.Cast(e, dtype)


def lower_fetch(stmt: asg.Fetch) -> ir.Stmt:
    lhs = stmt.lhs
    source = stmt.source
    compute = lhs.dtype.compute
    if isinstance(source, asg.Constant):
        value = convert(ir.Const(source.value, compute), lhs.dtype)
        return _nest(lhs.dims, lambda idx: ir.Set(lhs, idx, value))
    if isinstance(source, asg.RangeOfShape):
        return _nest(
            lhs.dims,
            lambda idx: ir.Set(
                lhs,
                idx,
                convert(ir.IndexValue(row_major_offset(lhs.dims, idx), compute), lhs.dtype),
            ),
        )
    if isinstance(source, asg.Values):
        init = values_buffer(stmt)
        return _nest(lhs.dims, lambda idx: ir.Set(lhs, idx, ir.Get(init, idx)))
    raise TypeError(f"unknown fetch source {source!r}")


_values_buffers: weakref.WeakKeyDictionary[asg.Fetch, TNode] = weakref.WeakKeyDictionary()


def values_buffer(fetch: asg.Fetch) -> TNode:
    """The host buffer holding the values of `Fetch(_, Values(...))`, copied in each time the
    code runs: one per fetch, so code compiled again (or found in the cache) reads the same."""
    init = _values_buffers.get(fetch)
    if init is None:
        lhs = fetch.lhs
        init = TNode(f"{lhs.label}_values", lhs.dims, lhs.dtype, MemoryMode.HOST)
        init.set_host(np.asarray(fetch.source.array).reshape(lhs.dims))
        _values_buffers[fetch] = init
    return init


def loop_order(
    p: Projections, lhs: TNode, rhses: tuple[TNode, ...], reductions_innermost: bool = False
) -> list[Iterator]:
    """Outermost first. The innermost loop is the iterator that walks the most operands along
    their last (contiguous) axis, a reduction on ties so it can accumulate in a register; the
    others keep lhs order, reductions after the rest. With `reductions_innermost`, all
    reductions come last (in their order) and the rest keep lhs order."""
    reductions = p.reduction_iterators
    if reductions_innermost:
        lhs_its = [it for idx in p.project_lhs for it in iterators_of(idx)]
        return [*dict.fromkeys(it for it in lhs_its if it not in reductions), *reductions]
    contiguous_uses = dict.fromkeys(p.product_iterators, 0)
    for tnode, proj in ((lhs, p.project_lhs), *zip(rhses, p.project_rhs, strict=True)):
        if proj and tnode.dims[-1] > 1 and isinstance(proj[-1], Iterator):
            contiguous_uses[proj[-1]] += 1
    lhs_order = [it for idx in p.project_lhs for it in iterators_of(idx)]
    non_reductions = list(dict.fromkeys(it for it in lhs_order if it not in reductions))
    base = non_reductions + list(reductions)
    if not base:
        return []
    innermost = max(base, key=lambda it: (contiguous_uses[it], it in reductions, base.index(it)))
    return [it for it in base if it != innermost] + [innermost]


def _covers_injectively(p: Projections, lhs: TNode) -> bool:
    """Every lhs cell is visited, once per combination of the non-reduction iterators."""
    bounds = p.bounds
    seen: set[Iterator] = set()
    for dim, idx in zip(lhs.dims, p.project_lhs, strict=True):
        if isinstance(idx, Fixed):
            if dim != 1:
                return False
        elif isinstance(idx, Iterator) and idx not in seen and bounds[idx] == dim:
            seen.add(idx)
        else:
            return False
    return True


_local_ids = iter(range(1, 1 << 62))


def _rhs_ir(expr: asg.RhsExpr, gets: list[ir.Get], dtype: DType) -> ir.Expr:
    """The operand expression computed in `dtype`, its reads converted to it."""
    if isinstance(expr, asg.Arg):
        return convert(gets[expr.index], dtype)
    if isinstance(expr, asg.Lit):
        return ir.Const(expr.value, dtype)
    return ir.Apply(expr.op, tuple(_rhs_ir(a, gets, dtype) for a in expr.args), dtype)


def _parallel_safe(p: Projections) -> set[Iterator]:
    """Iterators whose distinct values write distinct lhs cells: each is the plain index of
    one lhs axis and occurs nowhere else in the lhs index (nor in the index at which a lookup
    of the lhs reads its operand)."""
    plain = [idx for idx in p.project_lhs if isinstance(idx, Iterator)]
    uses = [it for idx in p.project_lhs for it in iterators_of(idx)]
    looked_up = p.lookup_iterators()
    return {it for it in plain if uses.count(it) == 1 and it not in looked_up}


def _axis_indices(
    stmt: asg.Accum, tnode: TNode, index: tuple[ProjectedIndex, ...]
) -> tuple[ir.AxisIndex, ...]:
    """`index` with each lookup made a checked dynamic index: the value of its operand."""
    if not any(isinstance(i, Lookup) for i in index):
        return index  # type: ignore[return-value]
    check = index_checks.check_of(stmt)
    p = stmt.projections
    out: list[ir.AxisIndex] = []
    for axis, i in enumerate(index):
        if isinstance(i, Lookup):
            value = ir.Get(stmt.rhses[i.operand], p.project_rhs[i.operand])
            site = index_checks.site_number(stmt, tnode, axis)
            out.append(ir.Dynamic(value, tnode.dims[axis], check.errors, site))
        else:
            out.append(i)
    return tuple(out)


def _guards(stmt: asg.Accum) -> tuple[list[ir.InRange], list[ir.InRange]]:
    """The bounds conditions of a guarded accumulation: of the lhs index, of the rhs indices."""
    p = stmt.projections
    if not p.guarded:
        return [], []
    lhs = [ir.InRange(i, d) for i, d in out_of_range(p, stmt.lhs.dims, p.project_lhs)]
    rhs = [
        ir.InRange(i, d)
        for r, proj in zip(stmt.rhses, p.project_rhs, strict=True)
        for i, d in out_of_range(p, r.dims, proj)
    ]
    return list(dict.fromkeys(lhs)), [c for c in dict.fromkeys(rhs) if c not in lhs]


def lower_accum(stmt: asg.Accum, reductions_innermost: bool = False) -> ir.Stmt:
    """The loop nest of one Accum. Values compute in the lhs's computing type (float32 for a
    16-bit lhs), each read converted to it and the store converted back; a reduction into a
    16-bit lhs accumulates in float32 (a register, or a float32 scratch buffer). Guarded
    projections (a padded convolution) skip what would leave a buffer."""
    p, lhs = stmt.projections, stmt.lhs
    bounds = p.bounds
    compute = lhs.dtype.compute
    gets = [
        ir.Get(r, _axis_indices(stmt, r, idx))
        for r, idx in zip(stmt.rhses, p.project_rhs, strict=True)
    ]
    rhs = _rhs_ir(stmt.rhs_expr, gets, compute)
    lhs_index = _axis_indices(stmt, lhs, p.project_lhs)
    order = loop_order(p, lhs, stmt.rhses, reductions_innermost)
    reductions = set(p.reduction_iterators)
    safe = _parallel_safe(p)
    lhs_guards, rhs_guards = _guards(stmt)
    guards = lhs_guards + rhs_guards

    def wrap(its: list[Iterator], body: ir.Stmt, guards: list[ir.InRange] = ()) -> ir.Stmt:
        """Loops over `its` around `body`; each guard goes just inside the loop of its last
        iterator (around everything when it has none among `its`)."""
        depth = {it: k for k, it in enumerate(its)}
        at = [
            [g for g in guards if max((depth.get(i, -1) for i in iterators_of(g.index)), default=-1) == k]
            for k in range(-1, len(its))
        ]  # fmt: skip
        body = ir.guarded(at[-1], body)
        for k in reversed(range(len(its))):
            body = ir.guarded(at[k], ir.For(its[k], bounds[its[k]], body, parallel=its[k] in safe))
        return body

    if stmt.accum is None:
        store = wrap(order, ir.Set(lhs, lhs_index, convert(rhs, lhs.dtype)), guards)
        if not rhs_guards:
            return store
        # A cell whose operand is read outside its buffer is 0, as if the buffer were padded.
        zero = ir.Const(0.0, lhs.dtype)
        return ir.block([_nest(lhs.dims, lambda idx: ir.Set(lhs, idx, zero)), store])

    neutral = ir.Const(ops.neutral(stmt.accum, compute), compute)
    n_outer = next((k for k, it in enumerate(order) if it in reductions), len(order))
    reductions_innermost = all(it in reductions for it in order[n_outer:])
    covered = _covers_injectively(p, lhs)
    scatter = ir.is_dynamic(lhs_index)
    if reductions and reductions_innermost and not scatter and (covered or not stmt.zero_first):
        # Accumulate in a register over the innermost reduction loops, store once. The lhs's
        # guards skip the whole cell; the operands' skip one term of the reduction (they never
        # skip the store, which zero-first needs).
        acc = f"acc{next(_local_ids)}"
        init = neutral if stmt.zero_first else convert(ir.Get(lhs, lhs_index), compute)
        update = ir.SetLocal(acc, ir.Apply(stmt.accum, (ir.Local(acc, compute), rhs), compute))
        outer = set(order[:n_outer])
        inner_guards = [g for g in rhs_guards if not set(iterators_of(g.index)) <= outer]
        inner = wrap(order[n_outer:], ir.guarded(
            [g for g in rhs_guards if g not in inner_guards], update), inner_guards)  # fmt: skip
        body = ir.block(
            [
                ir.DeclLocal(acc, compute, init),
                inner,
                ir.Set(lhs, lhs_index, convert(ir.Local(acc, compute), lhs.dtype)),
            ]
        )
        return wrap(order[:n_outer], body, lhs_guards)

    def guarded_wrap(its: list[Iterator], body: ir.Stmt) -> ir.Stmt:
        return wrap(its, body, guards)

    if reductions and lhs.dtype.storage_only:
        return _accumulate_in_scratch(stmt, lhs_index, rhs, order, guarded_wrap)

    def update_of(target: TNode) -> ir.Stmt:
        current = convert(ir.Get(target, lhs_index), compute)
        new = ir.Apply(stmt.accum, (current, rhs), compute)
        return ir.Set(target, lhs_index, convert(new, target.dtype))

    if not stmt.zero_first:
        return guarded_wrap(order, update_of(lhs))
    if covered and not reductions and not guards:
        # Each cell is written once: neutral `op` rhs, no separate fill.
        first = ir.Apply(stmt.accum, (neutral, rhs), compute)
        return wrap(order, ir.Set(lhs, lhs_index, convert(first, lhs.dtype)))
    fill_value = convert(neutral, lhs.dtype)
    fill = _nest(lhs.dims, lambda idx: ir.Set(lhs, idx, fill_value))
    return ir.block([fill, guarded_wrap(order, update_of(lhs))])


def _accumulate_in_scratch(
    stmt: asg.Accum,
    lhs_index: tuple[ir.AxisIndex, ...],
    rhs: ir.Expr,
    order: list[Iterator],
    wrap: Callable[[list[Iterator], ir.Stmt], ir.Stmt],
) -> ir.Stmt:
    """A reduction into a 16-bit lhs that cannot accumulate in a register: into a float32
    scratch buffer (filled with the neutral element, or the lhs's values), then rounded into the
    lhs once."""
    lhs = stmt.lhs
    compute = lhs.dtype.compute
    # A fixed label: buffer names in the source must not depend on process-wide counters.
    scratch = TNode(f"{lhs.label}.acc", lhs.dims, compute, MemoryMode.LOCAL)
    if stmt.zero_first:
        neutral = ir.Const(ops.neutral(stmt.accum, compute), compute)
        start = _nest(lhs.dims, lambda idx: ir.Set(scratch, idx, neutral))
    else:
        start = _nest(
            lhs.dims, lambda idx: ir.Set(scratch, idx, convert(ir.Get(lhs, idx), compute))
        )
    new = ir.Apply(stmt.accum, (ir.Get(scratch, lhs_index), rhs), compute)
    update = wrap(order, ir.Set(scratch, lhs_index, new))
    finish = _nest(lhs.dims, lambda idx: ir.Set(lhs, idx, convert(ir.Get(scratch, idx), lhs.dtype)))
    return ir.block([start, update, finish])

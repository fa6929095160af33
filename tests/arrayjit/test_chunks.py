"""Chunked compilation: routines split into functions compiled and cached one by one, so equal
layers compile once; values against numpy; the CUDA kernels' chunking (printing, keys, module
sources checked by nvcc when it is installed) without a GPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Arg, Call, Comment
from arrayjit.backends import chunks, units
from arrayjit.backends.cuda import modules
from arrayjit.codegen.cuda_syntax import PRELUDE, CudaSyntax
from arrayjit.indexing import Fixed, Iterator, Projections, identity_projections
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime.runtime import Runtime
from arrayjit.schedule.gpu_kernels import plan_kernels
from arrayjit.tnode import TNode


def layer(x: TNode, n: int, k: int) -> tuple[object, TNode, TNode]:
    """`y = relu(w @ x + x)` over fresh buffers `w` (n x n) and `y` (n)."""
    w, product, y = TNode(f"w{k}", (n, n)), TNode(f"wx{k}", (n,)), TNode(f"y{k}", (n,))
    i, j = Iterator(name="i"), Iterator(name="j")
    matvec = Accum(
        product, "add", "mul", (w, x), Projections((n, n), (i, j), (i,), ((i, j), (j,))), True
    )
    relu = Call("relu", (Call("add", (Arg(0), Arg(1))),))
    residual = Accum(y, None, relu, (product, x), identity_projections((n,), 2))
    return matvec + residual, w, y


def chain(layers: int, n: int = 17):
    x = TNode("x", (n,))
    code, weights, y = Comment("chain"), [], x
    for k in range(layers):
        step, w, y = layer(y, n, k)
        code = code + step
        weights.append(w)
    return code, x, weights, y


def reference(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    y = x.astype(np.float32)
    for w in weights:
        y = np.maximum(w.astype(np.float32) @ y + y, 0)
    return y


@pytest.fixture
def recording_compiler(tmp_path, monkeypatch):
    """A fresh cache and a compiler wrapper that logs each build (not `--version`) to a file."""
    real = shutil.which("cc") or shutil.which("gcc")
    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "recording-cc"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$1" in --version) ;; *) echo "$@" >> {calls} ;; esac\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ARRAYJIT_CC", str(wrapper))
    return lambda: len(calls.read_text().splitlines()) if calls.exists() else 0


# ---- splitting -----------------------------------------------------------------------------


def test_one_chunk_per_nest_with_buffers_in_order_of_first_use():
    code, x, weights, y = chain(2)
    stmt = compile_to_ir(code)
    nests = [s for s in stmt.stmts if isinstance(s, ir.For)]
    found = chunks.split(stmt)
    assert (
        len(found) == len(nests) == 4
    )  # per layer: mat-vec (accumulating in a register), residual
    assert all(c.tnodes == tuple(ir.tnodes_in(c.stmt)) for c in found)
    assert found[0].tnodes == (weights[0], x, found[1].tnodes[0])
    assert found[2].tnodes[:2] == (weights[1], found[1].tnodes[-1])
    assert not any(isinstance(c.stmt, ir.Comment) for c in found)


def test_a_top_level_local_stays_with_every_statement_that_uses_it():
    w, y, z, out = TNode("w", (4,)), TNode("y", (4,)), TNode("z", (4,)), TNode("out", (4,))
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    h = ir.Local("h", w.dtype)
    stmt = ir.Block(
        (
            ir.For(k, 4, ir.Set(out, (k,), ir.Const(1.0, w.dtype)), parallel=True),
            ir.DeclLocal("h", w.dtype, ir.Get(w, (Fixed(0),))),
            ir.For(i, 4, ir.Set(y, (i,), h), parallel=True),
            ir.Comment("between"),
            ir.For(j, 4, ir.Set(z, (j,), ir.Apply("neg", (h,), w.dtype)), parallel=True),
            ir.For(k, 4, ir.Set(out, (k,), ir.Get(z, (k,))), parallel=True),
        )
    )
    first, middle, last = chunks.split(stmt)
    assert ir.tnodes_in(first.stmt) == [out]
    assert isinstance(middle.stmt, ir.Block) and len(middle.stmt.stmts) == 3
    assert middle.tnodes == (w, y, z)
    assert last.tnodes == (z, out)


def test_chunked_chain_equals_numpy(c_context):
    code, x, weights, y = chain(5)
    rng = np.random.default_rng(0)
    x.set_host(rng.normal(size=x.dims))
    for w in weights:
        w.set_host(rng.normal(size=w.dims) / 4)
    routine = c_context.compile(code)
    routine.run()
    expected = reference(x.host(), [w.host() for w in weights])
    np.testing.assert_allclose(y.host(), expected, rtol=1e-5, atol=1e-5)


# ---- compiled once, cached per function --------------------------------------------------


def test_equal_layers_compile_to_one_set_of_functions(recording_compiler):
    code, *_ = chain(6)
    routine = Runtime("c").compile(code)
    compiled = routine.compiled
    assert len(compiled.tables) == 12
    assert len(set(compiled.function_array)) == 2  # mat-vec and residual: one each
    listing = Path(routine.source_path).read_text()
    assert listing.count("void ocannl_c") == 2 and listing.count("ocannl_c") == 2 + 12
    assert recording_compiler() == 1


def test_a_longer_chain_finds_its_functions_in_the_cache(recording_compiler):
    Runtime("c").compile(chain(2)[0]).run()
    assert recording_compiler() == 1
    code, x, weights, y = chain(9)
    routine = Runtime("c").compile(code)
    assert recording_compiler() == 1, "the layers' functions were compiled again"
    x.set_host(np.linspace(-1, 1, 17))
    for w in weights:
        w.set_host(np.eye(17) / 2)
    routine.run()
    expected = reference(x.host(), [w.host() for w in weights])
    np.testing.assert_allclose(y.host(), expected, rtol=1e-6)


def widening_chain(sizes: list[int]):
    """Mat-vecs from 3 cells to `sizes[0]`, then `sizes[1]`...: a distinct function each."""
    y = TNode("x", (3,))
    code = Comment("widening")
    for k, n in enumerate(sizes):
        w, out = TNode(f"w{k}", (n, y.dims[0])), TNode(f"out{k}", (n,))
        i, j = Iterator(name="i"), Iterator(name="j")
        projections = Projections((n, y.dims[0]), (i, j), (i,), ((i, j), (j,)))
        code = code + Accum(out, "add", "mul", (w, y), projections, True)
        y = out
    return code


def test_missing_functions_compile_in_parallel_units_indexed_one_by_one(
    recording_compiler, monkeypatch
):
    """Distinct functions compile in `jobs()` units, and a routine made of a subset of them
    later starts no compiler, whichever unit compiled each."""
    monkeypatch.setenv("ARRAYJIT_JOBS", "3")
    monkeypatch.setattr(units, "SMALL_UNIT_LINES", 1)
    routine = Runtime("c").compile(widening_chain([3, 4, 5, 6, 7]))
    assert recording_compiler() == 3
    assert len(routine.compiled.libraries) == 3
    subset = Runtime("c").compile(widening_chain([3, 4, 5]))
    assert recording_compiler() == 3
    assert set(subset.compiled.libraries) <= set(routine.compiled.libraries)


def test_units_are_balanced_and_cover_every_function():
    groups = units.balanced_groups([10, 1, 1, 1, 7, 3], 3)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert len(groups) == 3
    assert max(sum([10, 1, 1, 1, 7, 3][i] for i in g) for g in groups) == 10


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=60), st.integers(1, 8))
def test_balanced_groups_property(sizes, count):
    groups = units.balanced_groups(sizes, count)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert len(groups) == min(count, len(sizes)) and all(g == sorted(g) for g in groups)
    totals = [sum(sizes[i] for i in g) for g in groups]
    # Largest-first greedy: no group exceeds the mean by more than the largest item.
    assert max(totals) <= sum(sizes) / len(groups) + max(sizes)


# ---- CUDA kernels, chunked (no GPU needed) ------------------------------------------------


def cuda_kernels(code) -> list[modules.KernelFunction]:
    plans = plan_kernels(compile_to_ir(code, reductions_innermost=True))
    syntax = CudaSyntax()
    return [
        modules.kernel_function(syntax, plan, modules.kernel_tnodes(plan), "sm_90 test")
        for plan in plans
    ]


def test_equal_layers_are_equal_kernels_over_their_own_buffers():
    code, x, weights, y = chain(4, n=40)
    kernels = cuda_kernels(code)
    assert len(kernels) == 8  # per layer: mat-vec (reductions innermost, no fill), residual
    assert len({k.key for k in kernels}) == 2
    assert [k.labels for k in kernels[:2]] == [("w0", "x", "wx0"), ("wx0", "x", "y0")]
    assert [k.labels for k in kernels[2:4]] == [("w1", "y0", "wx1"), ("wx1", "y0", "y1")]
    assert kernels[0].text().count("__restrict__") == 3


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_module_of_chunked_kernels_compiles_with_nvcc(tmp_path):
    code, *_ = chain(3, n=40)
    m, n, k = 64, 48, 40
    a, b, c = TNode("a", (m, k)), TNode("b", (k, n)), TNode("c", (m, n))
    i, j, r = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    matmul = Accum(
        c, "add", "mul", (a, b), Projections((m, n, k), (i, j, r), (i, j), ((i, r), (r, j))), True
    )
    kernels = cuda_kernels(code + matmul)
    distinct = list({f.key: f for f in kernels}.values())
    source = modules.module_source(distinct)
    assert source.startswith(PRELUDE) and "#include" not in source
    # nvcc includes the CUDA headers that NVRTC lacks: leave out the stand-ins for them.
    path = tmp_path / "module.cu"
    path.write_text(source.removeprefix(PRELUDE))
    result = subprocess.run(
        ["nvcc", "-arch=sm_90", "-std=c++17", "-c", "-o", str(tmp_path / "module.o"), str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    symbols = subprocess.run(
        ["nm", str(tmp_path / "module.o")], capture_output=True, text=True
    ).stdout
    assert all(f.symbol in symbols for f in distinct)

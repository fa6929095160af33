"""Routines found by the structure of their code: a hit skips lowering and printing (in this
process and in a fresh one), binds the compiled functions to the new buffers and computes the
same values; anything that changes the compiled form changes the key; a damaged record is
compiled again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from arrayjit import cache, loop_ir
from arrayjit.assignments import Accum, Arg, Call, Comment, Constant, Fetch, Lit, Values
from arrayjit.indexing import Fixed, Iterator, Projections, identity_projections
from arrayjit.runtime import code_key
from arrayjit.runtime import runtime as runtime_module
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import MemoryMode, TNode


def program(n: int = 5, scale: float = 2.0, dtype: str = "float32", label: str = "y"):
    """`y = scale * (x @ w) + [1, 2, ...]` with the literal as `Values`."""
    x, w = TNode("x", (3, n), dtype), TNode("w", (n, 4), dtype)
    y, bias = TNode(label, (3, 4), dtype), TNode("bias", (4,), dtype)
    i, j, k = Iterator(name="i"), Iterator(name="j"), Iterator(name="k")
    product = Accum(
        y, "add", "mul", (x, w), Projections((3, 4, n), (i, j, k), (i, j), ((i, k), (k, j))), True
    )
    literal = Fetch(bias, Values(np.arange(1.0, 5.0)))
    scale_and_shift = Accum(
        y,
        None,
        Call("add", (Call("mul", (Lit(scale), Arg(0))), Arg(1))),
        (y, bias),
        Projections((3, 4), (i, j), (i, j), ((i, j), (j,))),
    )
    return Comment("program") + product + literal + scale_and_shift, x, w, y


@pytest.fixture
def counting_lowering(monkeypatch, tmp_path):
    """A fresh cache; counts how often code is lowered."""
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    calls = []
    original = runtime_module.compile_to_ir

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "compile_to_ir", counting)
    return calls


def test_equal_code_is_found_by_structure_without_lowering(counting_lowering):
    runtime = Runtime("c")
    rng = np.random.default_rng(1)
    results = []
    for _ in range(2):
        code, x, w, y = program()
        x.set_host(rng.normal(size=x.dims))
        w.set_host(rng.normal(size=w.dims))
        routine = runtime.compile(code, "program")
        routine.run()
        expected = 2 * x.host().astype(np.float64) @ w.host() + np.arange(1.0, 5.0)
        np.testing.assert_allclose(y.host(), expected, rtol=1e-5)
        results.append(routine)
    assert len(counting_lowering) == 1
    first, second = results
    assert first.source_path == second.source_path
    # The IR of a routine found by structure is lowered on demand, for inspection.
    assert second._ir is None
    assert loop_ir.to_string(second.ir).count("for ") == loop_ir.to_string(first.ir).count("for ")


@pytest.mark.parametrize(
    "change",
    ["dims", "constant", "dtype", "label", "name", "memory mode", "aliasing", "projection"],
)
def test_what_changes_the_compiled_form_changes_the_key(counting_lowering, change):
    runtime = Runtime("c")
    runtime.compile(program()[0], "program")
    if change == "dims":
        code = program(n=6)[0]
    elif change == "constant":
        code = program(scale=3.0)[0]
    elif change == "dtype":
        code = program(dtype="float64")[0]
    elif change == "label":
        code = program(label="z")[0]
    if change in ("dims", "constant", "dtype", "label"):
        runtime.compile(code, "program")
    elif change == "name":
        runtime.compile(program()[0], "another name")
    else:
        a, b, out = TNode("a", (4,)), TNode("b", (4,)), TNode("out", (4,))
        if change == "memory mode":
            variants = [a, TNode("a", (4,), memory_mode=MemoryMode.LOCAL)]
            codes = [Accum(out, None, "neg", (v,), identity_projections((4,), 1)) for v in variants]
        elif change == "aliasing":
            codes = [
                Accum(out, None, "add", (a, a), identity_projections((4,), 2)),
                Accum(out, None, "add", (a, b), identity_projections((4,), 2)),
            ]
        else:
            i = Iterator(name="i")
            reversed_index = Projections((4,), (i,), (i,), ((Fixed(0),),))
            codes = [
                Accum(out, None, "neg", (a,), identity_projections((4,), 1)),
                Accum(out, None, "neg", (a,), reversed_index),
            ]
        keys = {code_key.structure(c).digest for c in codes}
        assert len(keys) == 2
        for c in codes:
            runtime.compile(c, "variant")
        assert len(counting_lowering) == 3
        return
    assert len(counting_lowering) == 2


def test_a_damaged_record_is_compiled_again(counting_lowering, tmp_path):
    runtime = Runtime("c")
    runtime.compile(program()[0], "program")
    (record,) = tmp_path.glob("*.routine")
    record.write_text("{not json")
    code, x, w, y = program()
    x.set_host(np.ones(x.dims))
    w.set_host(np.ones(w.dims))
    runtime.compile(code, "program").run()
    np.testing.assert_allclose(y.host(), 2 * 5 + np.arange(1.0, 5.0) * np.ones((3, 4)))
    assert len(counting_lowering) == 2
    # A record naming a library that is gone is not used either.
    for library in tmp_path.glob("*.so"):
        library.unlink()
    runtime.compile(program()[0], "program")
    assert len(counting_lowering) == 3


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_structural_cache import program
    from arrayjit.runtime import runtime as runtime_module

    lowered = []
    original = runtime_module.compile_to_ir
    runtime_module.compile_to_ir = lambda *a, **k: lowered.append(1) or original(*a, **k)
    code, x, w, y = program()
    x.set_host(np.full(x.dims, 0.5))
    w.set_host(np.full(w.dims, 2.0))
    routine = runtime_module.Runtime("c").compile(code, "program")
    routine.run()
    print(len(lowered), repr(y.host().ravel().tolist()))
    """
)


def test_a_fresh_process_finds_the_routine_without_lowering_or_compiling(tmp_path):
    script = FRESH_PROCESS.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, ARRAYJIT_CACHE_DIR=str(tmp_path))
    outputs = [
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    for out in outputs:
        assert out.returncode == 0, out.stderr
    (first_lowered, first_values), (again_lowered, again_values) = (
        o.stdout.split(" ", 1) for o in outputs
    )
    assert (first_lowered, again_lowered) == ("1", "0")
    expected = (2 * (0.5 * 2.0 * 5) + np.arange(1.0, 5.0) * np.ones((3, 4))).ravel().tolist()
    assert eval(first_values) == eval(again_values) == expected  # noqa: S307 - our own repr
    assert len(list(tmp_path.glob("*.routine"))) == 1


def test_generator_version_changes_with_arrayjit_sources(monkeypatch, tmp_path):
    """Records made by another version of the code generator are not used."""
    first = code_key.generator_version()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "lowering.py").write_text("# another generator\n")
    try:
        with monkeypatch.context() as patch:
            patch.setattr(code_key, "__file__", str(tmp_path / "runtime" / "code_key.py"))
            code_key.generator_version.cache_clear()
            assert code_key.generator_version() != first
    finally:
        code_key.generator_version.cache_clear()
    assert code_key.generator_version() == first


def test_constant_fetch_values_are_part_of_the_key():
    t = TNode("t", (2,))
    keys = {
        code_key.structure(Fetch(t, Constant(v))).digest for v in (1.0, -0.0, 0.0, float("nan"))
    }
    assert len(keys) == 4
    assert cache.key("a") != cache.key("b")

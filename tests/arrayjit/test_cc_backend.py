"""The C backend: generated source, flags, compile errors, and compile latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from arrayjit.assignments import Accum, Constant, Fetch
from arrayjit.backends import cc
from arrayjit.codegen.c_syntax import CSyntax
from arrayjit.dtypes import float32, float64, int32
from arrayjit.errors import CompileError
from arrayjit.indexing import identity_projections
from arrayjit.runtime import residency
from arrayjit.runtime.runtime import Runtime
from arrayjit.tnode import TNode


def pointwise_exp(n: int = 16) -> tuple[Accum, TNode, TNode]:
    x, y = TNode("x", (n,)), TNode("y", (n,))
    return Accum(y, None, "exp", (x,), identity_projections((n,), 1)), x, y


def test_flags_keep_ieee_semantics():
    # -ffast-math would break NaN/inf results (and the NaN checks of max/min); see docs/backends.md.
    assert "-ffast-math" not in cc.FLAGS
    assert "-fno-math-errno" in cc.FLAGS and "-O3" in cc.FLAGS


def test_generated_source_declares_buffers_and_helpers(c_context):
    code, x, y = pointwise_exp()
    routine = c_context.compile(code, name="exp routine")
    source = Path(routine.source_path).read_text()
    assert "void ocannl_exp_routine(void **buffers)" in source
    names = {t: f"{t.label}_{k}" for k, t in enumerate(routine.compiled.tnodes)}
    for k, tnode in enumerate(routine.compiled.tnodes):
        assert f"float *restrict {names[tnode]} = (float *)buffers[{k}];" in source
    assert set(names) == {x, y}
    assert "ocannl_max_float" in source and "#include <math.h>" in source
    assert f"{names[y]}[i0]" in source and "expf(" in source


def test_equal_code_prints_equal_source(c_context):
    """Names are numbered per routine, so rebuilding the same code reuses the cached library."""
    first = c_context.compile(pointwise_exp()[0], name="again")
    second = c_context.compile(pointwise_exp()[0], name="again")
    assert first.source_path == second.source_path


def test_routine_reads_host_values_written_after_compiling(c_context):
    code, x, y = pointwise_exp()
    routine = c_context.compile(code)
    for scale in (1.0, -2.0):
        x.set_host(np.linspace(0, scale, 16))
        routine.run()
        np.testing.assert_allclose(
            y.host(), np.exp(np.linspace(0, scale, 16, dtype=np.float32)), rtol=4e-7
        )
        assert residency.computed(y)


def test_same_code_compiled_twice_hits_the_in_process_cache(c_context):
    code, _, _ = pointwise_exp()
    assert c_context.compile(code).source_path == c_context.compile(code).source_path


@pytest.mark.parametrize(
    ("value", "dtype", "text"),
    [
        (3.0, float32, "3.0f"),
        (0.5, float64, "0.5"),
        (float("inf"), float32, "((float)(INFINITY))"),
        (float("-inf"), float64, "((double)(-INFINITY))"),
        (float("nan"), float32, "((float)NAN)"),
        (-7, int32, "-7"),
    ],
)
def test_special_literals(value, dtype, text):
    assert CSyntax().literal(value, dtype) == text


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-45, 3.4e38, -2.5e-7])
@pytest.mark.parametrize("dtype", [float32, float64])
def test_literals_round_trip(value, dtype):
    """A literal is the value rounded to the dtype, printed so that it reads back exactly."""
    text = CSyntax().literal(value, dtype)
    assert text.endswith(dtype.literal_suffix)
    parsed = np.asarray(float(text.removesuffix("f")), dtype.numpy)
    assert parsed == np.asarray(value, dtype.numpy)


def test_special_constants_compile_and_run(c_context):
    values = [float("nan"), float("inf"), float("-inf"), 1e-45, -0.0]
    tnodes = [TNode(f"c{k}", (2,)) for k in range(len(values))]
    code = Fetch(tnodes[0], Constant(values[0]))
    for t, v in zip(tnodes[1:], values[1:], strict=True):
        code = code + Fetch(t, Constant(v))
    c_context.compile(code).run()
    for t, v in zip(tnodes, values, strict=True):
        np.testing.assert_array_equal(t.host(), np.full(2, v, np.float32))
    assert np.signbit(tnodes[-1].host()).all()


def test_compile_error_shows_the_compiler_message_and_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ARRAYJIT_CFLAGS", "-include ocannl_no_such_header.h")
    code, _, _ = pointwise_exp()
    with pytest.raises(CompileError, match="the C compiler failed") as info:
        Runtime("c").compile(code)
    error = info.value
    assert "ocannl_no_such_header.h" in str(error) and "ocannl_no_such_header.h" in error.log
    assert error.source_path and error.source_path in str(error)
    assert Path(error.source_path).is_file()
    assert "expf(" in Path(error.source_path).read_text()
    # Nothing half-built is left in the cache.
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("*.tmp"))


def test_failing_compiler_wrapper(monkeypatch, tmp_path):
    wrapper = tmp_path / "failing-cc"
    wrapper.write_text(
        '#!/bin/sh\ncase "$1" in --version) echo "failing-cc 1.0"; exit 0 ;; esac\n'
        'echo "failing-cc: refusing to build" >&2\nexit 3\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ARRAYJIT_CC", str(wrapper))
    with pytest.raises(CompileError, match=r"exit 3[\s\S]*failing-cc: refusing to build"):
        Runtime("c").compile(pointwise_exp()[0])


def test_missing_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ARRAYJIT_CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(CompileError, match="no-such-cc.*cannot be run"):
        Runtime("c").compile(pointwise_exp()[0])


def test_compile_latency(monkeypatch, tmp_path, capsys):
    """Reported, not asserted: from scratch (gcc runs) and from the cache (a hash and a dlopen)."""
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path))
    context = Runtime("c")
    code, _, _ = pointwise_exp()
    start = time.perf_counter()
    first = context.compile(code)
    scratch = time.perf_counter() - start
    start = time.perf_counter()
    second = context.compile(code)
    cached = time.perf_counter() - start
    assert first.source_path == second.source_path
    with capsys.disabled():
        print(
            f"\ncompile latency: {1e3 * scratch:.1f} ms from scratch, {1e3 * cached:.2f} ms cached"
        )


def test_float16_is_stored_as_bits_where_the_compiler_cannot_build_loops_over_it(
    tmp_path, monkeypatch
):
    """GCC 12 targeting AVX512-FP16 emits a store the assembler rejects for a vectorized loop of
    16-bit comparisons (seen on the H100 host); the probe builds that loop, so such a compiler
    gets bits storage instead of failing every float16 routine."""
    import subprocess

    pattern = cc._FLOAT16_PROBE
    source = tmp_path / "pattern.c"
    source.write_text(pattern)
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ARRAYJIT_CFLAGS", "-march=sapphirerapids")
    # The build's own flags (sanitizers, when set, change the code GCC emits).
    flags = [f for f in cc.flags() if f != "-shared"]
    try:
        built = (
            subprocess.run(
                [cc.compiler(), *flags, "-c", str(source), "-o", str(tmp_path / "p.o")],
                capture_output=True,
            ).returncode
            == 0
        )
    except OSError:
        pytest.skip("no C compiler")
    if built:
        pytest.skip("this compiler builds 16-bit loops for AVX512-FP16 (no bug to guard against)")
    assert not cc.has_float16()
    monkeypatch.delenv("ARRAYJIT_CFLAGS")
    flags = [f for f in cc.flags() if f != "-shared"]
    native = [cc.compiler(), *flags, "-c", str(source), "-o", str(tmp_path / "q.o")]
    assert cc.has_float16() == (subprocess.run(native, capture_output=True).returncode == 0)


def test_profile_times_each_chunk_function(c_context):
    """`profile` calls each chunk function alone, in order, and leaves the values a run gives."""
    n = 64
    x, y, z = TNode("x", (n,)), TNode("y", (n,)), TNode("z", (n,))
    code = Accum(y, None, "exp", (x,), identity_projections((n,), 1)) + Accum(
        z, None, "tanh", (y,), identity_projections((n,), 1)
    )
    values = np.linspace(-2, 1, n, dtype=np.float32)
    x.set_host(values)
    routine = c_context.compile(code)
    times = routine.compiled.profile(repeats=2, clock=time.thread_time)
    assert [t.name for t in times] == [symbol for _, symbol, _ in routine.compiled.plan["chunks"]]
    assert len(times) >= 1 and all(t.ms >= 0 for t in times)
    np.testing.assert_allclose(z.host(), np.tanh(np.exp(values)), rtol=1e-6)

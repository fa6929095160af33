"""Whatever text a user writes (labels, comments, routine names, constants) reaches the generated
C and CUDA only as inert text: safe identifiers, comments that cannot close early, exact literals.
Checked by compiling and running, and by reading the generated source."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import ocannl_py as oc
from arrayjit import loop_ir as ir
from arrayjit.assignments import Accum, Arg, Call, Comment, Constant, Fetch, Lit
from arrayjit.codegen import cuda_syntax
from arrayjit.codegen.c_syntax import CSyntax
from arrayjit.codegen.inert_text import comment_text, identifier
from arrayjit.dtypes import float32, float64
from arrayjit.indexing import identity_projections
from arrayjit.lowering import compile_to_ir
from arrayjit.schedule import gpu_kernels
from arrayjit.tnode import TNode
from ocannl_py import Context, op

NVCC = shutil.which("nvcc")


def cuda_source(code, name: str = "ocannl_f") -> str:
    """The CUDA source the CUDA backend would compile for `code` (no GPU needed)."""
    stmt = compile_to_ir(code, reductions_innermost=True)
    plans = gpu_kernels.plan_kernels(stmt)
    source, _ = cuda_syntax.kernel_source(
        cuda_syntax.CudaSyntax(), plans, ir.tnodes_in(stmt), name, stmt
    )
    return source


def nvcc_compiles(source: str) -> None:
    """Compile-check a CUDA source with nvcc. nvcc, unlike NVRTC, includes the host's headers,
    which declare the integer types that the prelude declares for NVRTC: those lines go."""
    typedefs = [line for line in cuda_syntax.PRELUDE.splitlines() if line.startswith("typedef")]
    assert typedefs and all(line in source for line in typedefs)
    for line in typedefs:
        source = source.replace(line + "\n", "")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "k.cu"
        path.write_text(source)
        result = subprocess.run(
            [NVCC, "-arch=sm_90", "-c", str(path), "-o", str(path.with_suffix(".o"))],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 0, result.stderr


def preprocessed(source_path: str) -> str:
    """The C after the preprocessor: comments gone, line splices joined, as the compiler sees it."""
    result = subprocess.run(
        ["cc", "-E", "-P", source_path], capture_output=True, text=True, check=True
    )
    return result.stdout


# ---- comments --------------------------------------------------------------------------------

HOSTILE_COMMENTS = [
    '*\\\n/ system("touch {marker}"); /*',  # the repro: line splicing closes the comment
    '*/ system("touch {marker}"); /*',
    '*\\\r\n/ system("touch {marker}"); /*',
    '??/\n system("touch {marker}"); // trigraph ??/ is a backslash under -trigraphs',
    '* \\\n\\\n/ system("touch {marker}"); /*',
    '*\u2028/ system("touch {marker}"); \x00 /*',
]


@pytest.mark.parametrize("template", HOSTILE_COMMENTS)
def test_comment_cannot_close_early(c_context, template, tmp_path):
    marker = tmp_path / "created"
    text = template.format(marker=marker)
    x = TNode("x", (3,))
    routine = c_context.compile(Comment(text) + Fetch(x, Constant(2.0)), "comment")
    routine.run()
    assert not marker.exists()
    np.testing.assert_array_equal(x.host(), [2, 2, 2])
    source = Path(routine.source_path).read_text()
    assert source.isascii()
    assert "system" not in preprocessed(routine.source_path)
    # The compiled chunks leave top-level comments out; the printer must make them inert anyway.
    printed = tmp_path / "comment.c"
    printed.write_text(
        "\n".join(CSyntax().stmt(ir.Comment(text))) + "\nint main(void) { return 0; }\n"
    )
    assert str(marker) in printed.read_text()  # the text is kept, readable, inside the comment
    assert "system" not in preprocessed(str(printed))


@pytest.mark.parametrize("template", HOSTILE_COMMENTS)
def test_cuda_comment_is_inert(template):
    x = TNode("x", (3,))
    # A kernel without a comment statement still prints through the same printer: check it.
    syntax = cuda_syntax.CudaSyntax()
    syntax.begin([x])
    lines = syntax.stmt(ir.Comment(template.format(marker="/tmp/m")))
    assert len(lines) == 1 and lines[0].isascii()
    body = lines[0].strip()
    assert body.startswith("/*") and body.endswith("*/")
    assert "*/" not in body[2:-2] and "\\" not in body and "??" not in body


def test_comment_text_keeps_what_is_safe():
    assert comment_text("g1 =+ g * v2") == "g1 =+ g * v2"
    assert "*/" not in comment_text("a */ b /* c") and "/*" not in comment_text("a /* b")
    assert comment_text("é\n") == "<U+00E9><U+000A>"


# ---- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["ⸯ", "é", "𝑥", "٣", "a b", "", "1st", "x\x00y", "int", "_"])
def test_identifier_is_a_safe_c_name(label):
    name = identifier(label)
    assert name.isascii() and name.isidentifier() and not name[0].isdigit()


def test_identifiers_keep_distinct_labels_distinct():
    assert identifier("ⸯ") != identifier("⸮") and identifier("é") != identifier("e")


@pytest.mark.parametrize("label", ["ⸯ", "é", "𝑥 y", "x*/y"])
def test_non_ascii_label_compiles_and_runs(label):
    x = oc.term(label, batch_dims=[], input_dims=[], output_dims=[2])
    x.set_value(np.array([1.5, -2.0], np.float32))
    y = oc.relu(x) + 1.0
    ctx = Context("c")
    ctx.forward(y)
    np.testing.assert_array_equal(y.value, [2.5, 1.0])
    routine = ctx.compile(y.forward, name=label)
    routine.run()
    assert Path(routine.source_path).read_text().isascii()


def test_tnode_name_is_an_ascii_identifier():
    t = TNode("ⸯ é", (1,))
    assert t.name.isascii() and t.name.isidentifier()


def test_cuda_source_with_non_ascii_labels_is_ascii():
    x, y = TNode("ⸯ", (4,)), TNode("é", (4,))
    source = cuda_source(Accum(y, None, "relu", (x,), identity_projections((4,), 1)))
    assert source.isascii()
    if NVCC:
        nvcc_compiles(source)


# ---- constants -------------------------------------------------------------------------------

EXTREME = [
    1e39,
    -1e39,
    3.5e38,
    3.4028235e38,
    -3.4028235e38,
    1e-46,
    1e-45,
    1e308,
    1e309,
    -1e309,
    float("inf"),
    float("-inf"),
    float("nan"),
    -0.0,
    5e-324,
    0.1,
]


def parse_c_literal(text: str, dtype) -> float:
    """What a C compiler makes of a printed literal (only the forms the printer may use)."""
    inner = re.sub(r"\((float|double)\)", "", text).replace("(", "").replace(")", "")
    if inner in ("INFINITY", "-INFINITY", "NAN"):
        return {"INFINITY": np.inf, "-INFINITY": -np.inf, "NAN": np.nan}[inner]
    assert "inf" not in inner and "nan" not in inner, text
    return float(np.asarray(float(inner.removesuffix(dtype.literal_suffix)), dtype.numpy))


@pytest.mark.parametrize("dtype", [float32, float64])
@pytest.mark.parametrize("value", EXTREME)
@pytest.mark.parametrize("syntax", [CSyntax(), cuda_syntax.CudaSyntax()], ids=["c", "cuda"])
def test_literal_is_exact(syntax, value, dtype):
    with np.errstate(over="ignore"):
        expected = np.asarray(value, dtype.numpy)  # a float32 beyond float32's range is infinity
    text = syntax.literal(value, dtype)
    assert text.isascii()
    np.testing.assert_array_equal(parse_c_literal(text, dtype), expected)
    assert np.signbit(parse_c_literal(text, dtype)) == np.signbit(expected)


@pytest.mark.parametrize(
    ("expr", "reference"),
    [
        ("x *. 1e39", lambda x: x * np.float32(1e39)),
        ("x + (-1e39)", lambda x: x + np.float32(-1e39)),
        ("x *. 3.5e38", lambda x: x * np.float32(3.5e38)),
        ("x *. 3.4028235e38", lambda x: x * np.float32(3.4028235e38)),
        ("x *. 1e-46", lambda x: x * np.float32(1e-46)),
    ],
)
def test_extreme_constants_compile_and_match_numpy(expr, reference):
    values = np.array([1.0, -2.0, 0.0, 0.5], np.float32)
    x = oc.term("x", batch_dims=[], input_dims=[], output_dims=[4])
    x.set_value(values)
    y = op(expr, x=x)
    Context("c").forward(y)
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(y.value, reference(values))


@pytest.mark.parametrize("value", [1e39, float("inf"), float("-inf"), float("nan"), 3.5e38])
def test_cuda_source_prints_non_finite_constants(value):
    x, y = TNode("x", (4,)), TNode("y", (4,))
    code = Accum(y, None, Call("mul", (Arg(0), Lit(value))), (x,), identity_projections((4,), 1))
    source = cuda_source(code)
    kernel = source.split("__global__", 1)[1]
    assert not re.search(r"\b(inf|nan)\b", kernel)
    assert ("NAN" if value != value else "INFINITY") in kernel
    if NVCC:
        nvcc_compiles(source)

"""The C-like printer shared by the C and CUDA backends.

`CSyntax` prints loop IR as C statements; a backend subclasses it for what differs (how a loop
is mapped to threads, the qualifier of helper functions, kernel signatures).

Every operation computes in a computing type (float, double, int): 16-bit floats are stored as
their bits (`uint16_t`), or as `_Float16` in C where the compiler has it, and converted by the
helpers of `CONVERSIONS` when read and stored (the loop IR's `Cast`). A dynamic index (a gather)
goes through `ocannl_index`, which records an index outside its axis and reads row 0 instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from arrayjit import loop_ir as ir
from arrayjit import ops
from arrayjit.codegen import c_matmul
from arrayjit.codegen.inert_text import LETTERS, comment_text, identifier
from arrayjit.dtypes import DType, float32
from arrayjit.indexing import Index, as_affine
from arrayjit.tnode import TNode

INT32_MAX = 2**31 - 1

#: How each op of `arrayjit.ops` is spelled in C (and CUDA C++, which shares it): `{0}`, `{1}`,
#: `{2}` are the operands, `{m}` the libm suffix of the dtype (`f` for float) and `{t}` the C
#: type. Ops whose operand would be repeated in a plain expression call a helper of `helpers`,
#: so an inlined operand is evaluated once. `where` is a helper too, so that both branches are
#: evaluated (as numpy's where does): a `c ? a[i] : b` reading memory in one branch only is
#: vectorized by GCC 12.2 at -O3 with AVX into masked loads under the wrong mask (wrong values,
#: tests/ocannl_py/test_fuzz_findings.py); a select of two loaded values is not.
SPELLINGS: dict[str, str] = {
    "identity": "({0})",
    "neg": "(-{0})",
    "relu": "ocannl_relu_{t}({0})",
    "sat01": "ocannl_sat01_{t}({0})",
    "exp": "exp{m}({0})",
    "log": "log{m}({0})",
    "exp2": "exp2{m}({0})",
    "log2": "log2{m}({0})",
    "sin": "sin{m}({0})",
    "cos": "cos{m}({0})",
    "sqrt": "sqrt{m}({0})",
    "recip": "(({t})1 / ({0}))",
    "recip_sqrt": "(({t})1 / sqrt{m}({0}))",
    "tanh": "tanh{m}({0})",
    "erf": "erf{m}({0})",
    "not": "(({t})(({0}) == 0))",
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "pow": "pow{m}({0}, {1})",
    "max": "ocannl_max_{t}({0}, {1})",
    "min": "ocannl_min_{t}({0}, {1})",
    "lt": "(({t})(({0}) < ({1})))",
    "eq": "(({t})(({0}) == ({1})))",
    "ne": "(({t})(({0}) != ({1})))",
    "relu_gate": "ocannl_relu_gate_{t}({0}, {1})",
    "uniform_at": "ocannl_uniform_{t}({0}, {1})",
    "where": "ocannl_where_{t}({0}, {1}, {2})",
    "fma": "fma{m}({0}, {1}, {2})",
}


#: The ops whose C function has vector variants in glibc's libmvec, with their arity: in a loop
#: under `#pragma omp simd` they compute whole vectors (`_ZGVdN8v_expf`...) when the C backend
#: defines `OCANNL_VECTOR_MATH` (see `arrayjit.backends.cc_features`).
VECTOR_MATH: dict[str, int] = {
    "exp": 1,
    "log": 1,
    "exp2": 1,
    "log2": 1,
    "sin": 1,
    "cos": 1,
    "tanh": 1,
    "pow": 2,
    "erf": 1,
}
#: Those of `VECTOR_MATH` that libmvec gained in glibc 2.35: declared as vector functions only
#: where `OCANNL_VECTOR_MATH_2_35` is defined too (an older libmvec lacks them).
VECTOR_MATH_2_35 = frozenset({"erf"})

#: The OpenMP reduction identifier of each accumulate op a vectorized loop can reduce with;
#: max and min use the NaN-propagating helpers, declared as reductions in the prelude.
REDUCTION_CLAUSES = {"add": "+", "sub": "-", "mul": "*", "max": "ocannl_max", "min": "ocannl_min"}


def vector_math_declarations() -> str:
    """Declares the vector variants of the `VECTOR_MATH` functions, if `OCANNL_VECTOR_MATH` (and
    `OCANNL_VECTOR_MATH_2_35` for those of `VECTOR_MATH_2_35`)."""
    lines = []
    for newer, guard in ((False, "OCANNL_VECTOR_MATH"), (True, "OCANNL_VECTOR_MATH_2_35")):
        lines.append(f"#if defined(OCANNL_VECTOR_MATH) && defined({guard})")
        for name, arity in VECTOR_MATH.items():
            if (name in VECTOR_MATH_2_35) != newer:
                continue
            for c_type, suffix in (("float", "f"), ("double", "")):
                params = ", ".join([c_type] * arity)
                lines += [
                    "#pragma omp declare simd notinbranch",
                    f"{c_type} {name}{suffix}({params});",
                ]
        lines.append("#endif")
    return "\n".join(lines) + "\n"


def reduction_declarations(dtypes: list[DType]) -> str:
    """max and min as OpenMP reductions that propagate NaN, as the helpers do (in the
    computing types)."""
    lines = []
    for d in sorted({d.compute for d in dtypes}, key=lambda d: d.name):
        for op in ("max", "min"):
            name = f"ocannl_{op}_{d.c_name}"
            lines.append(
                f"#pragma omp declare reduction({name} : {d.c_name} : "
                f"omp_out = {name}(omp_out, omp_in)) initializer(omp_priv = omp_orig)"
            )
    return "\n".join(lines) + "\n"


def helpers(dtypes: list[DType], qualifier: str) -> str:
    """Helper functions used by the spellings, for each computing type among `dtypes`.
    `qualifier` is `static inline` for C and `__device__ __forceinline__` for CUDA."""
    lines: list[str] = []
    for d in sorted({d.compute for d in dtypes}, key=lambda d: d.name):
        t = d.c_name
        q = f"{qualifier} {t}"
        lines += [
            f"{q} ocannl_relu_{t}({t} x) {{ return x > 0 ? x : ({t})0; }}",
            f"{q} ocannl_sat01_{t}({t} x) {{ return x < 0 ? ({t})0 : (x > 1 ? ({t})1 : x); }}",
            f"{q} ocannl_relu_gate_{t}({t} a, {t} b) {{ return a > 0 ? b : ({t})0; }}",
            f"{q} ocannl_where_{t}({t} c, {t} a, {t} b) {{ return c != 0 ? a : b; }}",
            # numpy's maximum/minimum propagate NaN; fmax/fmin would drop it.
            f"{q} ocannl_max_{t}({t} a, {t} b) {{ return (a != a || a > b) ? a : b; }}",
            f"{q} ocannl_min_{t}({t} a, {t} b) {{ return (a != a || a < b) ? a : b; }}",
        ]
    return "\n".join(lines) + "\n"


#: A dynamic index `i` of an axis of `bound` cells: `i` when inside, else 0, with the site and the
#: index recorded in `errors` (the first one only), for the runtime to report after the run.
INDEX_CHECK = """\
OCANNL_FN int64_t ocannl_index(int64_t i, int64_t bound, int32_t *errors, int32_t site) {
  if (i >= 0 && i < bound) return i;
  if (errors[0] == 0) { errors[0] = site; errors[1] = (int32_t)i; }
  return 0;
}
"""

#: float -> int32: toward zero, saturated, NaN to 0 (a plain C conversion is undefined there).
FLOAT_TO_INT = """\
OCANNL_FN int ocannl_float_to_int(double x) {
  return x != x ? 0 : x >= 2147483647.0 ? 2147483647 : x <= -2147483648.0 ? (-2147483647 - 1) : (int)x;
}
"""

#: 16-bit floats as bits, to and from float, rounding to nearest even (NaN stays NaN, quiet).
#: `ocannl_bits_of_float` / `ocannl_float_of_bits` reinterpret a float (`C_FLOAT_BITS`).
CONVERSIONS = """\
OCANNL_FN float ocannl_bf16_to_float(uint16_t h) { return ocannl_float_of_bits((uint32_t)h << 16); }
OCANNL_FN uint16_t ocannl_float_to_bf16(float x) {
  uint32_t u = ocannl_bits_of_float(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x7fc0u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
OCANNL_FN float ocannl_f16_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return ocannl_float_of_bits(sign | 0x7f800000u | (m << 13));
  if (e != 0) return ocannl_float_of_bits(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return ocannl_float_of_bits(sign);
  e = 113u;
  while (!(m & 0x400u)) { m <<= 1; e--; }
  return ocannl_float_of_bits(sign | (e << 23) | ((m & 0x3ffu) << 13));
}
OCANNL_FN uint16_t ocannl_float_to_f16(float x) {
  uint32_t u = ocannl_bits_of_float(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    uint32_t r = a - 0x38000000u;
    return (uint16_t)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return (uint16_t)sign;
  uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);
  uint32_t m = mant >> shift, rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (m & 1u))) m++;
  return (uint16_t)(sign | m);
}
"""

#: Reinterpreting a float's bits in C.
C_FLOAT_BITS = """\
OCANNL_FN uint32_t ocannl_bits_of_float(float x) { union { float f; uint32_t u; } v; v.f = x; return v.u; }
OCANNL_FN float ocannl_float_of_bits(uint32_t u) { union { float f; uint32_t u; } v; v.u = u; return v.f; }
"""


class CSyntax:
    """Prints one routine at a time. Names in the output (buffers, loop variables, locals) are
    numbered in order of appearance, so structurally equal code prints to the same text and
    hits the compile cache, whatever the process-wide ids of its pieces."""

    #: How helper functions are declared (`static inline` in C).
    function_qualifier = "static inline"
    #: The helpers that convert 16-bit floats (as bits) to and from float.
    conversions = C_FLOAT_BITS + CONVERSIONS
    #: The helper that checks a dynamic index.
    index_check = INDEX_CHECK
    #: Whether the target reads OpenMP pragmas (the C backend's CPU schedule); the prelude then
    #: declares the vector math variants and the max/min reductions.
    openmp = True

    def __init__(self, native_float16: bool | Callable[[], bool] = False) -> None:
        """`native_float16`: whether float16 buffers are `_Float16` (converted by C casts)
        rather than bits, or a function that tells (asked when first needed)."""
        self._native_float16 = native_float16
        self.begin([])

    @property
    def native_float16(self) -> bool:
        if callable(self._native_float16):
            self._native_float16 = self._native_float16()
        return self._native_float16

    def type_name(self, dtype: DType) -> str:
        """The C type of a buffer's (or local's) elements."""
        if dtype.name == "float16" and self.native_float16:
            return "_Float16"
        return dtype.c_name

    def begin(self, tnodes: list[TNode], placeholders: bool = False) -> None:
        """Start a routine over `tnodes`: buffer k is named after its label and k, or `@k@` with
        `placeholders` (for text that must not depend on labels; `fill_names` names them)."""
        self._buffers = {
            t: f"@{k}@" if placeholders else buffer_name(t.label, k) for k, t in enumerate(tnodes)
        }
        self._names: dict[object, str] = {}

    def prelude(self, dtypes: list[DType], ops_used: set[str], checks: bool = False) -> str:
        """Helper functions for buffers of `dtypes` (conversions of 16-bit floats, ops in the
        computing types), the index check if the code has dynamic indices (`checks`), and the
        random generator if an op needs it."""
        text = f"#define OCANNL_FN {self.function_qualifier}\n" + helpers(dtypes, "OCANNL_FN")
        if checks:
            text += self.index_check
        if any(not d.is_float for d in dtypes):
            text += FLOAT_TO_INT
        if any(d.storage_only for d in dtypes):
            text += self.conversions
        if self.openmp:
            # Cleared in a process forked after OpenMP started its threads (see
            # arrayjit.backends.openmp_fork): parallel regions then run on one thread.
            text += "__attribute__((weak)) int ocannl_threads_ok = 1;\n"
            text += reduction_declarations(dtypes)
            if set(VECTOR_MATH) & ops_used:
                text += vector_math_declarations()
        if ops.RANDOM_OPS & ops_used:
            from arrayjit import threefry

            text += threefry.C_SOURCE
        return text

    # ---- expressions ---------------------------------------------------------------------

    def literal(self, value: float, dtype: DType) -> str:
        """`value` rounded to `dtype` as numpy rounds it (a float32 beyond float32's range is
        infinity), printed exactly: repr round-trips, INFINITY and NAN name the others."""
        if not dtype.is_float:
            return _int_literal(value, dtype)
        with np.errstate(over="ignore"):
            rounded = float(np.asarray(value, dtype.numpy))
        if rounded != rounded:
            return f"(({dtype.c_name})NAN)"
        if rounded in (float("inf"), float("-inf")):
            return f"(({dtype.c_name})({'-' if rounded < 0 else ''}INFINITY))"
        text = repr(rounded)
        if "e" not in text and "." not in text:
            text += ".0"
        return f"{text}{dtype.literal_suffix}"

    def _fresh(self, key: object, base: str) -> str:
        # Letters then a number, no underscore: buffer names always have one, so they differ.
        if key not in self._names:
            letters = "".join(ch for ch in base if ch in LETTERS) or "v"
            self._names[key] = f"{letters}{len(self._names)}"
        return self._names[key]

    def iterator(self, it) -> str:
        return self._fresh(it, it.name or "i")

    def local(self, name: str) -> str:
        return self._fresh(("local", name), name)

    def index_expr(self, index: Index, wide: bool = False) -> str:
        terms, offset = as_affine(index)
        cast = "(int64_t)" if wide else ""
        parts = [
            f"{cast}{self.iterator(it)}" if c == 1 else f"{c} * {cast}{self.iterator(it)}"
            for c, it in terms
        ]
        if offset or not parts:
            parts.append(str(offset))
        return " + ".join(parts)

    def offset(self, tnode: TNode, index: tuple[ir.AxisIndex, ...]) -> str:
        """The row-major offset of `index` in `tnode` as a C expression; a dynamic index is
        checked (`ocannl_index`, 64-bit)."""
        affine, dynamic = ir.split_offset(tnode.dims, index)
        text = self.index_expr(affine, wide=tnode.size > INT32_MAX)
        for stride, d in dynamic:
            text += f" + {stride} * {self.dynamic(d)}" if stride != 1 else f" + {self.dynamic(d)}"
        return text

    def dynamic(self, index: ir.Dynamic) -> str:
        errors = self.buffer(index.errors)
        return f"ocannl_index({self.expr(index.value)}, {index.bound}, {errors}, {index.site})"

    def cast(self, e: ir.Cast) -> str:
        """`e.value` converted to `e.dtype`: 16-bit floats through float."""
        source, target = ir.expr_dtype(e.value), e.dtype
        text = self.expr(e.value)
        if source.storage_only:
            text = self.widen(source, text)
            source = float32
        if target == source:
            return text
        if target.storage_only:
            return self.narrow(target, text)
        if not target.is_float and source.is_float:
            return f"ocannl_float_to_int({text})"
        return f"(({target.c_name})({text}))"

    def widen(self, dtype: DType, text: str) -> str:
        """A 16-bit float's value as a float."""
        if dtype.name == "float16" and self.native_float16:
            return f"((float)({text}))"
        return f"ocannl_{_SHORT[dtype.name]}_to_float({text})"

    def narrow(self, dtype: DType, text: str) -> str:
        """A float rounded to a 16-bit float (to nearest even)."""
        if dtype.name == "float16" and self.native_float16:
            return f"((_Float16)({text}))"
        return f"ocannl_float_to_{_SHORT[dtype.name]}({text})"

    def buffer(self, tnode: TNode) -> str:
        return self._buffers[tnode]

    def expr(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Const):
            return self.literal(e.value, e.dtype)
        if isinstance(e, ir.Get):
            return f"{self.buffer(e.tnode)}[{self.offset(e.tnode, e.index)}]"
        if isinstance(e, ir.Local):
            return self.local(e.name)
        if isinstance(e, ir.IndexValue):
            return f"(({e.dtype.c_name})({self.index_expr(e.index, wide=True)}))"
        if isinstance(e, ir.Cast):
            return self.cast(e)
        return self.apply(e.op, e.dtype, *(self.expr(a) for a in e.args))

    def apply(self, op: str, dtype: DType, *operands: str) -> str:
        """`op` applied to the printed `operands`, computing in `dtype`."""
        arity = ops.get(op).arity
        if len(operands) != arity:
            raise ValueError(f"op {op!r} takes {arity} operands, got {len(operands)}")
        template = SPELLINGS[op]
        if "{m}" in template and dtype.math_suffix is None:
            raise TypeError(f"op {op!r} is not defined for {dtype}")
        return template.format(*operands, m=dtype.math_suffix or "", t=dtype.c_name)

    def condition(self, conditions: tuple[ir.InRange, ...]) -> str:
        """`0 <= index && index < extent` for each condition, in 64 bits along an axis longer
        than a 32-bit int holds."""
        parts = []
        for c in conditions:
            index = self.index_expr(c.index, wide=c.extent > INT32_MAX)
            parts.append(f"0 <= {index} && {index} < {c.extent}")
        return " && ".join(parts)

    # ---- statements ----------------------------------------------------------------------

    def for_header(self, loop: ir.For) -> list[str]:
        i = self.iterator(loop.iterator)
        return [f"for ({index_type(loop.extent)} {i} = 0; {i} < {loop.extent}; ++{i}) {{"]

    def loop_pragmas(self, loop: ir.For) -> list[str]:
        """The OpenMP pragma of a loop the CPU schedule marked (threads, simd, reductions)."""
        if loop.threads <= 1 and not loop.vectorize:
            return []
        words = ["#pragma omp"]
        if loop.threads > 1:
            words.append("parallel for")
        if loop.vectorize:
            words.append("simd")
        if loop.threads > 1:
            words += [f"num_threads({loop.threads})", "schedule(static)", "if(ocannl_threads_ok)"]
        for r in loop.reductions:
            clause = REDUCTION_CLAUSES[r.op]
            if r.op in ("max", "min"):
                clause += f"_{r.dtype.c_name}"
            words.append(f"reduction({clause} : {self.local(r.name)})")
        return [" ".join(words)]

    def stmt(self, s: ir.Stmt, indent: int = 1) -> list[str]:
        pad = "  " * indent
        if isinstance(s, ir.For):
            head = [pad + line for line in [*self.loop_pragmas(s), *self.for_header(s)]]
            return [*head, *self.stmt(s.body, indent + 1), pad + "}"]
        if isinstance(s, ir.Matmul):
            return [pad + c_matmul.matmul_call(self, s)]
        if isinstance(s, ir.Block):
            return [line for x in s.stmts for line in self.stmt(x, indent)]
        if isinstance(s, ir.Set):
            target = f"{self.buffer(s.tnode)}[{self.offset(s.tnode, s.index)}]"
            return [f"{pad}{target} = {self.expr(s.value)};"]
        if isinstance(s, ir.DeclLocal):
            return [f"{pad}{self.type_name(s.dtype)} {self.local(s.name)} = {self.expr(s.init)};"]
        if isinstance(s, ir.SetLocal):
            return [f"{pad}{self.local(s.name)} = {self.expr(s.value)};"]
        if isinstance(s, ir.Comment):
            return [f"{pad}/* {comment_text(s.text)} */"]
        if isinstance(s, ir.If):
            return [f"{pad}if ({self.condition(s.conditions)}) {{", *self.stmt(s.body, indent + 1),
                    pad + "}"]  # fmt: skip
        raise TypeError(f"cannot print {s!r}")


_SHORT = {"float16": "f16", "bfloat16": "bf16"}


def index_type(extent: int) -> str:
    """The C type of an index that takes values below `extent`: 32-bit (faster) when it fits."""
    return "int" if extent <= INT32_MAX else "int64_t"


def _int_literal(value: float, dtype: DType) -> str:
    info = np.iinfo(dtype.numpy)
    if value != value or not info.min <= value <= info.max:
        raise ValueError(f"the constant {value!r} does not fit in {dtype} ({info.min}..{info.max})")
    return str(int(value))


def buffer_name(label: str, k: int) -> str:
    """The name of buffer `k` (labelled `label`) in generated code."""
    return f"{identifier(label)}_{k}"


_PLACEHOLDER = re.compile(r"@(\d+)@")


def fill_names(text: str, labels: list[str]) -> str:
    """Text printed with `placeholders`, with buffer k named after `labels[k]`."""
    return _PLACEHOLDER.sub(lambda m: buffer_name(labels[int(m[1])], int(m[1])), text)

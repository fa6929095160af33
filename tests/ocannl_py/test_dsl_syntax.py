"""The op and cd DSL parsers: every form with its tree, precedence, errors, and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrayjit import ops
from ocannl_py.dsl.syntax import (
    OP_BINARY_OPERATORS,
    Binary,
    Binop,
    CdStatement,
    Einsum1Expr,
    EinsumExpr,
    FunctionCall,
    Literal,
    Name,
    Neg,
    Number,
    Param,
    Ref,
    Ternop,
    Unop,
    format_cd,
    format_op,
    parse_cd,
    parse_op,
)
from ocannl_py.errors import SpecSyntaxError

x, y, z = Name("x"), Name("y"), Name("z")


def lit(values, *kinds: str) -> Literal:
    return Literal(np.asarray(values, dtype=np.float64), kinds)


# ---------------------------------------------------------------------------------------------
# op DSL: the API examples


def test_api_example_param_compose_literal():
    assert parse_op("({hey = 7.0} * [2;3]) + [4;5;6]") == Binary(
        "+",
        Binary("*", Param("hey", 7.0), lit([2, 3], "output")),
        lit([4, 5, 6], "output"),
    )


def test_api_example_mlp_layer():
    assert parse_op("relu({w} * x + {b; o=[16]})") == FunctionCall(
        "relu", (Binary("+", Binary("*", Param("w"), x), Param("b", output=(16,))),)
    )


def test_api_example_pointwise_mul():
    assert parse_op("2 *. {hey = 7.0}") == Binary("*.", Number(2.0), Param("hey", 7.0))


# ---------------------------------------------------------------------------------------------
# op DSL: leaves


@pytest.mark.parametrize(
    "text, value",
    [("2", 2.0), ("2.", 2.0), ("0.5", 0.5), ("1e3", 1000.0), ("1.5E-2", 0.015), ("-3", -3.0)],
)
def test_numbers(text, value):
    parsed = parse_op(text)
    assert parsed == Number(value) and isinstance(parsed.value, float)


def test_negative_number_is_a_constant_not_a_negation():
    assert parse_op("-2.5") == Number(-2.5)
    assert parse_op("-(2.5)") == Number(-2.5)
    assert parse_op("-x") == Neg(x)
    assert parse_op("- -x") == Neg(Neg(x))


def test_names():
    assert parse_op("x") == x
    assert parse_op("w_1'") == Name("w_1'")


def test_parenthesized_number_is_grouping():
    assert parse_op("(1)") == Number(1.0)
    assert parse_op("(2.0)") == Number(2.0)
    assert parse_op("((x))") == x


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{w}", Param("w")),
        ("{ w = w }", Param("w")),
        ("{w = 7.0}", Param("w", 7.0)),
        ("{w = 7}", Param("w", 7.0)),
        ("{w = -0.5}", Param("w", -0.5)),
        ("{b = 0.; o = [16]}", Param("b", 0.0, output=(16,))),
        ("{w; i = [3]; o = [4]}", Param("w", output=(4,), input=(3,))),
        ("{w; o = 16}", Param("w", output=(16,))),
        ("{w; b = [2; 3]}", Param("w", batch=(2, 3))),
        ("{w; o = []}", Param("w", output=())),
        ("{w; o = [hid; 2;];}", Param("w", output=("hid", 2))),
        ("{w; o = hid}", Param("w", output=("hid",))),
        ("{w = [1; 2]}", Param("w", lit([1, 2], "output"))),
        (
            "{w = [(1, 2); (3, 4)]; o = [2]}",
            Param("w", lit([[1, 2], [3, 4]], "output", "input"), (2,)),
        ),
    ],
)
def test_inline_parameters(text, expected):
    assert parse_op(text) == expected


@pytest.mark.parametrize(
    "text, values, kinds",
    [
        ("[1;2;3]", [1, 2, 3], ("output",)),
        ("(1, 2, 3)", [1, 2, 3], ("input",)),
        ("[|1; 2|]", [1, 2], ("batch",)),
        ("[1]", [1], ("output",)),
        ("[|1|]", [1], ("batch",)),
        ("[1; 2;]", [1, 2], ("output",)),
        ("[-1; 2.5; -3e2]", [-1, 2.5, -300], ("output",)),
        ("[(1,2);(3,4)]", [[1, 2], [3, 4]], ("output", "input")),
        ("[(1, 2, 3); (4, 5, 6)]", [[1, 2, 3], [4, 5, 6]], ("output", "input")),
        ("([1; 2], [3; 4])", [[1, 2], [3, 4]], ("input", "output")),
        ("[|[7; 8]; [9; 10]|]", [[7, 8], [9, 10]], ("batch", "output")),
        ("[|[(1,2)]; [(3,4)]|]", [[[1, 2]], [[3, 4]]], ("batch", "output", "input")),
        ("((1, 2))", [1, 2], ("input",)),
        ("[(1)]", [1], ("output",)),
        ("[[1; 2]; [3; 4]]", [[1, 2], [3, 4]], ("output", "output")),
    ],
)
def test_array_literals(text, values, kinds):
    parsed = parse_op(text)
    assert isinstance(parsed, Literal)
    assert parsed.kinds == kinds
    assert parsed.values.dtype == np.float64
    np.testing.assert_array_equal(parsed.values, np.asarray(values, dtype=np.float64))
    assert not parsed.values.flags.writeable


def test_literal_equality_compares_values_shape_and_kinds():
    assert parse_op("[1; 2]") == lit([1, 2], "output")
    assert parse_op("[1; 2]") != lit([1, 2], "batch")
    assert parse_op("[1; 2]") != lit([1, 3], "output")
    assert parse_op("[(1, 2)]") != lit([[1], [2]], "output", "input")
    assert hash(parse_op("[1; 2]")) == hash(lit([1, 2], "output"))


def test_calls():
    assert parse_op("relu(x)") == FunctionCall("relu", (x,))
    assert parse_op("exp (x + 1)") == FunctionCall("exp", (Binary("+", x, Number(1.0)),))
    assert parse_op("where(x, y, z)") == FunctionCall("where", (x, y, z))
    assert parse_op("fma(x, y, z)") == FunctionCall("fma", (x, y, z))
    assert parse_op("f((1, 2))") == FunctionCall("f", (lit([1, 2], "input"),))


# ---------------------------------------------------------------------------------------------
# op DSL: operators and precedence


@pytest.mark.parametrize(
    "op", ["*", "*.", "/.", "**.", "+", "-", "-?/", "<", "=", "<>", "@^", "@-"]
)
def test_every_binary_operator(op):
    assert parse_op(f"x {op} y") == Binary(op, x, y)


@pytest.mark.parametrize(
    "text, expected",
    [
        # `*...` binds tighter than `+...`
        ("x + y * z", Binary("+", x, Binary("*", y, z))),
        ("x * y + z", Binary("+", Binary("*", x, y), z)),
        ("x -?/ y *. z", Binary("-?/", x, Binary("*.", y, z))),
        # left associative: `+...`, `*...`, comparisons
        ("x - y - z", Binary("-", Binary("-", x, y), z)),
        ("x - y + z", Binary("+", Binary("-", x, y), z)),
        ("x * y *. z", Binary("*.", Binary("*", x, y), z)),
        ("x /. y /. z", Binary("/.", Binary("/.", x, y), z)),
        ("x < y = z", Binary("=", Binary("<", x, y), z)),
        # right associative: `**...` and `@...`
        ("x **. y **. z", Binary("**.", x, Binary("**.", y, z))),
        ("x @^ y @- z", Binary("@^", x, Binary("@-", y, z))),
        # `**...` above `*...`; prefix minus above `**...` (as in OCaml)
        ("x *. y **. 2", Binary("*.", x, Binary("**.", y, Number(2.0)))),
        ("-x **. 2", Binary("**.", Neg(x), Number(2.0))),
        ("-x * y", Binary("*", Neg(x), y)),
        ("x * -y", Binary("*", x, Neg(y))),
        ("x **. -2", Binary("**.", x, Number(-2.0))),
        ("x - -y", Binary("-", x, Neg(y))),
        # `@...` below `+...`; comparisons lowest
        ("x + y @^ z", Binary("@^", Binary("+", x, y), z)),
        ("x @^ y + z", Binary("@^", x, Binary("+", y, z))),
        ("x + y < z", Binary("<", Binary("+", x, y), z)),
        ("x < y @^ z", Binary("<", x, Binary("@^", y, z))),
        # parentheses
        ("(x + y) * z", Binary("*", Binary("+", x, y), z)),
        ("x * (y + z)", Binary("*", x, Binary("+", y, z))),
        ("-(x + y)", Neg(Binary("+", x, y))),
    ],
)
def test_precedence_and_associativity(text, expected):
    assert parse_op(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ('x +* "ij;jk=>ik" y', EinsumExpr("+*", "ij;jk=>ik", x, y)),
        ('x +++ "i;j=>ij" y', EinsumExpr("+++", "i;j=>ij", x, y)),
        ('x @^+ "ij;jk=>ik" y', EinsumExpr("@^+", "ij;jk=>ik", x, y)),
        ('x ++ "...|... => 0"', Einsum1Expr("++", "...|... => 0", x)),
        ('x @^^ "ij=>i"', Einsum1Expr("@^^", "ij=>i", x)),
        # einsum operators sit at their first character's level: `+...` left associative ...
        ('x +* "s" y + z', Binary("+", EinsumExpr("+*", "s", x, y), z)),
        ('z + x +* "s" y', EinsumExpr("+*", "s", Binary("+", z, x), y)),
        ('x ++ "s" + y', Binary("+", Einsum1Expr("++", "s", x), y)),
        ('x ++ "s" ++ "t"', Einsum1Expr("++", "t", Einsum1Expr("++", "s", x))),
        ('x * y ++ "s"', Einsum1Expr("++", "s", Binary("*", x, y))),
        ('(x ++ "s") /. y', Binary("/.", Einsum1Expr("++", "s", x), y)),
        # ... and the operand after the spec is a single term, as in OCaml's `"spec" y`
        ('x +* "s" (y * z)', EinsumExpr("+*", "s", x, Binary("*", y, z))),
        ('x +* "s" relu(y)', EinsumExpr("+*", "s", x, FunctionCall("relu", (y,)))),
        ('x +* "s" [1; 2]', EinsumExpr("+*", "s", x, lit([1, 2], "output"))),
        ('x +* "s" {w}', EinsumExpr("+*", "s", x, Param("w"))),
        ('x @^ y @^+ "s" z', Binary("@^", x, EinsumExpr("@^+", "s", y, z))),
        ('x + y @^^ "s"', Einsum1Expr("@^^", "s", Binary("+", x, y))),
    ],
)
def test_einsum_operators(text, expected):
    assert parse_op(text) == expected


def test_whitespace_and_newlines_are_free():
    assert parse_op("  relu(\n  {w} *\n x\n)  ") == FunctionCall(
        "relu", (Binary("*", Param("w"), x),)
    )
    assert parse_op("x*.y") == Binary("*.", x, y)
    assert parse_op("2.*.x") == Binary("*.", Number(2.0), x)
    assert parse_op("x**.2") == Binary("**.", x, Number(2.0))


def test_positions_point_at_constructs():
    tree = parse_op("relu({w} * x +\n  [1; 2])")
    assert tree.pos == (1, 1)
    add = tree.args[0]
    assert add.pos == (1, 14)  # a binary node sits at its operator
    assert add.left.pos == (1, 10)
    assert add.left.left.pos == (1, 6)
    assert add.right.pos == (2, 3)
    assert parse_op("x - -2").right.pos == (1, 5)
    assert parse_op('a ++ "s"').pos == (1, 3)


# ---------------------------------------------------------------------------------------------
# op DSL: errors


def raises_at(parse, text: str, line: int, column: int, *fragments: str) -> SpecSyntaxError:
    with pytest.raises(SpecSyntaxError) as info:
        parse(text)
    error = info.value
    assert (error.line, error.column) == (line, column), str(error)
    for fragment in fragments:
        assert fragment in str(error), str(error)
    caret_line = str(error).splitlines()[-1]
    assert caret_line == "  " + " " * (column - 1) + "^"
    return error


@pytest.mark.parametrize(
    "text, line, column, fragments",
    [
        ("relu(x", 1, 7, ["unexpected end of text", "`)`"]),
        ("{w = }", 1, 6, ["unexpected `}`", "expected an expression"]),
        ("[1;2", 1, 5, ["unexpected end of text", "`]`"]),
        ("[1, 2]", 1, 3, ["separated by `;`"]),
        ("x +\n  ", 2, 3, ["unexpected end of text", "an expression"]),
        ("x\n + * y", 2, 4, ["unexpected `*`"]),
        ('x +* "ij;jk=>ik', 1, 6, ["unterminated string"]),
        ("x # y", 1, 3, ["unexpected character '#'"]),
        ("x y", 1, 3, ["unexpected `y`", "an operator"]),
        ("x +* y", 1, 6, ["string"]),
        ("x ++", 1, 5, ["string"]),
        ('x +* "s" -y', 1, 10, ["(-x)"]),
        ('x +* "s" y * z', 1, 12, ["unexpected `*`", "parentheses"]),
        ('x ++ "s" *. z', 1, 10, ["parentheses"]),
        ('x @^^ "s" @^ z', 1, 11, ["parentheses"]),
        ("x / y", 1, 3, ["`/.`"]),
        ("x ** 2", 1, 3, ["`**.`"]),
        ("[]", 1, 2, ["unexpected `]`"]),
        ("()", 1, 2, ["unexpected `)`"]),
        ("relu()", 1, 6, ["unexpected `)`"]),
        ("1e999", 1, 1, ["out of range"]),
        ("", 1, 1, ["empty"]),
        ("  \n ", 1, 1, ["empty"]),
        ("[(1,2);(3,4,5)]", 1, 8, ["ragged"]),
        ("[1;(2,3)]", 1, 2, ["ragged"]),
        ("[[1];[(2,3)]]", 1, 6, ["ragged"]),
        ("[(1,2);[3;4]]", 1, 8, ["ragged"]),
        ("[1; x]", 1, 5, ["holds numbers", "found `x`"]),
        ("(x, 1)", 1, 2, ["holds numbers"]),
        ("{w = x}", 1, 6, ["initial value", "`w`"]),
        ("{w = relu(x)}", 1, 6, ["initial value"]),
        ("{w; q = [1]}", 1, 5, ["unknown field `q`"]),
        ("{w; o = [1]; o = [2]}", 1, 14, ["given twice"]),
        ("{w; o = [1.5]}", 1, 10, ["whole number"]),
        ("{w; o = [-1]}", 1, 10, ["unexpected `-`"]),
        ("{1}", 1, 2, ["unexpected `1`", "a name"]),
    ],
)
def test_op_syntax_errors(text, line, column, fragments):
    raises_at(parse_op, text, line, column, *fragments)


def test_error_keeps_text_and_is_a_value_error():
    error = raises_at(parse_op, "relu(x", 1, 7)
    assert isinstance(error, ValueError)
    assert error.text == "relu(x"
    assert "  relu(x\n" in str(error)


# ---------------------------------------------------------------------------------------------
# cd DSL


v, v1, v2, g, g1, g2 = (Ref(n) for n in ("v", "v1", "v2", "g", "g1", "g2"))
a, b, c = Ref("a"), Ref("b"), Ref("c")


def stmt(lhs, accum, zero_first, rhs, logic=None) -> CdStatement:
    return CdStatement(lhs, accum, zero_first, rhs, logic)


def test_cd_api_examples():
    assert parse_cd('c =:+ a * b ~logic:"@"') == [stmt(c, "add", True, Binop("mul", a, b), "@")]
    assert parse_cd("v =: v1 * v2") == [stmt(v, None, False, Binop("mul", v1, v2))]
    assert parse_cd("g1 =+ g * v2; g2 =+ g * v1") == [
        stmt(g1, "add", False, Binop("mul", g, v2)),
        stmt(g2, "add", False, Binop("mul", g, v1)),
    ]
    assert parse_cd("a.grad =+ g") == [stmt(Ref("a", grad=True), "add", False, g)]


@pytest.mark.parametrize(
    "assign, accum, zero_first",
    [
        ("=:", None, False),
        ("=+", "add", False),
        ("=-", "sub", False),
        ("=*", "mul", False),
        ("=/", "div", False),
        ("=@^", "max", False),
        ("=@-", "min", False),
        ("=:+", "add", True),
        ("=:-", "sub", True),
        ("=:*", "mul", True),
        ("=:/", "div", True),
        ("=:@^", "max", True),
        ("=:@-", "min", True),
    ],
)
def test_cd_assignment_operators(assign, accum, zero_first):
    assert parse_cd(f"v {assign} v1") == [stmt(v, accum, zero_first, v1)]


@pytest.mark.parametrize(
    "symbol, name",
    [
        ("+", "add"),
        ("-", "sub"),
        ("*", "mul"),
        ("/", "div"),
        ("**", "pow"),
        ("-?/", "relu_gate"),
        ("<", "lt"),
        ("=", "eq"),
        ("==", "eq"),
        ("<>", "ne"),
        ("@^", "max"),
        ("@-", "min"),
    ],
)
def test_cd_infix_operators(symbol, name):
    assert parse_cd(f"v =: v1 {symbol} v2") == [stmt(v, None, False, Binop(name, v1, v2))]


@pytest.mark.parametrize(
    "rhs, expected",
    [
        ("v1", v1),
        ("2.5", Number(2.5)),
        ("-2", Number(-2.0)),
        ("-v1", Unop("neg", v1)),
        ("relu(v1)", Unop("relu", v1)),
        ("exp(v)", Unop("exp", v)),
        ("id(v)", Unop("identity", v)),
        ("v1.value", v1),
        ("(v1)", v1),
        ("(v1 * v2)", Binop("mul", v1, v2)),
        ("max(v1, v2)", Binop("max", v1, v2)),
        ("relu_gate(v1, g)", Binop("relu_gate", v1, g)),
        ("where(v1, v2, 0.0)", Ternop("where", v1, v2, Number(0.0))),
        ("fma(v1.grad, v2, g)", Ternop("fma", Ref("v1", grad=True), v2, g)),
        ("v1 -?/ g", Binop("relu_gate", v1, g)),
        ("0.5 * g", Binop("mul", Number(0.5), g)),
        ("v1 - -1", Binop("sub", v1, Number(-1.0))),
    ],
)
def test_cd_right_hand_sides(rhs, expected):
    assert parse_cd(f"v =: {rhs}") == [stmt(v, None, False, expected)]


@pytest.mark.parametrize("logic", [".", "@", "T", "ij;jk=>ik", "...|... => 0"])
def test_cd_logic(logic):
    assert parse_cd(f'g1 =+ g * v2 ~logic:"{logic}"') == [
        stmt(g1, "add", False, Binop("mul", g, v2), logic)
    ]
    assert parse_cd(f'g1 =+ g ~logic: "{logic}"')[0].logic == logic


def test_cd_separators_and_positions():
    text = "\n v =: v1 + v2 ;\n\n g1 =+ g ;; \n"
    statements = parse_cd(text)
    assert statements == [
        stmt(v, None, False, Binop("add", v1, v2)),
        stmt(g1, "add", False, g),
    ]
    assert [s.pos for s in statements] == [(2, 2), (4, 2)]
    assert statements[0].rhs.pos == (2, 10)
    assert statements[0].rhs.left.pos == (2, 7)


def test_cd_nested_right_hand_sides():
    v1, v2, v3 = Ref("v1"), Ref("v2"), Ref("v3")
    (s,) = parse_cd("v =: v1 * v2 * v3")
    assert s.rhs == Binop("mul", Binop("mul", v1, v2), v3)
    (s,) = parse_cd("v =: v1 + v2 * v3")
    assert s.rhs == Binop("add", v1, Binop("mul", v2, v3))
    (s,) = parse_cd("g1 =+ g * v1 ** (v2 - 1)")
    assert s.rhs == Binop("mul", Ref("g"), Binop("pow", v1, Binop("sub", v2, Number(1.0))))
    (s,) = parse_cd("v =: -relu(v1 + v2)")
    assert s.rhs == Unop("neg", Unop("relu", Binop("add", v1, v2)))
    (s,) = parse_cd("g1 =+ where(v1 + v2 == v, g, 0)")
    assert s.rhs == Ternop(
        "where", Binop("eq", Binop("add", v1, v2), Ref("v")), Ref("g"), Number(0.0)
    )
    for text in [
        "v =: (a + b) * -c",
        "v =: where(a < b, -(a * b), exp(a / b))",
        "v =: 1 - (2 - a)",
    ]:
        statements = parse_cd(text)
        assert parse_cd(format_cd(statements)) == statements


@pytest.mark.parametrize(
    "text, line, column, fragments",
    [
        ("v = a", 1, 3, ["unexpected `=`", "assignment operator", "or `.` (line"]),
        ("v a", 1, 3, ["assignment operator"]),
        ("v =: foo(a)", 1, 6, ["unknown operation `foo`", "relu"]),
        ("v =: relu(a, b)", 1, 6, ["takes 1 operand", "got 2"]),
        ("v =: where(a, b)", 1, 6, ["takes 3 operand"]),
        ("v =: a.merge", 1, 8, ["only `.grad`"]),
        ("v =: a\nw =: b", 2, 1, ["unexpected `w`", "`;`"]),
        ("v =: a ~logic:", 1, 15, ["unexpected end of text", "string"]),
        ('v =: a ~logic:"@', 1, 15, ["unterminated string"]),
        ("v =: ", 1, 6, ["an expression"]),
        ("2 =: v", 1, 1, ["unexpected `2`", "a name"]),
        ("", 1, 1, ["empty"]),
        (" ; ;", 1, 1, ["no statement"]),
    ],
)
def test_cd_syntax_errors(text, line, column, fragments):
    raises_at(parse_cd, text, line, column, *fragments)


# ---------------------------------------------------------------------------------------------
# Robustness: any text parses or raises SpecSyntaxError, nothing else

_DSL_ALPHABET = st.sampled_from(list("xyzvgw12.-+*/=:;,()[]{}|<>@^?~\"' \n") + ["relu", "grad"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(_DSL_ALPHABET, max_size=25).map("".join)))
def test_random_text_raises_only_spec_syntax_error(text):
    for parse in (parse_op, parse_cd):
        try:
            parse(text)
        except SpecSyntaxError as error:
            assert 1 <= error.line and 1 <= error.column


# ---------------------------------------------------------------------------------------------
# Round trips: printed trees parse back to themselves

_names = st.from_regex(r"[a-z][a-z0-9_]{0,3}", fullmatch=True)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_specs = st.from_regex(r"[a-z0-9;=>|. ,]{0,10}", fullmatch=True)
_KIND_MIN_DIM = {"output": 1, "batch": 1, "input": 2}  # a tuple has two elements at least


@st.composite
def _literals(draw) -> Literal:
    kinds = tuple(draw(st.lists(st.sampled_from(list(_KIND_MIN_DIM)), min_size=1, max_size=3)))
    shape = tuple(draw(st.integers(_KIND_MIN_DIM[k], 3)) for k in kinds)
    size = int(np.prod(shape))
    values = draw(st.lists(_floats, min_size=size, max_size=size))
    return Literal(np.array(values, dtype=np.float64).reshape(shape), kinds)


_dims = st.none() | st.tuples() | st.lists(st.integers(0, 64) | _names, max_size=3).map(tuple)
_params = st.builds(Param, _names, st.none() | _floats | _literals(), _dims, _dims, _dims)
_op_leaves = st.one_of(st.builds(Number, _floats), st.builds(Name, _names), _literals(), _params)


def _op_nodes(children):
    return st.one_of(
        st.builds(Neg, children.filter(lambda e: not isinstance(e, Number))),
        st.builds(Binary, st.sampled_from(sorted(OP_BINARY_OPERATORS)), children, children),
        st.builds(EinsumExpr, st.sampled_from(["+*", "+++", "@^+"]), _specs, children, children),
        st.builds(Einsum1Expr, st.sampled_from(["++", "@^^"]), _specs, children),
        st.builds(FunctionCall, _names, st.lists(children, min_size=1, max_size=3).map(tuple)),
    )


_op_trees = st.recursive(_op_leaves, _op_nodes, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_op_trees)
def test_op_round_trip(tree):
    text = format_op(tree)
    assert parse_op(text) == tree, text


_operands = st.builds(Ref, _names, st.booleans()) | st.builds(Number, _floats)
_refs = st.builds(Ref, _names, st.booleans())
_UNARY = sorted(n for n, o in ops.OPS.items() if o.arity == 1 and n != "neg")
_BINARY = sorted(n for n, o in ops.OPS.items() if o.arity == 2)
_TERNARY = sorted(n for n, o in ops.OPS.items() if o.arity == 3)
_rhs = st.one_of(
    _operands,
    st.builds(Unop, st.sampled_from(_UNARY), _operands),
    st.builds(Unop, st.just("neg"), _refs),
    st.builds(Binop, st.sampled_from(_BINARY), _operands, _operands),
    st.builds(Ternop, st.sampled_from(_TERNARY), _operands, _operands, _operands),
)
_accums = st.sampled_from([None, "add", "sub", "mul", "div", "max", "min"])


@st.composite
def _statements(draw) -> CdStatement:
    accum = draw(_accums)
    zero_first = accum is not None and draw(st.booleans())
    logic = draw(st.none() | st.sampled_from([".", "@", "T"]) | _specs)
    return CdStatement(draw(_refs), accum, zero_first, draw(_rhs), logic)


@settings(max_examples=200, deadline=None)
@given(st.lists(_statements(), min_size=1, max_size=4))
def test_cd_round_trip(statements):
    text = format_cd(statements)
    assert parse_cd(text) == statements, text


def test_format_op_examples():
    assert format_op(parse_op("({hey = 7.0} * [2;3]) + [4;5;6]")) == (
        "{hey = 7.0} * [2.0; 3.0] + [4.0; 5.0; 6.0]"
    )
    assert format_op(parse_op("(x + y) * -z")) == "(x + y) * -z"
    assert format_op(parse_op("x - (y - z)")) == "x - (y - z)"
    assert format_op(parse_op("(x **. y) **. z")) == "(x **. y) **. z"
    assert format_op(parse_op('x +* "s" (-y)')) == 'x +* "s" (-y)'
    assert format_op(parse_op("{w; i = [3]; o = [4]}")) == "{w; o = [4]; i = [3]}"

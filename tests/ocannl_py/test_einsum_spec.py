"""The einsum spec language: OCANNL's documented examples, round trips, and syntax errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocannl_py.einsum import (
    AffineAxis,
    Concat,
    FixedIndex,
    Label,
    Placeholder,
    RowSpec,
    ShapeSpec,
    Spec,
    is_multichar,
    parse_shape_spec,
    parse_spec,
    print_spec,
)
from ocannl_py.errors import SpecSyntaxError


def labels(text: str) -> tuple[Label, ...]:
    return tuple(Label(c) for c in text)


def out(text: str) -> ShapeSpec:
    return ShapeSpec(None, None, RowSpec((), None, labels(text)))


def test_matrix_multiplication():
    assert parse_spec("ab;bc=>ac") == Spec((out("ab"), out("bc")), out("ac"))


def test_multichar_mode_is_switched_on_by_a_comma():
    spec = parse_spec("row, k; k, col => row, col")
    assert spec.operands[0].output.end == (Label("row"), Label("k"))
    assert spec.result.output.end == (Label("row"), Label("col"))
    assert parse_spec("a,b;b,c=>a,c") == parse_spec("ab;bc=>ac")
    assert is_multichar("2*a+b=>a") and is_multichar("a^b=>a") and is_multichar("a<+b=>a")
    assert not is_multichar("ab|cd->ef=>ef")


def test_reduce_everything():
    spec = parse_spec("...|...->... => 0")
    (arg,) = spec.operands
    assert arg.batch == RowSpec((), "...", ())
    assert arg.input == RowSpec((), "...", ())
    assert arg.output == RowSpec((), "...", ())
    assert spec.result == ShapeSpec(None, None, RowSpec((), None, (FixedIndex(0),)))
    assert arg.batch.variable_name("batch") == "batch"


def test_batch_and_output_swap():
    spec = parse_spec("ab|cd->ef => cf|ae->db")
    (arg,) = spec.operands
    assert arg == ShapeSpec(
        RowSpec((), None, labels("ab")),
        RowSpec((), None, labels("cd")),
        RowSpec((), None, labels("ef")),
    )
    assert spec.result.batch.end == labels("cf")
    assert spec.result.input.end == labels("ae")
    assert spec.result.output.end == labels("db")


def test_named_row_variable_with_axes_before_it():
    spec = parse_spec("2..v..|... => ..v..")
    (arg,) = spec.operands
    assert arg.batch == RowSpec((FixedIndex(2),), "v", ())
    assert arg.output == RowSpec((), "...", ())
    assert spec.result.output == RowSpec((), "v", ())


def test_row_variable_in_the_middle():
    spec = parse_spec("..v..|...ijk => ..v..kji")
    assert spec.operands[0].output == RowSpec((), "...", labels("ijk"))
    assert spec.result.output == RowSpec((), "v", labels("kji"))
    middle = parse_spec("a...b=>ba").operands[0].output
    assert middle == RowSpec((Label("a"),), "...", (Label("b"),))


def test_fixed_indices_and_empty_rows():
    spec = parse_spec("i->1; ij...->0 => ...->ji")
    first, second = spec.operands
    assert first == ShapeSpec(
        None, RowSpec((), None, labels("i")), RowSpec((), None, (FixedIndex(1),))
    )
    assert second.input == RowSpec(labels("ij"), "...", ())
    assert spec.result.input == RowSpec((), "...", ())
    assert parse_spec("ab=>").result.output == RowSpec()


def test_placeholder():
    assert parse_spec("a_b=>ab").operands[0].output.end == (Label("a"), Placeholder(), Label("b"))


def test_convolution_and_pooling_axes():
    spec = parse_spec("...|2*oh<+wh, 2*ow<+ww, ..c..; wh, ww => ...|oh, ow, ..c..")
    first = spec.operands[0].output
    assert first.beg == (AffineAxis(2, "oh", 0, 1, "wh", "<"), AffineAxis(2, "ow", 0, 1, "ww", "<"))
    assert first.row_var == "c"
    padded = parse_spec("o=+3*k, 2*p+1, q+1+k; k => o, p, q").operands[0].output.end
    assert padded == (
        AffineAxis(1, "o", 0, 3, "k", "="),
        AffineAxis(2, "p", 1, 1, None, ""),
        AffineAxis(1, "q", 1, 1, "k", ""),
    )


def test_concatenation_with_several_operands():
    spec = parse_spec("x, ...; y, ...; z, ... => x^y^z, ...")
    assert len(spec.operands) == 3
    assert spec.result.output.beg == (Concat((Label("x"), Label("y"), Label("z"))),)
    assert parse_spec("3^a => a").operands[0].output.end == (Concat((FixedIndex(3), Label("a"))),)


def test_labels_spec():
    assert parse_shape_spec("b|i->o") == ShapeSpec(
        RowSpec((), None, labels("b")),
        RowSpec((), None, labels("i")),
        RowSpec((), None, labels("o")),
    )


@pytest.mark.parametrize(
    "text, fragment, column",
    [
        ("ab;bc", "expected", 6),
        ("ab=>a&", "reserved", 6),
        ("a...b...=>a", "one row variable", 6),
        ("a,b c=>a", "separated by commas", 5),
        ("a+1+2=>a", "offset comes once", 5),
        ("ab|cd|ef=>a", "unexpected '|'", 6),
        ("", "end of the spec", 1),
    ],
)
def test_syntax_errors_say_where(text, fragment, column):
    with pytest.raises(SpecSyntaxError) as info:
        parse_spec(text)
    error = info.value
    assert fragment in error.message
    assert (error.line, error.column) == (1, column)
    assert error.text == text
    assert "^" in str(error)


def test_error_on_a_later_line():
    with pytest.raises(SpecSyntaxError) as info:
        parse_spec("ab;\nbc=>\na?")
    assert (info.value.line, info.value.column) == (3, 2)


# ---------------------------------------------------------------------------------------------
# Round trips

single_names = st.sampled_from(list("abcdeijkxyzAB"))
multi_names = st.sampled_from(["a", "row", "col", "k2", "h_w", "Q"])


def axes(names):
    simple = st.one_of(names.map(Label), st.just(Placeholder()), st.integers(0, 12).map(FixedIndex))
    affine = st.builds(
        AffineAxis,
        stride=st.integers(1, 4),
        over=names,
        offset=st.integers(0, 3),
        dilation=st.integers(1, 3),
        kernel=st.one_of(st.none(), names, st.just("_")),
        padding=st.sampled_from(["", "<", "="]),
    ).filter(lambda a: a.stride != 1 or a.offset or a.kernel is not None)
    affine = affine.map(
        lambda a: a if a.kernel is not None else AffineAxis(a.stride, a.over, a.offset)
    )
    concat = st.lists(simple, min_size=2, max_size=3).map(lambda ps: Concat(tuple(ps)))
    return st.one_of(simple, simple, affine, concat)


def rows(axis):
    def build(beg, var, end):
        return RowSpec(tuple(beg), var, tuple(end)) if var else RowSpec((), None, tuple(end))

    return st.builds(
        build,
        st.lists(axis, max_size=2),
        st.one_of(st.none(), st.just("..."), st.sampled_from(["v", "batch", "rest"])),
        st.lists(axis, max_size=3),
    )


def shapes(row):
    return st.builds(ShapeSpec, st.one_of(st.none(), row), st.one_of(st.none(), row), row)


def specs(names=None):
    row = rows(axes(names)) if names is not None else None
    if names is None:
        row = st.one_of(rows(axes(single_names)), rows(axes(multi_names)))
    shape = shapes(row)
    return st.builds(
        lambda ops, res: Spec(tuple(ops), res), st.lists(shape, min_size=1, max_size=3), shape
    )


@settings(max_examples=300, deadline=None)
@given(specs(single_names))
def test_print_then_parse_is_identity_single_letters(spec):
    assert parse_spec(print_spec(spec)) == spec


@settings(max_examples=300, deadline=None)
@given(specs(multi_names))
def test_print_then_parse_is_identity_multichar(spec):
    text = print_spec(spec)
    assert parse_spec(text) == spec
    assert parse_spec(print_spec(parse_spec(text))) == spec


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1_.,;|->=<+*^&() \nxZ9")), max_size=30))
def test_random_spec_texts_raise_only_spec_syntax_errors(text):
    try:
        spec = parse_spec(text)
    except SpecSyntaxError as e:
        assert e.text == text and e.line >= 1 and e.column >= 1
    else:
        assert parse_spec(print_spec(spec)) == spec


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_arbitrary_unicode_raises_only_spec_syntax_errors(text):
    try:
        parse_spec(text)
    except SpecSyntaxError:
        pass

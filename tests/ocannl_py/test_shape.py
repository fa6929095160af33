"""Shape inference: rows, broadcasting, compose, einsum equations, closing, and error messages."""

from __future__ import annotations

import pytest

from ocannl_py.errors import ShapeError, SpecSyntaxError
from ocannl_py.shape import Compose, Einsum, Pointwise, Shape, Transpose, close, propagate


def known(label: str, batch=(), inputs=(), output=(), **kw) -> Shape:
    return Shape(
        label, batch_dims=list(batch), input_dims=list(inputs), output_dims=list(output), **kw
    )


def rows(shape: Shape) -> tuple[list[int], list[int], list[int]]:
    return shape.batch, shape.input, shape.output


def test_str_numbers_axes_like_ocannl():
    assert str(known("s", [2], [3], [4])) == "0:2|1:3->0:4"
    assert str(known("s", [], [], [4, 5])) == "0:4,1:5"
    assert str(known("s", [], [3], [4])) == "1:3->0:4"
    assert str(known("s", [2, 7], [], [4])) == "0:2,1:7|0:4"


def test_dims_are_in_memory_order():
    assert known("s", [2], [3], [4, 5]).dims() == (2, 4, 5, 3)


def test_unsolved_rows_raise_naming_the_tensor():
    with pytest.raises(ShapeError, match="'w'.*not known yet"):
        _ = Shape("w").output


def test_linear_layer_infers_the_weight():
    w = Shape("w", is_param=True)
    x = known("x", batch=[2], output=[3])
    b = Shape("b", output_dims=[4], is_param=True)
    wx, y = Shape("wx"), Shape("y")
    propagate(Compose(), wx, [w, x], op_label="*")
    propagate(Pointwise(), y, [wx, b], op_label="+")
    close([y])
    assert rows(w) == ([], [3], [4])
    assert rows(b) == ([], [], [4])
    assert rows(y) == ([2], [], [4])
    assert rows(wx) == ([2], [], [4])


def test_inline_param_composed_with_literals():
    # ({hey} * [2;3]) + [4;5;6]
    hey = Shape("hey", is_param=True)
    product, total = Shape("product"), Shape("total")
    propagate(Compose(), product, [hey, known("[2;3]", output=[2])])
    propagate(Pointwise(), total, [product, known("[4;5;6]", output=[3])])
    close([total])
    assert rows(hey) == ([], [2], [3])
    assert rows(total) == ([], [], [3])


def test_pointwise_broadcasts_on_the_left_and_from_one():
    result = Shape("r")
    propagate(Pointwise(), result, [known("a", [2], [], [1, 3]), known("b", [], [], [4, 1])])
    close([result])
    assert rows(result) == ([2], [], [4, 3])


def test_compose_result_is_batch_broadcast_b_input_a_output():
    a = known("a", batch=[1], inputs=[3, 5], output=[7])
    b = known("b", batch=[4], inputs=[2], output=[3, 5])
    result = Shape("r")
    propagate(Compose(), result, [a, b])
    close([result])
    assert rows(result) == ([4], [2], [7])


def test_transpose_swaps_input_and_output():
    result = Shape("r")
    propagate(Transpose(), result, [known("a", [2], [3], [4, 5])])
    close([result])
    assert rows(result) == ([2], [4, 5], [3])


def test_unknown_operand_takes_what_its_use_demands():
    w = Shape("w", is_param=True)
    result = Shape("r")
    propagate(Pointwise(), result, [w, known("x", [], [2], [3])])
    close([result])
    assert rows(w) == ([], [2], [3])


def test_shape_used_twice_is_solved_from_both_uses():
    w = Shape("w", is_param=True)
    first, second = Shape("first"), Shape("second")
    propagate(Compose(), first, [w, known("x", output=[3])])
    propagate(Pointwise(), second, [w, known("t", inputs=[3], output=[6])])
    close([first, second])
    assert rows(w) == ([], [3], [6])
    assert rows(first) == ([], [], [6])


def test_batch_output_swap_einsum():
    result = Shape("r")
    propagate(Einsum("ab|cd->ef => cf|ae->db"), result, [known("a", [2, 3], [4, 5], [6, 7])])
    close([result])
    assert rows(result) == ([4, 7], [2, 6], [5, 3])


def test_einsum_matrix_multiplication_infers_the_unknown_side():
    b = Shape("b", is_param=True)
    result = known("r", output=[2, 5])
    propagate(Einsum("ab;bc=>ac"), result, [known("a", output=[2, 3]), b])
    close([result, b])
    assert rows(b) == ([], [], [3, 5])


def test_row_variable_in_the_middle():
    result = Shape("r")
    propagate(Einsum("a...b => ba..."), result, [known("x", output=[2, 3, 4, 5])])
    close([result])
    assert result.output == [5, 2, 3, 4]


def test_named_row_variable_shared_across_rows():
    result = Shape("r")
    propagate(Einsum("..v..|...ijk => ..v..kji"), result, [known("x", [7, 8], [], [1, 2, 3, 4])])
    close([result])
    assert rows(result) == ([], [], [7, 8, 4, 3, 2])


def test_ellipsis_broadcasts_between_operands():
    result = Shape("r")
    a = known("a", output=[5, 2, 3])
    b = known("b", output=[1, 3, 4])
    propagate(Einsum("...ab;...bc=>...ac"), result, [a, b])
    close([result])
    assert result.output == [5, 2, 4]


def test_reduction_to_a_single_number():
    result = Shape("r")
    propagate(Einsum("...|...->... => 0"), result, [known("x", [2], [3], [4])])
    close([result])
    assert rows(result) == ([], [], [1])


def test_fixed_index_in_the_result_sets_a_minimum_dim():
    result = Shape("r")
    propagate(Einsum("...|... => ...|...2"), result, [known("x", [2], [], [3])])
    close([result])
    assert rows(result) == ([2], [], [3, 3])


def test_fixed_index_beyond_the_dim_is_an_error():
    with pytest.raises(ShapeError, match="fixed index 4"):
        propagate(Einsum("4=>0"), Shape("r"), [known("x", output=[3])])


def test_diagonal_needs_equal_dims():
    result = Shape("r")
    propagate(Einsum("ii=>i"), result, [known("x", output=[3, 3])])
    close([result])
    assert result.output == [3]
    with pytest.raises(ShapeError, match="dims 4 vs 3"):
        propagate(Einsum("ii=>i"), Shape("r2"), [known("y", output=[3, 4])])


def test_kind_left_out_of_an_einsum_spec_has_no_axes():
    with pytest.raises(ShapeError, match="einsum 'ij=>ji'.*batch axes"):
        propagate(Einsum("ij=>ji"), Shape("r"), [known("x", [5], [], [2, 3])])


def test_einsum_spec_is_parsed_when_given():
    with pytest.raises(SpecSyntaxError):
        Einsum("ab;bc=>a&")


def test_affine_axes_are_inferred():
    r = Shape("r")
    propagate(Einsum("2*o<+k; k => o"), r, [known("x", output=[9]), known("w", output=[3])])
    assert r.output == [4]


def test_concatenation_is_not_an_einsum():
    with pytest.raises(ShapeError, match="use oc.concat"):
        propagate(Einsum("a; b => a^b"), Shape("r"), [Shape("x"), Shape("y")])


def test_einsum_arity_is_checked():
    with pytest.raises(ShapeError, match="takes 2 operand"):
        propagate(Einsum("ab;bc=>ac"), Shape("r"), [known("a", output=[1])])


# ---------------------------------------------------------------------------------------------
# Errors


def test_pointwise_conflict_names_tensors_kind_and_dims():
    with pytest.raises(ShapeError) as info:
        propagate(
            Pointwise(), Shape("sum"), [known("[1;2]", output=[2]), known("[1;2;3]", output=[3])],
            op_label="+",
        )  # fmt: skip
    message = str(info.value)
    for fragment in ("pointwise", "'+'", "'[1;2]'", "'[1;2;3]'", "'sum'", "output axes", "3 vs 2"):
        assert fragment in message


def test_compose_conflict_hints_at_pointwise():
    with pytest.raises(ShapeError) as info:
        propagate(
            Compose(), Shape("p"), [known("a", output=[3]), known("b", output=[3])], op_label="*"
        )
    message = str(info.value)
    assert "compose" in message and "'a'" in message and "'b'" in message
    assert "0 axes" in message and "1 axes" in message
    assert "`*.`" in message


def test_compose_dim_conflict():
    with pytest.raises(
        ShapeError, match=r"(?s)input \(of the left\) vs output axes: dims 2 vs 3.*\*\."
    ):
        propagate(
            Compose(), Shape("p"), [known("a", inputs=[2], output=[3]), known("b", output=[3])]
        )


def test_einsum_conflict_names_the_spec():
    with pytest.raises(ShapeError, match=r"einsum 'ab;bc=>ac'.*output axes: dims 4 vs 3"):
        propagate(
            Einsum("ab;bc=>ac"), Shape("r"), [known("a", output=[2, 3]), known("b", output=[4, 5])]
        )


def test_result_shorter_than_operand_is_an_error():
    with pytest.raises(ShapeError, match="operand has at least 2 axes"):
        propagate(Pointwise(), known("r", output=[3]), [known("a", output=[2, 3])])


def test_undetermined_parameter_must_be_given_dims():
    w = Shape("w", is_param=True)
    result = Shape("r")
    propagate(Compose(), result, [w, known("x", output=[3])])
    with pytest.raises(ShapeError, match=r"output dims of parameter 'w'.*specify its dims"):
        close([result])


def test_unconstrained_non_parameters_close_to_defaults():
    x = Shape("x")
    result = Shape("r")
    propagate(Pointwise(), result, [x])
    close([result])
    assert rows(x) == ([], [], []) and rows(result) == ([], [], [])


def test_bad_dims_are_rejected():
    with pytest.raises(ShapeError, match="positive ints"):
        Shape("x", output_dims=[0])

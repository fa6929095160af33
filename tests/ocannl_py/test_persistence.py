"""oc.save / oc.load: safetensors round trips (bit-exact), strict name and shape checks, dtype
conversion, atomic writes, and dims settled from the file before any compile. Files written
here are read back with safetensors' PyTorch API as the independent reader."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors import safe_open
from safetensors.numpy import save_file

import ocannl_py as oc
from arrayjit.runtime import residency
from ocannl_py import Context, op, persistence


def mlp(x, hidden=None, out=None):
    h = f"; o = [{hidden}]" if hidden else ""
    o = f"; o = [{out}]" if out else ""
    return op(f"{{w2{o}}} * relu({{w1{h}}} * x + {{b1{h}}}) + {{b2{o}}}", x=x)


def data_term(batch=3, features=4):
    x = oc.term("x", batch_dims=[batch], input_dims=[], output_dims=[features])
    x.set_value(np.linspace(-1, 1, batch * features).reshape(batch, features))
    return x


def test_round_trip_restores_params_and_outputs(backend, tmp_path):
    ctx = Context(backend)
    oc.set_seed(3)
    y = mlp(data_term(), hidden=5, out=2)
    ctx.forward(y)
    path = tmp_path / "mlp.safetensors"
    oc.save(y, path)
    oc.set_seed(4)
    y2 = mlp(data_term(), hidden=5, out=2)
    oc.load(y2, path)
    ctx.forward(y2)
    assert sorted(y2.params) == ["b1", "b2", "w1", "w2"]
    for name, p in y.params.items():
        np.testing.assert_array_equal(y2.params[name].value, p.value)
    np.testing.assert_array_equal(y2.value, y.value)


def test_loaded_values_survive_the_first_compile(tmp_path):
    """Initialisation runs only for parameters without values: a load before compile wins."""
    w = oc.param("w", output_dims=[2], input_dims=[3])
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path / "w.safetensors")
    oc.load({"w": w}, tmp_path / "w.safetensors")
    x = data_term(1, 3)
    y = w @ x
    Context("c").forward(y)
    np.testing.assert_array_equal(w.value, np.arange(6).reshape(2, 3))
    np.testing.assert_allclose(y.value, x.value @ np.arange(6).reshape(2, 3).T, rtol=1e-6)


def test_dict_names_and_bit_exact_float32(tmp_path):
    special = np.array(
        [[0.0, -0.0, np.inf, -np.inf], [np.nan, 1e-45, -3.4028235e38, 1 / 3]], np.float32
    )
    a = oc.term("a", batch_dims=[], input_dims=[4], output_dims=[2])
    a.set_value(special)
    path = tmp_path / "a.safetensors"
    oc.save({"block.weight": a}, path)
    with safe_open(path, framework="pt") as f:  # PyTorch's reader as the reference
        assert list(f.keys()) == ["block.weight"]
        np.testing.assert_array_equal(f.get_tensor("block.weight").numpy().view(np.uint32),
                                      special.view(np.uint32))  # fmt: skip
        assert json.loads(f.metadata()[persistence.ROWS_KEY]) == {
            "block.weight": {"batch": [], "input": [4], "output": [2]}
        }
    b = oc.term("b", batch_dims=[], input_dims=[4], output_dims=[2])
    oc.load({"block.weight": b}, path)
    np.testing.assert_array_equal(b.value.view(np.uint32), special.view(np.uint32))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    inputs=st.lists(st.integers(1, 4), max_size=2),
    outputs=st.lists(st.integers(1, 5), max_size=2),
    data=st.data(),
)
def test_any_shape_round_trips(tmp_path_factory, batch, inputs, outputs, data):
    dims = (*batch, *outputs, *inputs)
    values = data.draw(hnp.arrays(np.float32, dims, elements=st.floats(width=32)))
    t = oc.term("t", batch_dims=batch, input_dims=inputs, output_dims=outputs)
    t.set_value(values)
    path = tmp_path_factory.mktemp("round") / "t.safetensors"
    oc.save({"t": t}, path)
    u = oc.term("u", batch_dims=batch, input_dims=inputs, output_dims=outputs)
    oc.load({"t": u}, path)
    np.testing.assert_array_equal(u.value.view(np.uint32), values.view(np.uint32))


# ---- dtypes -------------------------------------------------------------------------------------

BITS = {"bfloat16": (ml_dtypes.bfloat16, np.uint16), "float16": (np.float16, np.uint16),
        "float64": (np.float64, np.uint64), "float32": (np.float32, np.uint32),
        "int32": (np.int32, np.uint32)}  # fmt: skip


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(sorted(BITS)), data=st.data())
def test_arrays_of_every_dtype_round_trip_bit_exactly(tmp_path_factory, name, data):
    """16-bit files are written and read bit for bit (every bit pattern, NaNs included)."""
    dtype, bits = BITS[name]
    raw = data.draw(hnp.arrays(bits, hnp.array_shapes(max_dims=3, max_side=5)))
    array = raw.view(dtype)
    path = tmp_path_factory.mktemp("dtypes") / "a.safetensors"
    persistence.write_arrays({"a": array}, path)
    with persistence.open_safetensors(path) as f:
        back = f.get_tensor("a")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.view(bits), raw)
    torch = pytest.importorskip("torch")
    with safe_open(path, framework="pt") as f:  # PyTorch agrees on the dtype and the bits
        theirs = f.get_tensor("a")
    assert theirs.dtype == getattr(torch, name)
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[np.dtype(bits).itemsize]
    np.testing.assert_array_equal(theirs.view(as_int).numpy().view(bits), raw)


def test_half_precision_file_into_float32_tensor_is_exact(tmp_path):
    torch = pytest.importorskip("torch")
    values = np.array([[1.5, -2.75, 3.0e-3], [65504.0, 1e-7, -0.0]])
    for dtype, torch_dtype in ((ml_dtypes.bfloat16, torch.bfloat16), (np.float16, torch.float16)):
        stored = values.astype(dtype)
        save_file({"w": stored}, tmp_path / "h.safetensors")
        w = oc.param("w", output_dims=[2], input_dims=[3])
        oc.load({"w": w}, tmp_path / "h.safetensors")
        expected = torch.tensor(values).to(torch_dtype).to(torch.float32).numpy()
        np.testing.assert_array_equal(w.value.view(np.uint32), expected.view(np.uint32))


def test_float64_file_rounds_to_float32_and_ints_are_refused(tmp_path):
    values = np.array([0.1, 1 / 3, 2.0**-30])
    save_file({"w": values, "ids": np.array([1, 2, 3], np.int32)}, tmp_path / "f.safetensors")
    w = oc.param("w", output_dims=[3], input_dims=[])
    oc.load({"w": w}, tmp_path / "f.safetensors", strict=False)
    np.testing.assert_array_equal(w.value, values.astype(np.float32))
    ids = oc.param("ids", output_dims=[3], input_dims=[])
    with pytest.raises(
        oc.CheckpointError, match=r"tensor 'ids' holds float32 values here but int32"
    ):
        oc.load({"ids": ids}, tmp_path / "f.safetensors", strict=False)


def test_bfloat16_tensor_round_trips_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], ml_dtypes.bfloat16)
    t = oc.param("t", values, dtype="bfloat16")
    u = oc.param("u", output_dims=[3], input_dims=[], dtype="bfloat16")
    Context("c").forward(t)
    oc.save({"t": t}, tmp_path / "t.safetensors")
    oc.load({"t": u}, tmp_path / "t.safetensors")
    assert u.value.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(u.value.view(np.uint16), values.view(np.uint16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int32"])
def test_16_bit_and_int32_terms_round_trip_exactly(dtype, tmp_path):
    """Every value of the type, saved and loaded back bit for bit (NaNs included)."""
    numpy_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    if dtype == "int32":
        values = np.array([0, 1, -1, 2**31 - 1, -(2**31), 12345], np.int32)
    else:
        values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(numpy_dtype)
    t = oc.term("t", output_dims=[values.size], dtype=dtype)
    u = oc.term("u", output_dims=[values.size], dtype=dtype)
    t.set_value(values)
    oc.save({"t": t}, tmp_path / "t.safetensors")
    oc.load({"t": u}, tmp_path / "t.safetensors")
    assert u.value.dtype == numpy_dtype
    np.testing.assert_array_equal(u.value.view(np.uint8), values.view(np.uint8))


# ---- dims settled from the file (issue 9 item 5) ------------------------------------------------


def test_load_settles_inferred_dims_before_any_compile(backend, tmp_path):
    ctx = Context(backend)
    oc.set_seed(0)
    y = mlp(data_term(), hidden=6, out=3)
    ctx.forward(y)
    oc.save(y, tmp_path / "m.safetensors")
    y2 = mlp(data_term())  # hidden and output dims: nothing here determines them
    assert not y2.params["w1"].shape.is_solved
    oc.load(y2, tmp_path / "m.safetensors")
    assert str(y2.params["w1"].shape) == "1:4->0:6"
    assert str(y2.params["b2"].shape) == "0:3"
    ctx.forward(y2)
    w1, b1, w2, b2 = (y.params[k].value for k in ("w1", "b1", "w2", "b2"))
    expected = np.maximum(data_term().value @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(y2.value, expected, rtol=1e-5, atol=1e-6)


def test_foreign_file_settles_the_one_row_left(tmp_path):
    """Without oc.save's metadata, a tensor with one unknown row takes what its known rows
    leave; with two unknown rows the split is ambiguous and says so."""
    x = data_term(2, 3)
    w = oc.param("w")
    y = w @ x  # w: input 3 from x; output unknown
    save_file({"w": np.ones((5, 3), np.float32)}, tmp_path / "w.safetensors")
    oc.load({"w": w}, tmp_path / "w.safetensors")
    assert str(w.shape) == "1:3->0:5"
    Context("c").forward(y)
    np.testing.assert_allclose(y.value, x.value @ np.ones((3, 5)), rtol=1e-6)
    b = oc.param("b")
    with pytest.raises(
        oc.ShapeError,
        match=r"tensor 'w'.*cannot tell how the file's dims \(5, 3\) split into the input and output rows of 'b'",
    ):
        oc.load({"w": b}, tmp_path / "w.safetensors")


def test_file_dims_against_partly_inferred_dims(tmp_path):
    x = data_term(2, 3)
    w = oc.param("w")
    _ = w @ x
    save_file({"w": np.ones((5, 4), np.float32)}, tmp_path / "w.safetensors")
    with pytest.raises(oc.ShapeError, match=r"tensor 'w'"):
        oc.load({"w": w}, tmp_path / "w.safetensors")


# ---- errors -------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    a = oc.term("a", batch_dims=[], input_dims=[3], output_dims=[2])
    b = oc.term("b", batch_dims=[], input_dims=[], output_dims=[4])
    a.set_value(np.ones((2, 3)))
    b.set_value(np.zeros(4))
    path = tmp_path / "ab.safetensors"
    oc.save({"a": a, "b": b}, path)
    return path


def test_missing_name_is_an_error_naming_it_and_the_file(saved):
    c = oc.term("c", batch_dims=[], input_dims=[], output_dims=[4])
    with pytest.raises(
        oc.CheckpointError,
        match=r"ab\.safetensors: no tensor 'c' in the file \(it holds 2: 'a', 'b'\)",
    ):
        oc.load({"c": c}, saved, strict=False)


def test_extra_name_is_an_error_when_strict(saved):
    b = oc.term("b", batch_dims=[], input_dims=[], output_dims=[4])
    with pytest.raises(oc.CheckpointError, match=r"not being loaded: 'a'; pass strict=False"):
        oc.load({"b": b}, saved)
    oc.load({"b": b}, saved, strict=False)
    np.testing.assert_array_equal(b.value, np.zeros(4))


def test_shape_mismatch_names_the_tensor_and_both_shapes(saved):
    a = oc.term("a", batch_dims=[], input_dims=[2], output_dims=[3])
    b = oc.term("b", batch_dims=[], input_dims=[], output_dims=[4])
    with pytest.raises(oc.ShapeError) as info:
        oc.load({"a": a, "b": b}, saved)
    message = str(info.value)
    assert "tensor 'a' has dims (3, 2) here (batch [] | input [2] -> output [3])" in message
    assert "but (2, 3) in the file (batch [] | input [3] -> output [2])" in message
    assert not residency.computed(b.value_node)  # nothing is written unless everything fits


def test_same_dims_other_rows_is_a_mismatch(saved):
    a = oc.term("a", batch_dims=[], input_dims=[], output_dims=[2, 3])
    with pytest.raises(
        oc.ShapeError, match=r"tensor 'a'.*output \[2, 3\].*input \[3\] -> output \[2\]"
    ):
        oc.load({"a": a}, saved, strict=False)


def test_save_errors(tmp_path):
    w = oc.param("w", output_dims=[2], input_dims=[])
    with pytest.raises(ValueError, match=r"save .*tensor 'w': tensor 'w' has no value yet"):
        oc.save({"w": w}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"tensor 'x' uses no parameters"):
        oc.save(oc.term("x", batch_dims=[], input_dims=[], output_dims=[1]), tmp_path / "x")
    with pytest.raises(TypeError, match=r"'w' is a ndarray, not a Tensor"):
        oc.save({"w": np.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        oc.save({"w": data_term()}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_file(tmp_path):
    w = oc.param("w", output_dims=[2], input_dims=[])
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors does not exist"):
        oc.load({"w": w}, tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(
        oc.CheckpointError, match=r"junk\.safetensors is not a readable safetensors"
    ):
        oc.load({"w": w}, tmp_path / "junk.safetensors")


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    oc.save({"x": data_term()}, path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        oc.save({"y": data_term(2, 2)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]

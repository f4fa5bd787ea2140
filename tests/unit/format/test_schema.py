"""Schema: inference, JSON round trip, per-sample validation, Arrow layout."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from streamload.errors import FormatError
from streamload.format.schema import Column, Schema, infer_schema, schema_from_json


def _sample() -> dict[str, object]:
    return {
        "id": 7,
        "score": 0.5,
        "ok": True,
        "text": "hé",
        "image": b"\x00\x01",
        "tokens": np.arange(8, dtype=np.int32),
        "weight": np.float16(1.5),
    }


def test_inference_records_kinds_dtypes_and_fixed_shapes_in_key_order() -> None:
    """The first sample's python types map to kinds; arrays record dtype and a fixed shape."""
    schema = infer_schema(_sample())
    assert schema.to_json() == {
        "columns": [
            {"name": "id", "kind": "int"},
            {"name": "score", "kind": "float"},
            {"name": "ok", "kind": "bool"},
            {"name": "text", "kind": "str"},
            {"name": "image", "kind": "bytes"},
            {"name": "tokens", "kind": "ndarray", "dtype": "int32", "shape": [8]},
            {"name": "weight", "kind": "ndarray", "dtype": "float16", "shape": []},
        ]
    }


def test_json_form_round_trips_through_text() -> None:
    """to_json -> json text -> schema_from_json gives the same schema."""
    data = infer_schema(_sample()).to_json()
    data["columns"].append(
        {"name": "boxes", "kind": "ndarray", "dtype": "float32", "shape": [None, 4]}
    )
    parsed = schema_from_json(json.loads(json.dumps(data)), "test")
    assert parsed.to_json() == data
    assert parsed.column("boxes").shape == (None, 4)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "unsupported type object"),
        (np.array(["a"]), "dtype <U1"),
        (np.array([1 + 2j]), "dtype complex128"),
        (np.array([object()]), "dtype object"),
    ],
)
def test_inference_rejects_unsupported_values(value: object, message: str) -> None:
    """Objects, strings arrays and complex/object dtypes cannot be columns (no pickle ever)."""
    with pytest.raises(FormatError, match=message):
        infer_schema({"x": value})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tokens": np.arange(8, dtype=np.int64)},
            r"sample 17: field 'tokens' has dtype int64, schema says int32",
        ),
        ({"tokens": np.arange(9, dtype=np.int32)}, r"sample 17: field 'tokens' has shape \(9,\)"),
        ({"tokens": np.zeros((2, 4), np.int32)}, r"sample 17: field 'tokens' has shape \(2, 4\)"),
        ({"tokens": [1, 2]}, r"sample 17: field 'tokens' is a list, schema says a numpy array"),
        ({"id": "7"}, r"sample 17: field 'id' is a str, schema says int"),
        ({"id": True}, r"sample 17: field 'id' is a bool, schema says int"),
        ({"id": 2**63}, r"sample 17: field 'id' = 9223372036854775808 does not fit in int64"),
        ({"score": "x"}, r"sample 17: field 'score' is a str, schema says float"),
        ({"ok": 1}, r"sample 17: field 'ok' is a int, schema says bool"),
        ({"text": b"x"}, r"sample 17: field 'text' is a bytes, schema says str"),
        ({"image": "x"}, r"sample 17: field 'image' is a str, schema says bytes"),
        (
            {"weight": np.float32(1)},
            r"sample 17: field 'weight' has dtype float32, schema says float16",
        ),
        (
            {"extra": 1},
            r"sample 17: keys do not match the schema \(missing \[\], extra \['extra'\]\)",
        ),
    ],
)
def test_validation_names_sample_number_and_field(change: dict[str, object], message: str) -> None:
    """Every mismatch is a FormatError naming the 0-based sample number and the field."""
    schema = infer_schema(_sample())
    bad = {**_sample(), **change}
    with pytest.raises(FormatError, match=message):
        schema.validate(bad, 17)


def test_validation_reports_missing_keys_and_non_dicts() -> None:
    """A missing key or a non-dict sample is a FormatError."""
    schema = infer_schema(_sample())
    sample = _sample()
    del sample["text"]
    with pytest.raises(
        FormatError, match=r"sample 3: keys do not match the schema \(missing \['text'\]"
    ):
        schema.validate(sample, 3)
    with pytest.raises(FormatError, match="sample 4: expected a dict"):
        schema.validate([1, 2], 4)


def test_validation_accepts_equivalent_python_and_numpy_scalars() -> None:
    """int columns take numpy integers, float columns ints, bool columns numpy bools."""
    schema = infer_schema(_sample())
    schema.validate({**_sample(), "id": np.int16(3), "score": 2, "ok": np.bool_(False)}, 0)


def test_variable_dimensions_accept_any_size_but_keep_ndim() -> None:
    """A null dim accepts any length; ndim and fixed dims are still enforced."""
    schema = schema_from_json(
        {"columns": [{"name": "v", "kind": "ndarray", "dtype": "float32", "shape": [None, 3]}]}, "t"
    )
    schema.validate({"v": np.zeros((0, 3), np.float32)}, 0)
    schema.validate({"v": np.zeros((9, 3), np.float32)}, 1)
    with pytest.raises(FormatError, match=r"shape \(2, 4\), schema says \(None, 3\)"):
        schema.validate({"v": np.zeros((2, 4), np.float32)}, 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly the key 'columns'"),
        ({"columns": []}, "non-empty list"),
        ({"columns": [{"name": "a", "kind": "pickle"}]}, "unknown kind 'pickle'"),
        ({"columns": [{"name": "", "kind": "int"}]}, "non-empty string"),
        (
            {"columns": [{"name": "a", "kind": "int"}, {"name": "a", "kind": "str"}]},
            r"duplicate column name\(s\) \['a'\]",
        ),
        ({"columns": [{"name": "a", "kind": "int", "dtype": "int8"}]}, "unexpected key"),
        (
            {"columns": [{"name": "a", "kind": "ndarray", "dtype": "object", "shape": [1]}]},
            "dtype 'object'",
        ),
        (
            {"columns": [{"name": "a", "kind": "ndarray", "dtype": "int8", "shape": [-1]}]},
            "not null or an int >= 0",
        ),
        (
            {
                "columns": [
                    {"name": "a", "kind": "ndarray", "dtype": "int8", "shape": [2**20, 2**20]}
                ]
            },
            "more than 2\\*\\*31-1",
        ),
        (
            {"columns": [{"name": "a", "kind": "ndarray", "dtype": "int8", "shape": [1] * 33}]},
            "at most 32 dims",
        ),
        (
            {"columns": [{"name": "a", "kind": "ndarray", "dtype": "int8"}]},
            "'shape' must be a list",
        ),
    ],
)
def test_schema_json_is_validated_strictly(data: object, message: str) -> None:
    """Malformed schema JSON is a FormatError naming the source and the problem."""
    with pytest.raises(FormatError, match=message):
        schema_from_json(data, "src")


def test_select_keeps_schema_order_and_rejects_unknown_columns() -> None:
    """Projection returns columns in schema order; unknown names are named in the error."""
    schema = infer_schema(_sample())
    assert schema.select(["tokens", "id"]).names == ("id", "tokens")
    with pytest.raises(FormatError, match=r"unknown column\(s\) \['nope'\]"):
        schema.select(["nope"])


def test_arrow_layout_is_one_contiguous_buffer_for_fixed_arrays() -> None:
    """Fixed arrays are fixed_size_list; variable and zero-size ones the struct layout."""
    schema = Schema(
        (
            Column("a", "ndarray", "int32", (2, 3)),
            Column("v", "ndarray", "uint8", (None,)),
            Column("z", "ndarray", "float32", (0, 3)),
            Column("s", "ndarray", "float16", ()),
            Column("t", "str"),
            Column("b", "bytes"),
        )
    )
    arrow = schema.arrow_schema()
    assert arrow.field("a").type == pa.list_(pa.int32(), 6)
    assert arrow.field("v").type.field("data").type == pa.large_list(pa.uint8())
    assert arrow.field("v").type.field("shape").type == pa.list_(pa.int64(), 1)
    assert arrow.field("z").type.field("shape").type == pa.list_(pa.int64(), 2)
    assert arrow.field("s").type == pa.float16()
    assert arrow.field("t").type == pa.large_string()
    assert arrow.field("b").type == pa.large_binary()
    assert not any(f.nullable for f in arrow)

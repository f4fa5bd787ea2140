"""Property: Arrow and LMDB shards round-trip every column kind and dtype identically."""

from __future__ import annotations

import contextlib
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import streamload as sl
from streamload.errors import FormatError
from streamload.format.schema import DTYPES, schema_from_json
from streamload.shards.lmdb.codec import decode, encode

_SHAPES = st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=0, max_size=3)


@st.composite
def _columns(draw: Any) -> list[dict[str, Any]]:
    kinds = draw(
        st.lists(
            st.sampled_from(["int", "float", "bool", "str", "bytes", "ndarray"]),
            min_size=1,
            max_size=6,
        )
    )
    columns: list[dict[str, Any]] = []
    for i, kind in enumerate(kinds):
        col: dict[str, Any] = {"name": f"c{i}", "kind": kind}
        if kind == "ndarray":
            col["dtype"] = draw(st.sampled_from(DTYPES))
            col["shape"] = draw(_SHAPES)
        columns.append(col)
    return columns


def _value(draw: Any, col: dict[str, Any]) -> Any:
    kind = col["kind"]
    if kind == "int":
        return draw(st.integers(-(2**63), 2**63 - 1))
    if kind == "float":
        return draw(st.floats(allow_nan=True, allow_infinity=True))
    if kind == "bool":
        return draw(st.booleans())
    if kind == "str":
        return draw(st.text(max_size=20))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    shape = tuple(d if d is not None else draw(st.integers(0, 3)) for d in col["shape"])
    arr = draw(hnp.arrays(np.dtype(col["dtype"]), shape))
    return arr[()] if arr.ndim == 0 else arr


@st.composite
def _datasets(draw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    columns = draw(_columns())
    n = draw(st.integers(1, 25))
    samples = [{c["name"]: _value(draw, c) for c in columns} for _ in range(n)]
    return columns, samples


def _same(a: Any, b: Any, where: str) -> None:
    """Bit-identical values of the same type (NaN payloads and -0.0 included)."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), where
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


def _expected(value: Any) -> Any:
    """What get(i) returns for a written value (bytes-like -> bytes, numpy scalars stay)."""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_datasets(), st.randoms(use_true_random=False))
def test_both_formats_round_trip_every_kind_identically(
    data: tuple[list[dict[str, Any]], list[dict[str, Any]]], rnd: Any
) -> None:
    """get(i) gives back what was written and get_batch is identical in both formats."""
    columns, samples = data
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {}
        for fmt in ("arrow", "lmdb"):
            url = f"{tmp}/{fmt}"
            with sl.ShardWriter(url, format=fmt, shard_size=300, schema={"columns": columns}) as w:
                for sample in samples:
                    w.write(sample)
            datasets[fmt] = sl.StreamingDataset(url)
        arrow, lmdb = datasets["arrow"], datasets["lmdb"]
        for i, sample in enumerate(samples):
            for fmt, ds in datasets.items():
                got = ds[i]
                assert list(got) == list(sample)
                for name, value in sample.items():
                    _same(got[name], _expected(value), f"{fmt} sample {i} {name}")
        ids = np.array([rnd.randrange(len(samples)) for _ in range(2 * len(samples))])
        a, b = arrow.get_batch(ids), lmdb.get_batch(ids)
        assert list(a) == list(b)
        for name in a:
            _same(a[name], b[name], f"get_batch {name}")


@given(st.binary(max_size=200))
def test_decoding_garbage_raises_only_format_error(value: bytes) -> None:
    """Any byte string either decodes or raises FormatError: never another exception or a crash."""
    with contextlib.suppress(FormatError):
        decode(value)


@given(st.binary(min_size=1, max_size=64), st.integers(0, 500), st.integers(0, 255))
# Found by hypothesis: a huge dim beside a zero dim (count 0 matches 0 bytes) made numpy raise
# ValueError ("array is too big" from 32 in the top byte, "Maximum allowed dimension exceeded"
# from 128); the length of blob sets the array's rows (len % 5 == 0: zero rows).
@example(blob=b"\x00" * 5, position=95, byte=32)
@example(blob=b"\x00" * 5, position=95, byte=128)
def test_flipping_a_byte_of_a_value_never_escapes_format_error(
    blob: bytes, position: int, byte: int
) -> None:
    """A valid value with one byte changed decodes or raises FormatError (bounds are checked)."""
    schema = schema_from_json(
        {
            "columns": [
                {"name": "b", "kind": "bytes"},
                {"name": "a", "kind": "ndarray", "dtype": "float32", "shape": [None, 2]},
                {"name": "s", "kind": "str"},
            ]
        },
        "t",
    )
    value = bytearray(
        encode(schema, {"b": blob, "a": np.ones((len(blob) % 5, 2), np.float32), "s": "é"})
    )
    value[position % len(value)] = byte
    with contextlib.suppress(FormatError):
        decode(bytes(value))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((0, 2**61), "is not a valid array shape"),  # 0 elements, 0 bytes: sizes agree
        ((2**63, 0), "is not a valid array shape"),
        ((1,) * 33, r"is not a valid array shape \(at most 32 dims"),
    ],
)
def test_a_hostile_shape_is_a_format_error_not_a_numpy_error(
    shape: tuple[int, ...], message: str
) -> None:
    """Dims numpy cannot describe (even for an empty array) are refused before reshaping."""
    import struct

    from streamload.shards.lmdb.codec import DTYPE_CODES

    ndim = len(shape)
    nbytes = 4 if 0 not in shape else 0
    dims_end = 8 + 24 + 8 * ndim
    offset = (dims_end + 63) // 64 * 64
    value = struct.pack("<4sI", b"SLS1", 1)
    value += struct.pack("<BBB5xQQ", 6, DTYPE_CODES["float32"], ndim, offset, nbytes)
    value += struct.pack(f"<{ndim}Q", *shape)
    value += bytes(offset - len(value) + nbytes)
    with pytest.raises(FormatError, match=f"column 0: shape .* {message}"):
        decode(value)


def test_encoded_arrays_are_aligned_inside_the_value() -> None:
    """Array payloads start at multiples of 64 within the value, so views of overflow pages align."""
    schema = schema_from_json(
        {
            "columns": [
                {"name": "s", "kind": "str"},
                {"name": "a", "kind": "ndarray", "dtype": "float64", "shape": [3]},
            ]
        },
        "t",
    )
    value = encode(schema, {"s": "abc", "a": np.arange(3.0)})
    text, arr = decode(value)
    assert text == "abc" and arr.tolist() == [0.0, 1.0, 2.0]
    base = np.frombuffer(value, np.uint8).ctypes.data
    assert (arr.ctypes.data - base) % 64 == 0
    assert not arr.flags.writeable  # a zero-copy view of the value, not a copy


@pytest.mark.parametrize("bad", [b"", b"SLS1", b"XXXX\x00\x00\x00\x00", b"SLS1\xff\xff\xff\xff"])
def test_malformed_headers_are_format_errors(bad: bytes) -> None:
    """Short values, wrong magic and impossible column counts are refused with a reason."""
    with pytest.raises(FormatError):
        decode(bad)

"""Arrow shard files: the writer's hashing and layout, the reader's checks and take conventions."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.errors import FormatError
from streamload.format.blobs import BlobColumn
from streamload.format.checksum import xxh3_64_file
from streamload.format.schema import Schema, schema_from_json
from streamload.shards.arrow.reader import ArrowShardReader, _numpy
from streamload.shards.arrow.writer import ArrowShardFileWriter

SCHEMA = schema_from_json(
    {
        "columns": [
            {"name": "id", "kind": "int"},
            {"name": "score", "kind": "float"},
            {"name": "ok", "kind": "bool"},
            {"name": "text", "kind": "str"},
            {"name": "blob", "kind": "bytes"},
            {"name": "tokens", "kind": "ndarray", "dtype": "int32", "shape": [2, 3]},
            {"name": "mask", "kind": "ndarray", "dtype": "bool", "shape": [4]},
            {"name": "half", "kind": "ndarray", "dtype": "float16", "shape": []},
            {"name": "var", "kind": "ndarray", "dtype": "float32", "shape": [None, 2]},
        ]
    },
    "test",
)


def _sample(i: int) -> dict[str, Any]:
    return {
        "id": i * 7 - 3,
        "score": i / 4,
        "ok": i % 3 == 0,
        "text": "é" * (i % 5) + str(i) * (i % 17),
        "blob": bytes([i % 256]) * (i % 9),
        "tokens": np.arange(6, dtype=np.int32).reshape(2, 3) + i,
        "mask": np.array([i % 2, 1, 0, i % 3 == 1], dtype=bool),
        "half": np.float16(i / 8),
        "var": np.full((i % 4, 2), i, np.float32),
    }


def _write(
    path: Path, n: int, schema: Schema = SCHEMA, compression: str | None = None, **kw: int
) -> tuple[int, str]:
    fs = fsspec.filesystem("file")
    writer = ArrowShardFileWriter(fs, str(path), schema, compression, **kw)
    for i in range(n):
        writer.add(_sample(i))
    return writer.close()


@pytest.fixture(scope="module")
def blob_shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("blob") / "s.arrow"
    return path, _write(path, 300, batch_rows=32)[0]


@pytest.fixture()
def shard(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "s.arrow"
    nbytes, _ = _write(path, 300, batch_rows=32)
    return path, nbytes


def _assert_sample_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray | np.generic):
            assert got[key].dtype == value.dtype and np.shape(got[key]) == np.shape(value), key
            np.testing.assert_array_equal(got[key], value)
        else:
            assert type(got[key]) is type(value) and got[key] == value, key


def test_writer_reports_the_size_and_checksum_of_the_file_it_wrote(tmp_path: Path) -> None:
    """Hashing while writing gives the same digest as hashing the finished file."""
    path = tmp_path / "s.arrow"
    for compression in (None, "zstd", "lz4"):
        nbytes, digest = _write(path, 50, compression=compression, batch_rows=8)
        assert nbytes == path.stat().st_size
        assert digest == xxh3_64_file(fsspec.filesystem("file"), str(path))


def test_record_batches_respect_row_and_byte_targets(tmp_path: Path) -> None:
    """Batches hold at most batch_rows rows and flush once batch_bytes of payload is buffered."""
    path = tmp_path / "s.arrow"
    _write(path, 100, batch_rows=16)
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    sizes = [reader.get_batch(b).num_rows for b in range(reader.num_record_batches)]
    assert sizes == [16] * 6 + [4]
    _write(path, 100, batch_bytes=200, batch_rows=1000)
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    assert reader.num_record_batches > 10


def test_get_returns_python_scalars_and_owned_arrays(shard: tuple[Path, int]) -> None:
    """get(i) round-trips every kind; arrays are writable and not views of the mapping."""
    path, nbytes = shard
    reader = ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes, num_samples=300)
    assert len(reader) == 300
    for i in (0, 1, 31, 32, 33, 150, 299):
        got = reader.get(i)
        _assert_sample_equal(got, _sample(i))
        assert got["tokens"].flags.writeable and got["var"].flags.writeable
        got["tokens"][0, 0] = -1  # must not fault on a read-only mapping
        got["var"][...] = 0
    with pytest.raises(IndexError):
        reader.get(300)
    with pytest.raises(IndexError):
        reader.get(-1)


@pytest.mark.parametrize(
    "rows",
    [
        np.arange(0, 20),  # contiguous in one batch
        np.arange(20, 90),  # contiguous across batches
        np.array([299, 0, 150, 150, 31, 32, 1]),  # scattered, duplicates
        np.random.default_rng(0).permutation(300),
        np.array([], np.int64),
    ],
    ids=["run", "cross", "scatter", "perm", "empty"],
)
def test_take_matches_get_row_by_row_in_every_kind(
    shard: tuple[Path, int], rows: np.ndarray
) -> None:
    """take(rows) equals stacking get(r) for each r, with the documented container per kind."""
    path, nbytes = shard
    reader = ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes)
    batch = reader.take(rows)
    n = len(rows)
    assert list(batch) == list(SCHEMA.names)
    assert batch["id"].dtype == np.int64 and batch["id"].shape == (n,)
    assert batch["score"].dtype == np.float64 and batch["ok"].dtype == np.bool_
    assert batch["tokens"].shape == (n, 2, 3) and batch["tokens"].dtype == np.int32
    assert (
        batch["mask"].shape == (n, 4)
        and batch["half"].shape == (n,)
        and batch["half"].dtype == np.float16
    )
    assert (
        isinstance(batch["text"], list)
        and isinstance(batch["blob"], list)
        and isinstance(batch["var"], list)
    )
    for key in ("id", "score", "ok", "tokens", "mask", "half"):
        assert batch[key].flags.writeable and batch[key].flags.c_contiguous
    for k, r in enumerate(rows.tolist()):
        want = _sample(r)
        row = {name: batch[name][k] for name in SCHEMA.names}
        for key in ("id", "score", "ok"):
            assert row[key] == want[key]
        assert row["text"] == want["text"] and row["blob"] == want["blob"]
        for key in ("tokens", "mask", "var"):
            np.testing.assert_array_equal(row[key], want[key])
            assert row[key].shape == want[key].shape
        assert row["half"] == want["half"]


def test_take_results_do_not_alias_each_other_or_the_file(shard: tuple[Path, int]) -> None:
    """Mutating a take result changes neither later reads nor other results."""
    path, nbytes = shard
    reader = ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes)
    for rows in (np.arange(5), np.array([200, 3, 100])):
        first = reader.take(rows)
        first["tokens"][...] = -9
        first["id"][...] = -9
        second = reader.take(rows)
        np.testing.assert_array_equal(second["id"], [_sample(r)["id"] for r in rows])
        assert (second["tokens"] != -9).all()


def test_column_projection_returns_only_selected_columns_in_schema_order(
    shard: tuple[Path, int],
) -> None:
    """columns= limits what take/get return and keeps schema order."""
    path, nbytes = shard
    reader = ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes, columns=["var", "id"])
    assert reader.columns == ("id", "var")
    assert list(reader.take(np.array([5, 2]))) == ["id", "var"]
    assert list(reader.get(3)) == ["id", "var"]
    with pytest.raises(FormatError, match="unknown column"):
        ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes, columns=["nope"])


def test_file_objects_are_read_without_mapping(shard: tuple[Path, int]) -> None:
    """A binary file object (non-local store) gives the same rows as the mapped path."""
    path, nbytes = shard
    with open(path, "rb") as f:
        reader = ArrowShardReader(f, SCHEMA, "s.arrow", nbytes, num_samples=300)
        rows = np.array([7, 250, 7, 0])
        got = reader.take(rows)
        np.testing.assert_array_equal(got["tokens"], np.stack([_sample(r)["tokens"] for r in rows]))
        assert got["text"] == [_sample(r)["text"] for r in rows]
        for i in range(0, 300, 37):  # walks more batches than the small batch cache keeps
            _assert_sample_equal(reader.get(i), _sample(i))


@pytest.fixture(scope="module")
def two_readers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """The same 300-row shard (record batches of 32 rows) mapped and through a file object."""
    path = tmp_path_factory.mktemp("two") / "s.arrow"
    nbytes, _ = _write(path, 300, batch_rows=32)
    with open(path, "rb") as f:
        yield (
            ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes),
            ArrowShardReader(f, SCHEMA, "s.arrow", nbytes),
        )


@given(st.lists(st.integers(0, 299), max_size=70), st.booleans())
def test_mapped_gather_equals_the_per_batch_path_for_any_rows(
    two_readers: tuple[Any, Any], rows: list[int], ascending: bool
) -> None:
    """take(rows) of a mapped shard (one vectorised gather per column, whatever record batches
    the rows fall in) equals the per-batch path of the same file read through a file object:
    any order, duplicates, runs, every kind, both string modes."""
    mapped, unmapped = two_readers
    ids = np.array(sorted(set(rows)) if ascending else rows, np.int64)
    for strings in ("list", "blob"):
        got, want = mapped.take(ids, strings), unmapped.take(ids, strings)
        assert list(got) == list(want)
        for name in SCHEMA.names:
            a, b = got[name], want[name]
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and a.flags.writeable, name
                np.testing.assert_array_equal(a, b)
            elif name == "var":
                assert [x.shape for x in a] == [x.shape for x in b]
                assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
            elif strings == "blob":
                assert a.tolist() == b.tolist(), name
            else:
                assert a == b, name


def test_size_mismatch_is_refused_before_mapping(shard: tuple[Path, int]) -> None:
    """A file whose size differs from index.json is a FormatError naming the shard and sizes."""
    path, nbytes = shard
    with pytest.raises(
        FormatError, match=rf"shard s.arrow: size is {nbytes} bytes, index.json says {nbytes + 1}"
    ):
        ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes + 1)


def test_record_count_mismatch_is_refused(shard: tuple[Path, int]) -> None:
    """An index claiming more samples than the file holds is a FormatError."""
    path, nbytes = shard
    with pytest.raises(FormatError, match=r"holds 300 samples, index\.json says 301"):
        ArrowShardReader(str(path), SCHEMA, "s.arrow", nbytes, num_samples=301)


def test_schema_mismatch_is_refused(shard: tuple[Path, int]) -> None:
    """A file whose Arrow schema is not the index schema's layout is a FormatError."""
    path, nbytes = shard
    other = schema_from_json({"columns": [{"name": "id", "kind": "int"}]}, "t")
    with pytest.raises(FormatError, match=r"Arrow schema does not match index\.json"):
        ArrowShardReader(str(path), other, "s.arrow", nbytes)


def test_non_arrow_file_is_a_format_error(tmp_path: Path) -> None:
    """Garbage of the right size is a FormatError, not an ArrowInvalid."""
    path = tmp_path / "junk.arrow"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="not a readable Arrow IPC file"):
        ArrowShardReader(str(path), SCHEMA, "junk.arrow", 4096)


def test_zero_size_fixed_arrays_round_trip(tmp_path: Path) -> None:
    """Fixed shapes with a zero dim (which Arrow's fixed_size_list cannot hold) still round-trip."""
    schema = schema_from_json(
        {"columns": [{"name": "z", "kind": "ndarray", "dtype": "int8", "shape": [3, 0]}]}, "t"
    )
    path = tmp_path / "z.arrow"
    writer = ArrowShardFileWriter(fsspec.filesystem("file"), str(path), schema, None)
    for _ in range(3):
        writer.add({"z": np.zeros((3, 0), np.int8)})
    nbytes, _ = writer.close()
    reader = ArrowShardReader(str(path), schema, "z.arrow", nbytes, num_samples=3)
    assert reader.get(1)["z"].shape == (3, 0)
    assert [a.shape for a in reader.take(np.array([2, 0]))["z"]] == [(3, 0), (3, 0)]


_NUMPY_TYPES = [pa.int8(), pa.uint16(), pa.int32(), pa.int64(), pa.float16(), pa.float32()]
_NUMPY_TYPES += [pa.float64(), pa.bool_(), pa.uint64()]


@given(
    st.sampled_from(_NUMPY_TYPES),
    st.lists(st.integers(0, 200), min_size=0, max_size=80),
    st.integers(0, 80),
    st.integers(0, 80),
)
def test_numpy_view_equals_pyarrow_conversion_on_any_slice(
    type_: pa.DataType, values: list[int], start: int, length: int
) -> None:
    """The reader's array -> numpy path equals pyarrow's to_numpy for every fixed-width type,
    on arrays sliced at any offset (bool bit-packing included)."""
    arr = pa.array(values, pa.int64()).cast(type_, safe=False) if values else pa.array([], type_)
    if pa.types.is_boolean(type_):
        arr = pa.array([v % 2 == 1 for v in values], type_)
    sliced = arr.slice(min(start, len(arr)), length)
    got, want = _numpy(sliced), sliced.to_numpy(zero_copy_only=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@given(st.integers(0, 299), st.integers(0, 80), st.booleans())
def test_blob_take_equals_the_list_take_on_any_run_or_gather(
    blob_shard: tuple[Path, int], start: int, length: int, scatter: bool
) -> None:
    """take(strings="blob") gives, for an ascending run inside a record batch (viewed from the
    file), across batches, or shuffled, the rows take(strings="list") gives, with offsets from 0."""
    reader = ArrowShardReader(str(blob_shard[0]), SCHEMA, "s.arrow", blob_shard[1])
    rows = np.arange(start, min(start + length, 300), dtype=np.int64)
    if scatter:
        rows = rows[::-1].copy()
    listed = reader.take(rows)
    blobs = reader.take(rows, strings="blob")
    for name in ("text", "blob"):
        column = blobs[name]
        assert isinstance(column, BlobColumn) and column.tolist() == listed[name]
        assert column.offsets[0] == 0 and column.offsets.dtype == np.int64
        # Written whole or in two ranges (a streamed ring record's shares), the same bytes.
        rows_bytes = b"".join(r.encode() if name == "text" else r for r in listed[name])
        whole = np.zeros(column.nbytes, np.uint8)
        column.write_data(whole)
        cut = column.nbytes // 3
        ranges = np.zeros(column.nbytes, np.uint8)
        column.write_range(ranges[:cut], 0, cut)
        column.write_range(ranges[cut:], cut, column.nbytes)
        assert whole.tobytes() == ranges.tobytes() == rows_bytes


TOKENS = schema_from_json(
    {
        "columns": [
            {"name": "doc", "kind": "ndarray", "dtype": "uint16", "shape": [None]},
            {"name": "fix", "kind": "ndarray", "dtype": "int32", "shape": [3]},
        ]
    },
    "tokens",
)


def test_reading_every_kind_imports_no_pandas(shard: tuple[Path, int], tmp_path: Path) -> None:
    """get, take and flat_array never import pandas: a fresh worker would pay ~0.3-1 s for it
    on its first batch, every pass (pyarrow's to_numpy imports it when installed)."""
    pytest.importorskip("pandas")  # installed with the test extra (ray[data] brings it)
    path, nbytes = shard
    tokens = tmp_path / "t.arrow"
    writer = ArrowShardFileWriter(fsspec.filesystem("file"), str(tokens), TOKENS, None)
    for i in range(50):
        writer.add({"doc": np.arange(i % 7, dtype=np.uint16), "fix": np.full(3, i, np.int32)})
    tokens_bytes, _ = writer.close()
    code = f"""
import sys, numpy as np
from streamload.format.schema import schema_from_json
from streamload.shards.arrow.reader import ArrowShardReader
reader = ArrowShardReader({str(path)!r}, schema_from_json({SCHEMA.to_json()!r}, "s"), "s", {nbytes})
reader.take(np.array([0, 40, 299, 7]))
reader.get(33)
schema = schema_from_json({TOKENS.to_json()!r}, "t")
tokens = ArrowShardReader({str(tokens)!r}, schema, "t", {tokens_bytes})
assert tokens.flat_array("doc").total == sum(i % 7 for i in range(50))
assert tokens.flat_array("fix").total == 150
print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"

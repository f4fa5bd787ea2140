"""convert: every source kind to Arrow and LMDB shards, type mapping, bounded reads, re-runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import fsspec
import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamload as sl
from streamload.cli.main import main
from streamload.errors import FormatError, StoreError
from streamload.write.sources import open_source


def _table(n: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {
            "id": pa.array(ids, pa.int32()),
            "score": pa.array([i / 3 for i in ids], pa.float32()),
            "ok": pa.array([i % 2 == 0 for i in ids]),
            "text": pa.array([f"row {i} é" for i in ids]),
            "blob": pa.array([bytes([i % 256]) * (i % 4) for i in ids], pa.binary()),
            "cat": pa.array([("a", "b", "c")[i % 3] for i in ids]).dictionary_encode(),
            "vec": pa.array([[i, i + 1, i + 2] for i in ids], pa.list_(pa.float32(), 3)),
            "grid": pa.array([[[i, 0], [0, i]] for i in ids], pa.list_(pa.list_(pa.int16(), 2), 2)),
            "tokens": pa.array([list(range(i % 5)) for i in ids], pa.list_(pa.int64())),
        }
    )


def _expected_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def _read_rows(url: str | Path) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in sl.StreamingDataset(url)]


def _assert_rows(url: str | Path, expected: list[dict[str, Any]]) -> None:
    got = _read_rows(url)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)
        for key in e:
            if isinstance(e[key], float):
                assert g[key] == pytest.approx(e[key], rel=1e-6), key
            else:
                assert g[key] == e[key], key


@pytest.mark.parametrize("fmt", ["arrow", "lmdb"])
def test_parquet_file_converts_with_every_type_mapped(tmp_path: Path, fmt: str) -> None:
    """A Parquet file's ints, floats, bools, strings, binary, dictionaries and lists round-trip."""
    table = _table(300)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=64)
    index = sl.convert(tmp_path / "in.parquet", tmp_path / "out", format=fmt, shard_size="8KB")
    assert index.format == fmt and index.num_samples == 300 and len(index.shards) > 1
    kinds = {c.name: (c.kind, c.dtype, c.shape) for c in index.schema.columns}
    assert kinds == {
        "id": ("int", None, None),
        "score": ("float", None, None),
        "ok": ("bool", None, None),
        "text": ("str", None, None),
        "blob": ("bytes", None, None),
        "cat": ("str", None, None),
        "vec": ("ndarray", "float32", (3,)),
        "grid": ("ndarray", "int16", (2, 2)),
        "tokens": ("ndarray", "int64", (None,)),
    }
    _assert_rows(tmp_path / "out", _expected_rows(table))


def test_parquet_directory_is_read_in_bounded_batches(tmp_path: Path) -> None:
    """A multi-file Parquet source streams batches no larger than batch_rows, in file order."""
    (tmp_path / "src" / "part").mkdir(parents=True)
    tables = [_table(250, start=250 * k) for k in range(3)]
    for k, table in enumerate(tables):
        pq.write_table(table, tmp_path / "src" / "part" / f"{k:03d}.parquet", row_group_size=100)
    source = open_source(str(tmp_path / "src"), batch_rows=40)
    assert source.kind == "parquet" and source.num_rows == 750
    sizes = [batch.num_rows for batch in source.batches]
    assert max(sizes) <= 40 and sum(sizes) == 750 and len(sizes) >= 750 // 40
    sl.convert(tmp_path / "src", tmp_path / "out", format="lmdb", batch_rows=40)
    assert [r["id"] for r in _read_rows(tmp_path / "out")] == list(range(750))


def test_jsonl_and_csv_convert(tmp_path: Path) -> None:
    """JSON lines (with list fields) and CSV (header row) become datasets of the inferred types."""
    rows = [{"id": i, "text": f"t{i}", "vals": [i * 1.5, -1.0]} for i in range(120)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sl.convert(tmp_path / "in.jsonl", tmp_path / "j", format="lmdb")
    _assert_rows(tmp_path / "j", rows)
    table = pa.table({"a": list(range(50)), "b": [f"x{i}" for i in range(50)]})
    pa_csv.write_csv(table, tmp_path / "in.csv")
    sl.convert(tmp_path / "in.csv", tmp_path / "c")
    _assert_rows(tmp_path / "c", table.to_pylist())


@pytest.mark.parametrize("writer", ["file", "stream"])
def test_arrow_ipc_files_and_streams_convert(tmp_path: Path, writer: str) -> None:
    """Arrow IPC in file or stream format converts (the format is sniffed, not guessed by name)."""
    table = _table(90)
    new = pa.ipc.new_file if writer == "file" else pa.ipc.new_stream
    with pa.OSFile(str(tmp_path / "in.arrow"), "wb") as sink, new(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=25):
            w.write_batch(batch)
    sl.convert(tmp_path / "in.arrow", tmp_path / "out", format="lmdb")
    _assert_rows(tmp_path / "out", _expected_rows(table))


def test_hugging_face_save_to_disk_directory_converts_in_state_order(tmp_path: Path) -> None:
    """A save_to_disk directory (data-*.arrow streams listed in state.json) converts in order."""
    src = tmp_path / "hf"
    src.mkdir()
    tables = [_table(40, start=0), _table(30, start=40)]
    names = ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    for name, table in zip(names, tables, strict=True):
        with pa.OSFile(str(src / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    (src / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": n} for n in names], "_split": "train"})
    )
    (src / "dataset_info.json").write_text(json.dumps({"features": {}}))
    sl.convert(src, tmp_path / "out")
    _assert_rows(tmp_path / "out", _expected_rows(pa.concat_tables(tables)))


def test_image_folder_converts_to_bytes_labels_and_class_names(tmp_path: Path) -> None:
    """One subdirectory per class gives (encoded bytes, label) rows and class names in index.json."""
    files = {}
    for c, name in enumerate(["zebra", "cat", "dog"]):
        (tmp_path / "img" / name).mkdir(parents=True)
        for k in range(3 + c):
            data = os.urandom(50 + k)
            (tmp_path / "img" / name / f"{k}.png").write_bytes(data)
            files[(name, k)] = data
    (tmp_path / "img" / "cat" / "notes.txt").write_text("not an image")
    index = sl.convert(tmp_path / "img", tmp_path / "out", format="lmdb", batch_rows=2)
    assert index.metadata == {"classes": ["cat", "dog", "zebra"]}
    assert sl.StreamingDataset(tmp_path / "out").index.metadata == index.metadata
    rows = _read_rows(tmp_path / "out")
    expected = [
        {"image": files[(name, k)], "label": label}
        for label, name in enumerate(["cat", "dog", "zebra"])
        for k in range(sum(1 for key in files if key[0] == name))
    ]
    assert rows == expected
    saved = json.loads((tmp_path / "out" / "index.json").read_text())
    assert saved["metadata"] == {"classes": ["cat", "dog", "zebra"]}


def test_lmdb_environment_converts_to_key_value_rows(tmp_path: Path) -> None:
    """An LMDB environment converts to {"key", "value"} rows in key order."""
    env = lmdb.open(str(tmp_path / "env"), map_size=2**22)
    entries = {os.urandom(6): os.urandom(20) for _ in range(100)}
    with env.begin(write=True) as txn:
        for k, v in entries.items():
            txn.put(k, v)
    env.close()
    sl.convert(tmp_path / "env", tmp_path / "out", batch_rows=7)
    assert _read_rows(tmp_path / "out") == [
        {"key": k, "value": v} for k, v in sorted(entries.items())
    ]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (pa.array([1, 2], pa.timestamp("s")), r"'bad' has type timestamp"),
        (pa.array([{"x": 1}, {"x": 2}]), "'bad' has type struct"),
        (pa.array([["a"], ["b"]]), "lists must hold numbers"),
        (pa.array([1, None]), "'bad' holds 1 null"),
        (pa.array([2**64 - 1, 0], pa.uint64()), "above int64"),
    ],
)
def test_unsupported_types_and_nulls_name_the_column(
    tmp_path: Path, array: pa.Array, message: str
) -> None:
    """A column streamload cannot store is a FormatError naming the column and its type."""
    pq.write_table(pa.table({"ok": [1, 2], "bad": array}), tmp_path / "in.parquet")
    with pytest.raises(FormatError, match=message):
        sl.convert(tmp_path / "in.parquet", tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()


def test_interrupted_conversion_leaves_no_index_and_a_rerun_finishes(tmp_path: Path) -> None:
    """A conversion failing midway publishes nothing; running again replaces the partial output
    (leftover shards and a killed writer's temp file included)."""
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(_table(400), src / "a.parquet")
    pq.write_table(pa.table({"other": [1]}), src / "b.parquet")
    with pytest.raises(FormatError, match=r"b\.parquet"):
        sl.convert(src, tmp_path / "out", format="lmdb", shard_size="4KB")
    leftovers = os.listdir(tmp_path / "out")
    assert "index.json" not in leftovers and len(leftovers) > 3
    (tmp_path / "out" / ".shard-00007.lmdb.tmp-4242-0badf00d").write_bytes(b"killed mid-shard")
    (src / "b.parquet").unlink()
    (src / "a.parquet").unlink()
    pq.write_table(_table(20), src / "c.parquet")
    index = sl.convert(src, tmp_path / "out", format="lmdb", shard_size="4KB")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["index.json", *(s.name for s in index.shards)]
    )
    _assert_rows(tmp_path / "out", _expected_rows(_table(20)))


def test_complete_destination_is_refused_unless_overwrite(tmp_path: Path) -> None:
    """Converting onto a complete dataset fails; overwrite=True replaces it."""
    pq.write_table(_table(10), tmp_path / "in.parquet")
    sl.convert(tmp_path / "in.parquet", tmp_path / "out")
    with pytest.raises(StoreError, match="already holds a dataset"):
        sl.convert(tmp_path / "in.parquet", tmp_path / "out")
    index = sl.convert(tmp_path / "in.parquet", tmp_path / "out", format="lmdb", overwrite=True)
    assert index.format == "lmdb" and len(sl.StreamingDataset(tmp_path / "out")) == 10


def test_converts_between_fsspec_urls() -> None:
    """Source and destination can be any fsspec URL (here memory://)."""
    fs = fsspec.filesystem("memory")
    with fs.open("/conv-src/in.parquet", "wb") as f:
        pq.write_table(_table(33), f)
    sl.convert("memory://conv-src", "memory://conv-dst", format="lmdb")
    _assert_rows("memory://conv-dst", _expected_rows(_table(33)))
    fs.rm("/conv-src", recursive=True)
    fs.rm("/conv-dst", recursive=True)


def test_cli_convert_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamload convert SRC DST --format lmdb` converts and reports what it wrote."""
    pq.write_table(_table(25), tmp_path / "in.parquet")
    code = main(
        ["convert", str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--format", "lmdb"]
    )
    assert code == 0
    assert "wrote 25 samples" in capsys.readouterr().out
    assert len(sl.StreamingDataset(tmp_path / "out")) == 25
    assert main(["convert", str(tmp_path / "nope.parquet"), str(tmp_path / "o2")]) == 2


def test_unrecognisable_sources_ask_for_source_format(tmp_path: Path) -> None:
    """A source whose kind cannot be told is a FormatError that says how to name it."""
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(FormatError, match="source_format"):
        sl.convert(tmp_path / "data.bin", tmp_path / "out")


def test_streamload_datasets_convert_between_formats_keeping_schema(tmp_path: Path) -> None:
    """A streamload dataset re-shards or switches Arrow <-> LMDB with its schema and metadata."""
    schema = {
        "columns": [
            {"name": "id", "kind": "int"},
            {"name": "half", "kind": "ndarray", "dtype": "float16", "shape": []},
            {"name": "grid", "kind": "ndarray", "dtype": "uint8", "shape": [2, 3]},
            {"name": "var", "kind": "ndarray", "dtype": "float32", "shape": [None]},
            {"name": "text", "kind": "str"},
        ]
    }
    with sl.ShardWriter(
        tmp_path / "a", schema=schema, shard_size="2KB", metadata={"classes": ["x"]}
    ) as w:
        for i in range(100):
            w.write(
                {
                    "id": i,
                    "half": np.float16(i / 4),
                    "grid": np.full((2, 3), i, np.uint8),
                    "var": np.arange(i % 5, dtype=np.float32),
                    "text": f"t{i}",
                }
            )
    index = sl.convert(tmp_path / "a", tmp_path / "b", format="lmdb", shard_size="64KB")
    assert index.schema.to_json() == schema and index.metadata == {"classes": ["x"]}
    assert len(index.shards) < len(sl.StreamingDataset(tmp_path / "a").index.shards)
    sl.convert(tmp_path / "b", tmp_path / "c", format="arrow")
    assert _read_rows(tmp_path / "c") == _read_rows(tmp_path / "a") == _read_rows(tmp_path / "b")
    with pytest.raises(sl.ConfigError, match="same place"):
        sl.convert(tmp_path / "a", tmp_path / "a", overwrite=True)


# -- transform= (tokenizing while converting) -------------------------------------------------


def _tokenize(row: dict[str, Any]) -> dict[str, Any] | None:
    """A toy tokenizer: one token per character; rows with an id divisible by 4 dropped."""
    if row["id"] % 4 == 0:
        return None
    return {
        "id": row["id"],
        "tokens": np.frombuffer(row["text"].encode(), np.uint8).astype(np.uint16),
    }


def test_transform_tokenizes_rows_drops_nones_and_infers_a_variable_column(
    tmp_path: Path,
) -> None:
    """convert(transform=fn) writes fn's samples, skips None, and infers tokens as [None]."""
    src = tmp_path / "src.parquet"
    texts = [f"doc {i} " + "x" * (i % 7) for i in range(100)]
    pq.write_table(pa.table({"id": pa.array(range(100)), "text": texts}), src, row_group_size=16)
    index = sl.convert(str(src), str(tmp_path / "out"), transform=_tokenize, batch_rows=10)
    assert index.schema.column("tokens").shape == (None,)
    assert index.schema.names == ("id", "tokens")
    ds = sl.StreamingDataset(str(tmp_path / "out"))
    kept = [i for i in range(100) if i % 4]
    assert [ds[j]["id"] for j in range(len(ds))] == kept
    assert [bytes(ds[j]["tokens"].astype(np.uint8)).decode() for j in range(len(ds))] == [
        texts[i] for i in kept
    ]
    assert sum(s.elements["tokens"] for s in index.shards) == sum(len(texts[i]) for i in kept)  # type: ignore[index]


def test_transform_sees_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows reach the transform while the source is still being read (one chunk at a time)."""
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": "ab"}) + "\n" for i in range(50)))
    seen: list[int] = []
    module = sys.modules["streamload.write.convert"]
    original = module.open_source

    def counting_source(*args: Any, **kwargs: Any) -> Any:
        source = original(*args, **kwargs)
        inner = source.batches

        def batches() -> Any:
            for batch in inner:
                seen.append(-len(batch))  # a chunk read...
                yield batch

        source.batches = batches()
        return source

    def transform(row: dict[str, Any]) -> dict[str, Any]:
        seen.append(row["id"])  # ...then its rows transformed before the next chunk is read
        return {"id": row["id"], "tokens": np.zeros(row["id"] % 3 + 1, np.int32)}

    monkeypatch.setattr(module, "open_source", counting_source)
    sl.convert(str(src), str(tmp_path / "out"), transform=transform, batch_rows=8)
    chunks = [i for i, v in enumerate(seen) if v < 0]
    assert len(chunks) >= 2
    assert seen[chunks[1] - 1] == 7  # the first chunk's 8 rows are done before the second read


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda row: None, "the transform dropped all 10 rows"),
        (lambda row: [1, 2], "transform returned a list for source row 0"),
        (lambda row: {"t": [1, 2]}, r"np.asarray\(ids, dtype=np.int32\)"),
    ],
)
def test_transform_mistakes_are_named(tmp_path: Path, transform: Any, message: str) -> None:
    """A transform returning nothing, a non-dict, or python lists gets a FormatError that says why."""
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(10)))
    with pytest.raises(FormatError, match=message):
        sl.convert(str(src), str(tmp_path / "out"), transform=transform)
    assert not (tmp_path / "out" / "index.json").exists()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, width=32),
            st.text(max_size=6),
            st.binary(max_size=6),
            st.lists(st.integers(-1000, 1000), min_size=2, max_size=2),
            st.lists(st.lists(st.integers(0, 9), min_size=3, max_size=3), max_size=3),
        ),
        min_size=1,
        max_size=30,
    ),
    cut=st.integers(0, 29),
)
def test_batch_layout_equals_the_per_row_layout(rows: list[tuple[Any, ...]], cut: int) -> None:
    """BatchEncoder.layout (Arrow casts) builds exactly the batch the per-row writer path builds,
    also for a sliced batch (offsets into the parent buffers)."""
    from streamload.shards.arrow.writer import to_arrow
    from streamload.write.columns import BatchEncoder

    table = pa.table(
        {
            "i": pa.array([r[0] for r in rows], pa.int64()),
            "f": pa.array([r[1] for r in rows], pa.float32()),
            "s": pa.array([r[2] for r in rows], pa.string()),
            "b": pa.array([r[3] for r in rows], pa.binary()),
            "v": pa.array([r[4] for r in rows], pa.list_(pa.int16(), 2)),
            "g": pa.array([r[5] for r in rows], pa.list_(pa.list_(pa.int8(), 3))),
        }
    )
    batch = table.to_batches()[0].slice(min(cut, len(rows) - 1))
    encoder = BatchEncoder(batch.schema)
    got = encoder.layout(batch)
    arrow_schema = encoder.schema.arrow_schema()
    samples = list(encoder.rows(batch))
    want = pa.RecordBatch.from_arrays(
        [
            to_arrow(col, [s[col.name] for s in samples], field.type)
            for col, field in zip(encoder.schema.columns, arrow_schema, strict=True)
        ],
        schema=arrow_schema,
    )
    assert got.equals(want)

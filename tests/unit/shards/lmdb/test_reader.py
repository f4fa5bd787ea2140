"""LMDB shards: writer, reader checks, fork safety, and no crash on truncated or corrupt files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fsspec
import lmdb
import numpy as np
import pytest

import streamload as sl
from streamload.errors import FormatError
from streamload.format.checksum import xxh3_64_file
from streamload.format.index import load_index
from streamload.format.schema import schema_from_json
from streamload.shards.lmdb.file import check_file
from streamload.shards.lmdb.reader import LmdbShardReader
from streamload.shards.lmdb.writer import LmdbShardFileWriter

SCHEMA = schema_from_json(
    {
        "columns": [
            {"name": "id", "kind": "int"},
            {"name": "score", "kind": "float"},
            {"name": "ok", "kind": "bool"},
            {"name": "text", "kind": "str"},
            {"name": "blob", "kind": "bytes"},
            {"name": "tokens", "kind": "ndarray", "dtype": "int32", "shape": [2, 3]},
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
        "text": "é" * (i % 5) + str(i),
        "blob": bytes([i % 256]) * (i % 9),
        "tokens": np.arange(6, dtype=np.int32).reshape(2, 3) + i,
        "half": np.float16(i / 8),
        "var": np.full((i % 4, 2), i, np.float32),
    }


def _write_shard(path: Path, n: int, **kw: Any) -> tuple[int, str]:
    writer = LmdbShardFileWriter(fsspec.filesystem("file"), str(path), SCHEMA, **kw)
    for i in range(n):
        writer.add(_sample(i))
    return writer.close()


def _write_dataset(url: str, n: int = 200, shard_size: str = "8KB") -> None:
    with sl.ShardWriter(url, format="lmdb", shard_size=shard_size, schema=SCHEMA.to_json()) as w:
        for i in range(n):
            w.write(_sample(i))


def _assert_sample_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray | np.generic):
            assert isinstance(got[key], type(value)), key
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key
        else:
            assert type(got[key]) is type(value) and got[key] == value, key


def test_shard_file_round_trips_every_kind_by_get(tmp_path: Path) -> None:
    """get(i) returns exactly the written sample, with python and numpy types preserved."""
    nbytes, digest = _write_shard(tmp_path / "s.lmdb", 120)
    assert nbytes == os.path.getsize(tmp_path / "s.lmdb")
    assert digest == xxh3_64_file(fsspec.filesystem("file"), str(tmp_path / "s.lmdb"))
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes, num_samples=120)
    assert len(reader) == 120
    for i in (0, 1, 57, 119):
        got = reader.get(i)
        _assert_sample_equal(got, _sample(i))
        assert got["tokens"].flags.writeable


def test_take_is_columnar_in_any_order_with_duplicates(tmp_path: Path) -> None:
    """take(rows) gives batch arrays for fixed kinds and lists for str/bytes/variable arrays."""
    nbytes, _ = _write_shard(tmp_path / "s.lmdb", 50)
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes)
    rows = np.array([7, 3, 7, 49, 0])
    batch = reader.take(rows)
    assert batch["id"].dtype == np.int64 and batch["id"].tolist() == [i * 7 - 3 for i in rows]
    assert batch["tokens"].shape == (5, 2, 3) and batch["tokens"].dtype == np.int32
    assert batch["half"].shape == (5,) and batch["half"].dtype == np.float16
    assert batch["text"] == [_sample(i)["text"] for i in rows]
    assert batch["blob"] == [_sample(i)["blob"] for i in rows]
    assert [v.shape for v in batch["var"]] == [(i % 4, 2) for i in rows]
    empty = reader.take(np.array([], np.int64))
    assert empty["tokens"].shape == (0, 2, 3) and empty["text"] == []


def test_columns_project_in_schema_order(tmp_path: Path) -> None:
    """columns= returns only those columns, in schema order, and unknown names are refused."""
    nbytes, _ = _write_shard(tmp_path / "s.lmdb", 5)
    reader = LmdbShardReader(
        str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes, columns=["var", "id"]
    )
    assert list(reader.get(2)) == ["id", "var"]
    with pytest.raises(FormatError, match="unknown column"):
        LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes, columns=["nope"])


def test_writer_grows_the_map_instead_of_failing(tmp_path: Path) -> None:
    """A shard far larger than the initial map size is written whole (MDB_MAP_FULL is handled)."""
    big = schema_from_json(
        {"columns": [{"name": "x", "kind": "ndarray", "dtype": "uint8", "shape": [None]}]}, "t"
    )
    writer = LmdbShardFileWriter(
        fsspec.filesystem("file"), str(tmp_path / "s.lmdb"), big, map_size=2**16, txn_rows=7
    )
    for i in range(40):
        writer.add({"x": np.full(50_000 + i, i % 251, np.uint8)})
    nbytes, _ = writer.close()
    assert nbytes > 2_000_000
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), big, "s.lmdb", nbytes, num_samples=40)
    for i in range(40):
        x = reader.get(i)["x"]
        assert x.shape == (50_000 + i,) and (x == i % 251).all()


def test_dataset_index_describes_lmdb_shards(tmp_path: Path) -> None:
    """index.json says format lmdb and lists every shard with its real size and xxh3_64."""
    _write_dataset(str(tmp_path), 200)
    index = load_index(str(tmp_path))
    assert index.format == "lmdb" and index.num_samples == 200 and len(index.shards) > 3
    fs = fsspec.filesystem("file")
    for shard in index.shards:
        path = str(tmp_path / shard.name)
        assert shard.name.endswith(".lmdb")
        assert shard.bytes == os.path.getsize(path)
        assert shard.checksum == xxh3_64_file(fs, path)
    assert sorted(os.listdir(tmp_path)) == sorted(["index.json", *(s.name for s in index.shards)])
    ds = sl.StreamingDataset(str(tmp_path))
    for i in (0, 99, 199):
        _assert_sample_equal(ds[i], _sample(i))


def test_failed_write_leaves_no_index_and_no_temp_file(tmp_path: Path) -> None:
    """An exception inside the with block leaves completed shards only: no index, no temp file."""
    with (
        pytest.raises(RuntimeError, match="boom"),
        sl.ShardWriter(
            str(tmp_path), format="lmdb", shard_size="8KB", schema=SCHEMA.to_json()
        ) as w,
    ):
        for i in range(100):
            w.write(_sample(i))
        raise RuntimeError("boom")
    names = os.listdir(tmp_path)
    assert "index.json" not in names and names
    assert all(n.startswith("shard-") and n.endswith(".lmdb") for n in names)
    with pytest.raises(FormatError, match="incomplete"):
        sl.StreamingDataset(str(tmp_path))


def test_lmdb_dataset_on_a_non_local_filesystem_round_trips() -> None:
    """Shards written to memory:// are built locally, uploaded, and read back through a temp copy."""
    url = "memory://lmdb-roundtrip"
    _write_dataset(url, 60, shard_size="4KB")
    ds = sl.StreamingDataset(url)
    assert len(ds) == 60
    for i in (0, 33, 59):
        _assert_sample_equal(ds[i], _sample(i))
    fsspec.filesystem("memory").rm("/lmdb-roundtrip", recursive=True)


def test_reader_reopens_its_environment_after_fork(tmp_path: Path) -> None:
    """A reader used before fork works in the child, which opens its own environment."""
    nbytes, _ = _write_shard(tmp_path / "s.lmdb", 30)
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes)
    assert reader.get(3)["id"] == _sample(3)["id"]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what it reads, never return into pytest
        try:
            ids = reader.take(np.arange(30))["id"].tolist()
            os.write(write_fd, json.dumps(ids).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(data) == [_sample(i)["id"] for i in range(30)]
    assert reader.get(29)["id"] == _sample(29)["id"]


_READ_ALL = textwrap.dedent(
    """
    import sys
    import streamload as sl
    for url in sys.argv[2:]:
        try:
            ds = sl.StreamingDataset(url, verify=sys.argv[1] == "1")
            for i in range(len(ds)):
                ds[i]
        except sl.FormatError as exc:
            print("FormatError:", str(exc).replace(chr(10), " "))
        else:
            print("read all")
    """
)


def _read_in_subprocess(urls: list[Path], verify: bool) -> list[str]:
    """Read every sample of each dataset in a child process; one result line per dataset."""
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ALL, "1" if verify else "0", *map(str, urls)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"reader died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(urls)
    return lines


def _rewrite_index_size(root: Path, name: str) -> None:
    """Make index.json agree with a damaged shard's size and hash (a hostile or rebuilt index)."""
    index = json.loads((root / "index.json").read_text())
    for shard in index["shards"]:
        if shard["name"] == name:
            shard["bytes"] = os.path.getsize(root / name)
            shard["xxh3_64"] = xxh3_64_file(fsspec.filesystem("file"), str(root / name))
    (root / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("index_agrees", [False, True])
def test_truncated_shard_is_a_format_error_not_a_sigbus(tmp_path: Path, index_agrees: bool) -> None:
    """A shard cut short (even with an index.json that matches it) fails cleanly, naming the shard."""
    _write_dataset(str(tmp_path), 200, shard_size="64KB")
    name = load_index(str(tmp_path)).shards[0].name
    path = tmp_path / name
    os.truncate(path, os.path.getsize(path) // 2)
    if index_agrees:
        _rewrite_index_size(tmp_path, name)
    (out,) = _read_in_subprocess([tmp_path], verify=False)
    assert out.startswith("FormatError:") and name in out and "truncated" in out


@pytest.mark.parametrize("where", ["meta", "data"])
def test_corrupt_shard_with_verify_is_a_checksum_error(tmp_path: Path, where: str) -> None:
    """Garbage written into a shard is caught by its checksum before LMDB maps the file."""
    _write_dataset(str(tmp_path), 200, shard_size="64KB")
    name = load_index(str(tmp_path)).shards[0].name
    offset = 0 if where == "meta" else 3 * 4096
    with open(tmp_path / name, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(512))
    (out,) = _read_in_subprocess([tmp_path], verify=True)
    assert out.startswith("FormatError:") and name in out and "checksum" in out


def test_zeroed_meta_pages_are_a_format_error_without_verify(tmp_path: Path) -> None:
    """With checksums off, a shard whose meta pages are destroyed is refused by the header check."""
    _write_dataset(str(tmp_path), 200, shard_size="64KB")
    name = load_index(str(tmp_path)).shards[0].name
    with open(tmp_path / name, "r+b") as f:
        f.write(bytes(2 * 4096))
    (out,) = _read_in_subprocess([tmp_path], verify=False)
    assert out.startswith("FormatError:") and name in out and "not an LMDB file" in out


def test_random_garbage_in_pages_never_crashes_the_reader(tmp_path: Path) -> None:
    """With checksums off, garbage in data pages gives a FormatError or readable rows, never a crash."""
    urls = []
    for seed in range(8):
        root = tmp_path / str(seed)
        _write_dataset(str(root), 200, shard_size="64KB")
        path = root / load_index(str(root)).shards[0].name
        rng = np.random.default_rng(seed)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            for offset in rng.integers(2 * 4096, size - 64, 20).tolist():
                f.seek(offset)
                f.write(rng.bytes(64))
        urls.append(root)
    results = _read_in_subprocess(urls, verify=False)
    assert all(r.startswith(("FormatError:", "read all")) for r in results)
    assert any(r.startswith("FormatError:") for r in results)


def test_check_file_refuses_non_lmdb_files(tmp_path: Path) -> None:
    """A file that is not LMDB (or too short) is a FormatError naming it, before any mmap."""
    (tmp_path / "junk").write_bytes(b"x" * 10_000)
    with pytest.raises(FormatError, match="junk: not an LMDB file"):
        check_file(str(tmp_path / "junk"), "junk")
    (tmp_path / "short").write_bytes(b"x")
    with pytest.raises(FormatError, match="too short"):
        check_file(str(tmp_path / "short"), "short")


def test_row_count_mismatch_is_refused(tmp_path: Path) -> None:
    """A shard holding a different number of rows than index.json says is refused by name."""
    nbytes, _ = _write_shard(tmp_path / "s.lmdb", 10)
    with pytest.raises(FormatError, match=r"s\.lmdb: holds 10 samples, index\.json says 11"):
        LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes, num_samples=11)
    with pytest.raises(FormatError, match="size is"):
        LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes + 1)


def test_values_that_do_not_match_the_schema_are_refused(tmp_path: Path) -> None:
    """Reading a shard with a schema its values do not match is a FormatError naming the row."""
    nbytes, _ = _write_shard(tmp_path / "s.lmdb", 3)
    other = schema_from_json(
        {
            "columns": [
                *SCHEMA.to_json()["columns"][:5],
                {"name": "tokens", "kind": "ndarray", "dtype": "int64", "shape": [2, 3]},
                *SCHEMA.to_json()["columns"][6:],
            ]
        },
        "t",
    )
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), other, "s.lmdb", nbytes)
    with pytest.raises(FormatError, match=r"shard s\.lmdb row 1: column 5 holds a 2-D int32 array"):
        reader.get(1)
    with pytest.raises(FormatError, match=r"shard s\.lmdb row 2: column 5 holds a 2-D int32 array"):
        reader.take(np.array([2, 1, 0, 2, 1]))


@pytest.mark.parametrize(
    "columns", [None, ["id"], ["text", "var"], ["half", "blob"], ["tokens", "ok", "score"]]
)
def test_bulk_take_equals_row_by_row_reads(tmp_path: Path, columns: list[str] | None) -> None:
    """A many-row take (fixed-size columns gathered at once) equals get() of each row."""
    nbytes, _ = _write_shard(tmp_path / "s.lmdb", 64)
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes, columns=columns)
    rows = np.random.default_rng(0).integers(0, 64, 50)
    batch = reader.take(rows)
    assert list(batch) == list(reader.columns)
    for j, i in enumerate(rows.tolist()):
        want = reader.get(i)
        for name, value in want.items():
            got = batch[name][j]
            if isinstance(value, np.ndarray | np.generic):
                assert got.dtype == value.dtype and np.array_equal(got, value), name
            else:
                assert got == value, name
    for name in ("id", "score", "ok", "tokens", "half"):
        if name in batch:
            assert isinstance(batch[name], np.ndarray) and batch[name].flags.writeable


@pytest.mark.parametrize("value_bytes", [100, 1500, 2100, 9000])
def test_lmdb_shards_rotate_close_to_shard_size(tmp_path: Path, value_bytes: int) -> None:
    """The size estimate follows LMDB's page layout: full shards land within 10% of shard_size."""
    shard_size = 256 * 1024
    rng = np.random.default_rng(value_bytes)
    with sl.ShardWriter(str(tmp_path), format="lmdb", shard_size=shard_size) as w:
        for i in range(3 * shard_size // value_bytes):
            w.write({"id": i, "blob": rng.bytes(value_bytes)})
    shards = load_index(str(tmp_path)).shards
    assert len(shards) >= 3
    for shard in shards[:-1]:
        assert shard_size <= shard.bytes <= shard_size * 1.1, (shard.name, shard.bytes)


def test_bulk_take_falls_back_and_names_a_corrupt_row(tmp_path: Path) -> None:
    """A value whose string is not UTF-8 makes a many-row take fail naming that row."""
    from streamload.shards.lmdb.codec import encode, row_key

    _write_shard(tmp_path / "s.lmdb", 20)
    value = bytearray(encode(SCHEMA, {**_sample(3), "text": "abc"}))
    at = bytes(value).index(b"abc")
    value[at : at + 3] = b"\xff\xfe\xfd"
    env = lmdb.open(str(tmp_path / "s.lmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(row_key(3), bytes(value))
    env.close()
    nbytes = os.path.getsize(tmp_path / "s.lmdb")
    reader = LmdbShardReader(str(tmp_path / "s.lmdb"), SCHEMA, "s.lmdb", nbytes)
    assert reader.take(np.arange(4, 20))["id"].tolist() == [i * 7 - 3 for i in range(4, 20)]
    with pytest.raises(FormatError, match=r"shard s\.lmdb row 3: .*not UTF-8"):
        reader.take(np.arange(20))

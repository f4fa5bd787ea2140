"""ShardWriter: rotation, atomic publication, failure policy, URLs and settings."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from streamload import ShardWriter, StreamingDataset
from streamload.errors import ConfigError, FormatError, StoreError
from streamload.format.checksum import xxh3_64_file
from streamload.format.index import load_index


def _sample(i: int) -> dict[str, Any]:
    return {"id": i, "tokens": np.full(256, i, np.int32), "text": f"row {i}"}


def _write(url: str, n: int, **kw: Any) -> None:
    with ShardWriter(url, **kw) as w:
        for i in range(n):
            w.write(_sample(i))


def test_shards_rotate_at_shard_size_without_splitting_samples(tmp_path: Path) -> None:
    """Every shard but the last reaches shard_size and overshoots by less than one batch-sized sample."""
    shard_size = 16 * 1024
    _write(str(tmp_path), 500, shard_size=shard_size)
    index = load_index(str(tmp_path))
    assert len(index.shards) > 5
    assert index.num_samples == 500
    sample_bytes = 256 * 4 + 16 + 8
    for shard in index.shards[:-1]:
        assert shard_size <= shard.bytes <= shard_size + 4 * sample_bytes + 4096
    assert index.shards[-1].bytes <= shard_size + 4 * sample_bytes + 4096
    fs = fsspec.filesystem("file")
    for shard in index.shards:
        path = tmp_path / shard.name
        assert path.stat().st_size == shard.bytes
        assert xxh3_64_file(fs, str(path)) == shard.checksum
    assert sorted(os.listdir(tmp_path)) == sorted(["index.json", *(s.name for s in index.shards)])


@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_compressed_shards_round_trip_and_still_rotate(
    tmp_path: Path, compression: str | None
) -> None:
    """zstd and lz4 shards read back identically; rotation follows compressed bytes."""
    _write(str(tmp_path), 300, shard_size="8KiB", compression=compression)
    ds = StreamingDataset(str(tmp_path), verify=True)
    assert ds.num_shards > 1
    for i in (0, 150, 299):
        assert ds[i]["id"] == i and ds[i]["text"] == f"row {i}"
        np.testing.assert_array_equal(ds[i]["tokens"], np.full(256, i, np.int32))


def test_compression_shrinks_compressible_shards(tmp_path: Path) -> None:
    """zstd shards of repetitive data are smaller than uncompressed ones."""
    _write(str(tmp_path / "raw"), 200, shard_size="1GB")
    _write(str(tmp_path / "zstd"), 200, shard_size="1GB", compression="zstd")
    assert (
        load_index(str(tmp_path / "zstd")).total_bytes
        < load_index(str(tmp_path / "raw")).total_bytes / 4
    )


def test_index_appears_only_after_close(tmp_path: Path) -> None:
    """While writing there is no index.json (so readers see an incomplete dataset)."""
    w = ShardWriter(str(tmp_path), shard_size="4KiB")
    for i in range(100):
        w.write(_sample(i))
    assert not (tmp_path / "index.json").exists()
    assert any(name.startswith("shard-") for name in os.listdir(tmp_path))
    with pytest.raises(FormatError, match="incomplete"):
        StreamingDataset(str(tmp_path), verify=True)
    w.close()
    assert (tmp_path / "index.json").exists()
    assert len(StreamingDataset(str(tmp_path), verify=True)) == 100
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(_sample(0))


def test_exception_inside_with_leaves_no_index_and_no_temp_files(tmp_path: Path) -> None:
    """An exception in the with block: no index.json, no temp file; finished shards stay."""
    with (
        pytest.raises(RuntimeError, match="boom"),
        ShardWriter(str(tmp_path), shard_size="4KiB") as w,
    ):
        for i in range(50):
            w.write(_sample(i))
        raise RuntimeError("boom")
    names = os.listdir(tmp_path)
    assert "index.json" not in names
    assert names and all(n.startswith("shard-") and n.endswith(".arrow") for n in names)


def test_schema_mismatch_mid_write_aborts_the_dataset(tmp_path: Path) -> None:
    """A bad sample raises FormatError naming it, and the dataset is left without index.json."""
    with (
        pytest.raises(
            FormatError, match=r"sample 3: field 'tokens' has dtype int64, schema says int32"
        ),
        ShardWriter(str(tmp_path), shard_size="1MB") as w,
    ):
        for i in range(3):
            w.write(_sample(i))
        w.write({**_sample(3), "tokens": np.zeros(256, np.int64)})
    assert not (tmp_path / "index.json").exists()


def test_existing_dataset_is_refused_unless_overwrite(tmp_path: Path) -> None:
    """index.json present -> StoreError; overwrite=True replaces it and drops stale shards."""
    _write(str(tmp_path), 300, shard_size="4KiB")
    old_shards = len(load_index(str(tmp_path)).shards)
    with pytest.raises(StoreError, match="already holds a dataset"):
        ShardWriter(str(tmp_path))
    _write(str(tmp_path), 10, shard_size="4KiB", overwrite=True)
    index = load_index(str(tmp_path))
    assert index.num_samples == 10 and len(index.shards) < old_shards
    assert sorted(os.listdir(tmp_path)) == sorted(["index.json", *(s.name for s in index.shards)])


def test_memory_and_file_urls_write_readable_datasets(tmp_path: Path) -> None:
    """memory:// and file:// URLs work end to end."""
    mem = f"memory://writer-{uuid.uuid4().hex}"
    _write(mem, 120, shard_size="4KiB")
    ds = StreamingDataset(mem, verify=True)
    assert ds.num_shards > 1 and ds[119]["id"] == 119
    fs = fsspec.filesystem("memory")
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(mem.removeprefix("memory:/"), detail=False)]
    assert not [n for n in names if ".tmp-" in n]
    _write(f"file://{tmp_path}", 30, shard_size="4KiB")
    assert StreamingDataset(f"file://{tmp_path}", verify=True)[29]["id"] == 29


def test_explicit_schema_allows_variable_shapes_and_empty_datasets(tmp_path: Path) -> None:
    """A given schema with a null dim accepts any length; zero samples still write an index."""
    schema = {"columns": [{"name": "v", "kind": "ndarray", "dtype": "int16", "shape": [None]}]}
    with ShardWriter(str(tmp_path / "a"), schema=schema, shard_size="1MB") as w:
        for n in (0, 5, 2):
            w.write({"v": np.arange(n, dtype=np.int16)})
    ds = StreamingDataset(str(tmp_path / "a"), verify=True)
    assert [ds[i]["v"].tolist() for i in range(3)] == [[], [0, 1, 2, 3, 4], [0, 1]]
    with ShardWriter(str(tmp_path / "b"), schema=schema, shard_size="1MB"):
        pass
    empty = StreamingDataset(str(tmp_path / "b"), verify=True)
    assert len(empty) == 0 and empty.num_shards == 0 and list(empty) == []
    assert empty.get_batch(np.array([], np.int64))["v"] == []


def test_no_samples_and_no_schema_cannot_write_an_index(tmp_path: Path) -> None:
    """close() without samples or schema raises rather than inventing a schema."""
    with pytest.raises(FormatError, match="no samples written and no schema given"):
        ShardWriter(str(tmp_path), shard_size="1MB").close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"shard_size": "lots"}, ConfigError, "shard_size"),
        ({"shard_size": 0}, ConfigError, "shard_size"),
        ({"compression": "gzip"}, ConfigError, "compression"),
        ({"format": "parquet"}, ConfigError, "format"),
        (
            {"format": "lmdb", "compression": "zstd"},
            ConfigError,
            "LMDB shards are stored uncompressed",
        ),
        ({"schema": {"columns": [{"name": "x", "kind": "blob"}]}}, FormatError, "unknown kind"),
    ],
)
def test_bad_settings_fail_at_construction(
    tmp_path: Path, kwargs: dict[str, Any], error: type, message: str
) -> None:
    """Bad format, shard_size, compression or schema fail before anything is written."""
    with pytest.raises(error, match=message):
        ShardWriter(str(tmp_path / "ds"), **{"shard_size": "1MB", **kwargs})


def test_default_shard_size_comes_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shard_size=None uses the configured default (here from the environment)."""
    monkeypatch.setenv("STREAMLOAD_SHARD_SIZE", "4KiB")
    monkeypatch.delenv("STREAMLOAD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./streamload.toml; the environment outranks any user file
    _write(str(tmp_path / "ds"), 100)
    assert len(load_index(str(tmp_path / "ds")).shards) > 3


def test_index_json_is_the_documented_format(tmp_path: Path) -> None:
    """index.json carries version 1, the format, the schema and per-shard name/count/bytes/xxh3."""
    _write(str(tmp_path), 3, shard_size="1MB")
    data = json.loads((tmp_path / "index.json").read_text())
    assert data["format_version"] == 1 and data["format"] == "arrow" and data["num_samples"] == 3
    assert data["schema"]["columns"][1] == {
        "name": "tokens",
        "kind": "ndarray",
        "dtype": "int32",
        "shape": [256],
    }
    assert set(data["shards"][0]) == {"name", "num_samples", "bytes", "xxh3_64"}
    assert data["shards"][0]["name"] == "shard-00000.arrow"


def _leftovers(root: Path) -> list[str]:
    """Temp files a writer left behind (shards or index.json in progress)."""
    return sorted(p.name for p in root.iterdir() if ".tmp" in p.name)


@pytest.mark.parametrize("fmt", ["arrow", "lmdb"])
def test_disk_full_is_a_store_error_naming_the_file_and_leaves_no_temp_file(
    small_disk: Path, fmt: str
) -> None:
    """A real 1 MiB disk filled by the writer: StoreError with the path and the free space,
    no temp file, no index.json, and the writer refuses to go on (samples would be lost)."""
    root = small_disk / "ds"
    writer = ShardWriter(str(root), format=fmt, shard_size="300KB")
    with pytest.raises(StoreError) as info, writer:
        for i in range(10_000):
            writer.write(_sample(i))
    message = str(info.value)
    assert "disk full" in message and f"{root}/.shard-" in message and "free on the file" in message
    assert info.value.errno in (28, 5)  # ENOSPC; LMDB reports a short write as EIO
    assert _leftovers(root) == [] and not (root / "index.json").exists()
    with pytest.raises(StoreError, match="stopped after"):
        writer.write(_sample(0))


def test_disk_full_while_publishing_the_index_leaves_no_temp_file(small_disk: Path) -> None:
    """index.json cannot be written: StoreError naming it; shards stay, no index, no temp."""
    root = small_disk / "ds"
    writer = ShardWriter(str(root), shard_size=1)  # every sample closes its shard
    for i in range(3):
        writer.write(_sample(i))
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(bytes(4096))
    with pytest.raises(StoreError, match=r"index\.json\.tmp-.* failed \(disk full\)"):
        writer.close()
    assert _leftovers(root) == [] and not (root / "index.json").exists()
    assert len(list(root.glob("shard-*.arrow"))) == 3


def test_write_error_mid_shard_is_a_store_error_even_without_a_small_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC injected into the shard file (where no tmpfs can be mounted): same contract."""
    import errno

    import streamload.shards.arrow.writer as arrow_writer

    class FullFile:
        def __init__(self, path: str, mode: str) -> None:
            self._f = open(path, mode)  # noqa: SIM115
            self.written = 0

        def write(self, data: Any) -> int:
            if self.written > 50_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(memoryview(data))
            return self._f.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr(arrow_writer, "open", FullFile, raising=False)
    with pytest.raises(StoreError, match=r"\.shard-00000\.arrow\.tmp-.* failed \(disk full\)"):
        _write(str(tmp_path), 10_000, shard_size="1MB")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "index.json").exists()


@pytest.mark.parametrize("fmt", ["arrow", "lmdb"])
def test_lone_surrogate_is_a_format_error_naming_sample_and_field(tmp_path: Path, fmt: str) -> None:
    """A lone surrogate (os.fsdecode of bad bytes) cannot be stored: FormatError, sample, field."""
    message = r"sample 1: field 't' is not valid Unicode text"
    with (
        pytest.raises(FormatError, match=message) as info,
        ShardWriter(str(tmp_path), format=fmt) as w,
    ):
        w.write({"t": "fine é"})
        w.write({"t": "bad \ud800 text"})
    assert "'\\ud800' at character 4" in str(info.value)
    assert not (tmp_path / "index.json").exists()
    with pytest.raises(FormatError, match=r"field name '\\udcff'.* lone surrogate"):
        ShardWriter(str(tmp_path / "b"), format=fmt).write({"\udcff": 1})


# -- variable-length 1-d arrays (token corpora) -------------------------------------------------


def _docs(lengths: list[int], dtype: Any = np.uint16) -> list[dict[str, Any]]:
    return [{"id": i, "tokens": np.arange(n, dtype=dtype) + i} for i, n in enumerate(lengths)]


@pytest.mark.parametrize("fmt", ["arrow", "lmdb"])
def test_inferred_1d_array_becomes_variable_when_its_length_changes(
    tmp_path: Path, fmt: str
) -> None:
    """Documents of varying length need no schema: the column is inferred as [None] and read back."""
    docs = _docs([5, 3, 0, 9, 1])
    with ShardWriter(str(tmp_path), format=fmt, shard_size="1MB") as w:
        for doc in docs:
            w.write(doc)
    index = load_index(str(tmp_path))
    assert index.schema.column("tokens").shape == (None,)
    assert index.format_version == 2
    assert [s.elements for s in index.shards] == [{"tokens": 18}]
    ds = StreamingDataset(str(tmp_path))
    assert [ds[i]["tokens"].tolist() for i in range(5)] == [d["tokens"].tolist() for d in docs]


def test_length_change_after_a_written_batch_finishes_the_shard_and_reads_back(
    tmp_path: Path,
) -> None:
    """Rows already written in the fixed layout stay readable under the widened schema."""
    docs = _docs([4] * 50 + [7, 2, 4])
    with ShardWriter(str(tmp_path), shard_size="1MB") as w:
        for doc in docs[:50]:
            w.write(doc)
        current = w.stream._current  # the shard stream's open shard file
        assert current is not None
        current.flush()  # type: ignore[attr-defined]  # force a fixed-layout record batch
        for doc in docs[50:]:
            w.write(doc)
    index = load_index(str(tmp_path))
    assert [s.num_samples for s in index.shards] == [50, 3]
    assert [s.elements for s in index.shards] == [{"tokens": 200}, {"tokens": 13}]
    ds = StreamingDataset(str(tmp_path), verify=True)
    assert [ds[i]["tokens"].tolist() for i in range(53)] == [d["tokens"].tolist() for d in docs]
    batch = ds.get_batch(np.array([52, 0, 50]))
    assert [t.tolist() for t in batch["tokens"]] == [
        docs[52]["tokens"].tolist(),
        docs[0]["tokens"].tolist(),
        docs[50]["tokens"].tolist(),
    ]


def test_shapes_declares_variable_dims_without_a_schema(tmp_path: Path) -> None:
    """shapes={"tokens": [None]} makes the column variable from the first sample on."""
    with ShardWriter(str(tmp_path), shapes={"tokens": [None]}) as w:
        for doc in _docs([3, 3]):
            w.write(doc)
    index = load_index(str(tmp_path))
    assert index.schema.column("tokens").shape == (None,)
    assert index.schema.column("id").kind == "int"
    assert index.shards[0].elements == {"tokens": 6}


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"nope": [None]}, r"shapes=\{...\} names \['nope'\]"),
        ({"id": [None]}, r"field 'id' is a int, only numpy array fields have a shape"),
        ({"tokens": [None, None]}, r"field 'tokens' has shape \(3,\), schema says \(None, None\)"),
        ({"tokens": "x"}, "a shape is a list of dims"),
    ],
)
def test_bad_shapes_name_the_field(tmp_path: Path, shapes: dict[str, Any], message: str) -> None:
    """A shapes= entry that fits no array field fails on the first sample, naming it."""
    with pytest.raises(FormatError, match=message), ShardWriter(str(tmp_path), shapes=shapes) as w:
        w.write(_docs([3])[0])


def test_schema_and_shapes_together_are_refused(tmp_path: Path) -> None:
    """shapes= only completes inference; with a whole schema it is a ConfigError."""
    schema = {"columns": [{"name": "v", "kind": "int"}]}
    with pytest.raises(ConfigError, match="schema= or shapes="):
        ShardWriter(str(tmp_path), schema=schema, shapes={"v": [None]})


def test_fixed_only_datasets_stay_format_version_1(tmp_path: Path) -> None:
    """Without variable-shape columns index.json is version 1, readable by older streamload."""
    _write(str(tmp_path), 3)
    raw = json.loads((tmp_path / "index.json").read_text())
    assert raw["format_version"] == 1
    assert all("elements" not in s for s in raw["shards"])


def test_other_shape_changes_still_fail_with_a_hint(tmp_path: Path) -> None:
    """A 2-d array or a declared shape is never widened; the error says how to declare it."""
    with (
        pytest.raises(FormatError, match=r"shapes=\{'m': \[None, 2\]\}"),
        ShardWriter(str(tmp_path)) as w,
    ):
        w.write({"m": np.zeros((3, 2), np.float32)})
        w.write({"m": np.zeros((4, 2), np.float32)})
    with (
        pytest.raises(FormatError, match="has dtype int32, schema says uint16"),
        ShardWriter(str(tmp_path / "b")) as w,
    ):
        w.write({"t": np.zeros(3, np.uint16)})
        w.write({"t": np.zeros(4, np.int32)})

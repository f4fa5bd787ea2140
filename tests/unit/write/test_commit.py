"""commit: metadata validated together, index.json the one commit point, versions kept on append,
unreferenced staged files deleted; ShardWriter and convert in mode="append"."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import streamload as sl
from streamload.cli.main import main
from streamload.errors import FormatError, StateError, StoreError
from streamload.format.index import ShardInfo, load_index
from streamload.format.schema import infer_schema
from streamload.store import filesystem as store
from streamload.write import commit
from streamload.write.staging import ShardStream


def _sample(i: int) -> dict[str, Any]:
    return {"id": i, "tokens": np.full(16, i, np.int32)}


def _write(url: str | Path, ids: range, **kw: Any) -> sl.ShardWriter:
    with sl.ShardWriter(str(url), shard_size="2KB", **kw) as w:
        for i in ids:
            w.write(_sample(i))
    return w


def _ids(ds: sl.StreamingDataset) -> list[int]:
    return [int(ds[i]["id"]) for i in range(len(ds))]


def test_append_adds_a_version_and_readers_of_the_old_one_keep_reading(tmp_path: Path) -> None:
    """An append commits version 2 (old shards first, then new); a dataset opened before it still
    reads version 1 whole, and version 1 stays loadable by number."""
    _write(tmp_path, range(100))
    old = sl.StreamingDataset(str(tmp_path))
    before = load_index(str(tmp_path))
    w = _write(tmp_path, range(100, 150), mode="append")
    assert w.index.version == 2 and w.index.shards[: len(before.shards)] == before.shards
    assert _ids(old) == list(range(100))  # opened before the append: still version 1
    assert _ids(sl.StreamingDataset(str(tmp_path))) == list(range(150))
    assert load_index(str(tmp_path), version=1) == before
    assert load_index(str(tmp_path), version=2) == w.index
    with pytest.raises(FormatError, match="no version 3"):
        load_index(str(tmp_path), version=3)
    v1 = json.loads((tmp_path / "index.v1.json").read_text())
    assert "version" not in v1 and json.loads((tmp_path / "index.json").read_text())["version"] == 2


def test_append_to_nothing_creates_version_one(tmp_path: Path) -> None:
    """mode="append" where no dataset exists writes a plain version-1 dataset."""
    w = _write(tmp_path / "ds", range(10), mode="append")
    assert w.index.version == 1 and w.index.num_samples == 10
    assert not (tmp_path / "ds" / "index.v1.json").exists()


def test_append_with_another_schema_names_the_column(tmp_path: Path) -> None:
    """Appending samples or a schema that differ from the dataset's is a FormatError naming the
    column; the dataset is left as it was."""
    _write(tmp_path, range(10))
    with (
        pytest.raises(FormatError, match="tokens"),
        sl.ShardWriter(str(tmp_path), mode="append") as w,
    ):
        w.write({"id": 1, "tokens": np.zeros(16, np.int64)})
    other = {"columns": [{"name": "id", "kind": "int"}, {"name": "text", "kind": "str"}]}
    with pytest.raises(FormatError, match="'tokens'"):
        sl.ShardWriter(str(tmp_path), mode="append", schema=other)
    with pytest.raises(FormatError, match="lmdb"):
        sl.ShardWriter(str(tmp_path), mode="append", format="lmdb")
    assert load_index(str(tmp_path)).num_samples == 10
    assert load_index(str(tmp_path)).version == 1


def test_failed_append_keeps_the_current_version_and_the_next_commit_cleans_up(
    tmp_path: Path,
) -> None:
    """An append that raises leaves version 1 current; its staged shards are deleted by the next
    successful commit."""
    _write(tmp_path, range(50))
    with (
        pytest.raises(RuntimeError),
        sl.ShardWriter(str(tmp_path), shard_size="2KB", mode="append") as w,
    ):
        for i in range(50, 100):
            w.write(_sample(i))
        raise RuntimeError("job killed")
    assert load_index(str(tmp_path)).num_samples == 50
    index = _write(tmp_path, range(50, 60), mode="append").index
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["index.json", "index.v1.json", *(s.name for s in index.shards)]
    )
    assert _ids(sl.StreamingDataset(str(tmp_path))) == list(range(60))


def test_a_concurrent_commit_makes_an_append_fail_without_committing(tmp_path: Path) -> None:
    """Two appends started from version 1: the second to commit is refused (StoreError) and the
    first one's version stays current."""
    _write(tmp_path, range(10))
    a = sl.ShardWriter(str(tmp_path), shard_size="2KB", mode="append")
    b = sl.ShardWriter(str(tmp_path), shard_size="2KB", mode="append")
    a.write(_sample(10))
    b.write(_sample(11))
    a.close()
    with pytest.raises(StoreError, match="changed while this append"):
        b.close()
    assert _ids(sl.StreamingDataset(str(tmp_path))) == list(range(11))


def test_a_loader_state_from_before_an_append_is_refused_unless_allowed(tmp_path: Path) -> None:
    """The resume fingerprint covers the shard list, so a state saved before an append is a
    StateError; with allow_append=True an unshuffled loader continues exactly once, through the
    appended samples; a state of another dataset stays refused."""
    _write(tmp_path, range(40))
    loader = sl.StreamLoader(sl.StreamingDataset(str(tmp_path)), batch_size=8)
    it = iter(loader)
    seen = [int(i) for _ in range(2) for i in next(it)["id"]]
    state = loader.state_dict()
    _write(tmp_path, range(40, 60), mode="append")
    resumed = sl.StreamLoader(sl.StreamingDataset(str(tmp_path)), batch_size=8)
    with pytest.raises(StateError, match="another dataset"):
        resumed.load_state_dict(state)
    resumed.load_state_dict(state, allow_append=True)
    rest = [int(i) for batch in resumed for i in batch["id"]]
    assert seen + rest == list(range(60))
    _write(tmp_path / "other", range(40))
    with pytest.raises(StateError, match="another dataset"):
        sl.StreamLoader(sl.StreamingDataset(str(tmp_path / "other")), batch_size=8).load_state_dict(
            {**state, "fingerprint": {**state["fingerprint"], "index": "0" * 16}},
            allow_append=True,
        )


def test_a_shuffled_state_continues_after_an_append_and_the_next_epoch_is_whole(
    tmp_path: Path,
) -> None:
    """allow_append with shuffling: the interrupted epoch finishes on the new order, and the
    following epoch yields every sample, appended ones included, exactly once."""
    _write(tmp_path, range(40))
    ds = sl.StreamingDataset(str(tmp_path), shuffle=True, seed=3)
    loader = sl.StreamLoader(ds, batch_size=8)
    next(iter(loader))
    state = loader.state_dict()
    _write(tmp_path, range(40, 60), mode="append")
    ds2 = sl.StreamingDataset(str(tmp_path), shuffle=True, seed=3)
    resumed = sl.StreamLoader(ds2, batch_size=8)
    resumed.load_state_dict(state, allow_append=True)
    assert sum(len(batch["id"]) for batch in resumed) == 60 - 8
    ds2.set_epoch(1)
    assert sorted(int(i) for batch in resumed for i in batch["id"]) == list(range(60))


def test_overwrite_removes_the_old_versions_and_their_shards(tmp_path: Path) -> None:
    """overwrite=True starts again at version 1: old shards and kept index versions are deleted,
    files that are not streamload's are left alone."""
    _write(tmp_path, range(50))
    _write(tmp_path, range(50, 80), mode="append")
    (tmp_path / "README.txt").write_text("mine")
    index = _write(tmp_path, range(5), overwrite=True).index
    assert index.version == 1
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["README.txt", "index.json", *(s.name for s in index.shards)]
    )


def test_convert_appends_a_parquet_file(tmp_path: Path) -> None:
    """convert(mode="append") adds a second Parquet file's rows as version 2."""
    for k in range(2):
        pq.write_table(
            pa.table({"id": list(range(k * 10, k * 10 + 10))}), tmp_path / f"{k}.parquet"
        )
    sl.convert(tmp_path / "0.parquet", tmp_path / "ds")
    index = sl.convert(tmp_path / "1.parquet", tmp_path / "ds", mode="append")
    assert index.version == 2
    assert _ids(sl.StreamingDataset(str(tmp_path / "ds"))) == list(range(20))
    with pytest.raises(sl.ConfigError, match="mode"):
        sl.convert(tmp_path / "1.parquet", tmp_path / "ds", mode="upsert")
    assert main(["convert", str(tmp_path / "1.parquet"), str(tmp_path / "ds"), "--append"]) == 0
    assert load_index(str(tmp_path / "ds")).version == 3


# -- commit's checks on the metadata ------------------------------------------------------------


def _staged(root: Path, n: int, task: int = 0, prefix: str = "shard") -> list[commit.StagedShard]:
    root.mkdir(parents=True, exist_ok=True)
    fs, path = store.resolve(str(root))
    schema = infer_schema(_sample(0))
    stream = ShardStream(
        fs, path, "arrow", schema, 600, None, lambda k: f"{prefix}-{task:05d}-{k:05d}.arrow", task
    )
    for i in range(n):
        stream.add(_sample(i))
    return stream.finish()


def _commit(root: Path, shards: list[commit.StagedShard], **kw: Any) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    fs, path = store.resolve(str(root))
    return commit.commit(fs, path, str(root), format="arrow", shards=shards, **kw)


def test_commit_orders_shards_by_task_and_position(tmp_path: Path) -> None:
    """Shards from tasks finishing in any order are committed by (task, position)."""
    parts = [_staged(tmp_path, 20, task=t) for t in (2, 0, 1)]
    index = _commit(tmp_path, [s for part in parts for s in reversed(part)])
    assert [s.name for s in index.shards] == sorted(s.name for s in index.shards)
    assert index.num_samples == 60


def test_commit_refuses_missing_or_resized_staged_shards(tmp_path: Path) -> None:
    """A staged shard that is gone, or whose size differs from its metadata, fails the commit
    and no index.json appears."""
    staged = _staged(tmp_path, 30)
    os.remove(tmp_path / staged[1].info.name)
    with pytest.raises(FormatError, match=f"{staged[1].info.name} is missing"):
        _commit(tmp_path, staged)
    staged = _staged(tmp_path / "b", 30)
    with open(tmp_path / "b" / staged[0].info.name, "ab") as f:
        f.write(b"x")
    with pytest.raises(FormatError, match=r"has \d+ bytes"):
        _commit(tmp_path / "b", staged)
    assert not (tmp_path / "index.json").exists() and not (tmp_path / "b" / "index.json").exists()


def test_commit_refuses_mixed_schemas_and_duplicate_places(tmp_path: Path) -> None:
    """Shards written with different schemas, or two shards claiming one place, fail the commit."""
    a = _staged(tmp_path, 10)
    b = _staged(tmp_path, 10, task=1)
    odd = commit.StagedShard(b[0].info, {"columns": [{"name": "id", "kind": "str"}]}, b[0].place)
    with pytest.raises(FormatError, match="'id'"):
        _commit(tmp_path, [*a, odd])
    twin = commit.StagedShard(b[0].info, b[0].schema, a[0].place)
    with pytest.raises(FormatError, match="claim place"):
        _commit(tmp_path, [*a, twin])
    with pytest.raises(FormatError, match="no samples written and no schema"):
        _commit(tmp_path / "empty", [])


def test_commit_deletes_unreferenced_staged_files_only(tmp_path: Path) -> None:
    """Staged shards and temp files of other attempts go; other files stay."""
    kept = _staged(tmp_path, 10)
    loser = _staged(tmp_path, 10, prefix="shard-9")
    (tmp_path / ".shard-00000-00000.arrow.tmp-1-abcd").write_bytes(b"partial")
    (tmp_path / "notes.json").write_text("{}")
    index = _commit(tmp_path, kept)
    assert loser and sorted(os.listdir(tmp_path)) == sorted(
        ["index.json", "notes.json", *(s.name for s in index.shards)]
    )


@given(st.text(min_size=1, max_size=40))
def test_only_shard_file_names_count_as_staged(name: str) -> None:
    """is_staged_name accepts exactly writers' shard and temp names, never an index or a path."""
    staged = commit.is_staged_name(name)
    if staged:
        assert name.lstrip(".").startswith("shard-") and "/" not in name
        assert name.endswith((".arrow", ".lmdb")) or ".tmp-" in name
    assert not commit.is_staged_name("index.json") and not commit.is_staged_name("index.v1.json")
    assert commit.is_staged_name("shard-00001.arrow") and commit.is_staged_name(
        "shard-00003-00000-1a2b3c4d.lmdb"
    )


def test_commit_of_many_shards_lists_the_root_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 shards' metadata commit with one listing of the root and the index read back once."""
    schema = infer_schema(_sample(0)).to_json()
    shards = []
    for k in range(10_000):
        name = f"shard-{k:05d}.arrow"
        (tmp_path / name).write_bytes(b"")
        shards.append(
            commit.StagedShard(ShardInfo(name, 1, 0, "xxh3_64", "0" * 16), schema, (0, k))
        )
    calls = []
    real = store.list_sizes
    monkeypatch.setattr(store, "list_sizes", lambda *a, **k: calls.append(a) or real(*a, **k))
    index = _commit(tmp_path, shards)
    assert len(index.shards) == 10_000 and index.num_samples == 10_000
    assert len(calls) == 1

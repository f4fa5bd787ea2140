"""streamload.ray: Ray Data write tasks stage shards, one commit publishes them; retries never
duplicate a sample; a failed job leaves no index. One local Ray instance for the session."""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
import ray.data

import streamload as sl
import streamload.ray
from streamload.dataset.inspect import verify_dataset
from streamload.format.index import load_index

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the sinks below run in tasks

ROWS_PER_FILE = 600
FILES = 4


def _corpus(root: Path, files: int = FILES, start: int = 0) -> Path:
    """Parquet files of ``ROWS_PER_FILE`` rows: scalars, text, bytes, fixed and ragged arrays."""
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        ids = np.arange(start + f * ROWS_PER_FILE, start + (f + 1) * ROWS_PER_FILE)
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "text": pa.array([f"doc {i}" for i in ids]),
                "blob": pa.array([bytes([i % 251]) * (i % 7) for i in ids], pa.binary()),
                "vec": pa.array([[i, -i, 2 * i] for i in ids], pa.list_(pa.float32(), 3)),
                "tokens": pa.array([list(range(i % 9)) for i in ids], pa.list_(pa.int32())),
            }
        )
        pq.write_table(table, root / f"part-{f:03d}.parquet", row_group_size=200)
    return root


def _rows(url: str | Path, **kw: Any) -> list[tuple[Any, ...]]:
    """Every sample as a hashable tuple, in dataset order."""
    out = []
    for row in sl.StreamingDataset(url, **kw):
        out.append(
            (
                row["id"],
                row["text"],
                row["blob"],
                tuple(np.asarray(row["vec"]).tolist()),
                tuple(np.asarray(row["tokens"]).tolist()),
            )
        )
    return out


def _dataset(src: Path) -> Any:
    """A Ray dataset of one block (so one write task) per Parquet file, in file order."""
    return ray.data.from_arrow([pq.read_table(p) for p in sorted(src.glob("*.parquet"))])


def _only_committed_files(root: Path) -> None:
    """The directory holds index.json and exactly the shards it lists: no orphan, no temp file."""
    index = load_index(str(root))
    assert sorted(os.listdir(root)) == sorted(["index.json", *(s.name for s in index.shards)])


def test_ray_conversion_equals_single_process_conversion(ray_local: Any, tmp_path: Path) -> None:
    """convert(engine="ray") gives the single-process dataset: same samples in the same order,
    same schema, every checksum verified, nothing but committed files left."""
    src = _corpus(tmp_path / "src")
    local = sl.convert(src, tmp_path / "local", shard_size="20KB")
    distributed = sl.convert(
        src,
        tmp_path / "ray",
        shard_size="20KB",
        engine="ray",
        ray_options={"part_bytes": 1},  # a part per row group: 12 tasks
    )
    assert distributed.schema == local.schema
    assert distributed.num_samples == local.num_samples == FILES * ROWS_PER_FILE
    assert len({s.name.split("-")[1] for s in distributed.shards}) == 3 * FILES  # 12 tasks
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    assert all(check.ok for check in verify_dataset(str(tmp_path / "ray")))
    _only_committed_files(tmp_path / "ray")
    names = [s.name for s in distributed.shards]
    assert names == sorted(names)  # ordered by (task index, position in the task)


class _CrashFirstAttempt(streamload.ray.ShardDatasink):
    """Task 0's first attempt stages shards, then its worker process dies (Ray retries it)."""

    def __init__(self, url: str, marker: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.marker = marker

    def write(self, blocks: Iterable[Any], ctx: Any) -> Any:
        if ctx.task_idx == 0 and not os.path.exists(self.marker):
            marker = self.marker

            def then_die(blocks: Iterable[Any]) -> Iterator[Any]:
                yield from blocks  # every block written: shards staged, the last one open
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os._exit(1)

            return super().write(then_die(blocks), ctx)
        return super().write(blocks, ctx)


def test_a_retried_task_attempt_leaves_no_duplicate_and_no_orphan(
    ray_local: Any, tmp_path: Path
) -> None:
    """A write task whose worker dies after staging shards is retried by Ray; the dataset holds
    every sample exactly once and only the shards of the attempt that succeeded."""
    src = _corpus(tmp_path / "src")
    marker = tmp_path / "crashed"
    sink = _CrashFirstAttempt(str(tmp_path / "ds"), str(marker), shard_size="8KB")
    _dataset(src).write_datasink(sink)
    assert marker.exists()  # the first attempt did die
    ids = [row[0] for row in _rows(tmp_path / "ds")]
    assert collections.Counter(ids) == collections.Counter(range(FILES * ROWS_PER_FILE))
    assert sink.index is not None and sink.index.num_samples == FILES * ROWS_PER_FILE
    _only_committed_files(tmp_path / "ds")
    assert all(check.ok for check in verify_dataset(str(tmp_path / "ds")))


class _FailingSink(streamload.ray.ShardDatasink):
    """Task 1 raises after staging its shards (an error Ray does not retry)."""

    def write(self, blocks: Iterable[Any], ctx: Any) -> Any:
        result = super().write(blocks, ctx)
        if ctx.task_idx == 1:
            raise RuntimeError("tokenizer exploded")
        return result


def test_a_failed_job_leaves_no_index_and_a_rerun_commits_cleanly(
    ray_local: Any, tmp_path: Path
) -> None:
    """A job whose task fails writes no index.json; writing again commits and deletes the failed
    job's staged shards."""
    src = _corpus(tmp_path / "src")
    url = str(tmp_path / "ds")
    dataset = _dataset(src)
    with pytest.raises(Exception, match="tokenizer exploded"):
        dataset.write_datasink(_FailingSink(url, shard_size="8KB"))
    assert not (tmp_path / "ds" / "index.json").exists()
    with pytest.raises(sl.FormatError, match="incomplete"):
        sl.StreamingDataset(url)
    dataset.write_datasink(streamload.ray.ShardDatasink(url, shard_size="8KB"))
    assert len(_rows(url)) == FILES * ROWS_PER_FILE
    _only_committed_files(tmp_path / "ds")


def test_append_through_ray_adds_a_version_and_keeps_the_old_one(
    ray_local: Any, tmp_path: Path
) -> None:
    """mode="append" commits version 2 with the old shards first; version 1 still reads as it was."""
    url = str(tmp_path / "ds")
    first = _corpus(tmp_path / "a", files=2)
    second = _corpus(tmp_path / "b", files=2, start=10_000)
    sl.convert(first, url, shard_size="20KB", engine="ray")
    before = _rows(url)
    index = sl.convert(second, url, shard_size="20KB", engine="ray", mode="append")
    assert index.version == 2 and index.num_samples == 4 * ROWS_PER_FILE
    after = _rows(url)
    assert after[: len(before)] == before
    assert [r[0] for r in after[len(before) :]] == list(range(10_000, 10_000 + 2 * ROWS_PER_FILE))
    assert load_index(url, version=1).num_samples == 2 * ROWS_PER_FILE
    assert sorted(n for n in os.listdir(url) if n.startswith("index")) == [
        "index.json",
        "index.v1.json",
    ]


def test_numpy_batches_from_map_batches_become_array_columns(
    ray_local: Any, tmp_path: Path
) -> None:
    """Fixed-shape numpy arrays a map_batches returns (Ray tensor columns) are stored as
    fixed-shape ndarray columns and read back equal."""

    def tokenize(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"]
        return {"id": ids, "tokens": np.stack([np.full((4, 2), i, np.int32) for i in ids])}

    sink = streamload.ray.ShardDatasink(str(tmp_path / "ds"), shard_size="4KB")
    ray.data.range(300, override_num_blocks=3).map_batches(tokenize).write_datasink(sink)
    assert sink.index is not None
    column = sink.index.schema.column("tokens")
    assert (column.kind, column.dtype, column.shape) == ("ndarray", "int32", (4, 2))
    ds = sl.StreamingDataset(str(tmp_path / "ds"))
    assert sorted(int(ds[i]["id"]) for i in range(len(ds))) == list(range(300))
    for i in (0, 150, 299):
        np.testing.assert_array_equal(ds[i]["tokens"], np.full((4, 2), ds[i]["id"], np.int32))


def test_lmdb_shards_from_ray_read_back(ray_local: Any, tmp_path: Path) -> None:
    """format="lmdb" writes LMDB shards with the same samples as the Parquet source."""
    src = _corpus(tmp_path / "src", files=2)
    sl.convert(src, tmp_path / "ds", format="lmdb", shard_size="64KB", engine="ray")
    assert load_index(str(tmp_path / "ds")).format == "lmdb"
    assert sorted(_rows(tmp_path / "ds")) == sorted(_rows_of_parquet(src))


def _rows_of_parquet(src: Path) -> list[tuple[Any, ...]]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(src.glob("*.parquet")))
    return [
        (r["id"], r["text"], r["blob"], tuple(float(v) for v in r["vec"]), tuple(r["tokens"]))
        for r in table.to_pylist()
    ]


def test_unsupported_source_kinds_are_refused_before_ray_starts(tmp_path: Path) -> None:
    """engine="ray" names the kinds it reads in parallel instead of silently reading serially."""
    (tmp_path / "img" / "cat").mkdir(parents=True)
    (tmp_path / "img" / "cat" / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(sl.ConfigError, match="engine='local'"):
        sl.convert(tmp_path / "img", tmp_path / "ds", engine="ray")


def test_two_results_for_one_task_commit_only_the_first(tmp_path: Path) -> None:
    """A speculative or duplicated attempt reporting the same task index never adds samples:
    the first result per task is committed, the other attempt's shards are deleted."""
    url = str(tmp_path / "ds")
    sink = streamload.ray.ShardDatasink(url, shard_size="2KB")
    sink.on_write_start(None)
    src = _corpus(tmp_path / "src", files=1)
    table = pq.read_table(src / "part-000.parquet")

    class Ctx:
        task_idx = 0

    first = sink.write([table], Ctx())
    twin = sink.write([table], Ctx())  # another attempt of task 0: other names
    assert {s.info.name for s in first.shards}.isdisjoint(s.info.name for s in twin.shards)
    sink.on_write_complete([first, twin])
    assert sink.index is not None and sink.index.num_samples == ROWS_PER_FILE
    assert [r[0] for r in _rows(url)] == list(range(ROWS_PER_FILE))
    _only_committed_files(tmp_path / "ds")

"""Writing to an object store (moto S3): Ray write tasks stage shards as objects, one PUT of
index.json commits them; appends keep the previous index as an object of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from servers import Remote

import streamload as sl
import streamload.ray
from streamload.dataset.inspect import verify_dataset
from streamload.format.index import load_index
from streamload.store import filesystem as store


def _tables(start: int, n: int, parts: int) -> list[pa.Table]:
    step = n // parts
    return [
        pa.table(
            {
                "id": pa.array(range(start + k * step, start + (k + 1) * step), pa.int64()),
                "tokens": pa.array(
                    [list(range(i % 11)) for i in range(start + k * step, start + (k + 1) * step)],
                    pa.list_(pa.int32()),
                ),
            }
        )
        for k in range(parts)
    ]


def _objects(remote: Remote) -> list[str]:
    fs, root = store.resolve(remote.url, remote.storage_options)
    return sorted(store.list_sizes(fs, root))


def test_ray_sink_commits_a_dataset_to_s3(ray_local: Any, s3_url: Remote) -> None:
    """A Ray job writes s3:// shards in parallel tasks; the committed dataset reads back whole,
    verifies, and the bucket holds index.json and the listed shards only."""
    sink = streamload.ray.ShardDatasink(
        s3_url.url, shard_size="4KB", storage_options=s3_url.storage_options
    )
    ray.data.from_arrow(_tables(0, 900, 3)).write_datasink(sink)
    assert sink.index is not None and sink.index.num_samples == 900
    ds = sl.StreamingDataset(s3_url.url, storage_options=s3_url.storage_options)
    assert sorted(int(ds[i]["id"]) for i in range(len(ds))) == list(range(900))
    np.testing.assert_array_equal(ds[13]["tokens"], np.arange(ds[13]["id"] % 11, dtype=np.int32))
    assert all(c.ok for c in verify_dataset(s3_url.url, s3_url.storage_options))
    assert _objects(s3_url) == sorted(["index.json", *(s.name for s in sink.index.shards)])


def test_append_on_s3_keeps_the_first_version(
    ray_local: Any, s3_url: Remote, tmp_path: Path
) -> None:
    """convert(engine="ray", mode="append") on s3:// commits version 2; version 1 is kept as
    index.v1.json and reads back as it was."""
    opts = s3_url.storage_options
    for k, table in enumerate(_tables(0, 400, 2)):
        pq.write_table(table, tmp_path / f"{k}.parquet")
    first = sl.convert(
        tmp_path / "0.parquet", s3_url.url, shard_size="4KB", dst_storage_options=opts
    )
    second = sl.convert(
        tmp_path / "1.parquet",
        s3_url.url,
        shard_size="4KB",
        dst_storage_options=opts,
        engine="ray",
        mode="append",
    )
    assert (first.version, second.version) == (1, 2)
    assert load_index(s3_url.url, opts, version=1) == first
    ds = sl.StreamingDataset(s3_url.url, storage_options=opts)
    assert [int(ds[i]["id"]) for i in range(len(ds))] == list(range(400))
    assert "index.v1.json" in _objects(s3_url)

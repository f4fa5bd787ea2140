"""An existing LMDB environment on s3 streams through the shard cache: fetched once, rows in key order."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import lmdb

from streamload import StreamingDataset
from streamload.store import filesystem as store


def _env(path: Path, n: int) -> dict[bytes, bytes]:
    rows = {f"key-{i:05d}".encode(): (f"value {i} " * (i % 7 + 1)).encode() for i in range(n)}
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in rows.items():
            txn.put(k, v)
    env.close()
    return rows


def test_remote_lmdb_environment_is_fetched_once_through_the_cache(
    faulty_s3: Any, tmp_path: Path
) -> None:
    """Rows arrive in key order; a second open and a full read make no new GET of data.mdb."""
    rows = _env(tmp_path / "env", 300)
    direct = faulty_s3.direct
    fs, root = store.resolve(direct.url, direct.storage_options)
    fs.put_file(str(tmp_path / "env" / "data.mdb"), root + "/data.mdb")
    proxy, cache = faulty_s3.proxy, tmp_path / "cache"
    proxy.reset_counts()
    ds = StreamingDataset(faulty_s3.url, cache_dir=cache, storage_options=faulty_s3.storage_options)
    assert len(ds) == 300
    got = [(s["key"], s["value"]) for s in ds]
    assert got == sorted(rows.items())
    del ds  # LMDB refuses a second open of one file in one process
    gc.collect()
    again = StreamingDataset(
        faulty_s3.url, cache_dir=cache, storage_options=faulty_s3.storage_options
    )
    assert again[299]["key"] == b"key-00299"
    assert proxy.count("GET", "data.mdb") == 1
    assert list(cache.rglob("*-data.mdb"))  # a counted cache entry (<digest>-data.mdb)

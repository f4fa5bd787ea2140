"""A remote index.json is fetched once per node (kept in the shard cache) and never served stale."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from streamload import ShardWriter, StreamingDataset


def _write(remote: Any, n: int, overwrite: bool = False) -> None:
    target = remote.direct
    with ShardWriter(
        target.url, shard_size="16KiB", storage_options=target.storage_options, overwrite=overwrite
    ) as w:
        for i in range(n):
            w.write({"id": i, "x": np.full(64, i, np.int64)})


def _open(remote: Any, cache: Path) -> StreamingDataset:
    return StreamingDataset(remote.url, cache_dir=cache, storage_options=remote.storage_options)


def test_index_is_downloaded_once_per_node_and_refetched_when_rewritten(
    faulty_s3: Any, tmp_path: Path
) -> None:
    """Ranks opening the dataset share one GET of index.json; a rewrite is seen at once."""
    _write(faulty_s3, 100)
    proxy, cache = faulty_s3.proxy, tmp_path / "cache"
    proxy.reset_counts()
    datasets: list[StreamingDataset] = []
    threads = [
        threading.Thread(target=lambda: datasets.append(_open(faulty_s3, cache))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(datasets) == 4 and all(len(ds) == 100 for ds in datasets)
    assert proxy.count("GET", "index.json") == 1
    assert len(_open(faulty_s3, cache)) == 100
    assert proxy.count("GET", "index.json") == 1
    _write(faulty_s3, 150, overwrite=True)
    again = _open(faulty_s3, cache)
    assert len(again) == 150
    assert proxy.count("GET", "index.json") == 2
    assert sorted(int(i) for i in again.get_batch(np.arange(150))["id"]) == list(range(150))

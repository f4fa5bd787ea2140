"""Read-ahead: a bounded window of reserved shards along the reader's plan."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamload import ShardWriter
from streamload.cache.disk import DiskCache
from streamload.cache.readahead import RemoteShards
from streamload.format.index import load_index
from streamload.store import filesystem as store


@pytest.fixture
def remote() -> tuple[str, object, str]:
    """A 10-shard dataset in memory:// standing in for a remote store: (url, fs, root)."""
    url = f"memory://readahead-{uuid.uuid4().hex}"
    with ShardWriter(url, shard_size="8KiB") as w:
        for i in range(400):
            w.write({"id": i, "x": np.full(32, i, np.int64)})
    fs, root = store.resolve(url)
    return url, fs, root


def _shards(remote: tuple[str, object, str], tmp_path: Path, **kwargs: int) -> RemoteShards:
    url, fs, root = remote
    index = load_index(url)
    return RemoteShards(
        url,
        fs,
        root,
        index,
        DiskCache(tmp_path / "cache", 100 * max(s.bytes for s in index.shards)),
        lambda epoch: iter([index.sample_offsets[:-1].copy()]),  # each shard's first id, in order
        **kwargs,
    )


def test_readahead_stays_within_its_byte_bound(
    remote: tuple[str, object, str], tmp_path: Path
) -> None:
    """readahead_bytes below three shards: never more than two reserved, whatever the count."""
    index = load_index(remote[0])
    size = max(s.bytes for s in index.shards)
    shards = _shards(remote, tmp_path, readahead_shards=8, readahead_bytes=int(2.5 * size))
    shards.open(index.shards[0], 0)
    assert shards.readahead.wait_reserved([1, 2], timeout=30)
    assert sorted(shards.readahead.reserved()) == [1, 2]  # the thread now waits for room
    shards.open(index.shards[1], 0)  # the reader moves on: the window slides
    assert shards.readahead.wait_reserved([2, 3], timeout=30)
    assert sorted(shards.readahead.reserved()) == [2, 3]
    shards.close()
    assert shards.readahead.reserved() == []


def test_readahead_stays_within_its_shard_count(
    remote: tuple[str, object, str], tmp_path: Path
) -> None:
    """readahead_shards = 1: exactly the next shard is reserved."""
    index = load_index(remote[0])
    shards = _shards(remote, tmp_path, readahead_shards=1, readahead_bytes=2**30)
    shards.open(index.shards[4], 0)
    assert shards.readahead.wait_reserved([5], timeout=30)
    assert shards.readahead.reserved() == [5]
    shards.close()


def test_a_failed_readahead_download_is_reported_by_the_reader_not_the_thread(
    remote: tuple[str, object, str], tmp_path: Path
) -> None:
    """Read-ahead of a missing shard only logs; opening that shard raises the store's error."""
    url, fs, root = remote
    index = load_index(url)
    fs.rm(store.join(root, index.shards[1].name))  # type: ignore[attr-defined]
    shards = _shards(remote, tmp_path, readahead_shards=2, readahead_bytes=2**30)
    shards.open(index.shards[0], 0)
    assert shards.readahead.wait_reserved([2], timeout=30)  # it skipped 1 and went on
    with pytest.raises(OSError, match=index.shards[1].name):
        shards.open(index.shards[1], 0)
    shards.close()


def test_reservations_made_across_the_epoch_boundary_survive_the_new_epoch(
    remote: tuple[str, object, str], tmp_path: Path
) -> None:
    """At the last shard of epoch 0 the next epoch's first shards are reserved; starting epoch 1
    keeps them (no second pin or download) and reads ahead from there."""
    index = load_index(remote[0])
    shards = _shards(remote, tmp_path, readahead_shards=2, readahead_bytes=2**30)
    pinned: list[int] = []
    real = shards.pin_shard

    def counting(k: int, **kwargs: Any) -> Any:
        pinned.append(k)
        return real(k, **kwargs)

    shards.pin_shard = counting  # type: ignore[method-assign]
    last = len(index.shards) - 1
    shards.open(index.shards[last], 0)
    assert shards.readahead.wait_reserved([0, 1], timeout=30)
    shards.open(index.shards[0], 1)
    assert shards.readahead.wait_reserved([1, 2], timeout=30)
    assert pinned.count(1) == 1
    shards.close()

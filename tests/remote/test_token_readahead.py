"""Read-ahead of a remote token stream follows the lazy plan of its blocks (moto S3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from servers import Remote

import streamload as sl


def test_block_read_ahead_reserves_the_next_shards_the_plans_blocks_read(
    s3_url: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At num_workers=0, after the first batch, the read-ahead reserves exactly the next shards
    the shuffled plan's blocks will read, a block that runs into later shards counting them."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "2")
    lengths = np.random.default_rng(5).integers(1, 300, 120)
    count = 0
    with sl.ShardWriter(s3_url.url, shard_size="4KiB", storage_options=s3_url.storage_options) as w:
        for n in lengths.tolist():
            w.write({"tokens": np.arange(count, count + n, dtype=np.int32)})
            count += n
    ds = sl.StreamingDataset(
        s3_url.url,
        storage_options=s3_url.storage_options,
        cache_dir=tmp_path / "cache",
        tokens="tokens",
        block_size=700,  # longer than some shards: blocks span two or three of them
        shuffle=True,
        seed=2,
        shuffle_block=4,
    )
    loader = sl.StreamLoader(ds, batch_size=3)
    iterator = iter(loader)
    first = next(iterator)["tokens"].numpy()
    assert (np.diff(first, axis=1) == 1).all()
    plan = loader.epoch_plan()
    token_offsets = np.concatenate(
        [[0], np.cumsum([s.elements["tokens"] for s in ds.index.shards])]
    )
    opened: list[int] = []  # each batch reads its blocks' shards in ascending order
    spanning = 0
    for step in range(plan.num_steps):
        ids = plan.batch(0, step)
        lo = np.searchsorted(token_offsets, ids * 700, "right") - 1
        hi = np.searchsorted(token_offsets, (ids + 1) * 700 - 1, "right") - 1
        spanning += int((hi > lo).sum())
        shards = sorted({k for a, b in zip(lo, hi, strict=True) for k in range(a, b + 1)})
        for k in shards:
            if not opened or opened[-1] != k:
                opened.append(k)
    assert spanning > 0
    remote = ds._remote_shards()
    sequence, cursor = remote.plan
    assert sequence.window(cursor, len(opened) - cursor) == opened[cursor:]
    # The next two shards, except those the reader still holds open (local already).
    held = set(remote._pins)
    expected = [k for k in opened[cursor + 1 : cursor + 3] if k not in held]
    assert remote.readahead.wait_reserved(expected, timeout=60), expected

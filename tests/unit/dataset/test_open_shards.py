"""Open shard readers cost no file descriptors, so a full shuffle over many shards keeps them open."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import streamload as sl


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_many_open_arrow_shards_hold_no_file_descriptors(tmp_path: Path) -> None:
    """Reading from 120 shards at once leaves every reader open and no descriptor behind."""
    with sl.ShardWriter(str(tmp_path / "ds"), shard_size=700) as w:
        for i in range(1200):
            w.write({"id": i, "x": np.full(8, i, dtype=np.int64)})
    ds = sl.StreamingDataset(str(tmp_path / "ds"), shuffle=True, shuffle_mode="full")
    assert ds.num_shards >= 120
    before = len(os.listdir("/proc/self/fd"))
    order = ds.sample_order()
    ids = ds.get_batch(order)["id"]
    assert sorted(ids.tolist()) == list(range(1200))
    assert len(ds._shards._readers) == ds.num_shards  # nothing evicted and re-opened
    assert len(os.listdir("/proc/self/fd")) <= before + 2

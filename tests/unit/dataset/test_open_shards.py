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


def _one_shard(root: Path, fmt: str) -> Path:
    with sl.ShardWriter(str(root), format=fmt) as w:
        for i in range(5):
            w.write({"id": i})
    (shard,) = root.glob("shard-*")
    return shard


@pytest.mark.parametrize("fmt", ["arrow", "lmdb"])
def test_a_shard_symlinked_outside_the_root_is_followed_and_still_verified(
    tmp_path: Path, fmt: str
) -> None:
    """Documented choice: a symlink at a shard's name is followed wherever it points (index.json
    itself can never name a path outside the root); size and checksum still apply to the target."""
    shard = _one_shard(tmp_path / "ds", fmt)
    elsewhere = tmp_path / "other-disk" / shard.name
    elsewhere.parent.mkdir()
    os.replace(shard, elsewhere)
    shard.symlink_to(elsewhere)
    ds = sl.StreamingDataset(str(tmp_path / "ds"), verify=True)
    assert [ds[i]["id"] for i in range(5)] == list(range(5))
    data = bytearray(elsewhere.read_bytes())  # same size, other bytes: the checksum catches it
    data[len(data) // 2] ^= 0xFF
    elsewhere.write_bytes(bytes(data))
    with pytest.raises(sl.FormatError, match=shard.name):
        sl.StreamingDataset(str(tmp_path / "ds"), verify=True, cache_dir=str(tmp_path / "c"))[0]


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_shard_that_is_not_a_regular_file_is_a_format_error_not_a_hang(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO (would block), a device (would never end) or a directory at a shard's name is
    refused by name before it is opened."""
    shard = _one_shard(tmp_path / "ds", "arrow")
    shard.unlink()
    if kind == "fifo":
        os.mkfifo(shard)
    elif kind == "device":
        shard.symlink_to("/dev/zero")
    else:
        shard.mkdir()
    ds = sl.StreamingDataset(str(tmp_path / "ds"))
    with pytest.raises(sl.FormatError, match=rf"shard {shard.name} .* is not a regular file"):
        ds[0]

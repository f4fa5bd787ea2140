"""Existing LMDB environments (not written by streamload) read as {"key", "value"} datasets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
import torch

import streamload as sl
from streamload.errors import FormatError


def _entries(n: int) -> dict[bytes, bytes]:
    rng = np.random.default_rng(1)
    keys = {rng.bytes(int(rng.integers(1, 12))) for _ in range(n)}
    return {k: k[::-1] * 3 + bytes([len(k)]) for k in keys}


def _make_env(path: Path, entries: dict[bytes, bytes], subdir: bool = True) -> None:
    env = lmdb.open(str(path), subdir=subdir, map_size=2**24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():  # insertion order is not key order
            txn.put(key, value)
    env.close()


def _rows(rows: list[Any]) -> list[Any]:
    return rows


@pytest.fixture
def env_dir(tmp_path: Path) -> tuple[Path, dict[bytes, bytes]]:
    entries = _entries(300)
    _make_env(tmp_path / "env", entries)
    return tmp_path / "env", entries


def test_environment_directory_yields_entries_in_key_order(
    env_dir: tuple[Path, dict[bytes, bytes]],
) -> None:
    """Iterating a directory holding data.mdb yields every (key, value) in LMDB key order."""
    path, entries = env_dir
    ds = sl.StreamingDataset(path)
    assert len(ds) == len(entries)
    got = [(s["key"], s["value"]) for s in ds]
    assert got == sorted(entries.items())


def test_random_access_by_position_matches_key_order(
    env_dir: tuple[Path, dict[bytes, bytes]],
) -> None:
    """ds[i] is the i-th entry in key order; negative and out-of-range indices behave like lists."""
    path, entries = env_dir
    ds = sl.StreamingDataset(path)
    ordered = sorted(entries.items())
    for i in (0, 17, len(ordered) - 1):
        assert ds[i] == {"key": ordered[i][0], "value": ordered[i][1]}
    assert ds[-1]["key"] == ordered[-1][0]
    with pytest.raises(IndexError):
        ds[len(ordered)]
    batch = ds.get_batch(np.array([5, 2, 5]))
    assert batch["key"] == [ordered[5][0], ordered[2][0], ordered[5][0]]


def test_transform_decodes_each_value(env_dir: tuple[Path, dict[bytes, bytes]]) -> None:
    """transform= receives the raw entry and its result is what the dataset yields."""
    path, entries = env_dir

    def decode(entry: dict[str, Any]) -> tuple[int, int]:
        return len(entry["key"]), entry["value"][-1]

    ds = sl.StreamingDataset(path, transform=decode)
    assert all(a == b for a, b in ds)
    first = sorted(entries)[3]
    assert ds[3] == (len(first), len(first))


def test_single_file_environments_open_by_file_path(tmp_path: Path) -> None:
    """A data.mdb path, or a subdir=False *.lmdb file, opens directly."""
    entries = _entries(50)
    _make_env(tmp_path / "env", entries)
    _make_env(tmp_path / "single.lmdb", entries, subdir=False)
    for url in (tmp_path / "env" / "data.mdb", tmp_path / "single.lmdb"):
        ds = sl.StreamingDataset(url)
        assert [s["key"] for s in ds] == sorted(entries)


def test_environment_streams_through_streamloader_workers(
    env_dir: tuple[Path, dict[bytes, bytes]],
) -> None:
    """StreamLoader with 2 workers and shuffling delivers every entry exactly once."""
    path, entries = env_dir
    ds = sl.StreamingDataset(path, columns=["key"], shuffle=True, seed=3)
    loader = sl.StreamLoader(ds, batch_size=16, num_workers=2, collate_fn=_rows)
    keys = [row["key"] for batch in loader for row in batch]
    assert sorted(keys) == sorted(entries)
    assert keys != sorted(entries)


def test_environment_changed_after_opening_is_refused(
    env_dir: tuple[Path, dict[bytes, bytes]],
) -> None:
    """Entries added after the dataset was opened make the reader refuse it, naming the file."""
    path, _ = env_dir
    ds = sl.StreamingDataset(path)
    env = lmdb.open(str(path), map_size=2**24)
    with env.begin(write=True) as txn:
        for i in range(2000):
            txn.put(b"new-%05d" % i, os.urandom(100))
    env.close()
    with pytest.raises(FormatError, match=r"data\.mdb"):
        ds[0]


def test_directory_without_index_or_environment_is_still_incomplete(tmp_path: Path) -> None:
    """A directory with neither index.json nor data.mdb gives the usual 'incomplete' error."""
    with pytest.raises(FormatError, match="missing or incomplete"):
        sl.StreamingDataset(tmp_path)


def test_truncated_environment_is_a_format_error(tmp_path: Path) -> None:
    """A truncated data.mdb is refused when the dataset opens, before LMDB maps it."""
    _make_env(tmp_path / "env", {b"k%05d" % i: os.urandom(3000) for i in range(200)})
    data = tmp_path / "env" / "data.mdb"
    os.truncate(data, os.path.getsize(data) // 2)
    with pytest.raises(FormatError, match="truncated"):
        sl.StreamingDataset(tmp_path / "env")


def test_values_decode_into_tensors_with_a_transform(tmp_path: Path) -> None:
    """A typical vision LMDB (encoded array + label per key) trains through the loader."""
    env = lmdb.open(str(tmp_path / "env"), map_size=2**24)
    with env.begin(write=True) as txn:
        for i in range(40):
            txn.put(b"%08d" % i, np.full(4, i, np.float32).tobytes() + bytes([i % 3]))
    env.close()

    def decode(entry: dict[str, Any]) -> tuple[torch.Tensor, int]:
        value = entry["value"]
        return torch.from_numpy(np.frombuffer(value[:16], np.float32).copy()), value[16]

    loader = sl.StreamLoader(sl.StreamingDataset(tmp_path / "env", transform=decode), batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == (8, 4) and x[:, 0].tolist() == list(range(8))
    assert y.tolist() == [i % 3 for i in range(8)]


def test_remote_environment_is_read_through_a_local_copy(
    env_dir: tuple[Path, dict[bytes, bytes]],
) -> None:
    """An environment at an fsspec URL (memory://) reads like a local one."""
    import fsspec

    path, entries = env_dir
    fs = fsspec.filesystem("memory")
    fs.put_file(str(path / "data.mdb"), "/remote-env/data.mdb")
    try:
        ds = sl.StreamingDataset("memory://remote-env")
        assert len(ds) == len(entries)
        assert [(s["key"], s["value"]) for s in ds] == sorted(entries.items())
    finally:
        fs.rm("/remote-env", recursive=True)

"""Local shards are hashed once per file version per machine, and again whenever the file changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import streamload as sl
from streamload.dataset import open_shards as dataset_module
from streamload.format import verified


def _write(root: Path, n: int = 40) -> Path:
    with sl.ShardWriter(str(root), shard_size=4096) as w:
        for i in range(n):
            w.write({"id": i, "x": np.full(64, i, dtype=np.int64)})
    return root


def _count_digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every shard hash the dataset computes (a fresh process has no in-memory marks)."""
    calls: list[str] = []
    real = dataset_module.file_digest

    def counting(fs: object, path: str, algorithm: str = "xxh3_64") -> str:
        calls.append(os.path.basename(path))
        return real(fs, path, algorithm)

    monkeypatch.setattr(dataset_module, "file_digest", counting)
    monkeypatch.setattr(verified, "_SEEN", set())
    return calls


def _read_all(root: Path, cache_dir: Path) -> list[int]:
    ds = sl.StreamingDataset(str(root), cache_dir=str(cache_dir), verify=True)
    return [int(i) for i in ds.get_batch(np.arange(len(ds)))["id"]]


def test_a_verified_shard_is_not_rehashed_by_a_fresh_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marks on disk spare later processes (e.g. each epoch's new workers) the hash."""
    root, cache = _write(tmp_path / "ds"), tmp_path / "cache"
    shards = sorted(p.name for p in root.glob("*.arrow"))
    assert len(shards) > 1
    calls = _count_digests(monkeypatch)
    assert _read_all(root, cache) == list(range(40))
    assert sorted(calls) == shards
    calls = _count_digests(monkeypatch)  # as if in a new process
    assert _read_all(root, cache) == list(range(40))
    assert calls == []


def test_a_changed_file_is_hashed_again_even_with_its_mtime_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-size rewrite with the old mtime put back is still caught (ctime moved)."""
    root, cache = _write(tmp_path / "ds"), tmp_path / "cache"
    _read_all(root, cache)
    path = sorted(root.glob("*.arrow"))[0]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[300] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    _count_digests(monkeypatch)
    with pytest.raises(sl.FormatError, match=f"{path.name}.*checksum mismatch"):
        _read_all(root, cache)


def test_marks_are_per_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another cache dir has no marks: its first reader hashes again."""
    root = _write(tmp_path / "ds")
    _read_all(root, tmp_path / "c1")
    calls = _count_digests(monkeypatch)
    _read_all(root, tmp_path / "c2")
    assert calls


def test_an_unwritable_cache_dir_still_verifies_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No marks can be written (cache_dir is a file): reads work, the hash repeats per process."""
    root, cache = _write(tmp_path / "ds"), tmp_path / "not-a-dir"
    cache.write_bytes(b"")
    calls = _count_digests(monkeypatch)
    assert _read_all(root, cache) == list(range(40))
    assert calls
    calls = _count_digests(monkeypatch)
    _read_all(root, cache)
    assert calls

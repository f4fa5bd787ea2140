"""``streamload cache ls|du|clear``: what is cached, how much against cache_limit, emptying it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xxhash

from streamload.cache.disk import DiskCache, ShardKey
from streamload.cache.locks import Pin
from streamload.cli.main import main


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """STREAMLOAD_CACHE_DIR pointing at a fresh directory (no config file in the way)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAMLOAD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("STREAMLOAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STREAMLOAD_CACHE_LIMIT", "1MB")
    return tmp_path / "cache"


def _fill(cache_dir: Path, url: str, sizes: list[int]) -> list[Pin]:
    """Cache shards of ``url`` with ``sizes``; returns their pins (held)."""
    cache = DiskCache(cache_dir, 1_000_000)
    pins = []
    for k, size in enumerate(sizes):
        data = bytes([k]) * size
        key = ShardKey(url, f"shard-{k:05d}.arrow", size, "xxh3_64", xxhash.xxh3_64_hexdigest(data))
        pins.append(cache.pin(key, lambda f, data=data: f.write(data)))
    return pins


def test_cache_ls_and_du_show_shards_per_dataset_against_the_limit(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ls names every cached shard with its dataset; du sums bytes per dataset and in total."""
    for pin in _fill(cache_dir, "s3://a/ds", [1000, 2000]) + _fill(cache_dir, "gs://b/ds", [500]):
        pin.close()
    assert main(["cache", "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["dataset"], r["shard"], r["bytes"]) for r in rows) == [
        ("gs://b/ds", "shard-00000.arrow", 500),
        ("s3://a/ds", "shard-00000.arrow", 1000),
        ("s3://a/ds", "shard-00001.arrow", 2000),
    ]
    assert main(["cache", "du", "--json"]) == 0
    du = json.loads(capsys.readouterr().out)
    # The total is what counts against cache_limit: the shards and each dataset's SOURCE.
    sources = len("s3://a/ds\n") + len("gs://b/ds\n")
    assert du["bytes"] == 3500 + sources and du["cache_limit"] == 1_000_000
    assert du["datasets"] == {
        "s3://a/ds": {"shards": 2, "bytes": 3000},
        "gs://b/ds": {"shards": 1, "bytes": 500},
    }
    assert main(["cache", "du"]) == 0
    assert "total 3.4 KiB of cache_limit" in capsys.readouterr().out


def test_cache_clear_deletes_unpinned_shards_only_and_nothing_it_did_not_make(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """clear frees what no process reads; a pinned shard and foreign files survive."""
    pins = _fill(cache_dir, "s3://a/ds", [1000, 2000])
    pins[1].close()
    foreign = cache_dir / "someone-else" / "keep.bin"
    foreign.parent.mkdir()
    foreign.write_bytes(b"mine")
    assert main(["cache", "clear"]) == 0
    assert "removed 1 shard(s), 2.0 KiB" in capsys.readouterr().out
    assert Path(pins[0].path).read_bytes() == b"\x00" * 1000
    assert foreign.read_bytes() == b"mine"
    pins[0].close()
    assert main(["cache", "clear"]) == 0
    capsys.readouterr()
    assert main(["cache", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

"""StreamingDataset end to end over real servers on 127.0.0.1: write -> store -> cache -> workers.

Datasets are written with ShardWriter itself (s3, gs) or into the HTTP server's directory. Loader
workers use the ``fork`` start method here so they inherit the test's environment (the fast
retry backoff of conftest.py); cache_dir and cache_limit are passed explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import Remote

from streamload import ShardWriter, StreamingDataset, StreamLoader
from streamload.cli.main import main

N = 600


def _write(remote: Remote, n: int = N, shard_size: str = "24KiB") -> None:
    """A dataset of ``n`` samples (id, 64 int64s) at ``remote`` (or its direct twin)."""
    target = remote.direct or remote
    if target.local_dir is not None:
        with ShardWriter(str(target.local_dir), shard_size=shard_size, overwrite=True) as w:
            for i in range(n):
                w.write({"id": i, "x": np.full(64, i, np.int64)})
        return
    with ShardWriter(
        target.url, shard_size=shard_size, storage_options=target.storage_options
    ) as w:
        for i in range(n):
            w.write({"id": i, "x": np.full(64, i, np.int64)})


def _open(
    remote: Remote, cache: Path, shards_in_cache: int = 100, **kwargs: Any
) -> StreamingDataset:
    probe = StreamingDataset(remote.url, storage_options=remote.storage_options, cache_dir=cache)
    biggest = max(s.bytes for s in probe.index.shards)
    return StreamingDataset(
        remote.url,
        storage_options=remote.storage_options,
        cache_dir=cache,
        cache_limit=shards_in_cache * biggest,
        **kwargs,
    )


def _epoch_ids(ds: StreamingDataset, workers: int) -> list[int]:
    if workers == 0:
        return [s["id"] for s in ds]
    loader = StreamLoader(ds, batch_size=16, num_workers=workers, multiprocessing_context="fork")
    return np.concatenate([b["id"].numpy() for b in loader]).tolist()


@pytest.mark.parametrize("where", ["s3_url", "gcs_url", "http_url"])
def test_a_remote_dataset_streams_every_sample_once_through_the_cache(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """s3, gs and http(s): two loader workers read every sample once; shards land in the cache."""
    remote: Remote = request.getfixturevalue(where)
    _write(remote)
    ds = _open(remote, tmp_path / "cache")
    assert sorted(_epoch_ids(ds, 2)) == list(range(N))
    cached = [
        f for _, _, files in os.walk(tmp_path / "cache") for f in files if f.endswith(".arrow")
    ]
    assert len(cached) == ds.num_shards


@pytest.mark.parametrize("where", ["faulty_s3", "faulty_http"])
def test_every_sample_exactly_once_while_30_percent_of_gets_fail(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """30% of GETs answer 503 SlowDown or reset: the epoch still yields each sample exactly once."""
    remote: Remote = request.getfixturevalue(where)
    _write(remote)
    # 2 workers x (2 open + 2 read-ahead) shards, plus each process's plan file and the index
    # copy, which count against cache_limit too: 9 shards leave room for them.
    ds = _open(remote, tmp_path / "cache", shards_in_cache=9)
    remote.proxy.fail_randomly(0.3, ("slowdown", "reset"), seed=1)
    ids = _epoch_ids(ds, 2)
    assert sorted(ids) == list(range(N))
    assert remote.proxy.injected  # faults really happened


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_four_processes_sharing_one_cache_make_one_download_per_shard_per_pass(
    faulty_s3: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four loader workers, cache_limit below the corpus (16 of 25 shards): one GET per shard,
    counted at the proxy, and no HEAD. (Exactly one needs room for the pinned working set, 4
    workers x 2 open shards, plus how far the workers drift apart, which the rings bound.)"""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "0")  # no next-pass downloads in the count
    _write(faulty_s3, n=2 * N)
    ds = _open(faulty_s3, tmp_path / "cache", shards_in_cache=16)
    faulty_s3.proxy.reset_counts()
    loader = StreamLoader(
        ds, batch_size=16, num_workers=4, multiprocessing_context="fork", ring_size=32 * 1024
    )
    ids = np.concatenate([b["id"].numpy() for b in loader]).tolist()
    assert sorted(ids) == list(range(2 * N))
    assert ds.num_shards > 16
    for shard in ds.index.shards:
        assert faulty_s3.proxy.count("GET", shard.name) == 1, shard.name
    assert faulty_s3.proxy.count("HEAD") == 0


def _many_tiny_shards(local_dir: Path, shards: int) -> None:
    """A dataset of ``shards`` one-sample shards (copies of one shard, so it is fast to make)."""
    one = local_dir.parent / f"one-{shards}"
    with ShardWriter(str(one), shard_size="1MB") as w:
        w.write({"id": 0, "x": np.zeros(4, np.int64)})
    index = json.loads((one / "index.json").read_text())
    (entry,) = index["shards"]
    for k in range(shards):
        os.link(one / entry["name"], local_dir / f"shard-{k:05d}.arrow")
    index["shards"] = [dict(entry, name=f"shard-{k:05d}.arrow") for k in range(shards)]
    index["num_samples"] = shards
    (local_dir / "index.json").write_text(json.dumps(index))
    shutil.rmtree(one)


def test_time_to_first_sample_does_not_grow_with_the_shard_count(
    faulty_http: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 or 10,000 shards: opening the dataset and reading sample 0 costs the same requests (the
    index once, one shard; no per-shard HEAD or listing)."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "0")
    assert faulty_http.direct is not None and faulty_http.direct.local_dir is not None
    requests = {}
    for shards in (10, 10_000):
        local = faulty_http.direct.local_dir
        for f in local.iterdir():
            f.unlink()
        _many_tiny_shards(local, shards)
        faulty_http.proxy.reset_counts()
        ds = StreamingDataset(
            faulty_http.url, cache_dir=tmp_path / f"cache-{shards}", cache_limit="1GB"
        )
        assert len(ds) == shards
        assert ds[0]["id"] == 0
        requests[shards] = (faulty_http.proxy.count(), faulty_http.proxy.count("GET", "index.json"))
    assert requests[10] == requests[10_000]
    assert requests[10][1] == 1


def test_info_and_verify_work_on_a_remote_url(
    http_url: Remote, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streamload info`` and ``verify`` read a remote dataset; verify names a corrupted shard."""
    _write(http_url)
    assert main(["info", http_url.url]) == 0
    assert "600" in capsys.readouterr().out
    assert main(["verify", http_url.url]) == 0
    assert "OK" in capsys.readouterr().out
    assert http_url.local_dir is not None
    shard = sorted(http_url.local_dir.glob("shard-*.arrow"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", http_url.url]) == 1
    assert f"BAD  {shard.name}: checksum mismatch" in capsys.readouterr().out

"""A mixture of three datasets in an object store (moto S3), through one shared shard cache.

The three sources live under one bucket; every StreamingDataset uses the same cache_dir. Loader
workers use ``fork`` so they inherit the test's environment (fast retry backoff, conftest.py).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from servers import Remote

import streamload as sl

SIZES = {"web": 300, "code": 120, "books": 60}
WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2}
BATCH = 10  # every step takes exactly 5 / 3 / 2


def _write(remote: Remote) -> dict[str, Remote]:
    """The three sources, each a dataset of small shards at its own prefix (ids name sources)."""
    out = {}
    target = remote.direct or remote
    for k, (name, n) in enumerate(SIZES.items()):
        url = f"{target.url}-{name}"
        with sl.ShardWriter(url, shard_size="4KiB", storage_options=target.storage_options) as w:
            for i in range(n):
                w.write({"id": 1000 * k + i, "x": np.full(32, i, np.int64)})
        out[name] = replace(remote, url=f"{remote.url}-{name}")
    return out


def _mix(sources: dict[str, Remote], cache: Path, **kwargs: object) -> sl.MixedDataset:
    datasets = {
        name: sl.StreamingDataset(
            r.url, storage_options=r.storage_options, cache_dir=cache, cache_limit="64MiB"
        )
        for name, r in sources.items()
    }
    return sl.MixedDataset(datasets, weights=WEIGHTS, **kwargs)  # type: ignore[arg-type]


def _source(i: int) -> str:
    return ("web", "code", "books")[i // 1000]


def test_three_remote_sources_mix_exactly_through_one_shared_cache(
    faulty_s3: Remote, tmp_path: Path
) -> None:
    """Two loader workers over three S3 sources sharing one cache dir: every batch is exactly
    5/3/2, each source's draws run through its own epochs without a repeat, every shard read
    lands in the one cache with one GET and the per-source stats match."""
    sources = _write(faulty_s3)
    faulty_s3.proxy.reset_counts()
    cache = tmp_path / "cache"
    mix = _mix(sources, cache, samples=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 2 workers on a 2-CPU machine
        loader = sl.StreamLoader(
            mix, batch_size=BATCH, num_workers=2, multiprocessing_context="fork", timeout=120
        )
        draws: dict[str, list[int]] = {n: [] for n in SIZES}
        for batch in loader:
            ids = batch["id"].tolist()
            assert Counter(_source(i) for i in ids) == {"web": 5, "code": 3, "books": 2}
            for i in ids:
                draws[_source(i)].append(i % 1000)
    for name, got in draws.items():
        n = SIZES[name]
        for first in range(0, len(got), n):
            chunk = got[first : first + n]
            assert len(set(chunk)) == len(chunk), name  # no repeat within a source epoch
    assert len(draws["books"]) == 80 > SIZES["books"]  # books ran out and started over
    cached = [f for _, _, files in os.walk(cache) for f in files if f.endswith(".arrow")]
    touched = 0
    for name, dataset in mix.sources.items():
        read = set(np.searchsorted(dataset.index.sample_offsets, draws[name], "right") - 1)
        touched += len(read)
        for k, shard in enumerate(dataset.index.shards):
            gets = faulty_s3.proxy.count("GET", f"-{name}/{shard.name}")
            assert gets == 1 if k in read else gets <= 1, (name, shard.name, gets)
    assert len(cached) >= touched  # read-ahead may have fetched the next epoch's first shards
    stats = loader.stats()["sources"]
    assert {n: s["samples"] for n, s in stats.items()} == {"web": 200, "code": 120, "books": 80}


def test_each_sources_read_ahead_follows_the_mixed_plan(
    s3_url: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At num_workers=0, after the first batch, each source's read-ahead walks exactly the shards
    the mixed plan will open for that source (not the source's own order) and reserves the next
    ones the reader does not hold already."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "2")
    sources = _write(s3_url)
    mix = _mix(sources, tmp_path / "cache", samples=400)
    loader = sl.StreamLoader(mix, batch_size=BATCH)
    iterator = iter(loader)
    next(iterator)
    plan = loader.epoch_plan()
    for s, (name, dataset) in enumerate(mix.sources.items()):
        remote = dataset._remote_shards()
        offsets = dataset.index.sample_offsets
        opened: list[int] = []  # each batch opens its shards of this source in shard order
        for step in range(plan.num_steps):
            ids = plan.source_ids(0, step, s)
            for k in np.unique(np.searchsorted(offsets, ids, "right") - 1).tolist():
                if not opened or opened[-1] != k:
                    opened.append(k)
        sequence, cursor = remote.plan
        assert sequence.window(cursor, len(opened) - cursor) == opened[cursor:], name
        # The next two shards, except those the reader still holds open (local already).
        held = set(remote._pins)
        expected = [k for k in opened[cursor + 1 : cursor + 3] if k not in held]
        assert remote.readahead.wait_reserved(expected, timeout=60), (name, expected)

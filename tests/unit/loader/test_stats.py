"""loader.stats(): the numbers are right (counts, bytes, data-wait, stage times, cache hook)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, default_collate

from streamload import ShardWriter, StreamingDataset, StreamLoader, telemetry
from streamload.loader import stats as sl_stats

N = 96
ROW = 16  # float32 values per sample


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("stats-ds")
    with ShardWriter(str(root), shard_size="4KB") as w:
        for i in range(N):
            w.write({"id": i, "x": np.full(ROW, i, dtype=np.float32)})
    return str(root)


class CachedSquares(Dataset[Any]):
    """A map-style dataset that counts a cache hit per sample and a miss every 4th."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        telemetry.CACHE.add("hits")
        if i % 4 == 0:
            telemetry.CACHE.add("misses")
        return {"v": np.full(4, i, np.int64)}


def _sleepy_collate(samples: list[Any]) -> Any:
    time.sleep(0.02)
    return default_collate(samples)


def _slow_transform(sample: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.002)
    return sample


def _batch_bytes(batch: Any) -> int:
    return sum(t.numel() * t.element_size() for t in batch.values())


@pytest.mark.parametrize("workers", [0, 2])
def test_samples_steps_and_bytes_equal_what_the_loop_received(url: str, workers: int) -> None:
    """samples == len(dataset), steps == len(loader), bytes == the batches' tensor bytes."""
    loader = StreamLoader(StreamingDataset(url), batch_size=10, num_workers=workers)
    received = 0
    for batch in loader:
        received += _batch_bytes(batch)
    stats = loader.stats()
    assert stats["samples"] == N
    assert stats["steps"] == len(loader)
    assert stats["bytes"] == received == N * (ROW * 4 + 8)
    assert stats["samples_per_s"] > 0 and stats["bytes_per_s"] > 0
    json.dumps(stats)  # plain, JSON-serialisable


@pytest.mark.parametrize("workers", [0, 1])
def test_data_wait_rises_when_collate_is_slow(url: str, workers: int) -> None:
    """A 20 ms/batch collate raises the data-wait p50 well above a plain run's."""
    p50 = {}
    for name, collate in (("plain", None), ("slow", _sleepy_collate)):
        loader = StreamLoader(
            StreamingDataset(url), batch_size=16, num_workers=workers, collate_fn=collate
        )
        for _ in loader:
            pass
        wait = loader.stats()["data_wait"]
        assert wait["p50_s"] <= wait["p95_s"] <= wait["p99_s"] <= wait["max_s"]
        p50[name] = wait["p50_s"]
    assert p50["slow"] > 3 * p50["plain"]


def test_stage_times_are_non_negative_and_bounded_by_wall_time(url: str) -> None:
    """Every stage time is >= 0 and busy time fits in wall time x workers; transform is seen."""
    workers = 2
    ds = StreamingDataset(url, transform=_slow_transform)
    loader = StreamLoader(ds, batch_size=8, num_workers=workers)
    started = time.perf_counter()
    for _ in loader:
        pass
    wall = time.perf_counter() - started
    stages = loader.stats()["stages"]
    assert stages["num_workers"] == workers
    assert all(v >= 0 for v in stages["busy_s"].values())
    assert sum(stages["busy_s"].values()) <= wall * workers
    assert max(stages["busy_s"], key=stages["busy_s"].get) == "transform"
    per_worker = stages["per_worker"]
    assert [w["worker"] for w in per_worker] == [0, 1]
    assert sum(w["batches"] for w in per_worker) == len(loader)
    for w in per_worker:
        assert w["busy_s"] <= wall and all(v >= 0 for v in w["stages_s"].values())


def test_stats_before_any_pass_are_zero(url: str) -> None:
    """A fresh loader reports zeros (and the no-cache note), not errors."""
    stats = StreamLoader(StreamingDataset(url), batch_size=4).stats()
    assert (stats["steps"], stats["samples"], stats["bytes"]) == (0, 0, 0)
    assert stats["data_wait"]["p99_s"] == 0.0
    assert stats["cache"]["enabled"] is False and stats["cache"]["hit_rate"] is None
    assert stats["padding_samples"] == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_counters_reach_stats_from_every_process(workers: int) -> None:
    """Counts the cache adds to stats.CACHE (here: in the dataset) arrive in stats()["cache"]."""
    loader = StreamLoader(CachedSquares(), batch_size=8, num_workers=workers)
    for _ in loader:
        pass
    cache = loader.stats()["cache"]
    assert cache["hits"] == N
    assert cache["misses"] == N // 4
    assert cache["hit_rate"] == pytest.approx(N / (N + N // 4))


def test_ring_section_reports_the_workers_rings(url: str) -> None:
    """With workers, the ring section counts one ring per worker and a sane occupancy."""
    loader = StreamLoader(StreamingDataset(url), batch_size=4, num_workers=2, ring_size="1MiB")
    for _ in loader:
        pass
    ring = loader.stats()["ring"]
    assert ring["rings"] == 2
    assert ring["capacity_bytes"] == 2 * (1 << 20)
    assert 0.0 <= ring["occupancy"] <= 1.0


def test_epoch_summary_is_logged_at_info(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """At INFO, the end of an epoch logs one line: data-wait share, slowest stage, cache."""
    ds = StreamingDataset(url, transform=_slow_transform)
    loader = StreamLoader(ds, batch_size=16, num_workers=1)
    with caplog.at_level(logging.INFO, logger="streamload"):
        for _ in loader:
            pass
    lines = [r.getMessage() for r in caplog.records if "waited for data" in r.getMessage()]
    assert len(lines) == 1
    assert "slowest stage: transform" in lines[0]
    assert "cache hit rate n/a" in lines[0]


def test_no_summary_below_info(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """At the default WARNING level the epoch summary stays silent."""
    loader = StreamLoader(StreamingDataset(url), batch_size=16)
    with caplog.at_level(logging.WARNING, logger="streamload"):
        for _ in loader:
            pass
    assert not [r for r in caplog.records if "waited for data" in r.getMessage()]


def test_reservoir_is_bounded_and_exact_below_its_size() -> None:
    """Percentiles are exact up to the reservoir size and memory stays bounded beyond it."""
    small = sl_stats.Reservoir(size=100)
    for v in range(1, 101):
        small.add(float(v))
    assert small.percentiles((50,)) == [pytest.approx(50.5)]
    big = sl_stats.Reservoir(size=100)
    for v in range(100_000):
        big.add(float(v))
    assert len(big.values) == 100 and big.count == 100_000
    assert 25_000 < big.percentiles((50,))[0] < 75_000


def test_stats_leave_the_global_rngs_alone(url: str) -> None:
    """Collecting stats draws nothing from torch's or Python's global RNG."""
    import random

    loader = StreamLoader(StreamingDataset(url), batch_size=4)
    iterator = iter(loader)  # draws the base seed, as DataLoader does
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    for _ in iterator:
        pass
    loader.stats()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


def test_known_bytes_skip_the_walk_but_samples_still_come_from_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the bytes given (a worker batch's metadata), no leaf is summed: samples come
    from the first array or the first list of str/bytes."""
    monkeypatch.setattr(sl_stats, "_walk", lambda *_: pytest.fail("walked the batch"))
    batch = {"meta": {"text": ["a", "b", "c"]}, "x": np.zeros((5, 2))}
    assert sl_stats.batch_size_and_bytes(batch, nbytes=123) == (3, 123)
    assert sl_stats.batch_size_and_bytes([{"x": torch.zeros(4)}], nbytes=7) == (4, 7)
    assert sl_stats.batch_size_and_bytes({"k": 1}, nbytes=0) == (1, 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_text_bytes_are_the_rows_utf8_bytes_in_process_and_from_workers(
    tmp_path: Path, workers: int
) -> None:
    """A text column's bytes count the same at 0 and 2 workers (ASCII rows: characters ==
    UTF-8 bytes), and equal the rows plus the id column."""
    url = str(tmp_path / "text")
    rows = [f"row {i:04d} " + "y" * (i % 13) for i in range(200)]
    with ShardWriter(url, format="arrow", shard_size="4KB") as w:
        for i, text in enumerate(rows):
            w.write({"id": i, "text": text})
    loader = StreamLoader(StreamingDataset(url), batch_size=32, num_workers=workers)
    assert sum(len(b["text"]) for b in loader) == len(rows)
    assert loader.stats()["bytes"] == sum(map(len, rows)) + 8 * len(rows)


def test_batch_size_and_bytes_walks_nested_batches() -> None:
    """Samples come from the first array's leading dim; bytes sum arrays, bytes and str."""
    batch = {
        "a": torch.zeros(5, 3, dtype=torch.float64),
        "b": [np.zeros(2, np.uint8), b"xyz"],
        "c": ("hé", None),
    }
    assert sl_stats.batch_size_and_bytes(batch) == (5, 5 * 3 * 8 + 2 + 3 + 3)
    assert sl_stats.batch_size_and_bytes(["s1", "s2"]) == (2, 4)


def test_persistent_workers_report_every_epoch(url: str) -> None:
    """Over two epochs on one persistent pool, counts double and every batch is accounted."""
    loader = StreamLoader(
        StreamingDataset(url), batch_size=8, num_workers=2, persistent_workers=True
    )
    for _ in range(2):
        for _ in loader:
            pass
    stats = loader.stats()
    assert stats["samples"] == 2 * N and stats["steps"] == 2 * len(loader)
    assert sum(w["batches"] for w in stats["stages"]["per_worker"]) == 2 * len(loader)


class Countdown(torch.utils.data.IterableDataset[Any]):
    """An iterable dataset split across workers by get_worker_info."""

    def __iter__(self) -> Any:
        info = torch.utils.data.get_worker_info()
        first, step = (info.id, info.num_workers) if info else (0, 1)
        return iter(np.arange(first, N, step, dtype=np.int64))


def test_iterable_dataset_with_workers_counts_every_sample() -> None:
    """The dispatched iterable route (workers run dry at different times) counts all samples."""
    loader = StreamLoader(Countdown(), batch_size=5, num_workers=2)
    got = sum(len(batch) for batch in loader)
    stats = loader.stats()
    assert got == stats["samples"] == N
    assert stats["bytes"] == N * 8


def test_per_source_counts_add_up_batches_of_any_shape_exactly() -> None:
    """count_sources: per source, the rows it gave and their bytes (fixed-size leaves split
    evenly by row, text by each row's characters) add up exactly over batches of many shapes,
    including more shapes than are tallied before being added up, and a nested batch."""
    rng = np.random.default_rng(0)
    names = ("web", "code", "books")
    stats = sl_stats.LoaderStats()
    want = {n: {"samples": 0, "bytes": 0} for n in names}
    for step in range(200):
        counts = tuple(int(c) for c in rng.integers(0, 3, size=3))
        rows = np.repeat(np.arange(3), counts)
        rng.shuffle(rows)
        n = len(rows)
        # Padded per batch: a few row sizes (batches of one shape recur), then many.
        width = int(rng.integers(1, 4 if step < 100 else 90))
        batch: dict[str, Any] = {
            "tokens": torch.zeros((n, width), dtype=torch.int32),
            "id": np.zeros(n, np.int64),
            "scale": np.float32(1),  # not a per-row leaf: not counted per source
        }
        text = [f"t{i}" * int(rng.integers(0, 3)) for i in range(n)] if step % 3 == 0 else None
        if text is not None:
            batch["meta"] = [{"text": text}]  # nested: bytes that vary by row
        stats.count_sources(names, counts, batch, lambda rows=rows: rows)
        for s, name in enumerate(names):
            k = counts[s]
            want[name]["samples"] += k
            extra = sum(len(t) for t, r in zip(text or [], rows, strict=False) if r == s)
            want[name]["bytes"] += k * (4 * width + 8) + extra
    assert stats.snapshot()["sources"] == want

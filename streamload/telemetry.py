"""Process-wide telemetry every layer records into: named counters and per-stage clocks.

The ground floor of measurement (nothing here imports streamload): the remote cache counts hits,
misses, evictions and downloaded bytes into `CACHE`, the retry policy counts retried and
throttled attempts into `CACHE` too, readers add the time they block on remote shards to
`FETCH_WAIT`, and each fetching process charges its stages to a `StageClock`. The loader's
statistics (`streamload.loader.stats.LoaderStats`) read these; the layers that record never see
the loader.

Invariants: counters are thread-safe (read-ahead threads count downloads while the reader counts
hits); a forked worker resets `CACHE` at start so the trainer's counts are not reported twice;
nothing here draws from a random number generator.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

STAGES = ("fetch", "read", "transform", "collate", "transport")
CACHE_KEYS = ("hits", "misses", "evictions", "bytes_downloaded", "retries", "throttled")


class Counters:
    """Named integer counters (the hook the remote cache increments): ``CACHE.add("hits")``."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self.values = dict.fromkeys(keys, 0)
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (one of the keys given at construction). Thread-safe:
        read-ahead threads count downloads while the reader counts hits."""
        with self._lock:
            self.values[key] += n

    def reset(self) -> None:
        self.values = dict.fromkeys(self._keys, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(self.values)


CACHE = Counters(CACHE_KEYS)
# Nanoseconds readers of this process spent blocked on remote shards (download, or waiting for
# another process's download of the same shard): the "fetch" stage, carved out of "read".
FETCH_WAIT = Counters(("ns",))


class StageClock:
    """Nanoseconds spent per stage in one process (a worker, or the trainer at num_workers=0)."""

    __slots__ = ("batches", "idle_ns", "ns")

    def __init__(self) -> None:
        self.ns = dict.fromkeys(STAGES, 0)
        self.idle_ns = 0
        self.batches = 0

    def add(self, stage: str, started_ns: int) -> int:
        """Charge the time since ``started_ns`` to ``stage``; returns now (the next start)."""
        now = time.perf_counter_ns()
        self.ns[stage] += now - started_ns
        return now

    def collated(self, started_ns: int, collate_fn: Callable[[Any], Any], samples: Any) -> Any:
        """Charge the time since ``started_ns`` to ``read``, then return ``collate_fn(samples)``
        with its time charged to ``collate`` (the tail every sample-based fetcher shares)."""
        started = self.add("read", started_ns)
        batch = collate_fn(samples)
        self.add("collate", started)
        return batch

    def snapshot(self, worker_id: int) -> dict[str, Any]:
        return {
            "worker": worker_id,
            "stages_ns": dict(self.ns),
            "idle_ns": self.idle_ns,
            "batches": self.batches,
            "cache": CACHE.snapshot(),
        }


class TimedTransform:
    """Wraps a dataset's transform so its time is charged to the ``transform`` stage, not read.

    Installed only on a worker's own copy of the dataset; ``read`` time then excludes it.
    """

    def __init__(self, transform: Callable[[Any], Any], clock: StageClock) -> None:
        self.transform = transform
        self.clock = clock

    def __call__(self, sample: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return self.transform(sample)
        finally:
            elapsed = time.perf_counter_ns() - started
            self.clock.ns["transform"] += elapsed
            self.clock.ns["read"] -= elapsed  # the caller charges the whole read to "read"

"""Loader statistics: where the time of a training loop's input pipeline goes.

Three measuring points feed one `LoaderStats` per loader:

- the trainer's ``__next__`` (`SingleProcessIter`, `MultiProcessIter`): how long the training loop
  waited for each batch (*data-wait*), and the samples and bytes it received;
- each fetching process's `StageClock` (the fetchers of `streamload.pipeline.fetch`, the worker loop): time per stage — read
  (``get_batch`` / ``__getitem__`` / the dataset iterator), transform, collate, transport
  (encode + ring write, including waiting for ring space), fetch (downloads; 0 until the remote
  cache exists) — and idle time waiting for work;
- the rings' own counters (``Ring.stats()``: bytes ready, producer/consumer waits).

A worker ships its clock as a cumulative snapshot in a small ERROR-type record (body ``T`` +
JSON) placed just before a batch record, at most every ``REPORT_INTERVAL_S`` and before its last
record of a pass: no extra pipe round trips, no per-batch header. ``WorkerPool.receive``
absorbs these records, so the batch stream is unchanged. Snapshots are cumulative per worker
process, so a lost or late one only delays numbers, never double-counts them.

Invariants: memory is bounded (data-wait percentiles come from a fixed-size reservoir, exact
max kept separately); nothing here draws from the global RNGs (the reservoir has its own
``random.Random``), so enabling stats never changes a loader's batches or RNG state. The
``stats()`` dict's keys are documented in `LoaderStats.snapshot` and are stable.

Cache counters: the remote cache (`streamload.cache.disk.DiskCache`: hits, misses, evictions, bytes downloaded) and
the retry policy (`streamload.store.retry.RetryPolicy`: retried attempts, throttling among them) increment the
process-wide `streamload.telemetry.CACHE` counters; workers reset it at start and report theirs with their clock.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamload.loader import protocol
from streamload.telemetry import CACHE, CACHE_KEYS, STAGES, StageClock

logger = logging.getLogger("streamload")

REPORT_INTERVAL_S = 0.5
RESERVOIR_SIZE = 4096


class WorkerReporter:
    """A worker's clock and when to ship it (see the module docstring)."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.clock = StageClock()
        self._last = time.monotonic()
        CACHE.reset()  # counts inherited from the trainer at fork are not this worker's

    def due(self) -> bool:
        return time.monotonic() - self._last >= REPORT_INTERVAL_S

    def record(self) -> bytes:
        """The stats record body: ``T`` + the cumulative snapshot as JSON."""
        self._last = time.monotonic()
        return protocol.STATS + json.dumps(self.clock.snapshot(self.worker_id)).encode()


def batch_size_and_bytes(batch: Any, nbytes: int | None = None) -> tuple[int, int]:
    """(samples, bytes) of a delivered batch: the leading dimension of its first array leaf
    (else the length of its first list of str/bytes, else 1) and the sum of its array, tensor
    and bytes leaves' sizes; a str counts its UTF-8 bytes, except in a list of strings (a text
    column), which counts characters: the walk stays a C-level pass over the column.

    ``nbytes``: the bytes are already known (a worker's batch: the record's metadata gives
    every leaf's size, str rows as their UTF-8 bytes, so non-ASCII text counts its bytes there
    and its characters in-process); only the samples are looked up."""
    samples: list[int] = []
    if nbytes is None:
        nbytes = _walk(batch, samples)
    else:
        _first_samples(batch, samples)
    return (samples[0] if samples else 1), nbytes


def _first_samples(obj: Any, samples: list[int]) -> None:
    """Append what `_walk` would take as the batch's samples, without touching every row."""
    if hasattr(obj, "nbytes") and hasattr(obj, "shape"):
        samples.append(int(obj.shape[0]) if len(obj.shape) else 1)
    elif isinstance(obj, dict | list | tuple):
        if isinstance(obj, list | tuple) and obj and isinstance(obj[0], str | bytes):
            samples.append(len(obj))
            return
        for value in obj.values() if isinstance(obj, dict) else obj:
            _first_samples(value, samples)
            if samples:
                return


def _walk(obj: Any, samples: list[int]) -> int:
    nbytes = getattr(obj, "nbytes", None)
    if nbytes is not None and hasattr(obj, "shape"):  # numpy array or torch tensor
        if not samples:
            samples.append(int(obj.shape[0]) if len(obj.shape) else 1)
        return int(nbytes)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj)
    if isinstance(obj, str):
        return len(obj.encode())
    if isinstance(obj, dict):
        return sum(_walk(v, samples) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (str, bytes)):
            if not samples:
                samples.append(len(obj))
            try:  # a column of strings: one C-level pass, no per-item Python call
                return sum(map(len, obj))
            except TypeError:  # mixed leaves
                pass
        return sum(_walk(v, samples) for v in obj)
    return 0


def _bytes_by_row(obj: Any, n: int, varying: list[Any]) -> float:
    """The bytes every row of an ``n``-row batch has alike (arrays and tensors whose leading
    dimension is the batch, split evenly by row), for the caller to add by count; leaves whose
    bytes vary by row (a list of ``n`` str/bytes: each item's length, characters for str, as
    `batch_size_and_bytes`) are appended to ``varying`` for the caller to split by row."""
    if type(obj) is dict:  # the usual batch, columns of arrays or tensors: no recursion
        even = 0.0
        for value in obj.values():
            try:
                shape, nbytes = value.shape, value.nbytes
            except AttributeError:
                break
            if len(shape) and shape[0] == n and n:
                even += int(nbytes) / n
        else:
            return even
    shape = getattr(obj, "shape", None)
    if shape is not None and hasattr(obj, "nbytes"):
        if len(shape) and shape[0] == n and n:
            return int(obj.nbytes) / n
        return 0.0
    even = 0.0
    if isinstance(obj, dict):
        for value in obj.values():
            even += _bytes_by_row(value, n, varying)
    elif isinstance(obj, (list, tuple)):
        if len(obj) == n and obj and isinstance(obj[0], (str, bytes)):
            varying.append(obj)
        else:
            for value in obj:
                even += _bytes_by_row(value, n, varying)
    return even


def _count_nonzero(values: Any) -> int:
    """Non-zero entries of a numpy array or torch tensor (a CPU tensor is counted through a
    numpy view: ~20x cheaper than torch's reduction for one batch)."""
    if hasattr(values, "numpy") and getattr(values, "device", None) is not None:
        if values.device.type == "cpu" and not values.requires_grad:
            return int(np.count_nonzero(values.numpy()))
        return int(values.count_nonzero())
    return int(np.count_nonzero(values))


class Reservoir:
    """A uniform sample of at most ``size`` values (Vitter's algorithm R), exact below size."""

    def __init__(self, size: int = RESERVOIR_SIZE) -> None:
        self.size = size
        self.values: list[float] = []
        self.count = 0
        self._random = random.Random(0)  # never the global RNG: stats must not change batches

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._random.randrange(self.count)
        if slot < self.size:
            self.values[slot] = value

    def percentiles(self, qs: tuple[float, ...]) -> list[float]:
        if not self.values:
            return [0.0] * len(qs)
        return [float(v) for v in np.percentile(self.values, qs)]


def timed_step(
    loader_stats: LoaderStats,
    next_batch: Callable[[], Any],
    known_nbytes: Callable[[], int | None] | None = None,
) -> Any:
    """One ``__next__`` of a loader iterator: the wait for ``next_batch()`` is this step's
    data-wait; StopIteration ends the pass (and propagates). ``known_nbytes()``, called after
    ``next_batch``, gives that batch's bytes when the iterator knows them (else None)."""
    started = time.perf_counter()
    try:
        batch = next_batch()
    except StopIteration:
        loader_stats.end_pass()
        raise
    nbytes = known_nbytes() if known_nbytes is not None else None
    loader_stats.step(time.perf_counter() - started, batch, nbytes)
    return batch


class LoaderStats:
    """Everything one loader measured since it was built; ``loader.stats()`` reads `snapshot`."""

    def __init__(self) -> None:
        self.steps = 0
        self.samples = 0
        self.bytes = 0
        self.wait_s = 0.0
        self.wait_max_s = 0.0
        self.waits = Reservoir()
        self.active_s = 0.0  # closed passes' wall time
        self._pass_started: float | None = None
        self._epoch_wait_s = 0.0
        self._epoch_stage_ns = dict.fromkeys(STAGES, 0)
        self.local = StageClock()  # the trainer's own fetching (num_workers=0)
        self._local_cache_base = CACHE.snapshot()
        self.workers: dict[int, dict[str, Any]] = {}  # pid -> latest snapshot
        self.rings: list[Any] = []
        self.num_workers = 0
        self.listeners: list[Callable[[LoaderStats], None]] = []
        self.sources: dict[str, dict[str, int]] = {}  # a mixture's samples and bytes per source
        # Mixed batches not yet added to ``sources``: (names, rows per source, bytes per row)
        # -> batches (a run's batches share few such keys; `_fold_sources` adds them up).
        self._source_batches: dict[tuple[tuple[str, ...], tuple[int, ...], float], int] = {}
        self._occupancy_sum = 0.0
        self._occupancy_samples = 0
        self.packed_tokens = 0  # token slots with segment_ids != 0 (packed token streams)
        self.packed_slots = 0

    # -- measuring points -----------------------------------------------------------------------

    def begin_pass(self, rings: list[Any] | None = None, num_workers: int = 0) -> None:
        """A new pass (``iter()``): its wall time starts now."""
        self.end_pass(log=False)
        self._pass_started = time.perf_counter()
        self._epoch_wait_s = 0.0
        self._epoch_stage_ns = self._stage_totals_ns()
        self.rings = list(rings or [])
        self.num_workers = num_workers

    def step(self, wait_s: float, batch: Any, nbytes: int | None = None) -> None:
        """One batch handed to the training loop after ``wait_s`` seconds in ``__next__``
        (``nbytes``: its bytes when already known, see `batch_size_and_bytes`)."""
        samples, nbytes = batch_size_and_bytes(batch, nbytes)
        self.steps += 1
        self.samples += samples
        self.bytes += nbytes
        self.wait_s += wait_s
        self._epoch_wait_s += wait_s
        self.wait_max_s = max(self.wait_max_s, wait_s)
        self.waits.add(wait_s)
        segment_ids = batch.get("segment_ids") if isinstance(batch, dict) else None
        if segment_ids is not None and hasattr(segment_ids, "shape"):  # packed rows
            self.packed_slots += math.prod(segment_ids.shape)  # np.prod of a torch.Size: ~30 us
            self.packed_tokens += _count_nonzero(segment_ids)
        if self.rings and self.steps % 8 == 0:
            self._sample_occupancy()
        for listener in self.listeners:
            listener(self)

    def worker_report(self, pid: int, body: bytes) -> None:
        """Absorb one worker stats record (see `WorkerReporter.record`)."""
        self.workers[pid] = json.loads(body[1:])

    def end_pass(self, log: bool = True) -> None:
        """The pass ended (StopIteration): close its wall time; log the epoch summary."""
        if self._pass_started is None:
            return
        wall = time.perf_counter() - self._pass_started
        self.active_s += wall
        self._pass_started = None
        if log and logger.isEnabledFor(logging.INFO):
            logger.info(self.summary(wall))

    # -- reading --------------------------------------------------------------------------------

    def summary(self, wall_s: float) -> str:
        """The epoch-end line: data-wait share, slowest stage, cache hit rate."""
        waited = 100.0 * self._epoch_wait_s / wall_s if wall_s > 0 else 0.0
        totals = self._stage_totals_ns()
        spent = {s: totals[s] - self._epoch_stage_ns.get(s, 0) for s in STAGES}
        slowest = max(STAGES, key=lambda s: spent[s])
        workers = max(self.num_workers, 1)
        stage = (
            f"{slowest} ({spent[slowest] / 1e9 / workers:.2f} s per worker)"
            if spent[slowest] > 0
            else "n/a"
        )
        cache = self._cache()
        rate = cache["hit_rate"]
        cache_text = f"{100 * rate:.1f}%" if rate is not None else "n/a (no remote cache)"
        return (
            f"streamload: waited for data {waited:.1f}% of the epoch ({self._epoch_wait_s:.2f} s"
            f" of {wall_s:.2f} s); slowest stage: {stage}; cache hit rate {cache_text}"
        )

    def snapshot(self, padding_samples: int = 0) -> dict[str, Any]:
        """The stats dict (stable keys; times in seconds, sizes in bytes).

        Keys:
            ``steps``, ``samples``, ``bytes``: batches, samples and bytes (array/tensor/bytes
                leaves) handed to the training loop since the loader was built.
            ``elapsed_s``: wall time spent inside passes (``iter()`` to StopIteration, plus the
                running pass); ``samples_per_s``, ``bytes_per_s``: samples/bytes over it.
            ``data_wait``: ``total_s``, ``fraction`` (of ``elapsed_s``), ``mean_s``, ``p50_s``,
                ``p95_s``, ``p99_s`` (from a reservoir of the last-seen 4096-sample uniform
                sample), ``max_s`` (exact): time ``__next__`` spent producing each batch.
            ``stages``: ``num_workers``; ``busy_s`` per stage (``fetch``, ``read``,
                ``transform``, ``collate``, ``transport``) summed over fetching processes;
                ``idle_s`` (workers waiting for work); ``per_worker``: a list of
                ``{"worker", "batches", "busy_s", "idle_s", "stages_s"}``. Workers report at
                most every 0.5 s, so these lag the batch counts slightly. At num_workers=0 the
                trainer's own fetch is timed (worker 0) and ``transform`` is part of ``read``.
            ``ring``: ``rings``, ``capacity_bytes``, ``bytes_ready`` (now), ``occupancy`` (mean
                ready/capacity sampled every 8 steps), ``producer_waits``/``producer_wait_s``
                (workers waiting for ring space), ``consumer_waits``/``consumer_wait_s``.
            ``padding_samples``: repeated samples this rank yields this epoch for equal steps.
            ``packing``: for packed token rows (batches with ``segment_ids``), ``tokens`` (real
                tokens received), ``slots`` (token slots received) and ``padding_fraction``
                (1 - tokens/slots); None when no such batch was received.
            ``cache``: ``enabled`` (True once a remote shard went through the cache), ``note``, ``hits``,
                ``misses``, ``evictions``, ``bytes_downloaded``, ``retries``, ``throttled``,
                ``hit_rate`` (None without lookups).
            ``sources``: over a MixedDataset, ``{name: {"samples", "bytes"}}`` each source
                delivered to the training loop (bytes counted as ``bytes`` is); else empty.
        """
        elapsed = self.active_s
        if self._pass_started is not None:
            elapsed += time.perf_counter() - self._pass_started
        p50, p95, p99 = self.waits.percentiles((50, 95, 99))
        return {
            "steps": self.steps,
            "samples": self.samples,
            "bytes": self.bytes,
            "elapsed_s": elapsed,
            "samples_per_s": self.samples / elapsed if elapsed > 0 else 0.0,
            "bytes_per_s": self.bytes / elapsed if elapsed > 0 else 0.0,
            "data_wait": {
                "total_s": self.wait_s,
                "fraction": self.wait_s / elapsed if elapsed > 0 else 0.0,
                "mean_s": self.wait_s / self.steps if self.steps else 0.0,
                "p50_s": p50,
                "p95_s": p95,
                "p99_s": p99,
                "max_s": self.wait_max_s,
            },
            "stages": self._stages(),
            "ring": self._ring(),
            "padding_samples": padding_samples,
            "packing": (
                {
                    "tokens": self.packed_tokens,
                    "slots": self.packed_slots,
                    "padding_fraction": 1.0 - self.packed_tokens / self.packed_slots,
                }
                if self.packed_slots
                else None
            ),
            "cache": self._cache(),
            "sources": {name: dict(counts) for name, counts in self._fold_sources().items()},
        }

    def count_sources(
        self,
        names: tuple[str, ...],
        samples: tuple[int, ...],
        batch: Any,
        rows: Callable[[], np.ndarray],
    ) -> None:
        """Count a mixed batch per source: ``samples[s]`` of its rows came from ``names[s]``,
        row ``i`` from ``names[rows()[i]]`` (asked for only when some leaf's bytes vary by row:
        the bytes of fixed-size leaves are the same for every row, so a source's share of them
        is its count of rows, and such a batch is only tallied here)."""
        varying: list[Any] = []
        even = _bytes_by_row(batch, sum(samples), varying)
        if not varying:
            key = (names, samples, even)
            pending = self._source_batches
            pending[key] = pending.get(key, 0) + 1
            if len(pending) > 64:  # batches of many shapes (a collate_fn that pads): add up now
                self._fold_sources()
            return
        of = np.asarray(rows(), dtype=np.int64)
        extra = [0.0] * len(names)
        for leaf in varying:
            lengths = np.fromiter(map(len, leaf), dtype=np.float64, count=len(of))
            sums = np.bincount(of, weights=lengths, minlength=len(names)).tolist()
            extra = [a + b for a, b in zip(extra, sums, strict=True)]
        for name, k, b in zip(names, samples, extra, strict=True):
            counts = self.sources.setdefault(name, {"samples": 0, "bytes": 0})
            counts["samples"] += k
            counts["bytes"] += round(k * even + b)

    def _fold_sources(self) -> dict[str, dict[str, int]]:
        """``sources`` with the tallied batches of `count_sources` added (each batch's bytes
        per source rounded as one batch)."""
        pending, self._source_batches = self._source_batches, {}
        for (names, samples, even), batches in pending.items():
            for name, k in zip(names, samples, strict=True):
                counts = self.sources.setdefault(name, {"samples": 0, "bytes": 0})
                counts["samples"] += k * batches
                counts["bytes"] += round(k * even) * batches
        return self.sources

    def _snapshots(self) -> list[dict[str, Any]]:
        local = self.local.snapshot(0)
        local["cache"] = {k: CACHE.values[k] - self._local_cache_base[k] for k in CACHE_KEYS}
        return [local, *self.workers.values()]

    def _stage_totals_ns(self) -> dict[str, int]:
        totals = dict.fromkeys(STAGES, 0)
        for snap in self._snapshots():
            for stage in STAGES:
                totals[stage] += snap["stages_ns"][stage]
        return totals

    def _stages(self) -> dict[str, Any]:
        per_worker: dict[int, dict[str, Any]] = {}
        idle_total = 0
        for snap in self._snapshots():
            if snap["batches"] == 0 and not any(snap["stages_ns"].values()):
                continue  # the trainer's own clock when workers do the fetching
            entry = per_worker.setdefault(
                snap["worker"], {"ns": dict.fromkeys(STAGES, 0), "idle": 0, "batches": 0}
            )
            for stage in STAGES:
                entry["ns"][stage] += snap["stages_ns"][stage]
            entry["idle"] += snap["idle_ns"]
            entry["batches"] += snap["batches"]
            idle_total += snap["idle_ns"]
        totals = self._stage_totals_ns()
        return {
            "num_workers": self.num_workers,
            "busy_s": {s: max(totals[s], 0) / 1e9 for s in STAGES},
            "idle_s": idle_total / 1e9,
            "per_worker": [
                {
                    "worker": worker,
                    "batches": e["batches"],
                    "busy_s": sum(max(v, 0) for v in e["ns"].values()) / 1e9,
                    "idle_s": e["idle"] / 1e9,
                    "stages_s": {s: max(e["ns"][s], 0) / 1e9 for s in STAGES},
                }
                for worker, e in sorted(per_worker.items())
            ],
        }

    def _sample_occupancy(self) -> None:
        for ring in self.rings:
            if ring.closed:
                continue
            st = ring.stats()
            self._occupancy_sum += st["bytes_ready"] / max(st["capacity"], 1)
            self._occupancy_samples += 1

    def _ring(self) -> dict[str, Any]:
        out = {
            "rings": 0,
            "capacity_bytes": 0,
            "bytes_ready": 0,
            "occupancy": (
                self._occupancy_sum / self._occupancy_samples if self._occupancy_samples else 0.0
            ),
            "producer_waits": 0,
            "producer_wait_s": 0.0,
            "consumer_waits": 0,
            "consumer_wait_s": 0.0,
        }
        for ring in self.rings:
            if ring.closed:
                continue
            st = ring.stats()
            out["rings"] += 1
            out["capacity_bytes"] += st["capacity"]
            out["bytes_ready"] += st["bytes_ready"]
            out["producer_waits"] += st["producer_waits"]
            out["producer_wait_s"] += st["producer_wait_ns"] / 1e9
            out["consumer_waits"] += st["consumer_waits"]
            out["consumer_wait_s"] += st["consumer_wait_ns"] / 1e9
        return out

    def _cache(self) -> dict[str, Any]:
        totals = dict.fromkeys(CACHE_KEYS, 0)
        for snap in self._snapshots():
            for key in CACHE_KEYS:
                totals[key] += snap["cache"].get(key, 0)
        lookups = totals["hits"] + totals["misses"]
        return {
            "enabled": lookups > 0,
            "note": "" if lookups else "no remote cache used: shards are read in place",
            **totals,
            "hit_rate": totals["hits"] / lookups if lookups else None,
        }

"""Fetchers: turn the work items of a loader's batch plan into batches.

A loader pass is a *plan* (trainer side: the ordered work items) feeding a *fetcher*:

- ``fetch(item) -> payload`` does the reading and collation; it runs wherever the data is
  loaded (this process at num_workers=0, each worker process later) and raises StopIteration
  when an iterable dataset runs dry.
- ``finish(payload) -> batch`` is the trainer-side last step: identity, except on the columnar
  route, where the payload is numpy columns (raw bytes through the ring) and ``finish`` wraps
  them as tensors without copying.

Work items per route: MAP, an index list from the batch sampler (a single index without
auto-batching); ITERABLE, a ``[None] * batch_size`` ticket (DataLoader's infinite sampler) while
the samples come from the dataset's own iterator; COLUMNAR, an int64 id array or index list;
SAMPLES, an int64 id array of a StreamingDataset's plan (``plan.EpochPlan.batches``) read as the
dataset's own samples (transform applied) and collated with the user's collate_fn. Over a
MixedDataset the plan's items are `streamload.plan.mixture.MixedBatch` (source and id per
row), read the same two ways through the mixture's ``get_batch`` / ``get_samples``.
A ``FetchSpec`` is the picklable recipe a worker needs, besides the dataset, to build its fetcher.
Semantics mirror torch's ``_MapDatasetFetcher`` / ``_IterableDatasetFetcher``
(torch/utils/data/_utils/fetch.py) exactly, including ``__getitems__`` and drop_last.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torch.utils.data import default_collate, get_worker_info

from streamload import telemetry
from streamload.dataset.streaming import StreamingDataset
from streamload.pipeline.collate import StackedColumn, columns_to_torch, stack_columns
from streamload.plan.mixture import MixedBatch
from streamload.telemetry import StageClock


class Route(enum.Enum):
    """How one loader run turns plan items into batches."""

    MAP = "map"
    ITERABLE = "iterable"
    COLUMNAR = "columnar"
    SAMPLES = "samples"


class Fetcher(Protocol):
    """Turns plan items into batches: ``fetch`` (worker side) then ``finish`` (trainer side)."""

    def fetch(self, item: Any) -> Any: ...

    def finish(self, payload: Any) -> Any: ...


@dataclass(frozen=True)
class FetchSpec:
    """A picklable recipe for a fetcher: built once per process that fetches."""

    route: Route
    auto_collation: bool
    collate_fn: Callable[[Any], Any]
    drop_last: bool
    strings: str = "list"  # the columnar route's str/bytes columns: lists or `collate.Blobs`

    def build(self, dataset: Any, clock: StageClock | None = None) -> Fetcher:
        """The fetcher for ``dataset`` (an iterable dataset's ``iter()`` is called here);
        ``clock`` receives its read and collate times (`streamload.telemetry.StageClock`)."""
        fetcher: Any
        if self.route is Route.COLUMNAR:
            fetcher = ColumnarFetcher(dataset, self.strings)
        elif self.route is Route.SAMPLES:
            fetcher = SampleFetcher(dataset, self.collate_fn)
        elif self.route is Route.MAP:
            fetcher = MapFetcher(dataset, self.auto_collation, self.collate_fn)
        else:
            fetcher = IterableFetcher(
                iter(dataset), self.auto_collation, self.collate_fn, self.drop_last
            )
        if clock is not None:
            fetcher.clock = clock
        return fetcher


class MapFetcher:
    """Samples by index (``__getitems__`` when the dataset has it, as DataLoader), then collate."""

    clock = StageClock()  # shared default; `FetchSpec.build(dataset, clock)` sets its own

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable[[Any], Any]):
        self._dataset = dataset
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn

    def fetch(self, item: Any) -> Any:
        started = time.perf_counter_ns()
        if not self._auto_collation:
            sample = self._dataset[item]
        else:
            getitems = getattr(self._dataset, "__getitems__", None)
            sample = getitems(item) if getitems else [self._dataset[i] for i in item]
        return self.clock.collated(started, self._collate_fn, sample)

    def finish(self, payload: Any) -> Any:
        return payload


class IterableFetcher:
    """Up to batch_size samples from the dataset's iterator per ticket, then collate."""

    clock = StageClock()  # shared default; `FetchSpec.build(dataset, clock)` sets its own

    def __init__(
        self,
        iterator: Iterator[Any],
        auto_collation: bool,
        collate_fn: Callable[[Any], Any],
        drop_last: bool,
    ):
        self._iterator = iterator
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._drop_last = drop_last
        self._ended = False

    def fetch(self, item: Any) -> Any:
        if self._ended:
            raise StopIteration
        started = time.perf_counter_ns()
        if not self._auto_collation:
            return self.clock.collated(started, self._collate_fn, next(self._iterator))
        samples = []
        for _ in item:
            try:
                samples.append(next(self._iterator))
            except StopIteration:
                self._ended = True
                break
        if not samples or (self._drop_last and len(samples) < len(item)):
            raise StopIteration
        return self.clock.collated(started, self._collate_fn, samples)

    def finish(self, payload: Any) -> Any:
        return payload


class SampleFetcher:
    """Plan ids -> the StreamingDataset's own samples (as iteration yields them) -> collate_fn."""

    clock = StageClock()  # shared default; `FetchSpec.build(dataset, clock)` sets its own

    def __init__(self, dataset: StreamingDataset, collate_fn: Callable[[Any], Any]):
        self._dataset = dataset
        self._collate_fn = collate_fn

    def fetch(self, item: Any) -> Any:
        started = time.perf_counter_ns()
        if not isinstance(item, MixedBatch):
            item = np.asarray(item, dtype=np.int64)
        samples = self._dataset.get_samples(item)
        return self.clock.collated(started, self._collate_fn, samples)

    def finish(self, payload: Any) -> Any:
        return payload


class ColumnarFetcher:
    """Rows by id through ``StreamingDataset.get_batch``: numpy columns out, tensors at finish."""

    clock = StageClock()  # shared default; `FetchSpec.build(dataset, clock)` sets its own

    def __init__(self, dataset: StreamingDataset, strings: str = "list"):
        self._dataset = dataset
        self._output = strings
        # In a worker, str/bytes columns stay offsets + bytes (BlobColumn) until the trainer
        # makes the list: no per-row objects in the worker, one copy from file to ring. In the
        # trainer itself the list is built at once (a blob would only add a copy), unless the
        # loop wants `Blobs`.
        in_worker = get_worker_info() is not None
        self._strings = "blob" if in_worker or strings == "blobs" else "list"

    def fetch(self, item: Any) -> dict[str, StackedColumn]:
        if isinstance(item, MixedBatch):  # a mixture's batch: each source's rows, merged
            return self._columns(item)
        ids = np.asarray(item)
        if ids.size == 0:
            return default_collate([])  # an empty batch: raises IndexError, as DataLoader does
        if ids.dtype.kind not in "iub":
            raise TypeError(f"sample indices must be integers, got {ids.dtype} ({item!r:.80})")
        ids = ids.astype(np.int64, copy=False).reshape(-1)
        if ids.min() < 0:  # ds[-1] is the last sample, so a sampler may yield negative ids
            ids = np.where(ids < 0, ids + len(self._dataset), ids)
        return self._columns(ids)

    def _columns(self, ids: Any) -> dict[str, StackedColumn]:
        started, waited = time.perf_counter_ns(), telemetry.FETCH_WAIT.values["ns"]
        columns = self._dataset.get_batch(ids, strings=self._strings)
        fetch_ns = telemetry.FETCH_WAIT.values["ns"] - waited  # remote shards: download waits
        self.clock.ns["fetch"] += fetch_ns
        started = self.clock.add("read", started + fetch_ns)
        batch = stack_columns(columns)
        self.clock.add("collate", started)
        return batch

    def finish(self, payload: dict[str, StackedColumn]) -> dict[str, Any]:
        return columns_to_torch(payload, self._output)

"""Read-ahead: remote shards come from the disk cache, downloaded ahead of use along the plan.

A process that reads a remote dataset (the num_workers=0 trainer, or each loader worker) knows
which items it will read and in what order — the batches of its pass, then the next epoch's, as
id chunks the dataset hands over (``reads(epoch)``) — and so which shards it will open: a
`streamload.cache.read_plan.ShardSequence`, generated lazily as far as someone looks, never the
whole epoch. `RemoteShards` is what the dataset calls to open shard k: a pinned, verified local
copy from the `DiskCache` (downloaded on a miss). Its `ReadAhead` thread walks the same sequence
a few shards ahead of the reader and pins each shard it downloads (a reservation: the evictor
skips it) until the reader reaches it. A new pass (the dataset's ``generation`` changes) or a new
epoch starts a new sequence.

What a process publishes for other processes' evictions (`DiskCache.announce`) is a window of
upcoming shards of the current epoch (at most ``PLAN_WINDOW``, fewer for large shards so the plan
file stays small next to one shard), re-published once the reader is halfway through it: bounded,
like everything here, by a horizon, not by the epoch.

Bounds: at most ``readahead_shards`` shards and ``readahead_bytes`` bytes reserved ahead per
process; the reader itself pins at most ``OPEN_SHARDS``. So every process pins at most
``OPEN_SHARDS + readahead_shards`` shards, and the node at most every shard of the dataset once
(processes share cached copies): `check_working_set` holds the largest shards that may be pinned
at once against ``cache_limit`` before the first download (`CacheError` naming the sizes). A
loader runs it in the trainer for the workers it will start, before starting them.

Read-ahead never blocks the reader: it downloads only when the cache has room without waiting
and without evicting a shard needed sooner than the one it fetches (Belady: the cache's
``next_use`` comes from this plan), it skips a shard another worker is already downloading (so
workers reading the same shards download different ones at once instead of queueing), and a
failed read-ahead download is only logged (the reader fetches that shard itself and reports
the error). The plan is a hint: a reader that opens a shard the plan did not predict still gets
it, and the read-ahead re-synchronises on the next shard it finds in the plan.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from streamload import telemetry
from streamload.cache.disk import DiskCache, ShardBusy
from streamload.cache.eviction import PLAN_HEADER_BYTES, PLAN_WINDOW
from streamload.cache.layout import ShardKey, dataset_dir_name
from streamload.cache.locks import Pin
from streamload.cache.read_plan import ShardSequence
from streamload.errors import CacheError
from streamload.format.index import DatasetIndex, ShardInfo
from streamload.sizes import format_size
from streamload.store import filesystem as store

log = logging.getLogger(__name__)

OPEN_SHARDS = 2  # shards a reader keeps open (pinned) at once: the current one and the last
HORIZON = 4096  # plan positions looked at for Belady distances and re-synchronisation
_BACKOFF_S = (0.02, 0.5)  # read-ahead retry delay bounds when the cache has no room


def check_working_set(
    cache: DiskCache,
    index: DatasetIndex,
    processes: int,
    readahead_shards: int,
    readahead_bytes: int,
) -> None:
    """Refuse a ``cache_limit`` below what ``processes`` readers of ``index`` may pin at once.

    Each process pins at most `OPEN_SHARDS` shards it reads plus its read-ahead window (at most
    ``readahead_shards`` shards and ``readahead_bytes`` bytes); processes reading the same shard
    share one cached copy, so the node never pins more shards than the dataset has.

    Raises:
        CacheError: the largest shards that may be pinned at once exceed ``cache_limit``.
    """
    sizes = [s.bytes for s in index.shards]
    biggest = max(sizes, default=0)
    ahead = min(readahead_shards, readahead_bytes // biggest) if biggest else 0
    cache.check_working_set(
        sizes,
        processes * (OPEN_SHARDS + ahead),
        f"{processes} reading process(es) x ({OPEN_SHARDS} open + {ahead} read-ahead),"
        f" capped at the dataset's {len(sizes)} shard(s)",
    )


class RemoteShards:
    """Pinned local copies of a remote dataset's shards, for one process (see module docstring)."""

    def __init__(
        self,
        url: str,
        fs: Any,
        root: str,
        index: DatasetIndex,
        cache: DiskCache,
        reads: Callable[[int], Iterable[np.ndarray]],
        *,
        generation: Callable[[], int] = lambda: 0,
        readahead_shards: int,
        readahead_bytes: int,
        processes: int = 1,
    ) -> None:
        """Set up (nothing is downloaded until `open`).

        Args:
            url: the dataset URL (part of the cache key).
            fs: its fsspec filesystem; root: the dataset root in it.
            index: the dataset's index.
            cache: the node's shared disk cache.
            reads: epoch -> the item ids this process will read that epoch, in order, as a
                lazy iterable of chunks (ids number items shard by shard, ``index`` order).
            generation: a number that changes when the process starts another pass (its reads
                changed): the next open starts a new sequence.
            readahead_shards: most shards reserved ahead of the reader.
            readahead_bytes: most bytes reserved ahead of the reader.
            processes: processes on this node reading through the cache at once (workers x
                local ranks), for the working-set check.

        Raises:
            CacheError: cache_limit cannot hold the shards all those processes may pin.
        """
        self._url, self._fs, self._root, self._index = url, fs, root, index
        self.cache = cache
        self._reads = reads
        self._generation_of = generation
        self._generation: int | None = None
        self._offsets = index.sample_offsets
        self._by_name = {s.name: k for k, s in enumerate(index.shards)}
        self._keys = [
            ShardKey(url, s.name, s.bytes, s.checksum_algorithm, s.checksum) for s in index.shards
        ]
        directory = os.path.join(cache.cache_dir, dataset_dir_name(url))
        self._paths = [os.path.join(directory, key.file_name) for key in self._keys]
        biggest = max((s.bytes for s in index.shards), default=0)
        # The window holds at most readahead_shards shards and readahead_bytes bytes.
        ahead = min(readahead_shards, readahead_bytes // biggest) if biggest else 0
        check_working_set(cache, index, processes, readahead_shards, readahead_bytes)
        # What this process may pin, published so processes that do not know of each other
        # (other jobs, ranks without LOCAL_WORLD_SIZE) fail fast instead of starving each other.
        # Plan files stay a small part of it: a window of names in at most ~1/64 of a shard.
        line = max((len(key.file_name) for key in self._keys), default=0) + 1
        self._window = min(PLAN_WINDOW, max(16, max(4096, biggest // 64) // line))
        plan_bytes = PLAN_HEADER_BYTES + self._window * line
        # Never more shards than the dataset has: the largest ones, at worst.
        pinned = min(OPEN_SHARDS + ahead, len(index.shards))
        self._reserve = (
            sum(heapq.nlargest(pinned, (s.bytes for s in index.shards))) + plan_bytes,
            f"{OPEN_SHARDS} open + {ahead} read-ahead, capped at the dataset's"
            f" {len(index.shards)} shard(s), largest {format_size(biggest)},"
            f" plus a {format_size(plan_bytes)} plan file",
            plan_bytes,
        )
        self._joined = False  # published at the first open: a process that never reads
        # (the trainer of a loader with workers) reserves nothing
        self._pid = os.getpid()
        self._pins: collections.OrderedDict[int, Pin] = collections.OrderedDict()
        self._epoch: int | None = None
        self._plan = ShardSequence([], self._offsets)
        self._cursor = 0
        self._published = 0  # sequence position of the first shard last published
        self.readahead = ReadAhead(self, readahead_shards, readahead_bytes)

    # -- what the dataset calls ----------------------------------------------------------------

    def open(self, info: ShardInfo, epoch: int) -> str:
        """A local path of shard ``info``, verified and pinned until `release` (or `close`).

        Raises:
            StoreError, FormatError, CacheError: see `DiskCache.pin`; at the first open also
                `DiskCache.join` (the live processes' working sets do not fit together).
        """
        k = self._by_name[info.name]
        if not self._joined:
            self.cache.join(self._url, *self._reserve)
            self._joined = True
        generation = self._generation_of()
        if epoch != self._epoch or generation != self._generation:
            self._replan(epoch, generation)
            self._advance(k)
            self.readahead.replan(self._plan, self._cursor)
        else:
            self._advance(k)
        if self._cursor - self._published >= self._window // 2:
            self._publish()
        else:
            self.cache.announce(self._url, None, self._cursor - self._published)
        pin = self._pins.get(k)
        if pin is None or pin.closed:
            started = time.perf_counter_ns()
            pin = self.pin_shard(k)
            telemetry.FETCH_WAIT.add("ns", time.perf_counter_ns() - started)
            self._pins[k] = pin
        self._pins.move_to_end(k)
        self.readahead.reader_at(k)
        self._plan.forget(self._cursor)  # after reader_at: read-ahead never looks behind it
        return pin.path

    def release(self, info: ShardInfo) -> None:
        """The reader dropped shard ``info``: unpin it."""
        pin = self._pins.pop(self._by_name[info.name], None)
        if pin is not None:
            pin.close()

    def close(self) -> None:
        """Stop read-ahead and drop every pin (a no-op in a forked child: the thread, its lock
        and the pins belong to the parent; the child's copies of the locks are already gone)."""
        if os.getpid() != self._pid:
            return
        self.readahead.close()
        for pin in self._pins.values():
            pin.close()
        self._pins.clear()
        self.cache.withdraw()

    # -- shared with ReadAhead -----------------------------------------------------------------

    def key(self, k: int) -> ShardKey:
        """The cache key of shard k."""
        return self._keys[k]

    def pin_shard(self, k: int, *, ahead: int | None = None) -> Pin:
        """Pin shard k (downloading it on a miss). ``ahead`` is set by read-ahead: no waiting
        for room or for another's download of it (`ShardBusy`), no evicting shards needed
        within ``ahead`` opens."""
        key = self.key(k)
        path = store.join(self._root, key.name)

        def fetch(f: Any) -> None:
            store.download(self._fs, path, f, expected_size=key.bytes)

        if ahead is None:
            return self.cache.pin(key, fetch, next_use=self.next_use)
        return self.cache.pin(key, fetch, next_use=self.next_use, protect=ahead, nowait=True)

    def next_use(self) -> Mapping[str, int]:
        """Cache path -> opens until this process needs it (within HORIZON plan positions)."""
        out: dict[str, int] = {}
        for distance, k in enumerate(self._plan.window(self._cursor, HORIZON)):
            out.setdefault(self._paths[k], distance)
        return out

    @property
    def plan(self) -> tuple[ShardSequence, int]:
        """The current shard sequence and the reader's position in it."""
        return self._plan, self._cursor

    # -- plan bookkeeping ----------------------------------------------------------------------

    def _replan(self, epoch: int, generation: int) -> None:
        self._epoch, self._generation = epoch, generation
        # This epoch, then the next: the read-ahead runs over the boundary.
        self._plan = ShardSequence(
            (self._reads(epoch), _Deferred(self._reads, epoch + 1)), self._offsets
        )
        self._cursor = 0
        self._publish()

    def _publish(self) -> None:
        """Publish the next ``_window`` shards of this epoch for other processes' evictions: a
        worker done with its share must not hold the others back for an epoch that may never
        come, and nobody needs more than a horizon of anyone's plan."""
        self._published = self._cursor
        upcoming = self._plan.window(self._cursor, self._window)
        boundary = self._plan.boundary
        if boundary is not None:
            upcoming = upcoming[: max(boundary - self._cursor, 0)]
        names = [self._keys[k].file_name for k in upcoming]
        self.cache.announce(self._url, names, 0)

    def _advance(self, k: int) -> None:
        found = self._plan.find(k, self._cursor, HORIZON)
        if found is not None:
            self._cursor = found


class _Deferred:
    """``reads(epoch)``, called only when iterated: the next epoch's reads are asked for only when
    the read-ahead gets there."""

    def __init__(self, reads: Callable[[int], Iterable[np.ndarray]], epoch: int) -> None:
        self._reads, self._epoch = reads, epoch

    def __iter__(self) -> Any:
        return iter(self._reads(self._epoch))


class ReadAhead:
    """A daemon thread keeping the next shards of the plan downloaded and reserved (pinned)."""

    def __init__(self, shards: RemoteShards, max_shards: int, max_bytes: int) -> None:
        self._shards = shards
        self._max_shards = max_shards
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._plan = ShardSequence([], np.zeros(1, np.int64))
        self._next = 0  # plan position of the next shard to fetch
        self._reader = 0  # plan position of the reader
        self._window: collections.OrderedDict[int, Pin] = collections.OrderedDict()
        self._bytes = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.downloaded = 0  # shards this thread pinned (hits and downloads): for tests and stats

    def replan(self, plan: ShardSequence, reader: int) -> None:
        """Start over on a new plan (a new epoch or pass) with the reader at ``reader``.
        Reservations the new plan needs next (made across the epoch boundary) are kept; the
        others are dropped."""
        with self._cond:
            head = set(plan.window(reader, 1 + self._max_shards + OPEN_SHARDS))
            self._drop_window(lambda k: k not in head)
            self._plan, self._next, self._reader = plan, reader + 1, reader
            while plan.get(self._next) in self._window:
                self._next += 1  # already reserved: the reader's next positions
            self._cond.notify_all()
        if self._thread is None and self._max_shards > 0:
            self._thread = threading.Thread(
                target=self._run, name="streamload-readahead", daemon=True
            )
            self._thread.start()

    def reader_at(self, k: int) -> None:
        """The reader opened shard k: release reservations up to it, keep fetching after it."""
        plan, cursor = self._shards.plan
        with self._cond:
            self._reader = cursor
            self._next = max(self._next, cursor + 1)
            keep = set(plan.window(cursor + 1, self._next - cursor - 1))
            self._drop_window(lambda j: j not in keep)
            self._cond.notify_all()

    def reserved(self) -> list[int]:
        """Shard indices reserved ahead right now."""
        with self._cond:
            return list(self._window)

    def wait_reserved(self, shards: list[int], timeout: float) -> bool:
        """Wait until all of ``shards`` are reserved ahead; False on time-out (for tests, stats)."""
        with self._cond:
            return self._cond.wait_for(lambda: set(shards) <= set(self._window), timeout)

    def close(self) -> None:
        """Stop the thread and drop every reservation (a download in progress finishes in the
        background and is released then; the thread is a daemon)."""
        with self._cond:
            self._stop = True
            self._drop_window(lambda k: True)
            self._cond.notify_all()

    def _drop_window(self, which: Callable[[int], bool]) -> None:
        for k in [k for k in self._window if which(k)]:
            self._window.pop(k).close()
            self._bytes -= self._shards.key(k).bytes

    def _run(self) -> None:
        delay = _BACKOFF_S[0]
        while True:
            with self._cond:
                k = self._wait_for_work()
                if k is None:
                    return
                plan, position = self._plan, self._next
                ahead = position - self._reader
            try:
                pin = self._shards.pin_shard(k, ahead=ahead)
            except ShardBusy:  # someone else is downloading it: fetch the next one meanwhile
                with self._cond:
                    if plan is self._plan and self._next == position:
                        self._next = position + 1
                continue
            except CacheError as exc:  # no room now: try again later (the reader moves on)
                log.debug("read-ahead of shard %d waits for room: %s", k, exc)
                with self._cond:
                    self._cond.wait(delay)
                delay = min(delay * 2, _BACKOFF_S[1])
                continue
            except Exception as exc:  # the reader will fetch it and report the error itself
                log.warning("read-ahead of shard %d failed: %s", k, exc)
                pin = None
            delay = _BACKOFF_S[0]
            with self._cond:
                stale = (
                    self._stop
                    or plan is not self._plan
                    or k in self._window
                    or position <= self._reader  # the reader got there first: it has its own pin
                )
                if pin is not None and not stale:
                    self._window[k] = pin
                    self._bytes += self._shards.key(k).bytes
                    self.downloaded += 1
                    self._cond.notify_all()
                elif pin is not None:
                    pin.close()
                if plan is self._plan and self._next == position:
                    self._next = position + 1

    def _wait_for_work(self) -> int | None:
        """Under the lock: the next shard to fetch once the window has room, None to stop."""
        while not self._stop:
            k = self._plan.get(self._next)
            while k is not None and k in self._window:
                self._next += 1
                k = self._plan.get(self._next)
            if k is not None:
                size = self._shards.key(k).bytes
                if len(self._window) < self._max_shards and self._bytes + size <= self._max_bytes:
                    return k
            self._cond.wait(1.0)
        return None

"""The multi-process loader pass: worker processes feeding the trainer through native rings.

Each worker k has its own ring (worker -> trainer: encoded batches, streamed through it in
chunks of a quarter ring by a copying pass, whole records with ``zero_copy``) and a Pipe (trainer ->
worker: int64 index lists, see `streamload.loader.protocol`). Delivery order is DataLoader's ``in_order``
order: the trainer dispatches plan items round-robin over the workers that still have work,
keeps ``prefetch_factor`` items in flight per worker, and yields results in dispatch order. Each
worker writes its records in the order it received items, so "the next batch" is always the
next record of one known ring. An iterable worker that runs dry reports it (StopIteration) and
gets no further items, as in DataLoader. With ``in_order=False`` the trainer yields whichever
worker's batch is ready first (`WorkerPool.receive_any`) and dispatches the next item to a worker
with room, so a slow batch holds up only its own worker (as DataLoader does).

Over a StreamingDataset read in its own order (a planned pass: COLUMNAR or SAMPLES route), the
trainer sends nothing per batch: it sends the pass's plan parameters (epoch, start position,
rank, world size, batch size, drop_last) once, and each worker k rebuilds the same pure plan and
builds steps k, k + n, ... of this rank's batches straight into its ring (its ring's capacity is
the prefetch bound). The trainer counts batches as it hands them to the user (the pass cursor
``state_dict`` reads), never as workers produce them. With ``in_order=False`` the trainer reads
whichever ring has a batch and the pass ends when every worker has reported the end of its
share; the batches the user has received are then no prefix of the plan, so the loader refuses
``state_dict`` in that mode.

Seeding: the base seed is drawn in ``__init__`` as DataLoader draws it; workers seed themselves
from it (``workers._seed``). With ``persistent_workers`` one pool (and one base seed) serves every
epoch, like DataLoader's reused iterator. Without it, a pass whose workers run no user code
(`reuse_key`: the columnar route, no worker_init_fn) leaves its pool to the loader's next pass
instead of stopping it; every other route starts fresh workers each pass, as DataLoader does.

Fresh workers start cheaply: the trainer hands its freed heap back (`heap.release`) and imports
what a worker would import on its first batch (`preload_worker_imports`) before forking, and
re-uses the previous pass's rings.

Failures: an exception in a worker is raised here as its own type, also a `WorkerError`, with
the worker's traceback (`streamload.loader.worker_errors`), at that batch's position (in order);
a dead worker raises `WorkerError` naming its pid and signal; with
``timeout > 0`` a batch that takes longer raises `WorkerError` ("timed out"). Shutdown (end of
pass, error, ``break``/garbage collection, interpreter exit) is idempotent: close rings and pipes,
join with a timeout, then terminate, then kill.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import json
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from streamload.errors import WorkerError
from streamload.loader import heap, protocol, worker_errors
from streamload.loader.options import LoaderSettings, WorkerOptions, effective_start_method
from streamload.loader.passes import Pass
from streamload.loader.pin_memory import pin, pin_memory_device
from streamload.loader.stats import timed_step
from streamload.loader.worker import worker_main
from streamload.pipeline.collate import columns_to_torch
from streamload.pipeline.fetch import Route
from streamload.transport.codec import decode, skip
from streamload.transport.ring import PeerDied, RecordType, Ring, RingError, RingTimeout

_JOIN_TIMEOUT_S = 1.0
_LIVENESS_POLL_S = 0.25
# in_order=False with no batch ready: the longest the trainer sleeps on one ring before polling
# every ring again (the latency a batch that lands in another ring may wait).
_ANY_SLICE_S = 0.002


_FALLBACK_RING_BYTES = 64 << 20
_MIN_AUTO_RING_BYTES = 4 << 20
_MAX_AUTO_RING_BYTES = 1 << 30
# Copying passes stream each batch through the ring in chunks: the ring holds this many chunks,
# and ring_size=auto is this size whatever the batch (research/ringbuffer.md: rings that stay in
# the last-level cache move bytes ~3x faster than 64 MiB ones).
STREAM_RING_BYTES = 4 << 20
CHUNKS_PER_RING = 4


def ring_geometry(
    dataset: Any, batch_size: int | None, spec: Any, ring_size: int, zero_copy: bool
) -> tuple[int, int | None]:
    """(ring capacity, chunk) for a pass; chunk None means each batch is one whole record.

    A copying pass (the default) streams batches in chunks of a quarter of the ring (minus the
    64-byte record header, so four chunk records fill the ring exactly): any batch fits any ring
    and ``ring_size = auto`` (0) is a fixed ``STREAM_RING_BYTES``. ``zero_copy`` hands out
    tensors that view one record, so there a batch must fit half the ring: ``auto_ring_capacity``.
    """
    if zero_copy:
        if ring_size:
            return _ring_capacity(ring_size), None
        return auto_ring_capacity(dataset, batch_size, spec), None
    capacity = _ring_capacity(ring_size) if ring_size else STREAM_RING_BYTES
    return capacity, capacity // CHUNKS_PER_RING - 64


def auto_ring_capacity(dataset: Any, batch_size: int | None, spec: Any) -> int:
    """Ring capacity for ``ring_size = auto`` with ``zero_copy``: sized from the data where the
    data says enough.

    Over a StreamingDataset on the columnar route (no transform, default collate) a batch's
    size follows from index.json: batch_size x the largest per-shard average sample size. The
    ring gets room for a record of 1.5x that estimate (the record limit is half the ring, so
    two such batches are in flight) plus 64 KiB of framing, as a power of two between 4 MiB and
    1 GiB: 8 MiB for 256 x 8 KiB token rows instead of a fixed 64 MiB. Anything else (map-style
    datasets, transforms, custom collate) can make batches of any size: 64 MiB. A batch beyond
    the estimate fails with RecordTooLarge naming ring_size, never silently.
    """
    if spec.route is not Route.COLUMNAR or batch_size is None:
        return _FALLBACK_RING_BYTES
    per_sample = dataset.item_nbytes()
    record = int(per_sample * batch_size * 1.5) + (64 << 10)
    need = min(max(2 * record, _MIN_AUTO_RING_BYTES), _MAX_AUTO_RING_BYTES)
    return 1 << (need - 1).bit_length()


def _ring_capacity(ring_size: int) -> int:
    """The largest power of two <= ring_size (at least 4 KiB), the data area of one ring."""
    size = max(int(ring_size), 4096)
    return 1 << (size.bit_length() - 1)


# Imported once by the fork server, so each forkserver worker starts without re-importing them
# (torch alone costs ~1 s per worker on this class of machine). No pandas: the shard readers
# never make pyarrow import it (see the Arrow reader's `_numpy`), so neither fork server nor
# workers carry it unless user code asks for it.
FORKSERVER_PRELOAD = (
    "__main__",
    "torch",
    "numpy",
    "numpy.random",
    "pyarrow",
    "pyarrow.compute",
    "streamload.loader.worker",
    "streamload.shards.arrow.reader",
)
# Modules every worker imports before its first batch (numpy.random for DataLoader's seeding,
# ~25 ms; the shard reader of the dataset's format, ~20 ms; pyarrow.compute, which pyarrow
# imports on first use of a list column, ~0.2 s): imported once in the trainer before forking,
# so no forked worker pays for them again, pass after pass.
_READER_MODULES = {
    "arrow": ("streamload.shards.arrow.reader", "pyarrow.compute"),
    "lmdb": ("streamload.shards.lmdb.reader",),
    "lmdb-env": ("streamload.shards.lmdb.reader",),
}


def preload_worker_imports(dataset: Any) -> None:
    """Import in this process what a forked worker would otherwise import on its first batch."""
    importlib.import_module("numpy.random")
    index = getattr(dataset, "index", None)
    for module in _READER_MODULES.get(getattr(index, "format", ""), ()):
        importlib.import_module(module)


def reuse_key(dataset: Any, spec: Any, options: WorkerOptions, context: Any, geometry: Any) -> Any:
    """What a pass must share with the pass a pool was started for to run on its workers, or
    None when a pass's workers must start fresh.

    Workers are reused across non-persistent passes only where nothing observable changes: the
    columnar route (a StreamingDataset without transform, torch's default_collate) and no
    worker_init_fn, so no user code runs in a worker, and every per-pass input (epoch, start,
    rank, batch size) travels in the pass's first message. Any other route starts fresh
    workers every pass, as DataLoader does, since user code may hold state a fresh copy resets.
    """
    if spec.route is not Route.COLUMNAR or options.worker_init_fn is not None:
        return None
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    return (
        id(dataset),
        json.dumps(fingerprint, sort_keys=True),
        options.num_workers,
        context,
        geometry,
    )


def default_context(method: str) -> Any:
    """The multiprocessing context for config ``start_method`` (see the module docstring).

    ``auto`` forks while the calling process runs no Python thread but the main one (the usual
    training script: fast start, nothing to pickle, DataLoader's Linux behaviour) and otherwise
    uses forkserver, because forking while another thread may hold a lock (logging, a client
    library's pool) can deadlock the child. A forkserver context preloads torch and streamload.
    """
    if method == "auto":
        forkable = "fork" in multiprocessing.get_all_start_methods()
        method = "fork" if forkable and threading.active_count() == 1 else "forkserver"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return context


@dataclass
class WorkerSetup:
    """How a loader's workers run: what `WorkerPool` and `MultiProcessIter` need besides a pass.

    Attributes:
        num_workers, prefetch, persistent, timeout, worker_init_fn, in_order: from
            `WorkerOptions` (``prefetch`` = items in flight per worker, at least 1).
        context: the multiprocessing context workers start in.
        capacity: data bytes of each worker's ring.
        chunk: batches larger than this stream through the ring as several records (None:
            whole records, ``zero_copy``).
        zero_copy: hand out tensors viewing ring records instead of copies.
        heap_retain: freed heap each process keeps (`streamload.loader.heap`).
        spare_rings: the loader's rings kept between non-persistent passes (shared, mutable).
        idle_pools: the loader's pool left by a finished pass for the next one (shared,
            mutable; see `reuse_key`).
        reuse_key: what a pool started with this setup may be reused for (None: never).
    """

    num_workers: int
    prefetch: int
    persistent: bool
    timeout: float
    worker_init_fn: Any
    context: Any
    capacity: int
    zero_copy: bool
    heap_retain: int
    chunk: int | None = None
    spare_rings: list[Ring] = field(default_factory=list)
    in_order: bool = True
    idle_pools: list[WorkerPool] = field(default_factory=list)
    reuse_key: Any = None
    ring_note: str = ""  # how the ring got its size, added to a RecordTooLarge error

    @classmethod
    def for_pass(
        cls,
        pass_: Pass,
        options: WorkerOptions,
        settings: LoaderSettings,
        spare_rings: list[Ring],
        zero_copy: bool,
        idle_pools: list[WorkerPool] | None = None,
    ) -> WorkerSetup:
        """The setup of a loader's workers (the ring sized for ``pass_``'s batches)."""
        capacity, chunk = ring_geometry(
            pass_.dataset, pass_.batch_size, pass_.spec, settings.ring_size, zero_copy
        )
        context = options.multiprocessing_context or default_context(
            effective_start_method(settings.start_method)
        )
        key = reuse_key(
            pass_.dataset, pass_.spec, options, options.multiprocessing_context, (capacity, chunk)
        )
        if settings.ring_size:
            note = (
                f"ring_size is set to {settings.ring_size_origin} = {settings.ring_size} bytes;"
                f" each worker's ring is the largest power of two not above that, {capacity}"
                " bytes, and one batch may take at most half of a ring"
            )
        else:
            note = (
                f"ring_size is {settings.ring_size_origin}: each worker's ring was sized to"
                f" {capacity} bytes from index.json; set ring_size (StreamLoader(ring_size=...)"
                " or the ring_size setting) to the size above"
            )
        return cls(
            num_workers=options.num_workers,
            prefetch=max(options.prefetch_factor or 0, 1),
            persistent=options.persistent_workers,
            timeout=options.timeout,  # as given: messages print it as DataLoader does
            worker_init_fn=options.worker_init_fn,
            context=context,
            capacity=capacity,
            zero_copy=zero_copy,
            heap_retain=settings.heap_retain,
            chunk=chunk,
            spare_rings=spare_rings,
            in_order=options.in_order,
            idle_pools=idle_pools if idle_pools is not None else [],
            reuse_key=key,
            ring_note=note,
        )


class WorkerPool:
    """The worker processes of one loader, their rings and pipes; owns their shutdown."""

    def __init__(self, pass_: Pass, setup: WorkerSetup, base_seed: int) -> None:
        self.num_workers = setup.num_workers
        self.reuse_key = setup.reuse_key
        # Rings kept by the loader from its previous pass (see `shutdown(keep_rings=True)`).
        self._spare: list[Ring] = setup.spare_rings
        self.rings: list[Ring] = []
        # Receives workers' stats records (pid, body); `receive` never returns them.
        self.stats_sink: Any = None
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        self._any_turn = 0  # where `receive_any` starts polling next
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.rings, self.conns)
        heap.release()  # forked workers must not inherit (and copy on write) freed trainer heap
        preload_worker_imports(pass_.dataset)
        context = setup.context
        for worker_id in range(self.num_workers):
            ring = self._spare_ring(setup.capacity) or Ring.create(setup.capacity)
            reader, writer = context.Pipe(duplex=False)
            proc = context.Process(
                target=worker_main,
                args=(
                    worker_id,
                    self.num_workers,
                    pass_.dataset,
                    pass_.spec,
                    pass_.batch_size,
                    ring.handle(),
                    reader,
                    base_seed,
                    setup.worker_init_fn,
                    os.getpid(),
                    setup.heap_retain,
                    setup.chunk,
                    setup.ring_note,
                ),
                daemon=True,
            )
            self.rings.append(ring)
            self.conns.append(writer)
            self.procs.append(proc)
            proc.start()
            reader.close()
            ring.set_producer_pid(proc.pid)
        heap.prime(setup.heap_retain)  # the trainer copies every batch out (heap.py)

    def send(self, worker_id: int, message: bytes) -> None:
        """Send one control message; a dead worker is reported by the next read instead."""
        with contextlib.suppress(OSError):
            self.conns[worker_id].send_bytes(message)

    def receive(self, worker_id: int, timeout: float) -> tuple[int, Any]:
        """The next record of worker `worker_id` as (type, record).

        Raises:
            WorkerError: the worker died (pid + signal) or, with timeout > 0, took too long.
        """
        ring = self.rings[worker_id]
        waited = 0.0
        while True:
            step = _LIVENESS_POLL_S if timeout <= 0 else min(_LIVENESS_POLL_S, timeout - waited)
            try:
                record = ring.get(timeout=max(step, 0.0))
                if record.type == RecordType.ERROR and protocol.is_stats_record(record.view()):
                    self._absorb_stats(worker_id, record)
                    continue
                return record.type, record
            except RingTimeout:
                waited += step
                self._check_alive(worker_id)
                if timeout > 0 and waited >= timeout:
                    pid = self.procs[worker_id].pid
                    raise WorkerError(
                        f"DataLoader timed out after {timeout} seconds"
                        f" (StreamLoader worker {worker_id}, pid {pid})"
                    ) from None
            except PeerDied:
                self.procs[worker_id].join(_JOIN_TIMEOUT_S)
                self._check_alive(worker_id, dead=True)

    def receive_any(self, worker_ids: list[int], timeout: float) -> tuple[int, int, Any]:
        """The first record ready in any of the rings of ``worker_ids`` (``in_order=False``), as
        (worker id, type, record).

        Rings are polled in turn, starting after the worker that delivered last (so one fast
        worker cannot starve the others' finished batches); when none has a record the trainer
        sleeps on one ring for at most `_ANY_SLICE_S` before polling them all again, checking
        the workers' liveness every `_LIVENESS_POLL_S`.

        Raises:
            WorkerError: a worker died (pid + signal) or, with timeout > 0, none delivered in
                time.
        """
        count = len(worker_ids)
        started = time.monotonic()
        checked = started
        sleeper = 0
        while True:
            for k in range(count):
                worker_id = worker_ids[(self._any_turn + k) % count]
                record = self._poll(worker_id, 0.0)
                if record is not None:
                    self._any_turn = (self._any_turn + k + 1) % count
                    return worker_id, record.type, record
            worker_id = worker_ids[sleeper % count]
            sleeper += 1
            record = self._poll(worker_id, _ANY_SLICE_S)
            if record is not None:
                return worker_id, record.type, record
            now = time.monotonic()
            if now - checked >= _LIVENESS_POLL_S:
                checked = now
                for worker_id in worker_ids:
                    self._check_alive(worker_id)
            if timeout > 0 and now - started >= timeout:
                pids = ", ".join(str(self.procs[w].pid) for w in worker_ids)
                raise WorkerError(
                    f"DataLoader timed out after {timeout} seconds"
                    f" (StreamLoader workers {worker_ids}, pids {pids}; in_order=False)"
                )

    def _poll(self, worker_id: int, wait: float) -> Any:
        """Worker ``worker_id``'s next record if one arrives within ``wait`` s, else None
        (stats records are absorbed; a dead worker raises WorkerError)."""
        ring = self.rings[worker_id]
        while True:
            try:
                record = ring.get(timeout=wait)
            except RingTimeout:
                return None
            except PeerDied:
                self.procs[worker_id].join(_JOIN_TIMEOUT_S)
                self._check_alive(worker_id, dead=True)
                return None  # unreachable: _check_alive raised
            if record.type == RecordType.ERROR and protocol.is_stats_record(record.view()):
                self._absorb_stats(worker_id, record)
                continue
            return record

    def _absorb_stats(self, worker_id: int, record: Any) -> None:
        body = bytes(record.view())
        record.release()
        if self.stats_sink is not None:
            self.stats_sink(self.procs[worker_id].pid, body)

    def _check_alive(self, worker_id: int, dead: bool = False) -> None:
        proc = self.procs[worker_id]
        if not dead and proc.is_alive():
            return
        code = proc.exitcode
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited unexpectedly with exit code {code}"
        message = (
            f"DataLoader worker (pid(s) {proc.pid}) exited unexpectedly"
            f" (StreamLoader worker {worker_id} (pid {proc.pid}) {how})"
        )
        self.shutdown()
        raise WorkerError(message)

    def healthy(self) -> bool:
        """Every worker alive and every ring open: the pool can serve another pass."""
        return bool(self.procs) and all(
            p.is_alive() and not r.closed for p, r in zip(self.procs, self.rings, strict=True)
        )

    def _spare_ring(self, capacity: int) -> Ring | None:
        while self._spare:
            ring = self._spare.pop()
            if ring.capacity == capacity and not ring.closed:
                return ring
            ring.close()
        return None

    def shutdown(self, keep_rings: bool = False) -> None:
        """Stop every worker and free rings and pipes. Idempotent.

        Args:
            keep_rings: at a clean end of pass (every worker idle), hand the rings of workers
                that exited normally back to the loader for its next pass instead of freeing
                them: creating a ring costs zeroing and mapping all of it (~40 ms per 64 MiB),
                every epoch without persistent_workers. A ring is kept only if it can be
                reopened (its producer gone, no record still held).
        """
        if keep_rings and self.procs:
            for conn in self.conns:
                with contextlib.suppress(OSError, ValueError):
                    conn.send_bytes(protocol.EXIT)
            kept: list[Ring] = []
            for proc, ring in zip(self.procs, self.rings, strict=True):
                proc.join(_JOIN_TIMEOUT_S)
                if proc.exitcode == 0:
                    with contextlib.suppress(RingError):
                        ring.reopen()
                        kept.append(ring)
            # The finalizer frees what is left; the kept rings now belong to the loader.
            self.rings[:] = [r for r in self.rings if all(r is not k for k in kept)]
            self._spare.extend(kept)
        self._finalizer()


def _shutdown(procs: list[Any], rings: list[Ring], conns: list[Any]) -> None:
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send_bytes(protocol.EXIT)
    for ring in rings:
        ring.close()
    for proc in procs:
        if proc.pid is None:
            continue
        proc.join(_JOIN_TIMEOUT_S)
        if proc.is_alive():
            proc.terminate()
            proc.join(_JOIN_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(_JOIN_TIMEOUT_S)
        proc.close()
    for conn in conns:
        conn.close()
    procs.clear()
    rings.clear()
    conns.clear()


class MultiProcessIter:
    """One pass over the data through a `WorkerPool` (reused across epochs if persistent)."""

    def __init__(self, pass_: Pass, base_seed: int, setup: WorkerSetup) -> None:
        self._pin_device = pin_memory_device(pass_.pin_memory, pass_.pin_memory_device)
        # The pass and setup only, never the loader: a persistent loader holds this iterator,
        # and a reference back would make a cycle that keeps the workers alive until a gc pass.
        self._setup = setup
        self.base_seed = base_seed
        self._pool = self._idle_pool() or WorkerPool(pass_, setup, base_seed)
        self._begin(pass_)

    def _idle_pool(self) -> WorkerPool | None:
        """The previous pass's pool if this pass may run on it (see `reuse_key`); any other idle
        pool is shut down."""
        found = None
        idle = self._setup.idle_pools
        while idle:
            pool = idle.pop()
            key = self._setup.reuse_key
            if found is None and key is not None and pool.reuse_key == key and pool.healthy():
                found = pool
            else:
                pool.shutdown()
        return found

    def reset(self, pass_: Pass) -> MultiProcessIter:
        """Start the next epoch on the same workers (persistent_workers)."""
        self._drain()
        self._begin(pass_)
        return self

    def _begin(self, pass_: Pass) -> None:
        self._pass = pass_
        self._items = pass_.items
        self._cursor = pass_.cursor
        self._stats = pass_.stats
        self._batch_nbytes: int | None = None  # the last decoded batch's bytes (its metadata's)
        self._pool.stats_sink = self._stats.worker_report
        n = self._pool.num_workers
        self._own_plan = self._cursor is not None
        self._pending: collections.deque[int] = collections.deque()  # worker of each task
        self._active = [True] * n
        self._next_worker = 0
        self._in_flight = [0] * n
        self._ended = False
        self._num_yielded = 0
        self._stats.begin_pass(self._pool.rings, n)
        if self._cursor is not None:
            # The whole plan rides along (epoch included): a persistent worker's dataset copy
            # would otherwise miss set_epoch/load_state_dict calls made after it started.
            message = protocol.plan_message(self._cursor.worker_message())
            for worker_id in range(n):
                self._pool.send(worker_id, message)
            return
        for worker_id in range(n):
            self._pool.send(worker_id, protocol.START_DISPATCHED)
        for _ in range(self._setup.prefetch * n):
            self._dispatch()

    def _dispatch(self) -> None:
        """Send the next plan item to the next active worker (DataLoader's _try_put_index)."""
        n = self._pool.num_workers
        prefetch = self._setup.prefetch
        for _ in range(n):
            worker_id = self._next_worker
            self._next_worker = (self._next_worker + 1) % n
            if self._active[worker_id] and self._in_flight[worker_id] < prefetch:
                break
        else:
            return
        try:
            item = next(self._items)
        except StopIteration:
            return
        ticket = self._pass.spec.route is Route.ITERABLE
        self._pool.send(worker_id, protocol.encode_item(item, ticket))
        self._pending.append(worker_id)
        self._in_flight[worker_id] += 1

    def __iter__(self) -> Iterator[Any]:
        return self

    def __len__(self) -> int:
        return self._pass.length()

    def __next__(self) -> Any:
        return timed_step(self._stats, self._next_batch, self._known_nbytes)

    def _known_nbytes(self) -> int | None:
        nbytes, self._batch_nbytes = self._batch_nbytes, None
        return nbytes

    def _next_batch(self) -> Any:
        while True:
            batch = self._next_own() if self._own_plan else self._next_dispatched()
            if batch is not _SKIP:
                break
        if self._cursor is not None:
            self._cursor.delivered(batch)
        if self._pin_device is not None:
            batch = pin(batch, self._pin_device)
        self._num_yielded += 1
        self._pass.warn_if_past_len(self._num_yielded, self._pool.num_workers)
        return batch

    def _next_dispatched(self) -> Any:
        if not self._pending:
            self._finish_epoch()
            raise StopIteration
        if self._setup.in_order:
            worker_id = self._pending.popleft()
            kind, record = self._pool.receive(worker_id, self._setup.timeout)
        else:  # whichever worker has a batch ready first
            busy = [w for w in range(self._pool.num_workers) if self._in_flight[w]]
            worker_id, kind, record = self._pool.receive_any(busy, self._setup.timeout)
            self._pending.remove(worker_id)
        self._in_flight[worker_id] -= 1
        if kind == RecordType.ERROR:
            body = bytes(record.view())
            record.release()
            if body == protocol.END_OF_SHARE:
                self._active[worker_id] = False
                self._dispatch()
                return _SKIP
            self._dispatch()
            raise worker_errors.rebuild(worker_id, body)
        self._dispatch()
        return self._spec_finish(worker_id, record)

    def _next_own(self) -> Any:
        if self._ended:
            raise StopIteration
        if not self._setup.in_order:
            return self._next_own_unordered()
        worker_id = self._next_worker
        kind, record = self._pool.receive(worker_id, self._setup.timeout)
        if kind == RecordType.ERROR:
            body = bytes(record.view())
            record.release()
            if body == protocol.END_OF_SHARE:
                self._ended = True
                self._active[worker_id] = False
                self._finish_epoch()
                raise StopIteration
            self._next_worker = (worker_id + 1) % self._pool.num_workers
            raise worker_errors.rebuild(worker_id, body)
        self._next_worker = (worker_id + 1) % self._pool.num_workers
        return self._spec_finish(worker_id, record)

    def _next_own_unordered(self) -> Any:
        """A planned pass with in_order=False: the next batch any worker has ready; the pass
        ends when every worker has reported the end of its share."""
        active = [w for w in range(self._pool.num_workers) if self._active[w]]
        if not active:
            self._ended = True
            self._finish_epoch()
            raise StopIteration
        worker_id, kind, record = self._pool.receive_any(active, self._setup.timeout)
        if kind == RecordType.ERROR:
            body = bytes(record.view())
            record.release()
            if body == protocol.END_OF_SHARE:
                self._active[worker_id] = False
                return _SKIP
            raise worker_errors.rebuild(worker_id, body)
        return self._spec_finish(worker_id, record)

    def _spec_finish(self, worker_id: int, record: Any) -> Any:
        # zero_copy: tensors view the record, which is released when the last of them dies.
        # Copying: a streamed batch's later records come from the same ring, one at a time.
        strings = self._pass.spec.strings
        columnar = self._pass.spec.route is Route.COLUMNAR
        tally = [0]  # the batch's bytes, from its metadata: stats need no pass over its rows
        payload = decode(
            record,
            copy=not self._setup.zero_copy,
            # A columnar batch's arrays become tensors right in the decoder (`columns_to_torch`
            # would wrap the same fresh arrays); only a blobs-form batch needs that pass.
            as_torch=columnar,
            blobs="column" if strings == "blobs" else "list",
            more=functools.partial(self._continued, worker_id),
            tally=tally,
        )
        self._batch_nbytes = tally[0]
        if columnar and strings == "blobs":
            return columns_to_torch(payload, strings)
        return payload

    def _continued(self, worker_id: int) -> Any:
        return self._pool.receive(worker_id, self._setup.timeout)[1]

    def _drain(self) -> None:
        """Read what is left of this epoch so the next one starts on empty rings."""
        if self._own_plan:
            for worker_id in range(self._pool.num_workers):
                while self._active[worker_id]:
                    kind, record = self._pool.receive(worker_id, self._setup.timeout)
                    if kind == RecordType.DATA:
                        skip(record, functools.partial(self._continued, worker_id))
                        continue
                    body = bytes(record.view())
                    record.release()
                    if body == protocol.END_OF_SHARE:
                        self._active[worker_id] = False
            return
        while self._pending:
            worker_id = self._pending.popleft()
            kind, record = self._pool.receive(worker_id, self._setup.timeout)
            if kind == RecordType.DATA:
                skip(record, functools.partial(self._continued, worker_id))
            else:
                record.release()

    def _finish_epoch(self) -> None:
        if self._setup.persistent:
            if self._own_plan:
                self._drain()
        elif self._pool.reuse_key is not None:
            # Workers that run no user code serve the loader's next pass too (`reuse_key`):
            # no fork, worker start or ring setup per epoch.
            if self._own_plan:
                self._drain()
            if self._pool.healthy():
                self._setup.idle_pools.append(self._pool)
            else:
                self._pool.shutdown()
        else:
            self._pool.shutdown(keep_rings=True)
            heap.release()  # the pass is over: hand the batches' freed memory back

    def shutdown(self) -> None:
        """Stop the workers now (also what garbage collection and interpreter exit do)."""
        self._pool.shutdown()


_SKIP = object()

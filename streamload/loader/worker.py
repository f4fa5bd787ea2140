"""The worker process: the main loop that turns work items into batch records in its own ring.

A worker owns the producer side of one ring (trainer <- worker: batches, each streamed as
consecutive records of at most a quarter of the ring in a copying pass) and the reading
end of one Pipe (trainer -> worker, tiny control messages). It is seeded exactly as DataLoader
seeds its workers (``random``/``torch`` with base_seed + id, numpy via torch's
``_generate_state``), publishes torch's ``WorkerInfo`` so ``get_worker_info()`` works, runs
``worker_init_fn(id)`` once, then serves epochs until told to stop.

Messages (first byte = kind): ``R`` start an epoch (build a fresh fetcher), ``O`` + JSON plan
parameters: start an epoch that follows the dataset's own plan (this rank's steps id, id + n, ...
of ``dataset.epoch_plan`` from the given start: a position, or a mixture's position and
cursors), which the worker's read-ahead then follows too,
``I`` an int64 index list, ``N`` one int index, ``T`` an iterable ticket of length k, ``P`` a
pickled trainer-made item (custom samplers), ``X`` exit.

Records out: DATA = one encoded batch (or, streamed, one piece of it), ERROR = ``S`` (fetcher
ran dry: StopIteration) or ``E`` + the exception's type name and traceback
(`streamload.loader.worker_errors.describe`), or ``T`` + the worker's stage-time snapshot
(`streamload.loader.stats.WorkerReporter`), written just before a batch's records now and then
(never between the records of one batch) and before a planned pass's ``S``. Records are written in
the order items arrived, so the trainer reads each ring in dispatch order.

Invariants: the worker never outlives the trainer: PR_SET_PDEATHSIG (Linux) right after start,
a getppid re-check on every idle poll, and every ring wait ends on ConsumerDied/RingClosed.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch.utils.data._utils import worker as torch_worker

from streamload.loader import heap, protocol, worker_errors
from streamload.loader import stats as sl_stats
from streamload.pipeline.fetch import FetchSpec
from streamload.telemetry import StageClock, TimedTransform
from streamload.transport.codec import send
from streamload.transport.ring import RecordTooLarge, RecordType, Ring, RingError, RingHandle

_PR_SET_PDEATHSIG = 1
_IDLE_POLL_S = 0.2


def _die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL us when the trainer dies; False if it is already gone.

    Under forkserver our parent is the fork server, not the trainer: the death signal then only
    covers the server, and `trainer_alive` (polled while idle) covers the trainer.
    """
    if os.getppid() == parent_pid:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: the idle polls still catch it
            pass
    return trainer_alive(parent_pid)


def trainer_alive(parent_pid: int) -> bool:
    """Whether the trainer still runs: our parent (fork/spawn) or a live pid (forkserver)."""
    if os.getppid() == parent_pid:
        return True
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _seed(base_seed: int, worker_id: int) -> int:
    """Seed every RNG exactly as torch's ``_worker_loop`` does; returns the worker's seed."""
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(torch_worker._generate_state(base_seed, worker_id))
    return seed


def worker_main(
    worker_id: int,
    num_workers: int,
    dataset: Any,
    spec: FetchSpec,
    batch_size: int | None,
    handle: RingHandle,
    conn: Connection,
    base_seed: int,
    worker_init_fn: Any,
    parent_pid: int,
    heap_retain: int,
    chunk: int | None = None,
    ring_note: str = "",
) -> None:
    """Entry point of one worker process (see the module docstring).

    ``chunk``: batches larger than this stream through the ring as several records
    (`streamload.transport.codec.send`); None writes each batch as one record (zero-copy).
    ``ring_note`` says how the ring got its size (what the user set), for a batch too large
    for it.
    """
    # Everything inherited from the trainer stays out of this worker's garbage collections:
    # a full collection would otherwise walk (and so copy-on-write) the trainer's whole heap.
    gc.freeze()
    if not _die_with_parent(parent_pid):
        return
    torch.set_num_threads(1)  # as DataLoader's workers: n workers must not oversubscribe cores
    heap.retain_freed(heap_retain)
    ring = Ring.attach(handle, "producer")
    try:
        seed = _seed(base_seed, worker_id)
        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=worker_id, num_workers=num_workers, seed=seed, dataset=dataset
        )
        init_error = None
        try:
            if worker_init_fn is not None:
                worker_init_fn(worker_id)
        except Exception:
            init_error = worker_errors.describe()
        out = _Output(ring, chunk, ring_note)
        _serve(worker_id, num_workers, dataset, spec, batch_size, out, conn, parent_pid, init_error)
    except (RingError, EOFError, OSError, KeyboardInterrupt):
        pass  # trainer gone or closed: nothing left to tell anyone
    finally:
        ring.close(timeout=0)


def _serve(
    worker_id: int,
    num_workers: int,
    dataset: Any,
    spec: FetchSpec,
    batch_size: int | None,
    out: _Output,
    conn: Connection,
    parent_pid: int,
    init_error: bytes | None,
) -> None:
    fetcher: Any = None
    reporter = sl_stats.WorkerReporter(worker_id)
    _time_transform(dataset, reporter.clock)
    while True:
        waiting = time.perf_counter_ns()
        ready = conn.poll(_IDLE_POLL_S)
        reporter.clock.idle_ns += time.perf_counter_ns() - waiting
        if not ready:
            if not trainer_alive(parent_pid) or out.ring.closed:
                return
            continue
        message = conn.recv_bytes()
        kind = message[:1]
        if kind == protocol.EXIT:
            return
        if init_error is not None:
            if kind not in (protocol.START_DISPATCHED, protocol.START_PLANNED):
                out.error(init_error)
            continue
        if kind == protocol.START_DISPATCHED:
            try:
                fetcher = spec.build(dataset, reporter.clock)
            except Exception:
                fetcher = _Failed(worker_errors.describe())
            continue
        if kind == protocol.START_PLANNED:
            _own_plan(worker_id, num_workers, dataset, spec, batch_size, message, out, reporter)
            continue
        # Nothing queued after this item: ship the stats now, the trainer may read no more.
        _fetch_one(fetcher, protocol.decode_item(message), out, reporter, last=not conn.poll(0))


def _time_transform(dataset: Any, clock: StageClock) -> None:
    """Charge a StreamingDataset's transform to the ``transform`` stage (this worker's copy)."""
    from streamload.dataset.streaming import StreamingDataset

    sources = getattr(dataset, "sources", {"": dataset})  # a MixedDataset: each source's
    for source in sources.values():
        if isinstance(source, StreamingDataset) and source.transform is not None:
            source.transform = TimedTransform(source.transform, clock)


_END = object()


class _Failed:
    """A fetcher whose construction raised: every item reports that exception."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def fetch(self, item: Any) -> Any:
        raise _Reported(self.body)


class _Reported(Exception):
    """Carries an already described exception (`streamload.loader.worker_errors.describe`)."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.body = body


class _Output:
    """This worker's side of its ring: batches (streamed in chunks when ``chunk`` is set) and
    control records (ERROR records: end of share, exception text, stats)."""

    def __init__(self, ring: Ring, chunk: int | None, ring_note: str = "") -> None:
        self.ring = ring
        self.chunk = chunk
        self.ring_note = ring_note  # how the ring got its size, added to a RecordTooLarge

    def batch(self, payload: Any) -> None:
        try:
            send(self.ring, payload, chunk=self.chunk)
        except RecordTooLarge:
            self.error(worker_errors.describe(note=self.ring_note))

    def error(self, body: bytes) -> None:
        self.ring.put(body, type=RecordType.ERROR)


def _fetch_one(
    fetcher: Any,
    item: Any,
    out: _Output,
    reporter: sl_stats.WorkerReporter | None = None,
    last: bool = False,
) -> None:
    try:
        payload = fetcher.fetch(item)
    except StopIteration:
        out.error(protocol.END_OF_SHARE)
        return
    except _Reported as exc:
        out.error(exc.body)
        return
    except Exception:
        out.error(worker_errors.describe())
        return
    if reporter is None:
        out.batch(payload)
        return
    reporter.clock.batches += 1
    if last or reporter.due():
        out.error(reporter.record())
    started = time.perf_counter_ns()
    out.batch(payload)
    reporter.clock.add("transport", started)


def _own_plan(
    worker_id: int,
    num_workers: int,
    dataset: Any,
    spec: FetchSpec,
    batch_size: int | None,
    message: bytes,
    out: _Output,
    reporter: sl_stats.WorkerReporter,
) -> None:
    """A whole planned epoch with no further trainer messages: steps id, id + n, ..."""
    try:
        params = protocol.plan_params(message)
        dataset.set_epoch(params["epoch"])
        fetcher = spec.build(dataset, reporter.clock)
        plan = dataset.epoch_plan(
            params["batch_size"], params["drop_last"], params["start"], params["world_size"]
        )
        dataset.follow_plan(plan, params["rank"], worker_id, num_workers)  # read-ahead
        # One batch of lookahead: the stats ride before this worker's last batch, because the
        # trainer stops reading at the first worker's end of share.
        batches = plan.batches(params["rank"], worker_id, num_workers)
        upcoming = next(batches, _END)
        while upcoming is not _END:
            ids, upcoming = upcoming, next(batches, _END)
            _fetch_one(fetcher, ids, out, reporter, last=upcoming is _END)
    except Exception:
        out.error(worker_errors.describe())
    out.error(reporter.record())  # exact totals (read when a persistent pool drains)
    out.error(protocol.END_OF_SHARE)  # end of this worker's share

"""The shared-memory ring (streamload.ring): record semantics, lifetime, failure handling.

In-process tests pair a consumer created here with a producer attached to the same memfd (a second
mapping), which exercises the real cross-mapping protocol without a second process. The
multi-process tests run the producer (or consumer) in a child under fork, spawn and forkserver,
each with a hard deadline.
"""

from __future__ import annotations

import gc
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamload.errors import RingError
from streamload.transport import _ring
from streamload.transport.ring import (
    ConsumerDied,
    ProducerDied,
    RecordTooLarge,
    RecordType,
    Ring,
    RingArgumentError,
    RingClosed,
    RingCorrupted,
    RingHandle,
    RingTimeout,
    RingUsageError,
    capacity_for,
    record_size,
)

NATIVE_DIR = Path(__file__).resolve().parents[2] / "native"
HEADER = _ring.HEADER_SIZE
HEAD_OFFSET = 128  # header layout, native/ring.c
PRODUCER_START_OFFSET = 72

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The child-process entry points module (importable by spawn children via sys.path)."""
    monkeypatch.syspath_prepend(str(NATIVE_DIR))
    import ring_peer

    yield ring_peer


def make_pair(capacity: int = 1 << 12, max_record: int | None = None) -> tuple[Ring, Ring]:
    cons = Ring.create(capacity, max_record)
    prod = Ring.attach(cons.handle(), "producer")
    return cons, prod


def poke(ring: Ring, offset: int, data: bytes) -> None:
    """Write raw bytes into a ring's shared memory (header page + data area), as a corrupting
    peer would: through a second mapping of the creator's memfd, so the shipped extension
    carries no test hook."""
    with mmap.mmap(ring.fileno(), 0) as shared:
        shared[offset : offset + len(data)] = data


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def ring_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("streamload-ring" in line for line in f)


def join_or_kill(proc: mp.process.BaseProcess, timeout: float = 30) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
        pytest.fail(f"child {proc.pid} did not finish within {timeout} s")


# ---------------------------------------------------------------- records


def test_records_arrive_once_in_commit_order_with_bytes_intact() -> None:
    """Many records of varying sizes through a small ring (forcing wraps) arrive exactly in order."""
    cons, prod = make_pair(1 << 12)
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(0, prod.max_record + 1, size=300)]
    sizes[:4] = [0, 1, prod.max_record, prod.max_record]
    for seq, size in enumerate(sizes):
        payload = rng.bytes(size)
        assert prod.put(payload, timeout=0) == seq
        with cons.get(timeout=0) as rec:
            assert (rec.seq, rec.type, rec.nbytes) == (seq, RecordType.DATA, size)
            assert bytes(rec) == payload
    assert cons.stats()["head"] > 4 * cons.capacity  # the ring wrapped several times


def test_reader_sees_nothing_until_commit() -> None:
    """A reserved, written, uncommitted record is invisible; commit makes it visible."""
    cons, prod = make_pair()
    res = prod.reserve(10)
    with memoryview(res) as view:
        view[:] = b"0123456789"
    with pytest.raises(RingTimeout):
        cons.get(timeout=0)
    res.commit()
    assert bytes(cons.get(timeout=0)) == b"0123456789"


def test_abort_publishes_nothing_and_reuses_the_space() -> None:
    """An aborted reservation never reaches the consumer and its space is handed out again."""
    cons, prod = make_pair()
    with prod.reserve(100) as res, memoryview(res) as view:
        view[:] = b"\xee" * 100
        # leaving the block without commit aborts
    assert res.done
    with pytest.raises(RingTimeout):
        cons.get(timeout=0)
    prod.put(b"after")
    rec = cons.get(timeout=0)
    assert bytes(rec) == b"after" and rec.seq == 0


def test_commit_may_publish_fewer_bytes_than_reserved() -> None:
    """commit(k) publishes exactly the first k reserved bytes."""
    cons, prod = make_pair()
    res = prod.reserve(1000)
    with memoryview(res) as view:
        view[:5] = b"short"
    res.commit(5, seq=41)
    rec = cons.get(timeout=0)
    assert (bytes(rec), rec.seq) == (b"short", 41)
    assert prod.put(b"next") == 42  # sequence numbers continue after an explicit seq


def test_put_concatenates_a_list_of_buffers() -> None:
    """put([a, b, c]) writes the buffers back to back as one record."""
    cons, prod = make_pair()
    prod.put([b"ab", bytearray(b"cd"), np.arange(3, dtype=np.uint8)])
    assert bytes(cons.get(timeout=0)) == b"abcd\x00\x01\x02"


def test_record_payloads_are_64_byte_aligned() -> None:
    """Every payload starts on a 64-byte boundary, so arrays can be viewed in place."""
    cons, prod = make_pair()
    for size in (1, 17, 100, 333):
        prod.put(b"x" * size)
        rec = cons.get(timeout=0)
        assert np.frombuffer(rec, dtype=np.uint8).ctypes.data % 64 == 0
        del rec


def test_record_larger_than_max_record_names_ring_size_to_raise() -> None:
    """A too-large record raises RecordTooLarge naming ring_size and a capacity that would fit."""
    _cons, prod = make_pair(1 << 12)
    with pytest.raises(RecordTooLarge, match=r"raise ring_size \(currently 4096 bytes\)") as info:
        prod.reserve(prod.max_record + 1)
    err = info.value
    assert (err.nbytes, err.max_record, err.capacity) == (
        prod.max_record + 1,
        prod.max_record,
        4096,
    )
    assert err.required_capacity >= 2 * record_size(err.nbytes)
    bigger = Ring.create(err.required_capacity)
    assert bigger.max_record >= err.nbytes
    with pytest.raises(RecordTooLarge):
        prod.put(b"x" * (prod.max_record + 1))


@pytest.mark.parametrize(
    ("capacity", "max_record"), [(1000, None), (128, None), (4096, 2048), (4096, 2048 - 63)]
)
def test_invalid_geometry_is_rejected_at_creation(capacity: int, max_record: int | None) -> None:
    """Capacity must be a power of two >= 256 and max_record <= capacity/2 - 64."""
    with pytest.raises(RingArgumentError, match="capacity must be a power of two"):
        Ring.create(capacity, max_record)


def test_capacity_for_fits_the_requested_records() -> None:
    """capacity_for(m, k) yields a valid ring whose max_record admits m."""
    for m in (1, 1000, 1 << 20):
        ring = Ring.create(capacity_for(m, 3))
        assert ring.max_record >= m
        assert ring.capacity >= 3 * record_size(m)


def test_ring_larger_than_memory_fails_at_creation_with_the_size_named() -> None:
    """A ring that cannot fit is an error at creation naming the size, never a SIGBUS later."""
    with pytest.raises(RingError, match=r"cannot allocate a 1099511631872-byte shared-memory ring"):
        Ring.create(1 << 40)


def test_allocation_failure_is_reported_with_the_failing_call() -> None:
    """When the OS refuses the memory (here RLIMIT_FSIZE), creation raises naming size and call."""
    script = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from streamload.transport.ring import Ring\n"
        "from streamload.errors import RingError\n"
        "try:\n"
        "    Ring.create(1 << 22)\n"
        "except RingError as exc:\n"
        "    print(type(exc).__name__, exc.errno, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("RingError 27 cannot allocate a 4198400-byte shared-memory ring")
    assert "ftruncate failed" in out or "fallocate failed" in out


# ---------------------------------------------------------------- lifetime


def test_release_with_live_view_raises_buffer_error() -> None:
    """release() refuses while a numpy array still views the record, and works after."""
    cons, prod = make_pair()
    prod.put(b"abcdef")
    rec = cons.get(timeout=0)
    arr = np.frombuffer(rec, dtype=np.uint8)
    with pytest.raises(BufferError, match="1 buffer export"):
        rec.release()
    assert not arr.flags.writeable  # consumer views are read-only by default
    del arr
    rec.release()
    assert rec.released and cons.stats()["bytes_in_use"] == 0
    with pytest.raises(BufferError):
        memoryview(rec)


def test_dropped_record_is_released_when_its_last_view_dies() -> None:
    """A record whose object is dropped stays held until the last numpy view is gone."""
    cons, prod = make_pair()
    prod.put(b"x" * 100)
    rec = cons.get(timeout=0)
    arr = np.frombuffer(rec, dtype=np.uint8)
    del rec
    assert cons.stats()["bytes_held"] == record_size(100)
    assert arr[0] == ord("x")
    del arr
    assert cons.stats()["bytes_in_use"] == 0


def test_zero_copy_tensor_keeps_the_record_alive() -> None:
    """torch.from_numpy over np.frombuffer holds the export: the space is reclaimed after the tensor dies."""
    cons, prod = make_pair()
    prod.put(np.arange(16, dtype=np.float32))
    rec = cons.get(timeout=0)
    tensor = torch.from_numpy(np.frombuffer(rec.view(writable=True), dtype=np.float32))
    del rec
    gc.collect()
    assert cons.stats()["bytes_held"] > 0
    assert tensor.sum().item() == sum(range(16))
    tensor.mul_(2)  # the consumer owns the payload until release: writing is allowed
    del tensor
    assert cons.stats()["bytes_in_use"] == 0


def test_out_of_order_release_reclaims_only_the_released_prefix() -> None:
    """Releasing a later record first frees nothing; releasing the first frees both."""
    cons, prod = make_pair()
    prod.put(b"a" * 100)
    prod.put(b"b" * 100)
    first, second = cons.get(timeout=0), cons.get(timeout=0)
    second.release()
    assert cons.stats()["bytes_in_use"] == 2 * record_size(100)
    first.release()
    assert cons.stats()["bytes_in_use"] == 0


def test_held_records_apply_back_pressure() -> None:
    """A producer times out while the consumer holds every byte, and proceeds after release."""
    cons, prod = make_pair(1 << 12)
    count = 0
    while True:
        try:
            prod.put(b"x" * 1000, timeout=0)
        except RingTimeout:
            break
        count += 1
    held = [cons.get(timeout=0) for _ in range(count)]
    stats = cons.stats()
    assert stats["bytes_held"] == stats["bytes_in_use"] > 0
    with pytest.raises(RingTimeout, match="no space"):
        prod.put(b"x" * 1000, timeout=0.05)
    for rec in held:
        rec.release()
    prod.put(b"x" * 1000, timeout=0)


def test_commit_refuses_while_reservation_views_are_alive() -> None:
    """commit() raises BufferError while a view over the reservation lives, then succeeds."""
    cons, prod = make_pair()
    res = prod.reserve(8)
    arr = np.frombuffer(res, dtype=np.uint8)
    arr[:] = 7
    with pytest.raises(BufferError, match="still alive"):
        res.commit()
    del arr
    res.commit()
    assert bytes(cons.get(timeout=0)) == b"\x07" * 8


def test_second_reservation_while_one_is_pending_is_a_usage_error() -> None:
    """Only one reservation may be open per producer."""
    _, prod = make_pair()
    res = prod.reserve(8)
    with pytest.raises(RingUsageError, match="already pending"):
        prod.reserve(8)
    res.abort()
    prod.reserve(8).abort()


def test_calls_for_the_other_role_are_usage_errors() -> None:
    """A consumer cannot put and a producer cannot get."""
    cons, prod = make_pair()
    with pytest.raises(RingUsageError, match="needs the producer"):
        cons.put(b"x")
    with pytest.raises(RingUsageError, match="needs the consumer"):
        prod.get(timeout=0)


def test_second_live_producer_is_rejected() -> None:
    """A ring has one producer: attaching another from a live foreign process fails."""
    cons, _ = make_pair()
    cons.set_producer_pid(os.getppid())  # a live process other than us
    with pytest.raises(RingUsageError, match="already has a live producer"):
        Ring.attach(cons.handle(), "producer")


def test_bad_timeouts_and_record_types_are_argument_errors() -> None:
    """Negative/NaN timeouts and unknown record types are rejected before touching the ring."""
    cons, prod = make_pair()
    for bad in (-1, float("nan")):
        with pytest.raises(RingArgumentError, match="timeout"):
            cons.get(timeout=bad)
    with pytest.raises(RingArgumentError, match="record type"):
        prod.put(b"x", type=4)


# ---------------------------------------------------------------- close and waits


def test_producer_close_delivers_eos_then_ring_closed() -> None:
    """After the producer closes, the consumer drains records, gets EOS, then RingClosed."""
    cons, prod = make_pair()
    prod.put(b"last")
    prod.close()
    assert prod.closed
    assert bytes(cons.get(timeout=0)) == b"last"
    eos = cons.get(timeout=0)
    assert eos.type == RecordType.EOS and eos.seq == 1
    with pytest.raises(RingClosed, match="producer closed"):
        cons.get(timeout=None)  # no hang: the closed flag ends the wait


def test_consumer_close_wakes_a_blocked_producer_promptly() -> None:
    """A producer blocked on a full ring raises RingClosed soon after the consumer closes."""
    cons, prod = make_pair(1 << 12)
    while True:
        try:
            prod.put(b"x" * prod.max_record, timeout=0)
        except RingTimeout:
            break
    outcome: list[BaseException] = []

    def blocked_put() -> None:
        try:
            prod.put(b"x" * prod.max_record, timeout=20)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked_put)
    thread.start()
    while cons.stats()["producer_waits"] == 0 and thread.is_alive():
        time.sleep(0.001)  # polling for the waiter to be asleep, not synchronising the ring
    closed_at = time.monotonic()
    cons.close()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - closed_at < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], RingClosed)
    assert "consumer closed" in str(outcome[0])


def test_get_timeout_is_honoured() -> None:
    """get(timeout=t) raises RingTimeout after about t seconds, not earlier and not much later."""
    cons, _ = make_pair()
    start = time.monotonic()
    with pytest.raises(RingTimeout):
        cons.get(timeout=0.2)
    assert 0.19 <= time.monotonic() - start < 1.0


def test_signal_handler_exception_interrupts_a_blocking_get() -> None:
    """A signal whose handler raises (e.g. Ctrl-C) interrupts get(timeout=None) promptly."""
    cons, _ = make_pair()

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            cons.get(timeout=None)
        assert time.monotonic() - start < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert cons.stats()["consumer_waits"] >= 1


def test_recycled_producer_pid_counts_as_dead() -> None:
    """A live pid whose start time differs from the recorded one (pid reuse) is not the producer."""
    cons, _prod = make_pair()
    poke(cons, PRODUCER_START_OFFSET, struct.pack("<Q", 12345))  # "started at another time"
    start = time.monotonic()
    with pytest.raises(ProducerDied, match=f"process {os.getpid()} died"):
        cons.get(timeout=10)
    assert time.monotonic() - start < 1.0


def test_second_thread_entering_a_blocking_call_is_rejected() -> None:
    """One thread per side: a get() while another thread is blocked in get() is a usage error."""
    cons, prod = make_pair()
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(bytes(cons.get(timeout=20))))
    thread.start()
    while cons.stats()["consumer_waits"] == 0 and thread.is_alive():
        time.sleep(0.001)  # polling for the waiter to be asleep, not synchronising the ring
    # The blocked thread counts as busy only while it is inside the wait loop.
    with pytest.raises(RingUsageError, match="another thread"):
        cons.get(timeout=0)
    prod.put(b"wake")
    thread.join(10)
    assert got == [b"wake"]


def test_records_stay_readable_after_the_consumer_closes() -> None:
    """Closing the consumer does not unmap memory that live records still expose."""
    cons, prod = make_pair()
    prod.put(b"kept")
    rec = cons.get(timeout=0)
    cons.close()
    assert bytes(rec) == b"kept"
    rec.release()
    with pytest.raises(RingClosed):
        prod.put(b"more", timeout=0)


def test_pickling_a_ring_points_to_handles() -> None:
    """A Ring cannot be pickled; the error says to pass ring.handle() instead."""
    cons, _ = make_pair()
    with pytest.raises(TypeError, match=r"ring\.handle\(\)"):
        pickle.dumps(cons)


# ---------------------------------------------------------------- corruption


def test_corrupt_head_position_raises_ring_corrupted_and_stays_corrupted() -> None:
    """A head beyond tail + capacity is detected, and the ring refuses further reads."""
    cons, prod = make_pair()
    prod.put(b"ok")
    poke(cons, HEAD_OFFSET, struct.pack("<Q", 10 * cons.capacity))
    with pytest.raises(RingCorrupted, match="failed validation"):
        cons.get(timeout=0)
    with pytest.raises(RingCorrupted):
        cons.get(timeout=0)


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.binary(min_size=16, max_size=16),
    payload_len=st.integers(0, 1000),
    head=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_garbage_record_header_never_reads_out_of_bounds(
    garbage: bytes, payload_len: int, head: int | None
) -> None:
    """Any 16 header bytes (and any head) give RingCorrupted or a record inside the published range."""
    cons, prod = make_pair(1 << 12)
    prod.put(b"p" * payload_len)
    poke(cons, HEADER, garbage)
    if head is not None:
        poke(cons, HEAD_OFFSET, struct.pack("<Q", head))
    published = cons.stats()["head"]
    try:
        rec = cons.get(timeout=0)
    except RingCorrupted:
        return
    except RingTimeout:
        assert published == 0  # a head of 0 means "empty", which is consistent
        return
    assert rec.type in (RecordType.DATA, RecordType.ERROR, RecordType.EOS)
    assert rec.nbytes <= cons.max_record
    assert record_size(rec.nbytes) <= published
    bytes(rec)  # readable in full (ASan would flag an overrun in the sanitizer run)


# ---------------------------------------------------------------- multi-process

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.parametrize("method", START_METHODS)
def test_child_producer_streams_every_record_under_each_start_method(
    method: str, peer: object
) -> None:
    """A producer child (fork/spawn/forkserver, handle pickled as a dup'ed fd) delivers N records intact."""
    ctx = mp.get_context(method)
    count, size = 400, 3000
    cons = Ring.create(1 << 14)
    proc = ctx.Process(target=peer.produce, args=(cons.handle(), count, size))  # type: ignore[attr-defined]
    proc.start()
    cons.set_producer_pid(proc.pid)  # type: ignore[arg-type]
    for seq in range(count):
        with cons.get(timeout=30) as rec:
            assert rec.seq == seq and bytes(rec) == peer.payload(seq, size)  # type: ignore[attr-defined]
    assert cons.get(timeout=30).type == RecordType.EOS
    with pytest.raises(RingClosed):
        cons.get(timeout=30)
    join_or_kill(proc)
    assert proc.exitcode == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigkilled_producer_is_drained_then_reported_within_a_second(
    method: str, peer: object
) -> None:
    """After SIGKILL of the producer the consumer gets every committed record, then ProducerDied fast."""
    ctx = mp.get_context(method)
    size = 1000
    cons = Ring.create(1 << 14)
    started = ctx.Event()
    proc = ctx.Process(target=peer.produce_forever, args=(cons.handle(), size, started))  # type: ignore[attr-defined]
    proc.start()
    cons.set_producer_pid(proc.pid)  # type: ignore[arg-type]
    assert started.wait(30)
    seq = 0
    for _ in range(50):
        with cons.get(timeout=30) as rec:
            assert rec.seq == seq and bytes(rec) == peer.payload(seq, size)  # type: ignore[attr-defined]
        seq += 1
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    killed_at = time.monotonic()
    # Not reaped yet: the producer is a zombie, which must count as dead.
    with pytest.raises(ProducerDied, match=f"process {proc.pid} died") as info:
        while True:
            with cons.get(timeout=10) as rec:
                assert rec.seq == seq and bytes(rec) == peer.payload(seq, size)  # type: ignore[attr-defined]
            seq += 1
    assert time.monotonic() - killed_at < 1.5
    assert info.value.pid == proc.pid
    join_or_kill(proc)


def test_producer_killed_inside_a_reservation_leaves_no_partial_record(peer: object) -> None:
    """A producer SIGKILLed between reserve and commit: committed records arrive, the reservation never does."""
    ctx = mp.get_context("fork")
    size, committed = 500, 5
    cons = Ring.create(1 << 14)
    inside = ctx.Event()
    proc = ctx.Process(
        target=peer.die_inside_reservation,  # type: ignore[attr-defined]
        args=(cons.handle(), committed, size, inside),
    )
    proc.start()
    cons.set_producer_pid(proc.pid)  # type: ignore[arg-type]
    assert inside.wait(30)
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    got = []
    with pytest.raises(ProducerDied):
        while True:
            with cons.get(timeout=10) as rec:
                got.append((rec.seq, bytes(rec)))
    assert got == [(s, peer.payload(s, size)) for s in range(committed)]  # type: ignore[attr-defined]
    join_or_kill(proc)


def test_dead_consumer_makes_a_blocked_producer_raise_consumer_died(peer: object) -> None:
    """A producer waiting for space raises ConsumerDied soon after the consumer is SIGKILLed."""
    ctx = mp.get_context("fork")
    prod = Ring.create(1 << 12, role="producer")
    attached = ctx.Event()
    proc = ctx.Process(target=peer.consume_and_hang, args=(prod.handle(), attached))  # type: ignore[attr-defined]
    proc.start()
    assert attached.wait(30)
    while True:
        try:
            prod.put(b"x" * prod.max_record, timeout=0)
        except RingTimeout:
            break
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    killed_at = time.monotonic()
    with pytest.raises(ConsumerDied):
        prod.put(b"x" * prod.max_record, timeout=10)
    assert time.monotonic() - killed_at < 1.5
    join_or_kill(proc)


def test_ring_object_inherited_by_fork_cannot_close_the_parents_side(peer: object) -> None:
    """A forked child closing its inherited copy leaves the shared consumer side open."""
    cons, prod = make_pair()
    proc = mp.get_context("fork").Process(target=peer.close_inherited, args=(cons,))  # type: ignore[attr-defined]
    proc.start()
    join_or_kill(proc)
    assert proc.exitcode == 0
    assert not cons.stats()["consumer_closed"]
    prod.put(b"still open", timeout=0)
    assert bytes(cons.get(timeout=0)) == b"still open"


def test_no_fd_or_mapping_leaks_and_nothing_named_in_dev_shm(peer: object) -> None:
    """A full spawn round trip leaves fds and mappings at baseline; the ring is an unnamed memfd."""
    ctx = mp.get_context("spawn")
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # its pipe is a one-time fd, not a ring leak
    gc.collect()  # rings of earlier tests still referenced from cycles
    shm_before = set(os.listdir("/dev/shm"))
    fds_before, maps_before = fd_count(), ring_mappings()

    cons = Ring.create(1 << 14)
    assert os.readlink(f"/proc/self/fd/{cons.fileno()}").startswith("/memfd:streamload-ring")
    proc = ctx.Process(target=peer.produce, args=(cons.handle(), 20, 100))  # type: ignore[attr-defined]
    proc.start()
    cons.set_producer_pid(proc.pid)  # type: ignore[arg-type]
    while cons.get(timeout=30).type != RecordType.EOS:
        pass
    join_or_kill(proc)
    cons.close()
    del cons, proc
    gc.collect()

    assert fd_count() == fds_before
    assert ring_mappings() == maps_before
    new_names = set(os.listdir("/dev/shm")) - shm_before
    assert not [n for n in new_names if "streamload" in n or "ring" in n]


@pytest.mark.skipif(sys.platform != "linux", reason="memfd rings are Linux-only")
def test_attach_rejects_an_fd_that_is_not_a_ring(tmp_path: Path) -> None:
    """Attaching a regular file or an unsealed memfd fails with a clear error, not a crash."""
    path = tmp_path / "not-a-ring"
    path.write_bytes(b"\0" * 8192)
    with open(path, "rb") as f:
        from streamload.transport.ring import RingHandle

        with pytest.raises(RingArgumentError, match="is not a streamload ring"):
            Ring.attach(RingHandle(f.fileno(), 4096, 1), "producer")


def _produce_small_records(handle: RingHandle, records: int) -> None:
    prod = Ring.attach(handle, "producer")
    prod.set_spin(0)  # every wait sleeps: the test counts sleeps, not spin luck
    for i in range(records):
        prod.put(i.to_bytes(4, "little") * 256, timeout=20)
    prod.close()


def test_a_consumer_bound_ring_wakes_its_producer_once_per_half_ring() -> None:
    """When the consumer is the bottleneck the ring stays full; the producer is woken only once
    half the ring is free (hysteresis), not after every record the consumer releases (measured
    without it: ~1,500 sleeps for these 2,000 records)."""
    cons = Ring.create(1 << 16)
    records = 2000
    proc = mp.get_context("fork").Process(
        target=_produce_small_records, args=(cons.handle(), records)
    )
    proc.start()
    cons.set_producer_pid(proc.pid or 0)
    for i in range(records):
        with cons.get(timeout=20) as rec:
            assert bytes(rec.view()[:4]) == i.to_bytes(4, "little")
        busy_until = time.perf_counter() + 20e-6  # a trainer step slower than the producer
        while time.perf_counter() < busy_until:
            pass
    proc.join(20)
    assert proc.exitcode == 0
    stats = cons.stats()
    per_half_ring = (cons.capacity // 2) // record_size(1024)  # ~30 records
    assert 0 < stats["producer_waits"] <= 2 * records // per_half_ring
    assert stats["producer_missed_wakes"] == 0


def test_a_waiting_consumer_wakes_a_producer_that_fits_in_less_than_half_the_ring() -> None:
    """A consumer holding most of the ring (zero-copy batches) frees one record and waits: the
    producer, which needs less than half the ring, is woken then, not a wait slice later."""
    cons, prod = make_pair(1 << 16)
    size = cons.capacity // 8 - 64  # records of exactly an eighth of the ring
    for _ in range(8):
        prod.put(b"h" * size, timeout=0)
    held = [cons.get(timeout=0) for _ in range(8)]
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            prod.put(b"n" * size, timeout=20)  # blocks: the ring is full
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    while cons.stats()["producer_waits"] == 0 and prod.stats()["records"] == 8:
        time.sleep(0.001)  # polling for the producer to be asleep, not synchronising the ring
        if not thread.is_alive():
            break
    held.pop(0).release()  # an eighth free: less than the half the producer asked to wait for
    with cons.get(timeout=20) as rec:
        assert bytes(rec.view()[:1]) == b"n"
    thread.join(20)
    assert not errors
    assert cons.stats()["producer_missed_wakes"] == 0
    for rec in held:
        rec.release()

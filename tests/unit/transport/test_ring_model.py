"""Property test: the native ring against a pure-Python model of its positions.

Hypothesis drives random interleavings of reserve / commit (full or short) / abort / get / release
(in and out of order) / reopen for a new producer on a small ring, so wraps, PAD records and full/empty edges happen often.
The model (`RingModel`) computes where every record must land from the documented layout alone
(64-byte aligned records of align64(64 + len) bytes, a PAD to the end when a record does not fit,
tail advancing over the released prefix). After every step the ring's head/tail/read_pos must equal
the model's, and: tail <= read_pos <= head, head - tail <= capacity, records never straddle the end,
every committed record is delivered exactly once in commit order with its bytes, PAD records never
surface, and released space is handed out again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from streamload.transport.ring import (
    Record,
    RecordType,
    Reservation,
    Ring,
    RingTimeout,
    RingUsageError,
)

CAPACITY = 512
ALIGN = 64
PAYLOAD_OFFSET = 64


def record_size(length: int) -> int:
    return (PAYLOAD_OFFSET + length + ALIGN - 1) // ALIGN * ALIGN


def payload(seq: int, length: int) -> bytes:
    return bytes((seq * 31 + i) & 0xFF for i in range(length))


@dataclass
class Entry:
    """One record (or PAD) in [tail, head) of the model."""

    pos: int
    size: int
    seq: int = -1
    type: int = 0  # 0 = PAD
    length: int = 0
    released: bool = False


@dataclass
class RingModel:
    """Positions and records of a ring, computed from the layout rules only."""

    capacity: int
    head: int = 0
    tail: int = 0
    read_pos: int = 0
    entries: deque[Entry] = field(default_factory=deque)  # everything in [tail, head)

    def placement(self, n: int) -> tuple[int, int]:
        """(pad bytes, record size) a reservation of n bytes would use at the current head."""
        size = record_size(n)
        idx = self.head % self.capacity
        pad = self.capacity - idx if idx + size > self.capacity else 0
        return pad, size

    def fits(self, n: int) -> bool:
        pad, size = self.placement(n)
        return self.capacity - (self.head - self.tail) >= pad + size

    def commit(self, reserved: int, length: int, seq: int, type_: int) -> None:
        pad, _ = self.placement(reserved)
        if pad:
            self.entries.append(Entry(self.head, pad))
            self.head += pad
        size = record_size(length)
        self.entries.append(Entry(self.head, size, seq, type_, length))
        self.head += size

    def next_record(self) -> Entry | None:
        """Deliver the next record, consuming (and releasing) PADs on the way."""
        for entry in list(self.entries):  # advance() pops released PADs from the front
            if entry.pos < self.read_pos:
                continue
            self.read_pos = entry.pos + entry.size
            if entry.type == 0:
                entry.released = True
                self.advance()
                continue
            return entry
        return None

    def release(self, entry: Entry) -> None:
        entry.released = True
        self.advance()

    def advance(self) -> None:
        while self.entries and self.entries[0].released and self.entries[0].pos < self.read_pos:
            self.tail += self.entries.popleft().size


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cons = Ring.create(CAPACITY)
        self.prod = Ring.attach(self.cons.handle(), "producer")
        self.model = RingModel(CAPACITY)
        self.reservation: Reservation | None = None
        self.reserved = 0
        self.next_seq = 0
        self.held: list[tuple[Record, Entry]] = []
        self.delivered: list[int] = []
        self.committed: list[int] = []
        self.max_head = 0

    @precondition(lambda self: self.reservation is None)
    @rule(n=st.integers(0, CAPACITY // 2 - PAYLOAD_OFFSET))
    def reserve(self, n: int) -> None:
        if self.model.fits(n):
            self.reservation = self.prod.reserve(n, timeout=0)
            self.reserved = n
            assert len(self.reservation) == n
            addr = np.frombuffer(self.reservation, dtype=np.uint8).ctypes.data if n else 0
            assert addr % ALIGN == 0
        else:
            try:
                self.prod.reserve(n, timeout=0)
            except RingTimeout:
                pass
            else:
                raise AssertionError(f"reserve({n}) succeeded but the model says it cannot fit")

    @precondition(lambda self: self.reservation is not None)
    @rule()
    def second_reserve_is_refused(self) -> None:
        try:
            self.prod.reserve(0, timeout=0)
        except RingUsageError:
            return
        raise AssertionError("a second reservation was granted")

    @precondition(lambda self: self.reservation is not None)
    @rule(
        fraction=st.floats(0, 1),
        type_=st.sampled_from([RecordType.DATA, RecordType.DATA, RecordType.ERROR, RecordType.EOS]),
    )
    def commit(self, fraction: float, type_: RecordType) -> None:
        assert self.reservation is not None
        length = int(self.reserved * fraction)
        with memoryview(self.reservation) as view:
            view[:length] = payload(self.next_seq, length)
        seq = self.reservation.commit(length, type=type_)
        assert seq == self.next_seq
        self.model.commit(self.reserved, length, seq, int(type_))
        self.committed.append(seq)
        self.next_seq += 1
        self.reservation = None

    @precondition(lambda self: self.reservation is not None)
    @rule()
    def abort(self) -> None:
        assert self.reservation is not None
        with memoryview(self.reservation) as view:
            view[:] = b"\xee" * len(view)  # scribbles must stay invisible
        self.reservation.abort()
        self.reservation = None

    @rule()
    def get(self) -> None:
        expected = self.model.next_record()
        if expected is None:
            try:
                rec = self.cons.get(timeout=0)
            except RingTimeout:
                return
            raise AssertionError(f"got {rec!r} but the model has nothing to deliver")
        rec = self.cons.get(timeout=0)
        assert rec.type in (RecordType.DATA, RecordType.ERROR, RecordType.EOS)  # never PAD
        assert (rec.seq, rec.type, rec.nbytes) == (expected.seq, expected.type, expected.length)
        assert bytes(rec) == payload(rec.seq, rec.nbytes)
        idx = expected.pos % CAPACITY
        assert idx % ALIGN == 0 and idx + expected.size <= CAPACITY  # no straddling
        self.delivered.append(rec.seq)
        self.held.append((rec, expected))

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1 << 16))
    def release(self, pick: int) -> None:
        rec, entry = self.held.pop(pick % len(self.held))  # any order
        rec.release()
        self.model.release(entry)

    @precondition(lambda self: self.reservation is None and not self.held)
    @rule()
    def reopen_for_a_new_producer(self) -> None:
        """A live, open producer is never cut off; once it is closed, reopen discards what was
        never read and the next producer continues after the last published byte."""
        try:
            self.cons.reopen()
        except RingUsageError:
            pass
        else:
            raise AssertionError("reopen succeeded while the producer was alive and open")
        self.prod._close_core()  # closed without an EOS record (the model has none)
        self.cons.reopen()
        self.prod = Ring.attach(self.cons.handle(), "producer")
        self.model.tail = self.model.read_pos = self.model.head
        self.model.entries.clear()
        self.committed = self.committed[: len(self.delivered)]  # unread records are gone
        self.next_seq = self.prod.stats()["next_seq"]

    @invariant()
    def positions_match_the_model(self) -> None:
        stats = self.cons.stats()
        model = self.model
        assert (stats["head"], stats["tail"], stats["read_pos"]) == (
            model.head,
            model.tail,
            model.read_pos,
        )
        assert model.tail <= model.read_pos <= model.head
        assert model.head - model.tail <= CAPACITY
        self.max_head = max(self.max_head, model.head)

    @invariant()
    def delivery_is_exactly_once_in_order(self) -> None:
        assert self.delivered == self.committed[: len(self.delivered)]

    def teardown(self) -> None:
        # Released space is reused: drain and release everything, then a max-size record must fit
        # even after the ring has wrapped.
        for rec, _ in self.held:
            rec.release()
        self.held.clear()
        if self.reservation is not None:
            self.reservation.abort()
        while True:
            try:
                self.cons.get(timeout=0).release()
            except RingTimeout:
                break
        stats = self.cons.stats()
        assert stats["bytes_in_use"] == 0
        self.prod.put(b"r" * self.prod.max_record, timeout=0)
        self.prod.close()
        self.cons.close()


RingMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRingAgainstModel = RingMachine.TestCase

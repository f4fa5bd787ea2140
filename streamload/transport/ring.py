"""One single-producer/single-consumer shared-memory ring: the Python face of `streamload.transport._ring`.

A ring carries whole records (one collated batch each) from one producer process (a worker) to one
consumer process (the trainer) with one memcpy per byte and no pickling. The memory is a sealed,
pre-allocated memfd: nothing is named in /dev/shm, running out of memory is an error at
`Ring.create`, and the kernel frees it when the last process unmaps it (also after SIGKILL).

Roles and lifetime:

* The consumer creates the ring (``Ring.create``) and hands ``ring.handle()`` to the producer
  process (a `multiprocessing.Process` argument works with fork, spawn and forkserver: the handle
  pickles as a duplicated fd). The producer maps it with ``Ring.attach(handle)``.
* Producer: ``reserve(n)`` -> fill the writable `Reservation` -> ``commit(k)`` (k <= n) or
  ``abort()``; or ``put(data)`` to copy a buffer in. ``close()`` appends an EOS record and marks the
  producer side closed.
* Consumer: ``get()`` -> `Record` (read-only buffer over ring memory, with an export count) ->
  ``release()``. Records may be released in any order; space is reclaimed over the released
  prefix. ``release()`` while buffer exports (memoryviews, numpy arrays, tensors) are alive raises
  `BufferError`; a record that is simply dropped is released when its last export dies, which is
  how zero-copy tensors keep their memory alive.

Invariants: records arrive exactly once, in commit order, bytes intact (headers are validated on
every read: a bad one raises `RingCorrupted`, never an out-of-bounds read); a reservation is
invisible until committed, so a producer killed mid-write leaves no partial record; every wait is
bounded and re-checks the peer's closed flag and liveness, so a dead or closed peer raises
(`ProducerDied`, `ConsumerDied`, `RingClosed`) instead of hanging; Ctrl-C interrupts a wait. A
producer waiting for space is woken once half the ring is free (or the consumer itself waits),
so a consumer-bound ring costs one wake-up per half ring, not one per record.

All status codes of the native core become exceptions in one place: `_ERROR_CLASSES` below.
"""

from __future__ import annotations

import contextlib
import enum
import os
from multiprocessing import reduction
from typing import Any

from streamload.errors import RingError
from streamload.transport import _ring
from streamload.transport._ring import Record, Reservation

__all__ = [
    "ConsumerDied",
    "PeerDied",
    "ProducerDied",
    "Record",
    "RecordTooLarge",
    "RecordType",
    "Reservation",
    "Ring",
    "RingArgumentError",
    "RingClosed",
    "RingCorrupted",
    "RingHandle",
    "RingTimeout",
    "RingUsageError",
]


class RingTimeout(RingError):
    """A `get`/`reserve`/`put` did not complete within its timeout; the ring is unchanged."""


class RingClosed(RingError):
    """The peer closed its side (for a consumer: after every committed record was delivered)."""


class PeerDied(RingError):
    """The peer process is gone. `pid` is its process id."""

    pid: int = 0


class ProducerDied(PeerDied):
    """The producer process died; every record it committed was delivered before this."""


class ConsumerDied(PeerDied):
    """The consumer process died while the producer waited for space."""


class RingCorrupted(RingError):
    """A record header or ring position failed validation; the ring cannot be used any more."""


class RecordTooLarge(RingError, ValueError):
    """A record exceeds the ring's max_record; the message says which ring_size would fit it.

    Attributes: nbytes, max_record, capacity, required_capacity.
    """

    nbytes: int = 0
    max_record: int = 0
    capacity: int = 0
    required_capacity: int = 0


class RingArgumentError(RingError, ValueError):
    """An argument is invalid (geometry, timeout, record type, an fd that is not a ring)."""


class RingUsageError(RingError):
    """A call is not valid now: wrong role, reservation pending, object closed or inherited."""


# The single mapping from native error kinds to exceptions (read by the C binding).
_ERROR_CLASSES: dict[str, type[RingError]] = {
    "timeout": RingTimeout,
    "closed": RingClosed,
    "producer_died": ProducerDied,
    "consumer_died": ConsumerDied,
    "corrupted": RingCorrupted,
    "too_large": RecordTooLarge,
    "invalid": RingArgumentError,
    "state": RingUsageError,
    "os": RingError,
}
_ring._set_error_classes(_ERROR_CLASSES)


class RecordType(enum.IntEnum):
    """What a record carries. PAD records exist in the ring but are never delivered."""

    DATA = _ring.DATA
    ERROR = _ring.ERROR
    EOS = _ring.EOS


_ROLES = {"producer": _ring.PRODUCER, "consumer": _ring.CONSUMER}
_ROLE_NAMES = {v: k for k, v in _ROLES.items()}


def _role_code(role: str) -> int:
    try:
        return _ROLES[role]
    except KeyError:
        raise RingArgumentError(f"role must be 'producer' or 'consumer', got {role!r}") from None


def record_size(nbytes: int) -> int:
    """Bytes a record with an `nbytes` payload occupies in the ring (header + 64-byte alignment)."""
    return int(_ring.record_size(nbytes))


def capacity_for(max_record: int, records: int = 2) -> int:
    """Smallest valid capacity that holds `records` records of `max_record` payload bytes.

    A ring needs capacity >= 2 * record_size(max_record) so that any record fits after a wrap.
    """
    need = max(2, records) * record_size(max_record)
    return max(_ring.MIN_CAPACITY, 1 << (need - 1).bit_length())


class RingHandle:
    """A picklable reference to a ring, for handing it to the producer process.

    Pickling duplicates the fd for the receiving process (`multiprocessing.reduction.DupFd`: fd
    passing under spawn/forkserver, the resource sharer otherwise); under fork the handle is
    inherited as is. A handle rebuilt from a pickle owns its fd; `Ring.attach` closes it once the
    ring is mapped, so each handle is attached once per process.
    """

    def __init__(self, fd: int, capacity: int, max_record: int, *, owned: bool = False) -> None:
        self.fd = fd
        self.capacity = capacity
        self.max_record = max_record
        self.owned = owned

    def __reduce__(self) -> tuple[Any, ...]:
        if self.fd < 0:
            raise RingUsageError("this ring handle was already attached or closed")
        return (_rebuild_handle, (reduction.DupFd(self.fd), self.capacity, self.max_record))

    def close(self) -> None:
        """Close the fd if this handle owns it (a handle received by pickling). Idempotent."""
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingHandle(fd={self.fd}, capacity={self.capacity}, owned={self.owned})"


def _rebuild_handle(dupfd: Any, capacity: int, max_record: int) -> RingHandle:
    return RingHandle(dupfd.detach(), capacity, max_record, owned=True)


class Ring(_ring.RingCore):
    """One side (producer or consumer) of a shared-memory SPSC ring in this process.

    Construct with `Ring.create` (creator, usually the consumer) or `Ring.attach` (the other
    process). Methods implemented natively (see `streamload/transport/_ring.pyi` for full docs):

    * producer: ``reserve(nbytes, timeout=None) -> Reservation``,
      ``put(data, *, type=RecordType.DATA, seq=None, timeout=None) -> int`` (seq);
    * consumer: ``get(timeout=None) -> Record``, ``set_producer_pid(pid)``;
    * both: ``stats() -> dict``, ``fileno()``, ``capacity``, ``max_record``, ``closed``.

    ``timeout`` is in seconds: None waits as long as the peer is alive and open, 0 polls.
    Sequence numbers default to one more than the previous record's.

    ``stats()`` keys: role, capacity, max_record; positions head, tail, read_pos; bytes_in_use
    (head - tail), bytes_held (delivered, not yet released), bytes_ready (committed, not yet
    delivered); records/bytes (written), records_read/bytes_read, records_in_flight;
    producer_waits/consumer_waits and *_wait_ns (sleeps after spinning, and their total time);
    producer_missed_wakes/consumer_missed_wakes (waits that slept a whole slice although they
    could have gone on: 0 in a healthy run);
    records_held (Records of this object not released); next_seq; producer_pid/consumer_pid;
    producer_closed/consumer_closed.
    """

    @classmethod
    def create(
        cls, capacity: int, max_record: int | None = None, *, role: str = "consumer"
    ) -> Ring:
        """Allocate a new ring and take `role` in it.

        Args:
            capacity: data area size in bytes, a power of two >= 256 (see `capacity_for`).
            max_record: largest record payload; default capacity/2 - 64, the maximum allowed.
            role: "consumer" (default: the trainer creates rings) or "producer".

        Raises:
            RingArgumentError: bad geometry.
            RingError: the memory cannot be allocated (the message names the size).
        """
        return cls(_role_code(role), capacity, max_record or 0, -1)

    @classmethod
    def attach(cls, handle: RingHandle, role: str = "producer") -> Ring:
        """Map the ring behind `handle` in this process and take `role` in it.

        Raises:
            RingArgumentError: the fd is not a streamload ring.
            RingUsageError: another live process already holds `role`.
        """
        if handle.fd < 0:
            raise RingUsageError("this ring handle was already attached or closed")
        ring = cls(_role_code(role), 0, 0, handle.fd)
        handle.close()
        return ring

    @property
    def role_name(self) -> str:
        """'producer' or 'consumer'."""
        return _ROLE_NAMES[self.role]

    def handle(self) -> RingHandle:
        """A picklable handle for the peer process (creator only, before `close`).

        Raises:
            RingUsageError: this object did not create the ring or is closed.
        """
        fd = self.fileno()
        if fd < 0:
            raise RingUsageError("only the process that created the ring can hand out handles")
        return RingHandle(fd, self.capacity, self.max_record)

    def close(self, timeout: float = 0.1) -> None:
        """Close this side and wake the peer. Idempotent.

        A producer first appends an EOS record if one fits within `timeout` seconds (a consumer
        that holds every byte of the ring would otherwise block the close). The mapping stays
        valid for records and reservations still alive; the fd is closed now.
        """
        if self.closed:
            return
        if self.role == _ring.PRODUCER:
            # Consumer gone, closed or full: the closed flag below still ends the stream.
            with contextlib.suppress(RingError):
                self.put(b"", type=RecordType.EOS, timeout=timeout)
        self._close_core()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a Ring cannot be pickled: pass ring.handle() to the other process and call "
            "Ring.attach(handle) there"
        )

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Ring {self.role_name} capacity={self.capacity} {state}>"

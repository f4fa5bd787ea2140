"""Child-process entry points for the multi-process ring tests (tests/unit/test_ring.py).

They live in an importable module because a `spawn`/`forkserver` child imports its target by
name, and test modules collected with pytest's importlib mode are not importable by name. The
tests put this directory on sys.path (which spawn children inherit).
"""

from __future__ import annotations

import random
import threading
from typing import Any

from streamload.transport.ring import Ring, RingHandle


def payload(seq: int, size: int) -> bytes:
    """Deterministic bytes for record `seq`, so the consumer can verify every byte."""
    return random.Random(seq).randbytes(size)


def produce(handle: RingHandle, count: int, size: int) -> None:
    """Attach as producer, put `count` verifiable records, then close (EOS)."""
    ring = Ring.attach(handle, "producer")
    for seq in range(count):
        ring.put(payload(seq, size), seq=seq, timeout=30)
    ring.close(timeout=30)


def produce_forever(handle: RingHandle, size: int, started: Any) -> None:
    """Attach as producer and put verifiable records until killed (blocks when the ring is full)."""
    ring = Ring.attach(handle, "producer")
    started.set()
    seq = 0
    while True:
        ring.put(payload(seq, size), seq=seq)
        seq += 1


def die_inside_reservation(handle: RingHandle, committed: int, size: int, inside: Any) -> None:
    """Commit `committed` records, then reserve, scribble, signal `inside` and block until killed."""
    ring = Ring.attach(handle, "producer")
    for seq in range(committed):
        ring.put(payload(seq, size), seq=seq)
    res = ring.reserve(size)
    with memoryview(res) as view:
        view[:] = b"\xee" * size
    inside.set()
    threading.Event().wait()  # never set: the parent SIGKILLs us here


def consume_and_hang(handle: RingHandle, attached: Any) -> None:
    """Attach as consumer, signal `attached`, then block (never reading) until killed."""
    ring = Ring.attach(handle, "consumer")
    attached.set()
    threading.Event().wait()
    del ring


def close_inherited(ring: Ring) -> None:
    """Fork child: close a ring object inherited from the parent (must not close the parent's side)."""
    ring.close()

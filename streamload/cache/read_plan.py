"""A reader's future shard opens, generated lazily from its plan: what read-ahead walks.

A process that reads a remote dataset knows the item ids it will read, in order, batch by
batch (its share of the epoch plan). `ShardSequence` turns that stream of id chunks into the
sequence of shards it opens — within a chunk the distinct shards in ascending order, as a
dataset's ``get_batch`` groups a batch's ids by shard; consecutive repeats collapsed, across
chunk boundaries too — for this epoch and then the next one, generating entries only as far as
someone looks: read-ahead a few shards ahead, eviction's next-use distances a bounded horizon
ahead. Entries behind the
reader are forgotten, so memory is bounded by that horizon plus one chunk, never by the epoch.

Positions index the whole sequence from its start (they keep counting when entries before
them are forgotten); ``get(i)`` is None past the end of the reads. ``boundary`` is the
position where the next epoch's reads begin, once generation has reached it. Thread-safe: the
reader and its read-ahead thread share one sequence.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np


def chunk_shards(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The shards reading one chunk of ``ids`` opens, in the order it opens them (pure): each
    distinct shard once, ascending (a batch's ids are read grouped by shard, in shard order).

    Args:
        ids: item ids of one chunk (a batch).
        offsets: shard k holds ids ``[offsets[k], offsets[k + 1])``.

    Returns:
        int64 shard indices.
    """
    shards = np.searchsorted(offsets, np.asarray(ids, np.int64), "right") - 1
    return np.unique(shards).astype(np.int64)


class ShardSequence:
    """The shards a reader will open, in order, generated on demand (see the module docstring).

    Args:
        epochs: per epoch (this one, then the next), an iterable of id chunks in read order.
        offsets: shard k holds ids ``[offsets[k], offsets[k + 1])``.
    """

    def __init__(self, epochs: Iterable[Iterable[np.ndarray]], offsets: np.ndarray) -> None:
        self._offsets = np.asarray(offsets, np.int64)
        self._epochs: Iterator[Iterable[np.ndarray]] = iter(epochs)
        self._chunks: Iterator[np.ndarray] | None = None
        self._lock = threading.Lock()
        self._base = 0  # position of _entries[0]
        self._entries: list[int] = []
        self._last: int | None = None  # last shard generated (collapses repeats across chunks)
        self._done = False
        self._epochs_started = 0
        #: Position where the second epoch's reads begin (None until generation reaches it).
        self.boundary: int | None = None

    def get(self, position: int) -> int | None:
        """The shard opened at ``position``; None past the end (or before the forgotten part).

        Raises:
            IndexError: a position already forgotten.
        """
        with self._lock:
            self._fill(position + 1)
            if position < self._base:
                raise IndexError(f"shard sequence position {position} was forgotten")
            i = position - self._base
            return self._entries[i] if i < len(self._entries) else None

    def window(self, start: int, count: int) -> list[int]:
        """The shards at positions ``[start, start + count)`` (fewer at the end)."""
        with self._lock:
            self._fill(start + count)
            first = max(start - self._base, 0)
            return self._entries[first : start + count - self._base]

    def find(self, shard: int, start: int, horizon: int) -> int | None:
        """The first position in ``[start, start + horizon)`` that opens ``shard``, else None."""
        for offset, k in enumerate(self.window(start, horizon)):
            if k == shard:
                return max(start, self._base) + offset
        return None

    def forget(self, before: int) -> None:
        """Drop the entries before ``before`` (the reader is past them)."""
        with self._lock:
            drop = min(max(before - self._base, 0), len(self._entries))
            del self._entries[:drop]
            self._base += drop

    @property
    def exhausted(self) -> bool:
        """Whether every read has been turned into entries (``len`` is then known)."""
        return self._done

    def _fill(self, end: int) -> None:
        """Generate entries until ``end`` positions exist or the reads run out (lock held)."""
        while self._base + len(self._entries) < end and not self._done:
            if self._chunks is None:
                try:
                    self._chunks = iter(next(self._epochs))
                except StopIteration:
                    self._done = True
                    break
                self._epochs_started += 1
                if self._epochs_started == 2:
                    self.boundary = self._base + len(self._entries)
            chunk = next(self._chunks, None)
            if chunk is None:
                self._chunks = None
                continue
            shards = chunk_shards(chunk, self._offsets).tolist()
            if shards and shards[0] == self._last:  # still open from the previous chunk
                shards = shards[1:]
            if shards:
                self._entries.extend(shards)
                self._last = shards[-1]

"""Packing documents into rows of ``seq_len`` tokens: a pure function of document lengths.

``pack(lengths, seq_len)`` packs the documents of one group (a shard, in the token reader) into
rows. Rules, in order:

1. A document of ``n`` tokens is cut into ``n // seq_len`` full pieces (each a row of its own)
   and one remainder piece of ``n % seq_len`` tokens (if non-zero). A document that fits
   (``n <= seq_len``) is therefore one piece and never split; empty documents have no piece.
2. Remainder pieces are placed by best-fit decreasing: longest first (ties in document order),
   each into the open row whose free space is the smallest that still holds it, else a new row.
   Rows are never split across, so no document piece crosses a row boundary.
3. Inside a row, pieces sit in document order from column 0; the rest of the row is padding.
   Rows are numbered by their first piece (document, then offset), so row order follows the
   group's storage order and reading rows in order reads the shard front to back.

Everything is a deterministic function of ``(lengths, seq_len)``: the same rows on every rank,
worker and run, which is what lets the plan treat packed rows as items (shuffled, partitioned
across ranks, resumed from a position) exactly like samples. Best-fit decreasing keeps padding low
(a few percent for typical document-length mixes); ``Packing.padding`` reports it.

Row content (made by the token reader): ``tokens`` of each piece, ``segment_ids`` 1, 2, ... per
piece in the row (0 = padding) and ``positions`` restarting at 0 for each piece, so a split
document's later pieces also start at position 0 (their row is a fresh attention context).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from streamload.errors import ConfigError


@dataclass(frozen=True)
class Packing:
    """Rows of one packed group (CSR): row ``r`` holds pieces ``row_ptr[r]:row_ptr[r + 1]``;
    piece ``j`` is tokens ``[start[j], start[j] + length[j])`` of document ``doc[j]``."""

    seq_len: int
    row_ptr: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    length: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows in the group."""
        return len(self.row_ptr) - 1

    @property
    def tokens(self) -> int:
        """Tokens placed (every token of every document)."""
        return int(self.length.sum())

    @property
    def padding(self) -> int:
        """Padding tokens over all rows."""
        return self.num_rows * self.seq_len - self.tokens


def check_seq_len(seq_len: object) -> int:
    """``seq_len`` as an int >= 1.

    Raises:
        ConfigError: anything else.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ConfigError(f"StreamingDataset seq_len: must be an int >= 1, got {seq_len!r}")
    return seq_len


def pack(lengths: np.ndarray, seq_len: int) -> Packing:
    """Pack documents of ``lengths`` tokens into rows of ``seq_len`` (rules in the module docstring).

    Args:
        lengths: tokens per document (int, >= 0), in storage order.
        seq_len: tokens per row.
    """
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    full = lengths // seq_len
    rest = lengths - full * seq_len
    # Full pieces: one row each.
    full_doc = np.repeat(np.arange(n, dtype=np.int64), full)
    full_start = (np.arange(len(full_doc)) - np.repeat(np.cumsum(full) - full, full)) * seq_len
    # Remainder pieces: best-fit decreasing.
    rest_doc = np.flatnonzero(rest).astype(np.int64)
    rest_len = rest[rest_doc]
    rest_row = _best_fit_decreasing(rest_len, seq_len)
    doc = np.concatenate((full_doc, rest_doc))
    start = np.concatenate((full_start, full[rest_doc] * seq_len))
    length = np.concatenate((np.full(len(full_doc), seq_len, np.int64), rest_len))
    rows = np.concatenate((np.arange(len(full_doc), dtype=np.int64), rest_row + len(full_doc)))
    if len(doc) == 0:
        empty = np.zeros(0, np.int64)
        return Packing(seq_len, np.zeros(1, np.int64), empty, empty, empty)
    # Number rows by their first piece in storage order, pieces in a row in storage order.
    key = doc * (int(lengths.max()) + 1) + start  # storage order of pieces (unique per piece)
    num_rows = int(rows.max()) + 1
    first = np.full(num_rows, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, rows, key)
    row_rank = np.empty(num_rows, np.int64)
    row_rank[np.argsort(first, kind="stable")] = np.arange(num_rows)
    final_row = row_rank[rows]
    order = np.lexsort((key, final_row))
    counts = np.bincount(final_row, minlength=num_rows)
    row_ptr = np.zeros(num_rows + 1, np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    return Packing(seq_len, row_ptr, doc[order], start[order], length[order])


def _best_fit_decreasing(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Row of each item (all ``0 < size <= capacity``) under best-fit decreasing."""
    order = np.argsort(-sizes, kind="stable")
    row_of = np.empty(len(sizes), np.int64)
    free_keys: list[int] = []  # sorted distinct free capacities of open rows
    rows_with: dict[int, list[int]] = {}  # free capacity -> rows having exactly that much
    next_row = 0
    for item, size in zip(order.tolist(), sizes[order].tolist(), strict=True):
        i = bisect.bisect_left(free_keys, size)
        if i == len(free_keys):
            row, free = next_row, capacity - size
            next_row += 1
        else:
            fit = free_keys[i]
            bucket = rows_with[fit]
            row = bucket.pop()
            if not bucket:
                del rows_with[fit]
                del free_keys[i]
            free = fit - size
        row_of[item] = row
        if free:
            same = rows_with.get(free)
            if same is None:
                rows_with[free] = [row]
                bisect.insort(free_keys, free)
            else:
                same.append(row)
    return row_of

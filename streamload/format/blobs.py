"""Columnar blobs: a str or bytes column as offsets plus row bytes (`BlobColumn`).

The shard readers produce them (rows still scattered in a mapped shard), the transport copies
them into the ring as two raw buffers, and only the trainer turns one into the list of ``str`` /
``bytes`` that ``default_collate`` gives: no per-row Python object in a worker. `copy_runs`
copies a gather with one slice copy per run of rows contiguous on both sides; `many_small_runs`
tells when Arrow's C++ take beats that loop. A column's rows may lie in several sources (a batch
straddling shards): they stay there until written, whole (`BlobColumn.write_data`) or a byte
range at a time (`BlobColumn.write_range`, a streamed ring record's share).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class BlobColumn:
    """A str or bytes column as int64 ``offsets[n + 1]`` (starting at 0) plus the row bytes.

    The worker-side form of a str/bytes column: it goes into the ring as two raw buffers (the
    transport's ``ls``/``lb`` layout) and becomes the list ``default_collate`` gives only in the
    trainer, so no per-row Python object is ever made in a worker. The rows may still sit
    scattered in one or more mapped shards (*parts*: a source array, where each of some rows
    starts in it, and which rows): ``write_data`` / ``write_range`` copy them straight into the
    ring (one copy from the file to shared memory, none into worker memory), and ``data``
    gathers them only if someone asks for one blob.
    """

    __slots__ = ("_data", "_parts", "offsets", "text")

    def __init__(
        self,
        text: bool,
        offsets: np.ndarray,
        source: np.ndarray,
        starts: np.ndarray | None = None,
    ) -> None:
        """Row ``i`` is ``source[starts[i]:][:length(i)]``, or (``starts`` None) the rows lie
        back to back in ``source``, which is then the column's ``data``."""
        self.text = text
        self.offsets = offsets
        self._data: np.ndarray | None = source if starts is None else None
        # (source, start of each row in it, which rows): copied on write, never gathered.
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = (
            []
            if starts is None
            else [(source, np.asarray(starts, np.int64), np.arange(len(offsets) - 1))]
        )

    @classmethod
    def empty(cls, text: bool) -> BlobColumn:
        """A column of no rows."""
        return cls(text, np.zeros(1, np.int64), np.zeros(0, np.uint8))

    @classmethod
    def from_arrow(cls, array: pa.Array) -> BlobColumn:
        """From a null-free Arrow ``large_string``/``large_binary`` array (zero-copy views)."""
        n = len(array)
        _, offset_buf, data_buf = array.buffers()
        if offset_buf is None:
            offsets = np.zeros(n + 1, np.int64)
        else:
            offsets = np.frombuffer(offset_buf, np.int64)[array.offset : array.offset + n + 1]
        start, stop = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(data_buf, np.uint8)[start:stop] if data_buf is not None else None
        return cls(
            pa.types.is_large_string(array.type),
            offsets - start,
            data if data is not None else np.zeros(0, np.uint8),
        )

    @classmethod
    def gather(
        cls, text: bool, source: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> BlobColumn:
        """Rows ``source[starts[i] : starts[i] + lengths[i]]``, not copied until written."""
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(text, offsets, source, np.asarray(starts, np.int64))

    @classmethod
    def scatter(cls, parts: list[BlobColumn], positions: list[np.ndarray], n: int) -> BlobColumn:
        """One column of ``n`` rows where row ``positions[p][j]`` is row ``j`` of ``parts[p]``
        (nothing copied: the result keeps referring to the parts' sources)."""
        lengths = np.zeros(n, np.int64)
        for part, where in zip(parts, positions, strict=True):
            lengths[where] = np.diff(part.offsets)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        out = cls(parts[0].text, offsets, np.zeros(0, np.uint8), np.zeros(n, np.int64))
        out._parts = []
        for part, where in zip(parts, positions, strict=True):
            where = np.asarray(where, np.int64)
            for source, starts, rows in part._sources():
                out._parts.append((source, starts, where[rows]))
        return out

    @classmethod
    def concat(cls, parts: list[BlobColumn]) -> BlobColumn:
        """The rows of ``parts`` back to back (nothing copied: the result refers to the parts'
        sources; a run of rows read across record batches). ``parts`` is not empty."""
        if len(parts) == 1:
            return parts[0]
        offsets = [np.zeros(1, np.int64)]
        total = 0
        for part in parts:
            offsets.append(part.offsets[1:] + total)
            total += part.nbytes
        out = cls(parts[0].text, np.concatenate(offsets), np.zeros(0, np.uint8))
        out._data = None  # the rows stay in the parts' sources until written
        first = 0
        for part in parts:
            for source, starts, rows in part._sources():
                out._parts.append((source, starts, rows + first))
            first += len(part)
        return out

    def _sources(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self._data is not None:
            return [(self._data, self.offsets[:-1], np.arange(len(self)))]
        return self._parts

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes of all rows together."""
        return int(self.offsets[-1])

    @property
    def data(self) -> np.ndarray:
        """All rows as one contiguous blob (gathered on first use if they are scattered)."""
        if self._data is None:
            data = np.empty(self.nbytes, np.uint8)
            self.write_data(data)
            self._data, self._parts = data, []
        return self._data

    def write_data(self, dst: np.ndarray) -> None:
        """Copy the rows, back to back, into ``dst`` (at least ``nbytes`` long)."""
        if self._data is not None:
            dst[: self.nbytes] = self._data[: self.nbytes]
            return
        lengths = np.diff(self.offsets)
        for source, starts, rows in self._parts:
            copy_runs(dst, source, starts, self.offsets[rows], lengths[rows])

    def write_range(self, dst: np.ndarray, start: int, stop: int) -> None:
        """Copy bytes [start, stop) of the back-to-back rows into ``dst`` (a streamed record's
        share of the column: rows cut at either end are copied in part)."""
        if self._data is not None:
            dst[: stop - start] = self._data[start:stop]
            return
        for source, starts, rows in self._parts:
            row_start = self.offsets[rows]
            row_stop = self.offsets[rows + 1]
            hit = (row_start < stop) & (row_stop > start)
            lo = np.maximum(row_start[hit], start)
            hi = np.minimum(row_stop[hit], stop)
            copy_runs(dst, source, starts[hit] + (lo - row_start[hit]), lo - start, hi - lo)

    def tolist(self) -> list[Any]:
        """The column as ``default_collate`` gives it: a list of str or bytes."""
        kind = pa.large_string() if self.text else pa.large_binary()
        buffers = [None, pa.py_buffer(self.offsets), pa.py_buffer(self.data)]
        return pa.Array.from_buffers(kind, len(self), buffers).to_pylist()


def copy_runs(
    dst: np.ndarray,
    src: np.ndarray,
    src_starts: np.ndarray,
    dst_starts: np.ndarray,
    lengths: np.ndarray,
) -> None:
    """``dst[dst_starts[i]:][:lengths[i]] = src[src_starts[i]:][:lengths[i]]`` for every i, with
    one copy per run of rows that are contiguous in both (sequential reads: a few runs per batch).
    """
    if len(lengths) == 0:
        return
    src_starts = np.asarray(src_starts, np.int64)
    dst_starts = np.asarray(dst_starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    breaks = np.flatnonzero(
        (src_starts[1:] != src_starts[:-1] + lengths[:-1])
        | (dst_starts[1:] != dst_starts[:-1] + lengths[:-1])
    )
    first = np.concatenate([[0], breaks + 1])
    last = np.concatenate([breaks, [len(lengths) - 1]])
    run_bytes = src_starts[last] + lengths[last] - src_starts[first]
    runs = zip(
        src_starts[first].tolist(), dst_starts[first].tolist(), run_bytes.tolist(), strict=True
    )
    for s, d, k in runs:
        dst[d : d + k] = src[s : s + k]


def many_small_runs(src_starts: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether a gather would copy more than 64 runs averaging under 4 KiB (then Arrow's C++
    take beats a Python loop of slice copies)."""
    n = len(lengths)
    if n <= 64:
        return False
    runs = 1 + int(np.count_nonzero(src_starts[1:] != src_starts[:-1] + lengths[:-1]))
    return runs > 64 and int(lengths.sum()) < runs * 4096

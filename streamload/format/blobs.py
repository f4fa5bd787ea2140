"""Columnar blobs: a str or bytes column as offsets plus row bytes (`BlobColumn`).

The shard readers produce them (rows still scattered in a mapped shard), the transport copies
them into the ring as two raw buffers, and only the trainer turns one into the list of ``str`` /
``bytes`` that ``default_collate`` gives: no per-row Python object in a worker. `copy_runs`
copies a gather with one slice copy per run of rows contiguous on both sides; `many_small_runs`
tells when Arrow's C++ take beats that loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class BlobColumn:
    """A str or bytes column as int64 ``offsets[n + 1]`` (starting at 0) plus the row bytes.

    The worker-side form of a str/bytes column: it goes into the ring as two raw buffers (the
    transport's ``ls``/``lb`` layout) and becomes the list ``default_collate`` gives only in the
    trainer, so no per-row Python object is ever made in a worker. Row ``i`` is
    ``source[starts[i] : starts[i] + length(i)]``: the rows may still sit scattered in a mapped
    shard, in which case ``write_data`` copies them straight into the ring (one copy from the
    file to shared memory) and ``data`` gathers them only if someone asks for one blob.
    """

    __slots__ = ("_data", "offsets", "source", "starts", "text")

    def __init__(
        self,
        text: bool,
        offsets: np.ndarray,
        source: np.ndarray,
        starts: np.ndarray | None = None,
    ) -> None:
        self.text = text
        self.offsets = offsets
        self.source = source
        self.starts = offsets[:-1] if starts is None else starts
        self._data: np.ndarray | None = source if starts is None else None

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
        """One column of ``n`` rows where row ``positions[p][j]`` is row ``j`` of ``parts[p]``."""
        lengths = np.zeros(n, np.int64)
        for part, where in zip(parts, positions, strict=True):
            lengths[where] = np.diff(part.offsets)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), np.uint8)
        for part, where in zip(parts, positions, strict=True):
            copy_runs(data, part.source, part.starts, offsets[where], np.diff(part.offsets))
        return cls(parts[0].text, offsets, data)

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
            self._data = data
        return self._data

    def write_data(self, dst: np.ndarray) -> None:
        """Copy the rows, back to back, into ``dst`` (at least ``nbytes`` long)."""
        if self._data is not None:
            dst[: self.nbytes] = self._data[: self.nbytes]
        else:
            copy_runs(dst, self.source, self.starts, self.offsets[:-1], np.diff(self.offsets))

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

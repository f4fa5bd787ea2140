"""Reading one Arrow IPC shard: memory-mapped, random access and a columnar batch path.

Opening checks, in order, before any record batch body is touched: the file size equals the
index's ``bytes`` (a truncated shard is refused by name), the footer parses, the file's schema is
the index schema's Arrow layout (``schema.py``), and the record count equals the index's
``num_samples``. Local shards are memory-mapped (``pa.memory_map``) and never read whole into RAM;
other file objects are read through Arrow's Python file adapter (record batches are then
materialised, and a few are cached).

Crash safety: pyarrow trusts the offsets inside a batch, so a corrupted string offset SIGSEGVs
the process (reliability.md §1.8). Each batch is ``validate()``d the first time this reader
touches it, with ``full=True`` unless the caller says the shard's checksum was verified
(``checksum_verified=True``). A shard truncated by someone else *after* it was mapped can still
SIGBUS; the loader runs readers in worker processes for that reason.

Return conventions. ``take(rows)`` returns ``{column: value}`` in schema order (projected), all
freshly allocated, writable, owned by the caller:

- int -> ``np.ndarray[int64]`` (B,); float -> ``float64`` (B,); bool -> ``bool`` (B,)
- ndarray with shape [] -> ``np.ndarray[dtype]`` (B,)
- fixed-shape ndarray -> one ``np.ndarray[dtype]`` (B, *shape) made by vectorised copies
- str -> ``list[str]``; bytes -> ``list[bytes]``
- variable-shape ndarray -> ``list[np.ndarray]`` (each its own array)

``get(i)`` returns one sample dict: int -> ``int``, float -> ``float``, bool -> ``bool``, str,
bytes, ndarray shape [] -> numpy scalar of the dtype (``np.float16(...)``), other ndarrays ->
writable ``np.ndarray`` of the row's shape.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa

from streamload.errors import FormatError
from streamload.schema import Column, Schema

_NON_MMAP_BATCH_CACHE = 8


class ArrowShardReader:
    """One Arrow shard opened for reading (see the module docstring)."""

    def __init__(
        self,
        path_or_file: str | Any,
        schema: Schema,
        shard_name: str,
        expected_bytes: int,
        num_samples: int | None = None,
        columns: list[str] | tuple[str, ...] | None = None,
        checksum_verified: bool = False,
    ) -> None:
        """Open and check a shard.

        Args:
            path_or_file: a local path (memory-mapped) or a binary file object.
            schema: the dataset schema from index.json.
            shard_name: the shard's name, for error messages.
            expected_bytes: the size index.json records.
            num_samples: the record count index.json records (None skips the check).
            columns: the columns to return (None: all), kept in schema order.
            checksum_verified: the caller verified the shard's checksum in this process, so
                batches get Arrow's cheap validation instead of ``validate(full=True)``.

        Raises:
            FormatError: wrong size, unreadable footer, schema or record count mismatch.
        """
        self.name = shard_name
        self._schema = schema
        self._selected = schema.select(columns)
        self._full_validation = not checksum_verified
        if isinstance(path_or_file, str | os.PathLike):
            actual = os.stat(path_or_file).st_size
        else:
            actual = path_or_file.seek(0, os.SEEK_END)
            path_or_file.seek(0)
        if actual != expected_bytes:
            raise FormatError(
                f"shard {shard_name}: size is {actual} bytes, index.json says {expected_bytes}"
                " (truncated or replaced)"
            )
        self._mapped = isinstance(path_or_file, str | os.PathLike)
        try:
            source = pa.memory_map(os.fspath(path_or_file), "r") if self._mapped else path_or_file
            self._file = pa.ipc.open_file(source)
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"shard {shard_name}: not a readable Arrow IPC file: {exc}") from exc
        expected_schema = schema.arrow_schema()
        if not self._file.schema.equals(expected_schema):
            raise FormatError(
                f"shard {shard_name}: Arrow schema does not match index.json\n"
                f"  file:  {self._file.schema}\n  index: {expected_schema}"
            )
        counts = np.zeros(self._file.num_record_batches, np.int64)
        try:
            for b in range(len(counts)):
                counts[b] = self._file.get_batch(b).num_rows
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"shard {shard_name}: unreadable record batch: {exc}") from exc
        self._batch_offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
        self.num_rows = int(self._batch_offsets[-1])
        if num_samples is not None and num_samples != self.num_rows:
            raise FormatError(
                f"shard {shard_name}: holds {self.num_rows} samples, index.json says {num_samples}"
            )
        self._checked = np.zeros(len(counts), bool)
        self._batches: OrderedDict[int, pa.RecordBatch] = OrderedDict()
        self._views: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_rows

    @property
    def columns(self) -> tuple[str, ...]:
        """The returned columns, in schema order."""
        return self._selected.names

    def get(self, i: int) -> dict[str, Any]:
        """One sample as python objects and writable numpy arrays (see the module docstring).

        Raises:
            IndexError: ``i`` is not in ``[0, len(self))``.
            FormatError: the row's record batch fails validation.
        """
        if not 0 <= i < self.num_rows:
            raise IndexError(f"shard {self.name}: row {i} out of range [0, {self.num_rows})")
        batch = self.take(np.array([i], np.int64))
        return {col.name: _unbox(col, batch[col.name]) for col in self._selected.columns}

    def take(self, rows: np.ndarray) -> dict[str, Any]:
        """Many rows at once, columnar (see the module docstring for what each kind returns).

        Args:
            rows: int array of row numbers in this shard, any order, duplicates allowed.

        Raises:
            IndexError: a row is out of range.
            FormatError: a touched record batch fails validation.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(rows)
        if n and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"shard {self.name}: rows out of range [0, {self.num_rows})")
        groups = self._group(rows)
        out: dict[str, Any] = {}
        for col in self._selected.columns:
            ci = self._schema.names.index(col.name)
            out[col.name] = self._take_column(col, ci, groups, n)
        return out

    def _group(self, rows: np.ndarray) -> list[tuple[int, np.ndarray | slice, np.ndarray | slice]]:
        """Split rows by record batch: ``[(batch, positions in output, rows in batch)]``.

        Ascending contiguous runs inside one batch become slices (memcpy instead of gathers).
        """
        n = len(rows)
        if n == 0:
            return []
        first, last = int(rows[0]), int(rows[-1])
        b0 = int(np.searchsorted(self._batch_offsets, first, "right")) - 1
        if (
            last - first == n - 1
            and last < self._batch_offsets[b0 + 1]
            and (n == 1 or (np.diff(rows) == 1).all())
        ):
            start = first - int(self._batch_offsets[b0])
            return [(b0, slice(0, n), slice(start, start + n))]
        which = np.searchsorted(self._batch_offsets, rows, "right") - 1
        order = np.argsort(which, kind="stable")
        sorted_which = which[order]
        bounds = np.flatnonzero(np.diff(sorted_which)) + 1
        groups: list[tuple[int, np.ndarray | slice, np.ndarray | slice]] = []
        for part in np.split(order, bounds):
            b = int(which[part[0]])
            groups.append((b, part, rows[part] - self._batch_offsets[b]))
        return groups

    def _batch(self, b: int) -> pa.RecordBatch:
        batch = self._batches.get(b)
        if batch is not None:
            return batch
        try:
            batch = self._file.get_batch(b)
            if not self._checked[b]:
                batch.validate(full=self._full_validation)
                self._checked[b] = True
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"shard {self.name}: record batch {b} is corrupt: {exc}") from exc
        self._batches[b] = batch
        if not self._mapped and len(self._batches) > _NON_MMAP_BATCH_CACHE:
            evicted, _ = self._batches.popitem(last=False)
            self._views = {k: v for k, v in self._views.items() if k[0] != evicted}
        return batch

    def _numeric_view(self, col: Column, ci: int, b: int) -> np.ndarray:
        """Batch ``b`` of a fixed-width column as a numpy array (B_b, *shape): a zero-copy view
        of the mapped file (bool is bit-packed in Arrow, so bool gets a per-batch copy)."""
        key = (b, ci)
        view = self._views.get(key)
        if view is None:
            arr = self._batch(b).column(ci)
            if col.kind == "ndarray" and col.shape:
                arr = arr.flatten()
            view = arr.to_numpy(zero_copy_only=False)
            if col.kind == "ndarray" and col.shape:
                view = view.reshape((-1, *col.row_shape))
            self._views[key] = view
        return view

    def _take_column(self, col: Column, ci: int, groups: list[Any], n: int) -> Any:
        if col.kind in ("str", "bytes") or col.uses_var_layout:
            if len(groups) == 1:
                b, _, local = groups[0]
                return self._objects(col, ci, b, local)
            result = np.empty(n, dtype=object)
            for b, positions, local in groups:
                values = self._objects(col, ci, b, local)
                holder = np.empty(len(values), dtype=object)
                holder[:] = values
                result[positions] = holder
            return result.tolist()
        out = np.empty((n, *col.row_shape), dtype=col.numpy_dtype)
        for b, positions, local in groups:
            out[positions] = self._numeric_view(col, ci, b)[local]
        return out

    def _objects(self, col: Column, ci: int, b: int, local: np.ndarray | slice) -> list[Any]:
        arr = self._batch(b).column(ci)
        if isinstance(local, slice):
            arr = arr.slice(local.start, local.stop - local.start)
        else:
            arr = arr.take(pa.array(local))
        if col.kind in ("str", "bytes"):
            return arr.to_pylist()
        return _var_arrays(col, arr)


def _var_arrays(col: Column, arr: pa.StructArray) -> list[np.ndarray]:
    """Rows of a struct<data: large_list, shape: fixed_size_list> array as owned numpy arrays.

    Each row's stored shape is checked against the schema and its value count, so a corrupted
    shape is a FormatError rather than a wrong-sized array.
    """
    if len(arr) == 0:
        return []
    data, shape_arr = arr.flatten()  # flatten() applies the struct's slice offset to the children
    shapes = shape_arr.flatten().to_numpy().reshape(len(arr), -1)
    offsets = data.offsets.to_numpy()
    values = data.values.to_numpy(zero_copy_only=False)
    dtype = np.dtype(col.dtype)
    want = col.shape or ()
    out = []
    for k in range(len(arr)):
        start, stop = int(offsets[k]), int(offsets[k + 1])
        shape = tuple(int(d) for d in shapes[k])
        if (
            any(d < 0 or (w is not None and d != w) for d, w in zip(shape, want, strict=True))
            or math.prod(shape) != stop - start
        ):
            raise FormatError(
                f"column {col.name!r}: a row has shape {shape} and {stop - start} values,"
                f" which does not fit the schema shape {list(want)}"
            )
        out.append(np.array(values[start:stop], dtype=dtype).reshape(shape))
    return out


def _unbox(col: Column, column: Any) -> Any:
    """Row 0 of a one-row ``take`` result, as ``get`` returns it."""
    value = column[0]
    if col.kind in ("int", "float", "bool"):
        return value.item()
    return value

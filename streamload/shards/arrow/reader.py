"""Reading one Arrow IPC shard: memory-mapped, random access and a columnar batch path.

Opening checks, in order, before any record batch body is touched: the file size equals the
index's ``bytes`` (a truncated shard is refused by name), the footer parses, the file's schema is
the index schema's Arrow layout (`streamload.format.schema`), and the record count equals the index's
``num_samples``. Local shards are memory-mapped (``pa.memory_map``) and never read whole into RAM;
other file objects are read through Arrow's Python file adapter (record batches are then
materialised, and a few are cached).

Crash safety: pyarrow trusts the offsets inside a batch, so a corrupted string offset SIGSEGVs
or SIGBUSes the process (reliability.md §1.8). Every record batch gets ``validate(full=True)``
the first time this reader touches it, whether or not the shard's checksum was verified: a
checksum only proves the file is what index.json describes, and a hostile dataset can ship a
matching checksum for a malformed shard (measured: SIGBUS). Full validation costs ~50 ns per
100-byte string row (UTF-8 checks) once per batch per reader, and nothing measurable for numeric
columns. A shard truncated by someone else *after* it was mapped can still SIGBUS; the loader
runs readers in worker processes for that reason.

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

import ctypes
import math
import mmap
import os
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa

from streamload.errors import FormatError
from streamload.format.blobs import BlobColumn, many_small_runs
from streamload.format.schema import Column, Schema

_NON_MMAP_BATCH_CACHE = 8
# An ascending run of at least this many rows is copied slice by slice, not gathered.
_RUN_ROWS = 16
_smallest = np.minimum.reduce
_largest = np.maximum.reduce
# (record batch, positions in the output, rows in the batch): one batch's share of a take.
_Group = tuple[int, np.ndarray | slice, np.ndarray | slice]


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
    ) -> None:
        """Open and check a shard.

        Args:
            path_or_file: a local path (memory-mapped) or a binary file object.
            schema: the dataset schema from index.json.
            shard_name: the shard's name, for error messages.
            expected_bytes: the size index.json records.
            num_samples: the record count index.json records (None skips the check).
            columns: the columns to return (None: all), kept in schema order.

        Raises:
            FormatError: wrong size, unreadable footer, schema or record count mismatch.
        """
        self.name = shard_name
        self._schema = schema
        self._selected = schema.select(columns)
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
            if self._mapped:
                mapping = _Mapping(os.fspath(path_or_file))
                whole = pa.foreign_buffer(mapping.address, mapping.size, base=mapping)
                self._file = pa.ipc.open_file(pa.BufferReader(whole))
            else:
                self._file = pa.ipc.open_file(path_or_file)
        except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: empty file
            raise FormatError(f"shard {shard_name}: not a readable Arrow IPC file: {exc}") from exc
        expected_schema = schema.arrow_schema()
        if not self._file.schema.equals(expected_schema):
            physical = _written_before_widening(schema, self._file.schema)
            if physical is None:
                raise FormatError(
                    f"shard {shard_name}: Arrow schema does not match index.json\n"
                    f"  file:  {self._file.schema}\n  index: {expected_schema}"
                )
            # Read with the layout the file has; take() hands the widened columns back as
            # per-row arrays, as every variable-shape column is returned.
            self._widened = tuple(
                c.name
                for c, p in zip(schema.columns, physical.columns, strict=True)
                if c != p and c.name in self._selected.names
            )
            schema = physical
            self._schema = schema
            self._selected = schema.select(columns)
        else:
            self._widened = ()
        counts = np.zeros(self._file.num_record_batches, np.int64)
        # A mapped file's record batches are views of the mapping: decode each IPC message once
        # per process (a worker opens every shard it touches, every epoch).
        self._mapped_batches: list[pa.RecordBatch] = []
        try:
            for b in range(len(counts)):
                batch = self._file.get_batch(b)
                counts[b] = batch.num_rows
                if self._mapped:
                    self._mapped_batches.append(batch)
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"shard {shard_name}: unreadable record batch: {exc}") from exc
        self._batch_offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
        self.num_rows = int(self._batch_offsets[-1])
        if num_samples is not None and num_samples != self.num_rows:
            raise FormatError(
                f"shard {shard_name}: holds {self.num_rows} samples, index.json says {num_samples}"
            )
        self._checked = np.zeros(len(counts), bool)
        self._unchecked = len(counts)  # record batches not validated yet
        # (column, its index in the file's schema) of every returned column, in schema order.
        self._selected_at = tuple(
            (c, self._schema.names.index(c.name)) for c in self._selected.columns
        )
        self._batches: OrderedDict[int, pa.RecordBatch] = OrderedDict()
        self._views: dict[tuple[int, int], np.ndarray] = {}
        self._gather = _MappedGather(whole, self._mapped_batches) if self._mapped else None

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

    def take(self, rows: np.ndarray, strings: str = "list") -> dict[str, Any]:
        """Many rows at once, columnar (see the module docstring for what each kind returns).

        Args:
            rows: int array of row numbers in this shard, any order, duplicates allowed.
            strings: ``"list"``: str/bytes columns as Python lists; ``"blob"``: as one
                ``collate.BlobColumn`` each (offsets + one buffer, no per-row Python objects).

        Raises:
            IndexError: a row is out of range.
            FormatError: a touched record batch fails validation.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(rows)
        if n and (_smallest(rows) < 0 or _largest(rows) >= self.num_rows):
            raise IndexError(f"shard {self.name}: rows out of range [0, {self.num_rows})")
        ascending = n > 0 and _ascending_run(rows)
        if self._gather is not None and n and not (n >= _RUN_ROWS and ascending):
            return self._gather_rows(rows, strings)
        groups = self._contiguous_run(rows) if ascending or not n else None
        if groups is None:
            groups = self._group(rows, np.searchsorted(self._batch_offsets, rows, "right") - 1)
        out: dict[str, Any] = {}
        for col, ci in self._selected_at:
            out[col.name] = self._take_column(col, ci, groups, n, strings)
        for name in self._widened:  # variable-shape columns come back as per-row arrays
            out[name] = list(out[name])
        return out

    def _gather_rows(self, rows: np.ndarray, strings: str) -> dict[str, Any]:
        """``take`` of a mapped shard: every column gathered straight from the mapping with a
        few numpy operations per column, whatever the record batches the rows fall in (the
        per-batch path serves only the columns `_MappedGather` cannot)."""
        gather = self._gather
        assert gather is not None
        which = self._batch_offsets.searchsorted(rows, "right")
        which -= 1
        if self._unchecked:
            # Validate each touched batch once before gathering from it. (Not np.unique: its
            # first call imports numpy.ma, ~0.1 s in every fresh worker.)
            for b in sorted(set(which[~self._checked[which]].tolist())):
                self._batch(b)
        out: dict[str, Any] = {}
        groups: list[_Group] | None = None
        local: np.ndarray | None = None
        for col, ci in self._selected_at:
            fixed = gather.fixed(ci, col, self._batch_offsets)
            if fixed is not None:
                out[col.name] = fixed.take(rows, which)
                continue
            layout = gather.layout(ci, col)
            if layout is not None:
                if local is None:
                    local = rows - self._batch_offsets[which]
                out[col.name] = gather.take(col, layout, which, local, strings)
                continue
            if groups is None:
                groups = self._group(rows, which)
            out[col.name] = self._take_column(col, ci, groups, len(rows), strings)
        for name in self._widened:  # variable-shape columns come back as per-row arrays
            out[name] = list(out[name])
        return out

    def flat_array(self, name: str) -> FlatArray:
        """The values of 1-d array column ``name``, all rows concatenated, without a copy: one
        numpy view of the mapped file per record batch (a token stream, see ``FlatArray``).

        Every record batch is fully validated first, and a variable-shape row's stored shape
        must equal its value count.

        Raises:
            FormatError: a corrupt record batch or row shape.
            ValueError: ``name`` is not a 1-d array column.
        """
        ci = self._schema.names.index(name)
        col = self._schema.columns[ci]
        if col.kind != "ndarray" or len(col.shape or ()) != 1:
            raise ValueError(f"column {name!r} is not a 1-d array column")
        chunks: list[np.ndarray] = []
        row_offsets: list[np.ndarray] = []
        for b in range(len(self._batch_offsets) - 1):
            arr = self._batch(b).column(ci)
            if col.uses_var_layout:
                data, shape = arr.flatten()
                offsets = _numpy(data.offsets)
                stored = _numpy(shape.flatten())
                if len(offsets) and not np.array_equal(stored, np.diff(offsets)):
                    raise FormatError(
                        f"shard {self.name}: column {name!r}: a row's shape differs from its"
                        f" value count in record batch {b}"
                    )
                first = int(offsets[0]) if len(offsets) else 0
                values = _numpy(data.values)
                chunk = values[first : int(offsets[-1]) if len(offsets) else 0]
                row_offsets.append(offsets[1:] - first)
            else:
                chunk = _numpy(arr.flatten())
                width = col.row_shape[0]
                row_offsets.append(np.arange(1, len(arr) + 1, dtype=np.int64) * width)
            chunks.append(chunk)
        flat = FlatArray.from_chunks(chunks, row_offsets)
        if self._gather is not None and chunks:
            flat.locate_in(self._gather.whole_values(chunks[0].dtype))
        return flat

    def _contiguous_run(self, rows: np.ndarray) -> list[_Group]:
        """``[(batch, slice of the output, slice of the batch)]`` in batch order when ``rows``
        (an ascending contiguous run: `_ascending_run`) lies in one or more consecutive record
        batches (one memcpy per column and batch), or [] for no rows."""
        n = len(rows)
        if n == 0:
            return []
        first, last = int(rows[0]), int(rows[-1])
        offsets = self._batch_offsets
        b0 = int(offsets.searchsorted(first, "right")) - 1
        if last < offsets[b0 + 1]:
            start = first - int(offsets[b0])
            return [(b0, slice(0, n), slice(start, start + n))]
        b1 = int(offsets.searchsorted(last, "right")) - 1
        bounds = offsets[b0 : b1 + 2].tolist()
        groups: list[_Group] = []
        done = 0
        for b, lo, hi in zip(range(b0, b1 + 1), bounds, bounds[1:], strict=False):
            lo, hi = max(lo, first), min(hi, last + 1)
            groups.append(
                (b, slice(done, done + hi - lo), slice(lo - bounds[b - b0], hi - bounds[b - b0]))
            )
            done += hi - lo
        return groups

    def _group(self, rows: np.ndarray, which: np.ndarray) -> list[_Group]:
        """Split rows by record batch ``which``: ``[(batch, output positions, rows in batch)]``."""
        order = np.argsort(which, kind="stable")
        sorted_which = which[order]
        bounds = np.flatnonzero(np.diff(sorted_which)) + 1
        groups: list[_Group] = []
        for part in np.split(order, bounds):
            b = int(which[part[0]])
            groups.append((b, part, rows[part] - self._batch_offsets[b]))
        return groups

    def _batch(self, b: int) -> pa.RecordBatch:
        batch = self._batches.get(b)
        if batch is not None:
            return batch
        try:
            batch = self._mapped_batches[b] if self._mapped else self._file.get_batch(b)
            if not self._checked[b]:
                batch.validate(full=True)
                self._checked[b] = True
                self._unchecked -= 1
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
            view = _numpy(arr)
            if col.kind == "ndarray" and col.shape:
                view = view.reshape((-1, *col.row_shape))
            self._views[key] = view
        return view

    def _take_column(
        self, col: Column, ci: int, groups: list[_Group], n: int, strings: str = "list"
    ) -> Any:
        """One column by per-batch slices/takes, scattered into output order."""
        if strings == "blob" and col.kind in ("str", "bytes"):
            if not groups:
                return BlobColumn.empty(col.kind == "str")
            if len(groups) == 1 and isinstance(run := groups[0][2], slice):  # view the file
                return _blob_run(col, self._batch(groups[0][0]).column(ci), run)
            if isinstance(groups[0][1], slice):  # a run across batches: each one's share
                shares = [(b, run) for b, _, run in groups if isinstance(run, slice)]
                return BlobColumn.concat(
                    [_blob_run(col, self._batch(b).column(ci), run) for b, run in shares]
                )
            parts, placed = [], []
            for b, where, local in groups:
                # Widening the offsets shares the data buffer: the blob still views the mapping.
                large = self._slice(ci, b, local).cast(_large_type(col))
                parts.append(BlobColumn.from_arrow(large))
                placed.append(np.arange(n)[where])
            if len(parts) == 1:
                return parts[0]
            return BlobColumn.scatter(parts, placed, n)
        if col.kind in ("str", "bytes") or col.uses_var_layout:
            if len(groups) == 1:
                b, _, local = groups[0]
                return self._objects(col, ci, b, local)
            if groups and isinstance(groups[0][1], slice):  # a run across batches, in order
                values: list[Any] = []
                for b, _, local in groups:
                    values += self._objects(col, ci, b, local)
                return values
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

    def _slice(self, ci: int, b: int, local: np.ndarray | slice) -> pa.Array:
        arr = self._batch(b).column(ci)
        if isinstance(local, slice):
            return arr.slice(local.start, local.stop - local.start)
        return arr.take(_indices(local))

    def _objects(self, col: Column, ci: int, b: int, local: np.ndarray | slice) -> list[Any]:
        arr = self._slice(ci, b, local)
        if col.kind in ("str", "bytes"):
            return arr.to_pylist()
        return _var_arrays(col, arr)


class FlatArray:
    """A 1-d array column's values with every row concatenated, held as per-record-batch
    chunks (views of the mapped shard): ``chunks[c]`` holds values ``[bounds[c], bounds[c+1])``
    of the concatenation; row ``r`` is values ``[row_offsets[r], row_offsets[r + 1])``.

    For vectorised gathers, ``source()`` gives one 1-d array holding every chunk and each
    chunk's start in it: the whole mapped file viewed as the column's dtype when the shard is
    mapped (no copy), else the chunks concatenated once."""

    def __init__(self, chunks: list[np.ndarray], bounds: np.ndarray, row_offsets: np.ndarray):
        self.chunks = chunks
        self.bounds = bounds
        self.bounds_list: list[int] = bounds.tolist()  # for per-range bisect without numpy
        self.row_offsets = row_offsets
        self._source: tuple[np.ndarray, np.ndarray] | None = None

    def locate_in(self, whole: np.ndarray) -> None:
        """Use ``whole`` (a 1-d array the chunks are views of) as ``source()`` if every chunk
        lies inside it at a whole element offset."""
        base, itemsize = whole.ctypes.data, whole.itemsize
        starts = np.array([c.ctypes.data - base for c in self.chunks], np.int64)
        sizes = np.fromiter((len(c) for c in self.chunks), np.int64, len(self.chunks))
        if (
            all(c.dtype == whole.dtype and c.strides == (itemsize,) for c in self.chunks)
            and (starts % itemsize == 0).all()
            and (starts >= 0).all()
            and (starts // itemsize + sizes <= len(whole)).all()
        ):
            self._source = (whole, starts // itemsize)

    def source(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, chunk_starts)``: chunk ``c`` is ``values[chunk_starts[c]:][:len(c)]``."""
        if self._source is None:
            values = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int64)
            self._source = (values, self.bounds[:-1].copy())
        return self._source

    @classmethod
    def from_chunks(cls, chunks: list[np.ndarray], row_ends: list[np.ndarray]) -> FlatArray:
        """Chunks and, per chunk, the end offsets of its rows relative to the chunk start."""
        sizes = np.fromiter((len(c) for c in chunks), np.int64, len(chunks))
        bounds = np.zeros(len(chunks) + 1, np.int64)
        np.cumsum(sizes, out=bounds[1:])
        ends = [e + bounds[c] for c, e in enumerate(row_ends)]
        row_offsets = np.concatenate([np.zeros(1, np.int64), *ends]).astype(np.int64)
        return cls(chunks, bounds, row_offsets)

    @property
    def total(self) -> int:
        """Values over all rows."""
        return int(self.bounds[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Values per row (int64)."""
        return np.diff(self.row_offsets)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapping:
    """A read-only shared mapping of a whole file that holds no file descriptor.

    ``pa.memory_map`` and Python's ``mmap`` both keep a descriptor per mapping; a dataset keeps
    hundreds of shards open (a full shuffle touches about one shard per sample), which would
    run into the open-files limit. The mapping lives as long as this object (the Arrow buffer
    built on it holds it as its base) and is unmapped when it is collected.
    """

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError("the file is empty")
            address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise OSError(err, f"mmap: {os.strerror(err)}")
        finally:
            os.close(fd)
        self.address: int = address
        self.size = size

    def __del__(self) -> None:
        if getattr(self, "address", None):  # __init__ may have failed before mapping
            _libc.munmap(self.address, self.size)


class _MappedGather:
    """Vectorised gathers of rows scattered over many record batches of a memory-mapped shard.

    All batches of a mapped IPC file live in one mapping, so a column's value of row ``r`` of
    batch ``b`` sits at a fixed file position: ``values_pos[b] + r * row_bytes``. Gathering
    with numpy fancy indexing over a whole-file view then costs no Python work per batch, which
    is what makes shuffled reads fast. Strings and bytes are gathered as an Arrow string_view /
    binary_view array over the whole file (16-byte views built with numpy), converted to Python
    objects by one ``to_pylist``. Positions come from batches the reader has fully validated, and
    every buffer is checked to lie inside the file, so no index can leave the mapping.
    Columns it cannot serve (bool, variable shapes, files >= 2 GiB for strings) return None from
    ``layout`` and use the per-batch path.
    """

    def __init__(self, whole: pa.Buffer, batches: list[pa.RecordBatch]) -> None:
        self._whole = whole
        self._size = whole.size
        self._u8 = np.frombuffer(whole, np.uint8)
        self._batches = batches
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self._fixed: dict[int, _FixedRows | None] = {}

    def fixed(self, ci: int, col: Column, batch_offsets: np.ndarray) -> _FixedRows | None:
        """Column ``ci``'s rows as a `_FixedRows` gather if they have one fixed size (numbers and
        fixed-shape arrays, not bool), made once per column; else None."""
        if ci in self._fixed:
            return self._fixed[ci]
        fixed = None
        layout = None if col.kind in ("str", "bytes") else self.layout(ci, col)
        if layout is not None:
            dtype = col.numpy_dtype
            values = self.whole_values(dtype)
            shape = col.row_shape
            items = math.prod(shape)
            if shape:
                # Row i of ``values`` as a window of ``items`` values: row r of batch b starts
                # at values[first[b] + (r - batch_offsets[b]) * items].
                values = np.lib.stride_tricks.as_strided(
                    values,
                    (len(values) - items + 1, items),
                    (dtype.itemsize, dtype.itemsize),
                    writeable=False,
                )
            delta = layout[0] - batch_offsets[:-1] * items
            fixed = _FixedRows(values, delta, items, shape if len(shape) > 1 else None)
        self._fixed[ci] = fixed
        return fixed

    def whole_values(self, dtype: np.dtype[Any]) -> np.ndarray:
        """The whole mapped file as a read-only 1-d array of ``dtype`` (no copy)."""
        return np.frombuffer(self._whole, dtype, count=self._size // dtype.itemsize)

    def layout(self, ci: int, col: Column) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-batch file positions for column ``ci``: (values or offsets index, data byte pos)."""
        if ci not in self._layouts:
            self._layouts[ci] = self._compute_layout(ci, col)
        return self._layouts[ci]

    def _compute_layout(self, ci: int, col: Column) -> tuple[np.ndarray, np.ndarray] | None:
        strings = col.kind in ("str", "bytes")
        if strings:
            if self._size >= 2**31:
                return None  # string views address the file with int32 offsets
        elif col.uses_var_layout or col.numpy_dtype == np.bool_:
            return None  # Arrow bools are bit-packed; variable shapes have no fixed row size
        nb = len(self._batches)
        first, second = np.zeros(nb, np.int64), np.zeros(nb, np.int64)
        unit = 8 if strings else col.numpy_dtype.itemsize
        base = self._whole.address
        for b in range(nb):
            arr = self._batches[b].column(ci)
            if arr.offset != 0:
                return None
            if col.kind == "ndarray" and col.shape:
                arr = arr.flatten()
                if arr.offset != 0:
                    return None
            buffers = arr.buffers()
            needed = [buffers[1], buffers[2]] if strings else [buffers[1]]
            for buf in needed:
                if buf is None or not 0 <= buf.address - base <= self._size - buf.size:
                    return None
            pos = buffers[1].address - base
            if pos % unit:
                return None
            first[b] = pos // unit
            second[b] = buffers[2].address - base if strings else 0
        return first, second

    def take(
        self,
        col: Column,
        layout: tuple[np.ndarray, np.ndarray],
        which: np.ndarray,
        local: np.ndarray,
        strings: str = "list",
    ) -> Any:
        """Rows ``local`` of batches ``which`` of a str/bytes column, returned as
        ``ArrowShardReader.take`` does (fixed-size columns go through `fixed`)."""
        first, data_pos = layout
        offsets = np.frombuffer(self._whole, np.int64, count=self._size // 8)
        at = first[which] + local
        starts = offsets[at]
        lengths = offsets[at + 1] - starts
        starts += data_pos[which]
        n = len(which)
        views = np.zeros((n, 4), np.int32)
        views[:, 0] = lengths
        raw = views.view(np.uint8)
        head = np.minimum(starts[:, None] + np.arange(12), self._size - 1)
        short = lengths <= 12
        raw[:, 4:16] = np.where(np.arange(12) < lengths[:, None], self._u8[head], 0)
        views[~short, 2] = 0  # variadic buffer 0: the whole file
        views[~short, 3] = starts[~short]
        view_type = pa.string_view() if col.kind == "str" else pa.binary_view()
        array = pa.Array.from_buffers(view_type, n, [None, pa.py_buffer(views), self._whole])
        if strings == "blob":
            # Arrow's C++ take wins for many small rows; large rows are copied run by run with
            # numpy (Arrow's cast would leave a batch-sized mimalloc block behind every batch).
            if many_small_runs(starts, lengths):
                return BlobColumn.from_arrow(array.cast(_large_type(col)))
            return BlobColumn.gather(col.kind == "str", self._u8, starts, lengths)
        return array.to_pylist()


class _FixedRows:
    """Gathers rows of one fixed-size column of a mapped shard with one fancy index: row ``r``
    of record batch ``b`` is ``values[delta[b] + r * items]`` (``values`` is the whole file as
    the column's dtype, or windows of ``items`` values over it for arrays)."""

    __slots__ = ("delta", "items", "shape", "values")

    def __init__(
        self, values: np.ndarray, delta: np.ndarray, items: int, shape: tuple[int, ...] | None
    ) -> None:
        self.values, self.delta, self.items, self.shape = values, delta, items, shape

    def take(self, rows: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (shard row numbers) lying in record batches ``which``: a fresh,
        writable array (B, *shape)."""
        at = rows * self.items if self.items != 1 else rows.copy()
        at += self.delta[which]
        out = self.values[at]
        return out if self.shape is None else out.reshape((len(rows), *self.shape))


def _written_before_widening(schema: Schema, file_schema: pa.Schema) -> Schema | None:
    """The schema a shard was written with, if it differs from ``schema`` only in 1-d array
    columns the writer made variable after this shard (``[None]`` in ``schema``, a fixed
    ``[n]`` in the file); None if the file does not match that way."""
    if len(file_schema) != len(schema.columns):
        return None
    columns = []
    for col, field in zip(schema.columns, file_schema, strict=True):
        if (
            col.kind == "ndarray"
            and col.shape == (None,)
            and pa.types.is_fixed_size_list(field.type)
            and field.type.list_size > 0
        ):
            col = Column(col.name, "ndarray", col.dtype, (field.type.list_size,))
        columns.append(col)
    physical = Schema(tuple(columns))
    return physical if physical.arrow_schema().equals(file_schema) else None


def _numpy(arr: pa.Array) -> np.ndarray:
    """A fixed-width Arrow array as numpy: a read-only view of the mapped buffer for ints and
    floats, an unpacked copy for bool, pyarrow's conversion for anything else.

    ``Array.to_numpy`` imports pandas on its first call whenever pandas is installed (~0.3 s
    idle, over 1 s under load), and every freshly forked worker would pay it on its first batch,
    every pass: nothing here needs pandas, so the common layouts skip it.
    """
    t = arr.type
    if arr.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        code = "f" if pa.types.is_floating(t) else ("i" if pa.types.is_signed_integer(t) else "u")
        dtype = np.dtype(f"<{code}{t.bit_width // 8}")
        return np.frombuffer(
            arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
        )
    if arr.null_count == 0 and pa.types.is_boolean(t):
        bits = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
        unpacked = np.unpackbits(bits, count=arr.offset + len(arr), bitorder="little")
        return unpacked[arr.offset :].astype(bool)
    return arr.to_numpy(zero_copy_only=False)


def _ascending_run(rows: np.ndarray) -> bool:
    """Whether ``rows`` (non-empty) is ``first, first + 1, ..., first + n - 1``."""
    n = len(rows)
    # n strictly increasing ints spanning exactly n - 1 are consecutive: one comparison pass.
    return int(rows[-1]) - int(rows[0]) == n - 1 and (n == 1 or bool((rows[1:] > rows[:-1]).all()))


def _indices(rows: np.ndarray) -> pa.Array:
    """Row numbers as an Arrow int64 array over their numpy buffer (``pa.array`` would import
    pandas, see `_numpy`)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def _blob_run(col: Column, array: pa.Array, rows: slice) -> BlobColumn:
    """Rows ``rows`` of a (validated, null-free) str/bytes column as a `BlobColumn` viewing the
    mapped file: its offsets read straight from the Arrow buffer (int32 or int64), rebased to 0
    in one numpy call; no Arrow slice, cast or compute kernel on the way."""
    _, offset_buf, data_buf = array.buffers()
    width = (
        np.int64
        if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
        else np.int32
    )
    first = array.offset + rows.start
    raw = np.frombuffer(offset_buf, width)[first : first + (rows.stop - rows.start) + 1]
    start = int(raw[0])
    data = (
        np.frombuffer(data_buf, np.uint8)[start : int(raw[-1])]
        if data_buf is not None
        else np.zeros(0, np.uint8)
    )
    return BlobColumn(col.kind == "str", np.subtract(raw, start, dtype=np.int64), data)


def _large_type(col: Column) -> pa.DataType:
    return pa.large_string() if col.kind == "str" else pa.large_binary()


def _var_arrays(col: Column, arr: pa.StructArray) -> list[np.ndarray]:
    """Rows of a struct<data: large_list, shape: fixed_size_list> array as owned numpy arrays.

    Each row's stored shape is checked against the schema and its value count, so a corrupted
    shape is a FormatError rather than a wrong-sized array.
    """
    if len(arr) == 0:
        return []
    data, shape_arr = arr.flatten()  # flatten() applies the struct's slice offset to the children
    shapes = _numpy(shape_arr.flatten()).reshape(len(arr), -1)
    offsets = _numpy(data.offsets)
    values = _numpy(data.values)
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

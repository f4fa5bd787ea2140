"""Writing one Arrow IPC shard: samples in, record batches out, hashed while written.

A shard is an Arrow IPC *file* (random-access footer), columns laid out as `streamload.format.schema`
describes. Rows are buffered per column and flushed as one record batch when the buffer reaches
``batch_bytes`` (raw payload, default 1 MiB) or ``batch_rows`` rows, whichever comes first: small
batches make random access cheap (a reader touches one batch per sample), large ones amortise
per-batch overhead. Compression (zstd, lz4_frame) applies per buffer via IPC write options.

Every byte goes through ``_HashingSink``, so the size and xxh3_64 of the finished file are known
at close without reading it back. ``estimated_bytes`` (bytes written + buffered rows scaled by the
compression ratio seen so far) is what the ShardWriter compares with ``shard_size`` to rotate.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import numpy as np
import pyarrow as pa

from streamload.format.checksum import new_hasher
from streamload.format.schema import Column, Schema
from streamload.store import filesystem as store

BATCH_BYTES = 2**20
BATCH_ROWS = 4096
COMPRESSIONS = {None: None, "zstd": "zstd", "lz4": "lz4", "lz4_frame": "lz4"}


class _HashingSink:
    """A write-only file object that counts and hashes every byte before passing it on."""

    def __init__(self, raw: Any, algorithm: str) -> None:
        self._raw = raw
        self._hasher = new_hasher(algorithm)
        self.bytes = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._raw.write(view)
        self.bytes += len(view)
        return len(view)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        # pyarrow closes its sink when the IPC writer closes; the real file is closed by its owner.
        self.closed = True


class ArrowShardFileWriter:
    """Writes samples into one Arrow IPC file (a `streamload.write.writer.ShardFileWriter`)."""

    extension = "arrow"

    def __init__(
        self,
        fs: Any,
        path: str,
        schema: Schema,
        compression: str | None,
        batch_bytes: int = BATCH_BYTES,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self._schema = schema
        self._arrow_schema = schema.arrow_schema()
        self._batch_bytes = batch_bytes
        self._batch_rows = batch_rows
        self._local = store.local_path(fs, path)
        # Local files use a plain file so close() can fsync before the rename publishes the shard.
        self._file = open(self._local, "wb") if self._local else fs.open(path, "wb")  # noqa: SIM115
        self._sink = _HashingSink(self._file, "xxh3_64")
        self._options = pa.ipc.IpcWriteOptions(compression=COMPRESSIONS[compression])
        # Made at the first flush, so a schema widened before then (``widen``) is the file's.
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._pending: list[list[Any]] = [[] for _ in schema.columns]
        self._pending_raw = 0
        self._flushed_raw = 0
        self.num_samples = 0

    @property
    def estimated_bytes(self) -> int:
        """Bytes this shard would have if closed now (excluding the small footer)."""
        ratio = self._sink.bytes / self._flushed_raw if self._flushed_raw else 1.0
        return self._sink.bytes + math.ceil(self._pending_raw * ratio)

    def add(self, sample: dict[str, Any]) -> None:
        """Buffer one (already validated) sample; flush a record batch when the buffer is full."""
        raw = 0
        for col, values in zip(self._schema.columns, self._pending, strict=True):
            value = sample[col.name]
            kind = col.kind
            if kind == "str":
                raw += len(value) + 8
            elif kind == "bytes":
                if not isinstance(value, bytes):
                    value = bytes(value)
                raw += len(value) + 8
            elif kind == "ndarray":
                raw += value.nbytes + (8 + 8 * value.ndim if col.uses_var_layout else 0)
            else:
                raw += 8
            values.append(value)
        self.num_samples += 1
        self._pending_raw += raw
        if self._pending_raw >= self._batch_bytes or len(self._pending[0]) >= self._batch_rows:
            self.flush()

    def widen(self, schema: Schema) -> bool:
        """Take ``schema`` (same columns, some made variable) for this shard: True while no
        record batch is written (buffered rows are laid out at flush), else False."""
        if self._writer is not None:
            return False
        self._schema = schema
        self._arrow_schema = schema.arrow_schema()
        return True

    def _file_writer(self) -> pa.ipc.RecordBatchFileWriter:
        if self._writer is None:
            self._writer = pa.ipc.new_file(self._sink, self._arrow_schema, options=self._options)
        return self._writer

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Write a record batch already in the shard layout, in pieces of at most ``batch_rows``
        rows and about ``batch_bytes`` bytes (buffered samples are flushed first, keeping order)."""
        self.flush()
        if not batch.schema.equals(self._arrow_schema):
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=self._arrow_schema)
        rows = batch.num_rows
        if not rows:
            return
        raw = batch.nbytes
        step = max(1, min(self._batch_rows, rows * self._batch_bytes // max(raw, 1)))
        for start in range(0, rows, step):
            self._file_writer().write_batch(batch.slice(start, step))
        self._flushed_raw += raw
        self.num_samples += rows

    def flush(self) -> None:
        """Write the buffered rows as one record batch (no-op when nothing is buffered)."""
        if not self._pending[0]:
            return
        arrays = [
            to_arrow(col, values, field.type)
            for col, values, field in zip(
                self._schema.columns, self._pending, self._arrow_schema, strict=True
            )
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self._arrow_schema)
        self._file_writer().write_batch(batch)
        self._flushed_raw += self._pending_raw
        self._pending = [[] for _ in self._schema.columns]
        self._pending_raw = 0

    def close(self) -> tuple[int, str]:
        """Finish the file (footer, fsync when local) and return ``(bytes, xxh3_64 hex)``."""
        self.flush()
        self._file_writer().close()
        self._file.flush()
        if self._local:
            os.fsync(self._file.fileno())
        self._file.close()
        return self._sink.bytes, self._sink.hexdigest()

    def abort(self) -> None:
        """Stop writing without finishing the file (the caller deletes it)."""
        # The writer may be mid-failure already; the temp file is deleted either way.
        with contextlib.suppress(pa.ArrowException, OSError, ValueError):
            if self._writer is not None:
                self._writer.close()
        with contextlib.suppress(OSError):  # flushing what is buffered may fail again
            self._file.close()


def to_arrow(col: Column, values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    """One column of python values (validated samples' values) as an Arrow array of the column's
    layout (``arrow_type``)."""
    kind = col.kind
    if kind != "ndarray":
        return pa.array(values, type=arrow_type)
    dtype = np.dtype(col.dtype)
    shape = col.shape or ()
    if not shape:
        return pa.array(np.asarray(values, dtype=dtype), type=arrow_type)
    if not col.uses_var_layout:
        flat = np.ascontiguousarray(np.stack(values), dtype=dtype).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), math.prod(shape))  # type: ignore[arg-type]
    sizes = np.fromiter((v.size for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.concatenate([np.ravel(v) for v in values]).astype(dtype, copy=False)
    shapes = np.asarray([v.shape for v in values], dtype=np.int64).reshape(-1)
    data = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
    shape_arr = pa.FixedSizeListArray.from_arrays(pa.array(shapes), len(shape))
    return pa.StructArray.from_arrays([data, shape_arr], fields=list(arrow_type))

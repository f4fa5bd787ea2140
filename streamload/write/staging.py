"""Staged shards: samples or Arrow record batches in, finished shard files out, metadata back.

`ShardStream` is the write core every writer shares (``ShardWriter`` in one process, each task of
``streamload.ray.ShardDatasink`` on a cluster). It fills one shard file at a time through the
small `ShardFileWriter` protocol (``ArrowShardFileWriter``, ``LmdbShardFileWriter``), closes it
once its bytes reach ``shard_size`` (a sample is never split, so a shard may exceed it by one
sample, or for record batches by one batch of at most ``arrow_writer.BATCH_BYTES``), and stages
it under the name ``names(k)`` gives the k-th shard. `finish` returns the staged shards'
metadata (``commit.StagedShard``); nothing is part of a dataset until ``commit``.

A shard under construction lives under a temp name (``.<name>.tmp-<pid>-<hex>`` in the dataset
root; on object stores, which have no rename, a local temp file uploaded whole to the staged name
through the store's retry policy), so a staged name only ever holds a complete, fsynced file.
`abort` deletes the shard under construction; staged ones are left for ``commit`` or
``commit.discard`` to reference or delete. A write that fails (disk full, an I/O error, an upload
that kept failing) deletes the shard under construction and raises `StoreError` naming the file
and the free space left (`streamload.store.filesystem.write_error`).

Record batches (`add_batch`) must already have the shard layout of the schema
(``Schema.arrow_schema``; ``convert.BatchEncoder`` maps a source's Arrow types to it): Arrow shards
take them as they are, cut into batches of at most ``BATCH_ROWS`` rows / ``BATCH_BYTES`` bytes so
random access stays cheap; LMDB shards take samples only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from streamload.errors import ConfigError, StoreError
from streamload.format.index import ShardInfo
from streamload.format.schema import Schema
from streamload.sizes import parse_size
from streamload.store import filesystem as store
from streamload.write.commit import StagedShard


class ShardFileWriter(Protocol):
    """Writes one shard file of one format."""

    num_samples: int

    @property
    def estimated_bytes(self) -> int: ...

    def add(self, sample: dict[str, Any]) -> None: ...

    def close(self) -> tuple[int, str]: ...

    def abort(self) -> None: ...

    def widen(self, schema: Schema) -> bool: ...


def shard_settings(
    format: str, shard_size: int | str, compression: str | None, what: str
) -> tuple[str, int, str | None]:
    """Validated ``(format, shard_size in bytes, compression)`` of a writer called ``what``.

    Raises:
        ConfigError: an unknown format or codec, compressed LMDB, a bad shard_size.
    """
    if format not in ("arrow", "lmdb"):
        raise ConfigError(f"{what} format: unknown format {format!r}; use 'arrow' or 'lmdb'")
    if format == "lmdb" and compression not in (None, "none", "uncompressed"):
        raise ConfigError(
            f"{what} compression: LMDB shards are stored uncompressed; use compression=None"
        )
    try:
        size = parse_size(shard_size, what="shard_size")
    except ValueError as exc:
        raise ConfigError(f"{what} {exc}") from None
    if size < 1:
        raise ConfigError(f"{what} shard_size: must be at least 1 byte")
    if compression in ("none", "uncompressed"):
        compression = None
    if compression not in (None, "zstd", "lz4", "lz4_frame"):
        raise ConfigError(
            f"{what} compression: unknown codec {compression!r}; use None, 'zstd' or 'lz4'"
        )
    return format, size, compression


def open_shard_file(
    fmt: str, fs: Any, path: str, schema: Schema, compression: str | None
) -> ShardFileWriter:
    """A ShardFileWriter of format ``fmt`` writing ``path`` on ``fs``."""
    if fmt == "arrow":
        from streamload.shards.arrow.writer import ArrowShardFileWriter

        return ArrowShardFileWriter(fs, path, schema, compression)
    from streamload.shards.lmdb.writer import LmdbShardFileWriter

    return LmdbShardFileWriter(fs, path, schema)


class ShardStream:
    """Writes size-bounded shard files from samples or record batches and stages them."""

    def __init__(
        self,
        fs: Any,
        root: str,
        format: str,
        schema: Schema,
        shard_size: int,
        compression: str | None,
        names: Callable[[int], str],
        task: int = 0,
    ) -> None:
        """Start a stream (no file is created before the first sample).

        Args:
            fs, root: the dataset root (``store.resolve``).
            format: ``"arrow"`` or ``"lmdb"``.
            schema: every sample's schema (validated by the caller).
            shard_size: bytes at which a shard is closed.
            compression: Arrow compression (None, ``"zstd"``, ``"lz4"``).
            names: the staged file name of the k-th shard of this stream.
            task: this stream's place among the writers of one commit (orders the index).
        """
        self._fs = fs
        self._root = root
        self._format = format
        self._schema = schema
        self._schema_json = schema.to_json()
        self._shard_size = shard_size
        self._compression = compression
        self._names = names
        self._task = task
        self._remote = store.is_remote(fs)
        self._current: ShardFileWriter | None = None
        self._tmp = ""
        self._staged: list[StagedShard] = []
        self._elements: dict[str, int] = {}  # the open shard's elements per array column
        self.num_samples = 0

    @property
    def format(self) -> str:
        """``"arrow"`` or ``"lmdb"``."""
        return self._format

    @property
    def schema(self) -> Schema:
        """The schema every sample of this stream has."""
        return self._schema

    def add(self, sample: dict[str, Any]) -> None:
        """Append one validated sample, closing the shard when it is full.

        Raises:
            StoreError: writing the shard failed (it was deleted; see the module docstring).
        """
        with self._writing():
            current = self._current or self._open()
            current.add(sample)
            for col in self._schema.columns:
                if col.kind == "ndarray" and col.shape:
                    size = sample[col.name].size
                    self._elements[col.name] = self._elements.get(col.name, 0) + size
            self.num_samples += 1
            if current.estimated_bytes >= self._shard_size:
                self._close()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Append the rows of a record batch in the shard layout (``Schema.arrow_schema``);
        Arrow shards only (LMDB shards take samples: `add`)."""
        if self._format != "arrow":
            raise ValueError("ShardStream.add_batch: LMDB shards are written sample by sample")
        with self._writing():
            self._add_batch(batch)

    def _add_batch(self, batch: pa.RecordBatch) -> None:
        start = 0
        row_bytes = max(1, batch.nbytes // max(1, batch.num_rows))
        while start < batch.num_rows:
            current = self._current or self._open()
            room = max(1, (self._shard_size - current.estimated_bytes) // row_bytes)
            piece = batch.slice(start, room)
            current.add_batch(piece)  # type: ignore[attr-defined]
            for name, count in _batch_elements(self._schema, piece).items():
                self._elements[name] = self._elements.get(name, 0) + count
            start += piece.num_rows
            self.num_samples += piece.num_rows
            if current.estimated_bytes >= self._shard_size:
                self._close()

    def widen(self, schema: Schema) -> None:
        """Continue under ``schema``: the current one with 1-d array columns made variable
        (`streamload.format.schema.widen_1d`). Shards staged in the fixed layout are readable
        under it and are recorded with it; the open shard takes it if it has only buffered
        rows, else it is finished now and the next one starts in the variable layout."""
        self._schema = schema
        self._schema_json = schema.to_json()
        self._staged = [dataclasses.replace(s, schema=self._schema_json) for s in self._staged]
        if self._current is not None and not self._current.widen(schema):
            with self._writing():
                self._close()

    def finish(self) -> list[StagedShard]:
        """Close the last shard; return every shard this stream staged, in order.

        Raises:
            StoreError: writing the last shard failed (it was deleted).
        """
        if self._current is not None:
            with self._writing():
                self._close()
        return list(self._staged)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write deletes the shard under construction, then raises `StoreError`."""
        try:
            yield
        except OSError as exc:  # StoreError too: an upload that kept failing
            path = self._tmp
            self.abort()
            if path and (self._remote or store.local_path(self._fs, path) is not None):
                _remove_local(path)  # a shard file that failed as it was created
            if isinstance(exc, StoreError):
                raise
            raise store.write_error(exc, path, f"writing a {self._format} shard") from exc

    def abort(self) -> None:
        """Stop: delete the shard under construction (staged shards stay for the caller)."""
        current, self._current = self._current, None
        if current is None:
            return
        current.abort()
        if self._remote or store.local_path(self._fs, self._tmp) is not None:
            _remove_local(self._tmp)
        elif self._fs.exists(self._tmp):
            self._fs.rm_file(self._tmp)

    def _open(self) -> ShardFileWriter:
        name = self._names(len(self._staged))
        fs = self._fs
        if self._remote:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            fs = LocalFileSystem()
        else:
            self._tmp = store.join(self._root, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        self._current = open_shard_file(
            self._format, fs, self._tmp, self._schema, self._compression
        )
        return self._current

    def _close(self) -> None:
        current = self._current
        assert current is not None  # only called with a shard open
        # The shard stays current until it is staged: a failure on the way must find (and
        # delete) its temp file.
        nbytes, digest = current.close()
        name = self._names(len(self._staged))
        final = store.join(self._root, name)
        local = store.local_path(self._fs, final)
        if self._remote:
            store.upload(self._fs, self._tmp, final)
            _remove_local(self._tmp)
        elif local:
            os.replace(self._tmp, local)
        else:
            self._fs.mv(self._tmp, final)
        self._current = None
        variable = [c.name for c in self._schema.columns if c.uses_var_layout]
        elements = {n: self._elements.get(n, 0) for n in variable} if variable else None
        self._elements = {}
        info = ShardInfo(name, current.num_samples, nbytes, "xxh3_64", digest, elements)
        self._staged.append(StagedShard(info, self._schema_json, (self._task, len(self._staged))))


def _batch_elements(schema: Schema, batch: pa.RecordBatch) -> dict[str, int]:
    """Elements per array column of a record batch in the shard layout."""
    out: dict[str, int] = {}
    for col in schema.columns:
        if col.kind != "ndarray" or not col.shape:
            continue
        arr = batch.column(col.name)
        if col.uses_var_layout:  # struct<data: large_list<prim>, shape>: the data lists' lengths
            data = arr.flatten()[0]  # flatten() honours the batch's slice offset; field() does not
            out[col.name] = int(pc.sum(pc.list_value_length(data)).as_py() or 0)
        else:
            out[col.name] = len(arr) * math.prod(col.shape)  # type: ignore[arg-type]
    return out


def _remove_local(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)

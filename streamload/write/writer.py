"""ShardWriter: write samples into a dataset of size-bounded shards plus index.json.

Protocol: every sample is validated against the schema (given, or inferred from the first
sample) and goes to a ``staging.ShardStream``, which closes a shard once its bytes reach
``shard_size`` (a sample is never split) and stages it as ``shard-NNNNN.<ext>``: a complete file,
in no index yet. ``close`` hands the staged shards to ``commit.commit``, which validates them and
writes ``index.json`` LAST and atomically (temp + fsync + rename locally; one put on object
stores), so "index.json exists" means "the dataset is complete". Object stores (s3, gs) have no
rename: a shard is built in a local temp file and uploaded to its name in one retried upload.

Modes: ``"create"`` (default) writes a new dataset; writing where an index.json already exists
is refused unless ``overwrite=True``, which deletes the old index.json first (the old dataset is
visibly gone while the new one is written) and, at commit, the old shards the new index does not
list. ``"append"`` adds shards to the dataset there (creating it if there is none): samples must
match its schema, new shards continue its numbering (tagged with the writer's token, so no name
is reused), and the commit writes a new index.json
version while the old one stays readable (``commit`` module docstring).

Schema: given (``schema=``), or inferred from the first sample with ``shapes=`` declaring variable
dims (``shapes={"tokens": [None]}``). An inferred 1-d array column also becomes variable by itself
the first time a sample of the same dtype has another length (``schema.widen_1d``): a token corpus
needs no declaration. The shard stream takes the widened schema (`ShardStream.widen`): rows the
open shard has only buffered are laid out anew; a shard that already wrote record batches in the
fixed layout is finished early (readers accept a fixed-layout shard under a widened 1-d column).
Per shard, the total elements of each variable-shape array column go to index.json (format
version 2), which is what token streams read to lay out blocks without opening every shard.

Failure policy: if the ``with`` block raises, the current shard's temp file is deleted, no
index.json is written (an append leaves the previous version current), and already staged
shards are left in place: no index references them, and the next commit at this URL deletes them.
A failed write of a shard or of index.json (disk full, an I/O error, an upload that kept failing)
raises `StoreError` naming the file and the free space of its file system, after deleting what
was being written; the writer then refuses further samples (its unfinished shard is gone, so
going on would silently lose the samples in it).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any

from streamload import config
from streamload.errors import ConfigError, FormatError, StoreError
from streamload.format.index import DatasetIndex
from streamload.format.schema import Schema, infer_schema, schema_from_json, widen_1d
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy
from streamload.write import commit
from streamload.write.staging import ShardStream, shard_settings


class ShardWriter:
    """Write a sharded dataset (index.json + shard-NNNNN.arrow | .lmdb) at a URL.

    Example::

        with ShardWriter("/data/ds", shard_size="256MB", compression="zstd") as w:
            for sample in samples:
                w.write(sample)
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        format: str = "arrow",
        shard_size: int | str | None = None,
        compression: str | None = None,
        schema: dict[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
        metadata: dict[str, Any] | None = None,
        mode: str = "create",
        shapes: dict[str, list[int | None]] | None = None,
    ) -> None:
        """Open a dataset for writing.

        Args:
            url: the dataset directory: local path, ``file://``, ``memory://``, ``s3://`` or
                ``gs://`` URL.
            format: ``"arrow"`` (Arrow IPC files) or ``"lmdb"`` (one single-file LMDB
                environment per shard, see `streamload.shards.lmdb.writer`).
            shard_size: target shard size, int bytes or a string such as ``"256MB"``; None takes
                the configured default (setting ``shard_size``).
            compression: None (uncompressed), ``"zstd"`` or ``"lz4"``.
            schema: the schema's JSON form (see `streamload.format.schema`); None infers it from
                the first sample (array shapes fixed, except ``shapes`` and 1-d arrays whose
                length changes, see the module docstring).
            storage_options: passed to fsspec.
            overwrite: replace an existing dataset at ``url`` (see the module docstring).
            metadata: a JSON-serialisable object stored as index.json's ``"metadata"`` (e.g.
                ``{"classes": [...]}``); None or empty stores nothing (an append keeps the
                dataset's).
            mode: ``"create"`` a dataset, or ``"append"`` to the one at ``url`` (module docstring).
            shapes: array shapes to infer with, ``None`` for a variable dim, e.g.
                ``{"tokens": [None]}``; the other columns are still inferred.

        Raises:
            ConfigError: bad format, shard_size, compression or mode; both schema and shapes.
            FormatError: bad schema; appending another format, schema or metadata than the
                dataset's (names the difference).
            StoreError: ``url`` already holds a dataset, mode is create and ``overwrite`` False.
        """
        cfg = config.load()  # an entry point: settings resolved once, here
        self._format, self._shard_size, self._compression = shard_settings(
            format, cfg.shard_size if shard_size is None else shard_size, compression, "ShardWriter"
        )
        self._url = os.fspath(url)
        self._fs, self._root = store.resolve(url, storage_options, RetryPolicy.from_config(cfg))
        if schema is not None and shapes is not None:
            raise ConfigError(
                "ShardWriter: give schema= or shapes=, not both (shapes= is for inferring the"
                " rest of the schema; in schema=, write null for a variable dim)"
            )
        self._schema: Schema | None = (
            None if schema is None else schema_from_json(schema, "ShardWriter(schema=...)")
        )
        self._shapes = dict(shapes) if shapes is not None else None
        # Inferred fixed 1-d array columns: they become variable when a length changes.
        self._widenable: frozenset[str] = frozenset()
        self._overwrite = overwrite
        self._metadata = dict(metadata) if metadata else None
        self._mode = commit.check_mode(mode, "ShardWriter")
        self._base = commit.prepare(self._fs, self._root, self._url, self._mode, overwrite)
        if self._base is not None:
            self._join_base(self._base)
        self._stream: ShardStream | None = None
        self._closed = False
        self._failure: StoreError | None = None  # a failed write: the writer cannot go on

    def _join_base(self, base: DatasetIndex) -> None:
        """Appending: the dataset's format, schema and metadata are the ones to match."""
        if base.format != self._format:
            raise FormatError(
                f"ShardWriter({self._url!r}): cannot append {self._format} shards to a dataset"
                f" of {base.format} shards"
            )
        if self._schema is not None and self._schema != base.schema:
            difference = commit.schema_difference(
                base.schema, self._schema, "the dataset", "schema="
            )
            raise FormatError(f"ShardWriter({self._url!r}): cannot append: {difference}")
        if self._metadata and self._metadata != (base.metadata or {}):
            raise FormatError(
                f"ShardWriter({self._url!r}): cannot append: metadata {self._metadata!r:.200}"
                f" differs from the dataset's {base.metadata!r:.200}"
            )
        self._schema = base.schema

    @property
    def num_samples(self) -> int:
        """Samples written so far."""
        return self._stream.num_samples if self._stream is not None else 0

    @property
    def schema(self) -> Schema | None:
        """The schema (None until given or inferred from the first sample)."""
        return self._schema

    def write(self, sample: dict[str, Any]) -> None:
        """Validate and append one sample.

        Raises:
            FormatError: the sample does not match the schema (names the sample number and field).
            StoreError: writing failed (see the module docstring), now or before.
            ValueError: the writer is closed.
        """
        if self._failure is not None:
            raise StoreError(f"ShardWriter({self._url!r}) stopped after: {self._failure}")
        if self._closed:
            raise ValueError(f"ShardWriter({self._url!r}) is closed")
        if self._schema is None:
            self._schema = infer_schema(sample, self._shapes)
            self._widenable = frozenset(
                c.name
                for c in self._schema.columns
                if c.is_fixed_array
                and len(c.shape or ()) == 1
                and c.name not in (self._shapes or {})
            )
        try:
            self._schema.validate(sample, self.num_samples)
        except FormatError:
            widened = widen_1d(self._schema, sample, self._widenable) if self._widenable else None
            if widened is None:
                raise
            widened.validate(sample, self.num_samples)
            self._schema = widened
            self._widenable = frozenset(
                n for n in self._widenable if widened.column(n).is_fixed_array
            )
            if self._stream is not None:
                self._failing(self._stream.widen, widened)
        self._failing((self._stream or self._open_stream()).add, sample)

    def _failing(self, step: Callable[[Any], None], arg: Any) -> None:
        """Run one write step; after a failed write the writer is stopped for good."""
        try:
            step(arg)
        except StoreError as exc:
            self._failure = exc
            self.abort()
            raise

    @property
    def stream(self) -> ShardStream:
        """The shard stream behind this writer (``convert`` feeds it record batches)."""
        return self._stream or self._open_stream()

    def close(self) -> None:
        """Finish the last shard and commit index.json (idempotent).

        Raises:
            FormatError: nothing was written and no schema was given (index.json needs a schema).
            StoreError: appending, and another writer committed a version meanwhile; writing a
                shard or index.json failed (names the file and the free space).
        """
        if self._failure is not None:
            raise StoreError(f"ShardWriter({self._url!r}) stopped after: {self._failure}")
        if self._closed:
            return
        self._closed = True
        try:
            if self._base is not None:  # fail before staging the last shard if another append won
                commit.check_base(self._fs, self._root, self._url, self._base)
            staged = self._stream.finish() if self._stream is not None else []
        except BaseException:
            if self._stream is not None:
                self._stream.abort()
            raise
        self._index = commit.commit(
            self._fs,
            self._root,
            self._url,
            format=self._format,
            shards=staged,
            schema=self._schema,
            metadata=self._metadata,
            base=self._base,
            overwrite=self._overwrite,
        )

    @property
    def index(self) -> DatasetIndex:
        """The committed index (after ``close``).

        Raises:
            ValueError: not committed yet.
        """
        if not hasattr(self, "_index"):
            raise ValueError(f"ShardWriter({self._url!r}) has not committed yet")
        return self._index

    def abort(self) -> None:
        """Stop without writing index.json; delete the unfinished shard (staged ones stay)."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            self._stream.abort()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open_stream(self) -> ShardStream:
        if self._schema is None:
            raise ValueError(f"ShardWriter({self._url!r}): no schema yet (write a sample first)")
        first = len(self._base.shards) if self._base is not None else 0
        # Appended shards carry this writer's token: a staged name never replaces a shard that
        # an index (this one, or a concurrent append's) references.
        tag = f"-{secrets.token_hex(4)}" if self._mode == "append" else ""
        ext = self._format

        def name(k: int) -> str:
            return f"shard-{first + k:05d}{tag}.{ext}"

        self._stream = ShardStream(
            self._fs,
            self._root,
            self._format,
            self._schema,
            self._shard_size,
            self._compression,
            name,
        )
        return self._stream

"""ShardWriter: write samples into a dataset of size-bounded shards plus index.json.

Protocol: every sample is validated against the schema (given, or inferred from the first
sample), appended to the current shard, and the shard is closed once its bytes reach
``shard_size`` (a sample is never split, so a shard may exceed it by one sample plus Arrow
framing). A shard is written under a temp name in the dataset directory and renamed to
``shard-NNNNN.<ext>`` only when complete (local files are fsynced first). ``index.json`` is
written LAST and atomically (temp + rename locally; one put on object stores), so "index.json
exists" means "the dataset is complete". Object stores (s3, gs) have no rename: a shard is built
in a local temp file and uploaded to its final key in one retried upload (the object appears
only once complete), and every request goes through ``streamload.store``'s retry policy.

Failure policy: if the ``with`` block raises, the current shard's temp file is deleted, no
index.json is written, and already completed shards are left in place (without index.json they
are not a dataset, and writing the dataset again overwrites them by name). Writing where an
index.json already exists is refused unless ``overwrite=True``, which deletes the old index.json
first (the old dataset is visibly gone while the new one is written) and, after the new index is
written, deletes leftover ``shard-NNNNN.*`` files that the new index does not list (and the
temp files of interrupted writers).

Shard formats plug in through the small ``ShardFileWriter`` protocol (`ArrowShardFileWriter`,
`LmdbShardFileWriter`): ``add(sample)``, ``estimated_bytes``, ``close() -> (bytes, xxh3_64)``, ``abort()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from types import TracebackType
from typing import Any, Protocol

from fsspec.implementations.local import LocalFileSystem

from streamload import config
from streamload.errors import ConfigError, FormatError, StoreError
from streamload.format.index import FORMAT_VERSIONS, INDEX_NAME, DatasetIndex, ShardInfo, read_index
from streamload.format.schema import Schema, infer_schema, schema_from_json
from streamload.sizes import parse_size
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy

# Shard files, and the temp files of interrupted writers (removed by overwrite=True).
_SHARD_FILE_RE = re.compile(
    r"^(shard-\d{5,}\.(arrow|lmdb)|\.shard-\d{5,}\.(arrow|lmdb)\.tmp-\d+-[0-9a-f]+)$"
)


class ShardFileWriter(Protocol):
    """Writes one shard file of one format (see the module docstring)."""

    num_samples: int

    @property
    def estimated_bytes(self) -> int: ...

    def add(self, sample: dict[str, Any]) -> None: ...

    def close(self) -> tuple[int, str]: ...

    def abort(self) -> None: ...


def _open_shard_file(
    fmt: str, fs: Any, path: str, schema: Schema, compression: str | None
) -> ShardFileWriter:
    if fmt == "arrow":
        from streamload.shards.arrow.writer import ArrowShardFileWriter

        return ArrowShardFileWriter(fs, path, schema, compression)
    from streamload.shards.lmdb.writer import LmdbShardFileWriter

    return LmdbShardFileWriter(fs, path, schema)


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
            schema: the schema's JSON form (see ``streamload.schema``); None infers it from the
                first sample, with array shapes fixed.
            storage_options: passed to fsspec.
            overwrite: replace an existing dataset at ``url`` (see the module docstring).
            metadata: a JSON-serialisable object stored as index.json's ``"metadata"`` (e.g.
                ``{"classes": [...]}``); None or empty stores nothing.

        Raises:
            ConfigError: bad format, shard_size or compression.
            FormatError: bad schema.
            StoreError: ``url`` already holds a dataset and ``overwrite`` is False.
        """
        if format not in ("arrow", "lmdb"):
            raise ConfigError(
                f"ShardWriter format: unknown format {format!r}; use 'arrow' or 'lmdb'"
            )
        if format == "lmdb" and compression not in (None, "none", "uncompressed"):
            raise ConfigError(
                "ShardWriter compression: LMDB shards are stored uncompressed; use compression=None"
            )
        cfg = config.load()  # an entry point: settings resolved once, here
        if shard_size is None:
            shard_size = cfg.shard_size
        try:
            self._shard_size = parse_size(shard_size, what="shard_size")
        except ValueError as exc:
            raise ConfigError(f"ShardWriter {exc}") from None
        if self._shard_size < 1:
            raise ConfigError("ShardWriter shard_size: must be at least 1 byte")
        if compression in ("none", "uncompressed"):
            compression = None
        if compression not in (None, "zstd", "lz4", "lz4_frame"):
            raise ConfigError(
                f"ShardWriter compression: unknown codec {compression!r}; use None, 'zstd' or 'lz4'"
            )
        self._compression = compression
        self._format = format
        self._url = os.fspath(url)
        self._fs, self._root = store.resolve(url, storage_options, RetryPolicy.from_config(cfg))
        # Remote (s3, gs): shards are built in a local temp file and uploaded whole, so the
        # object appears only when complete (object stores have no rename) and a failed upload
        # is retried by the store's one retry policy.
        self._remote = store.is_remote(self._fs)
        self._schema: Schema | None = (
            None if schema is None else schema_from_json(schema, "ShardWriter(schema=...)")
        )
        self._overwrite = overwrite
        self._metadata = dict(metadata) if metadata else None
        self._shards: list[ShardInfo] = []
        self._current: ShardFileWriter | None = None
        self._current_tmp = ""
        self._num_samples = 0
        self._closed = False
        self._prepare_directory()

    def _prepare_directory(self) -> None:
        index_path = store.join(self._root, INDEX_NAME)
        if self._remote:  # object stores have no directories (and s3fs would create a bucket)
            exists = store.exists(self._fs, index_path)
        else:
            self._fs.makedirs(self._root, exist_ok=True)
            exists = self._fs.exists(index_path)
        if exists:
            if not self._overwrite:
                raise StoreError(
                    f"{self._url} already holds a dataset ({INDEX_NAME} exists); pass overwrite=True to replace it"
                )
            if self._remote:
                store.remove(self._fs, index_path)
            else:
                self._fs.rm_file(index_path)

    @property
    def num_samples(self) -> int:
        """Samples written so far."""
        return self._num_samples

    @property
    def schema(self) -> Schema | None:
        """The schema (None until given or inferred from the first sample)."""
        return self._schema

    def write(self, sample: dict[str, Any]) -> None:
        """Validate and append one sample.

        Raises:
            FormatError: the sample does not match the schema (names the sample number and field).
            ValueError: the writer is closed.
        """
        if self._closed:
            raise ValueError(f"ShardWriter({self._url!r}) is closed")
        if self._schema is None:
            self._schema = infer_schema(sample)
        self._schema.validate(sample, self._num_samples)
        if self._current is None:
            self._open_next_shard()
        current = self._current
        assert current is not None  # set by _open_next_shard; narrows the type for mypy
        current.add(sample)
        self._num_samples += 1
        if current.estimated_bytes >= self._shard_size:
            self._finish_shard()

    def close(self) -> None:
        """Finish the last shard and write index.json (idempotent).

        Raises:
            FormatError: nothing was written and no schema was given (index.json needs a schema).
        """
        if self._closed:
            return
        if self._current is not None:
            self._finish_shard()
        if self._schema is None:
            self._closed = True
            raise FormatError(
                f"ShardWriter({self._url!r}): no samples written and no schema given, so no index.json"
            )
        index = DatasetIndex(
            format_version=FORMAT_VERSIONS[-1],
            format=self._format,
            schema=self._schema,
            num_samples=self._num_samples,
            shards=tuple(self._shards),
            metadata=self._metadata,
        )
        self._publish_index(index.to_bytes())
        self._closed = True
        if self._overwrite:
            self._remove_stale_shards(index)

    def abort(self) -> None:
        """Stop without writing index.json; delete the unfinished shard (completed ones stay)."""
        if self._closed:
            return
        self._closed = True
        if self._current is not None:
            self._current.abort()
            self._current = None
            if self._remote:
                _remove_local(self._current_tmp)
            elif self._fs.exists(self._current_tmp):
                self._fs.rm_file(self._current_tmp)

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

    def _open_next_shard(self) -> None:
        assert self._schema is not None  # write() sets it before opening a shard
        name = f"shard-{len(self._shards):05d}.{self._format}"
        fs = self._fs
        if self._remote:
            fd, self._current_tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            fs = LocalFileSystem()
        else:
            self._current_tmp = store.join(
                self._root, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            )
        self._current = _open_shard_file(
            self._format, fs, self._current_tmp, self._schema, self._compression
        )

    def _finish_shard(self) -> None:
        current = self._current
        assert current is not None  # only called with a shard open
        self._current = None
        nbytes, digest = current.close()
        name = f"shard-{len(self._shards):05d}.{self._format}"
        final = store.join(self._root, name)
        local = store.local_path(self._fs, final)
        if self._remote:
            try:
                store.upload(self._fs, self._current_tmp, final)
            finally:
                _remove_local(self._current_tmp)
        elif local:
            os.replace(self._current_tmp, local)
        else:
            self._fs.mv(self._current_tmp, final)
        self._shards.append(ShardInfo(name, current.num_samples, nbytes, "xxh3_64", digest))

    def _publish_index(self, data: bytes) -> None:
        final = store.join(self._root, INDEX_NAME)
        local = store.local_path(self._fs, final)
        if self._remote:
            store.write_bytes(self._fs, final, data)  # one put: published whole, atomically
        elif not local:
            self._fs.pipe_file(
                final, data
            )  # one put: object stores publish whole objects atomically
        else:
            tmp = f"{local}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
            _fsync_dir(os.path.dirname(local))
        # Read it back through the public parser so a writer bug can never publish an unreadable index.
        read_index(self._fs, final, f"{self._url}/{INDEX_NAME}")

    def _remove_stale_shards(self, index: DatasetIndex) -> None:
        keep = {s.name for s in index.shards}
        paths = (
            store.listdir(self._fs, self._root)
            if self._remote
            else self._fs.ls(self._root, detail=False)
        )
        for path in paths:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if _SHARD_FILE_RE.match(name) and name not in keep:
                if self._remote:
                    store.remove(self._fs, path)
                else:
                    self._fs.rm_file(path)


def _remove_local(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

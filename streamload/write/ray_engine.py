"""Writing streamload datasets from Ray Data: `ShardDatasink` and `convert` (the ``ray`` extra;
public as ``streamload.ray``).

::

    import ray, streamload.ray
    ds = ray.data.read_parquet("s3://corpus/").map_batches(tokenize)
    ds.write_datasink(streamload.ray.ShardDatasink("s3://bucket/ds", shard_size="256MB"))

Each Ray write task runs the engine-neutral write core: its blocks go through a
``columns.BatchEncoder`` into a ``staging.ShardStream`` that stages shards in the dataset root
under names unique to the task attempt, ``shard-<task>-<k>-<attempt>.<ext>``, and the task
returns their metadata. The completion hook (``on_write_complete``, on the driver) makes the one
``commit``: it validates every task's metadata, writes index.json (the commit point) and deletes
every staged file no index references. The failure hook leaves no index: it deletes this job's
staged files and writes nothing.

Retries never duplicate a sample. An attempt that fails (a worker crash, which Ray retries, or
an exception with ``retry_exceptions`` set) returns nothing, so its staged shards are referenced
by no index and deleted at commit; only the attempt whose result Ray hands to the completion
hook counts, one per task index (were two results to name one task, the first wins and the
other's files are deleted). An attempt still running after the commit (a zombie) can only leave
an unreferenced file behind, which the next commit at that URL deletes.

Order: shards are ordered by (task index, position in the task), so the same input split into
the same tasks gives the same dataset. Ray numbers tasks in the order their input arrives, which
follows the input's order only with ``DataContext.execution_options.preserve_order = True``
(`convert` sets it for its job).

Ray is imported only here (and by ``streamload.ray``, which re-exports this module's names):
``import streamload`` never imports it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

try:
    import ray
    import ray.data
    from ray.data.block import BlockAccessor
    from ray.data.datasource.datasink import Datasink
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("streamload.ray needs Ray Data: pip install 'streamload[ray]'") from exc

from streamload import config
from streamload.errors import ConfigError, FormatError
from streamload.format.index import INDEX_NAME, DatasetIndex
from streamload.format.schema import Schema, schema_from_json
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy
from streamload.write import commit, sources
from streamload.write.columns import BatchEncoder
from streamload.write.staging import ShardStream, StagedShard, shard_settings

__all__ = ["ShardDatasink", "TaskShards", "convert"]


@dataclass(frozen=True)
class TaskShards:
    """What one write task returns to the completion hook: its shards and schema."""

    task: int
    schema: dict[str, Any] | None
    shards: tuple[StagedShard, ...]


class ShardDatasink(Datasink):
    """A Ray Data sink that writes a streamload dataset with one atomic commit.

    Example::

        ds.write_datasink(ShardDatasink("s3://bucket/ds", format="arrow", shard_size="256MB"))

    After ``write_datasink`` returns, ``sink.index`` is the committed index.
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
    ) -> None:
        """Describe the dataset to write (nothing is touched before the job starts).

        Args: as ``streamload.ShardWriter``: ``url`` the dataset root, ``format`` ``"arrow"``
            or ``"lmdb"``, ``shard_size`` (None: the configured default, resolved here on the
            driver), ``compression``, ``schema`` (None: mapped from the blocks' Arrow schema as
            ``convert`` maps a source's), ``storage_options``, ``overwrite``, ``metadata``,
            ``mode`` (``"create"`` or ``"append"``).

        Raises:
            ConfigError: bad format, shard_size, compression or mode.
            FormatError: bad schema.
        """
        cfg = config.load()  # an entry point: settings resolved once, on the driver
        self._policy = RetryPolicy.from_config(cfg)  # travels to the tasks with the sink
        self._format, self._shard_size, self._compression = shard_settings(
            format,
            cfg.shard_size if shard_size is None else shard_size,
            compression,
            "ShardDatasink",
        )
        self._url = os.fspath(url)
        self._storage_options = dict(storage_options or {})
        self._schema_json = (
            None
            if schema is None
            else schema_from_json(schema, "ShardDatasink(schema=...)").to_json()
        )
        self._overwrite = overwrite
        self._metadata = dict(metadata) if metadata else None
        self._mode = commit.check_mode(mode, "ShardDatasink")
        self._started = False
        self._base: DatasetIndex | None = None
        self.index: DatasetIndex | None = None

    # -- driver: job start ---------------------------------------------------------------------

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """Check the destination: refuse it, clear it for overwrite, or read the version to
        append to (whose schema every task then checks its blocks against). ``schema`` (the
        first input bundle's, which after operator fusion may be an upstream stage's) is unused."""
        fs, root = store.resolve(self._url, self._storage_options, self._policy)
        self._base = commit.prepare(fs, root, self._url, self._mode, self._overwrite)
        self._started = True

    def _expected_schema(self) -> Schema | None:
        if self._base is not None:
            return self._base.schema
        if self._schema_json is not None:
            return schema_from_json(self._schema_json, "ShardDatasink(schema=...)")
        return None

    # -- write tasks ---------------------------------------------------------------------------

    def write(self, blocks: Iterable[Any], ctx: Any) -> TaskShards:
        """Stage this task's blocks as shards; return their metadata (runs in a Ray task)."""
        fs, root = store.resolve(self._url, self._storage_options, self._policy)
        task = int(ctx.task_idx)
        attempt = secrets.token_hex(4)  # a fresh name space for every attempt of this task
        ext = self._format
        encoder: BatchEncoder | None = None
        stream: ShardStream | None = None
        want = self._expected_schema()
        try:
            for block in blocks:
                table = _plain_table(BlockAccessor.for_block(block).to_arrow())
                if encoder is None or not table.schema.equals(encoder.source_schema):
                    encoder = BatchEncoder(table.schema)
                    want = want if want is not None else encoder.schema
                    if encoder.schema != want:
                        raise FormatError(
                            f"ShardDatasink({self._url!r}) task {task}: "
                            + commit.schema_difference(
                                want, encoder.schema, "the dataset", "a block"
                            )
                        )
                assert want is not None  # set with the encoder; narrows the type for mypy
                if stream is None:
                    stream = ShardStream(  # the first block: its schema is the stream's
                        fs,
                        root,
                        self._format,
                        want,
                        self._shard_size,
                        self._compression,
                        lambda k: f"shard-{task:05d}-{k:05d}-{attempt}.{ext}",
                        task=task,
                    )
                for batch in table.to_batches():
                    encoder.write(stream, batch)
            staged = stream.finish() if stream is not None else []
        except BaseException:
            if stream is not None:
                stream.abort()
            raise
        schema = want.to_json() if want is not None else None
        return TaskShards(task, schema, tuple(staged))

    # -- driver: job end -----------------------------------------------------------------------

    def on_write_complete(self, write_result: Any) -> None:
        """Commit every task's staged shards as one new index.json (``commit.commit``)."""
        returns = getattr(write_result, "write_returns", write_result)
        if not self._started:  # no input bundle ever arrived (an empty dataset)
            self.on_write_start(None)
        first: dict[int, TaskShards] = {}
        for result in returns:
            if isinstance(result, TaskShards):
                first.setdefault(result.task, result)
        shards = [s for r in first.values() for s in r.shards]
        schema = self._expected_schema()
        if schema is None:
            found = next((r.schema for r in sorted(first.values(), key=_task) if r.schema), None)
            schema = schema_from_json(found, self._url) if found is not None else None
        fs, root = store.resolve(self._url, self._storage_options, self._policy)
        self.index = commit.commit(
            fs,
            root,
            self._url,
            format=self._format,
            shards=shards,
            schema=schema,
            metadata=self._metadata,
            base=self._base,
            overwrite=self._overwrite,
        )

    def on_write_failed(self, error: Exception) -> None:
        """Leave no index: delete the staged files no index.json references."""
        try:
            fs, root = store.resolve(self._url, self._storage_options, self._policy)
        except OSError:
            return
        commit.discard(fs, root, self._url)

    def get_name(self) -> str:
        """The name Ray shows for the write tasks."""
        return "StreamloadShards"


def _task(result: TaskShards) -> int:
    return result.task


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    format: str = "arrow",
    shard_size: int | str | None = None,
    compression: str | None = None,
    source_format: str | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    mode: str = "create",
    concurrency: int | None = None,
    part_bytes: int = 64 * 2**20,
    batch_rows: int = sources.BATCH_ROWS,
) -> DatasetIndex:
    """``streamload.convert`` on Ray Data: the source is cut into parts (Parquet row-group runs of
    about ``part_bytes``, or whole files: ``sources.split_source``), each Ray task reads one part
    with streamload's own readers and writes its shards through `ShardDatasink`, and one commit
    publishes them in part order. Uses the running Ray instance (``ray.init`` it for a cluster;
    else Ray starts a local one).

    Args: as ``streamload.convert``, plus ``concurrency`` (most tasks at once; None lets Ray
        decide), ``part_bytes`` and ``batch_rows`` (rows per record batch read).

    Returns:
        The committed index.

    Raises:
        FormatError: a source that is not file-based (image folders, LMDB environments: convert
            those with engine="local"), or as ``streamload.convert``.
        StoreError, ConfigError: as ``streamload.convert``.
    """
    text = os.fspath(src)
    policy = RetryPolicy.from_config(config.load())
    fs, root = store.resolve(text, storage_options, policy)
    dst_fs, dst_root = store.resolve(dst, dst_storage_options, policy)
    if type(fs) is type(dst_fs) and root == dst_root:
        raise ConfigError(f"convert: source and destination are the same place ({os.fspath(dst)})")
    kind = source_format or sources.detect_kind(fs, root, text)
    if kind not in ("parquet", "jsonl", "csv", "arrow", "hf"):
        raise ConfigError(
            f"convert(engine='ray') reads file-based sources (Parquet, JSON lines, CSV, Arrow,"
            f" Hugging Face) in parallel parts; {text} is {kind}: convert it with engine='local'"
        )
    kind, schema, parts = sources.split_source(text, kind, storage_options, part_bytes, policy)
    BatchEncoder(schema)  # an unsupported column fails here, before any task starts
    options = dict(storage_options or {})

    def read(batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        for i in batch["part"]:
            for piece in sources.read_part(
                text, parts[int(i)], schema, options, batch_rows, policy
            ):
                yield pa.Table.from_batches([piece])

    exists = (
        store.exists(dst_fs, store.join(dst_root, INDEX_NAME))
        if store.is_remote(dst_fs)
        else dst_fs.exists(store.join(dst_root, INDEX_NAME))
    )
    sink = ShardDatasink(
        dst,
        format=format,
        shard_size=shard_size,
        compression=compression,
        storage_options=dst_storage_options,
        overwrite=overwrite or not exists,  # nothing complete to protect: clean up a failed run
        mode=mode,
    )
    context = ray.data.DataContext.get_current()
    preserve = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # task index follows the parts' order
    try:
        items = [{"part": i} for i in range(len(parts))]
        listed = ray.data.from_items(items, override_num_blocks=len(parts))
        listed.map_batches(read, batch_size=1, batch_format="numpy").write_datasink(
            sink, concurrency=concurrency
        )
    finally:
        context.execution_options.preserve_order = preserve
    assert sink.index is not None  # set by on_write_complete, or write_datasink raised
    return sink.index


# -- Ray's tensor columns ------------------------------------------------------------------------


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with Ray's tensor extension types as the nested lists ``convert`` maps."""
    return pa.schema([pa.field(f.name, _plain_type(f.type)) for f in schema])


def _plain_type(t: pa.DataType) -> pa.DataType:
    if not isinstance(t, pa.ExtensionType):
        return t
    shape = getattr(t, "shape", None)
    storage = t.storage_type
    value_type = storage.value_type if hasattr(storage, "value_type") else storage
    while hasattr(value_type, "value_type"):
        value_type = value_type.value_type
    if shape is None or any(d is None for d in shape):  # variable-shaped tensors
        ndim = int(getattr(t, "ndim", 1))
        out: pa.DataType = value_type
        for _ in range(ndim):
            out = pa.list_(out)
        return out
    out = value_type
    for d in reversed(shape):
        out = pa.list_(out, int(d))
    return out


def _plain_table(table: pa.Table) -> pa.Table:
    """Ray's tensor columns (numpy arrays a ``map_batches`` returned) as nested Arrow lists."""
    if not any(isinstance(f.type, pa.ExtensionType) for f in table.schema):
        return table
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if not isinstance(field.type, pa.ExtensionType):
            columns.append(column)
            continue
        target = _plain_type(field.type)
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype != object:  # one shape: one contiguous buffer
            flat: pa.Array = pa.array(np.ascontiguousarray(values).reshape(-1))
            for d in reversed(values.shape[1:]):
                flat = pa.FixedSizeListArray.from_arrays(flat, int(d))
            columns.append(flat.cast(target) if flat.type != target else flat)
        else:
            columns.append(pa.array([np.asarray(v).tolist() for v in values], type=target))
    return pa.table(columns, names=table.column_names)

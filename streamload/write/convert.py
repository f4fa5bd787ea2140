"""``convert``: turn Parquet, JSONL, CSV, Arrow, HF ``save_to_disk``, image folders and LMDB
environments into a streamload dataset (Arrow or LMDB shards) at any fsspec URL; a streamload
dataset (a directory with index.json) converts too, keeping its schema (re-shard, or Arrow <-> LMDB).

Flow: `open_source` yields bounded Arrow record batches; a `BatchEncoder` maps the source's
Arrow schema to streamload columns before any row is read (type mapping in
`streamload.write.columns`) and turns each batch into the shard layout with Arrow casts, which
feeds the ``ShardWriter``'s shard stream (LMDB shards: per-row samples). Memory is bounded by one
batch whatever the source's size. ``engine="ray"`` runs the same encoder in Ray Data write tasks
(`streamload.write.ray_engine`).

``transform=fn`` maps each source row (a dict of the values above) to the sample to write, or to
None to drop it (e.g. a tokenizer turning ``{"text": ...}`` into ``{"tokens": np.ndarray}``); rows
go through it chunk by chunk (``batch_rows``), so memory stays bounded by one chunk. The written
schema is then inferred from the first sample the transform returns (``shapes=`` declares
variable dims; a 1-d array whose length changes becomes variable by itself, see ``ShardWriter``).

Atomicity: the ShardWriter commits index.json last (``commit``), so an interrupted conversion
leaves no dataset that looks complete. Re-running the same conversion finishes the job: a
destination without index.json is overwritten (its leftover shards and temp files are cleaned
up); a destination holding a complete dataset is refused unless ``overwrite=True``, or appended
to with ``mode="append"`` (a new index version, the old one kept; ``commit`` module docstring).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from streamload import config
from streamload.errors import ConfigError, FormatError
from streamload.format.index import INDEX_NAME, DatasetIndex
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy
from streamload.write.columns import BatchEncoder, column_plan
from streamload.write.sources import BATCH_ROWS, open_source
from streamload.write.writer import ShardWriter

__all__ = ["BatchEncoder", "column_plan", "convert"]


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
    batch_rows: int = BATCH_ROWS,
    progress: bool | None = None,
    mode: str = "create",
    engine: str = "local",
    ray_options: dict[str, Any] | None = None,
    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    shapes: dict[str, list[int | None]] | None = None,
) -> DatasetIndex:
    """Convert a source dataset into streamload shards.

    Args:
        src: the source: a file or directory, local path or fsspec URL (kinds in `streamload.write.sources.KINDS`).
        dst: the destination dataset directory (local path or fsspec URL).
        format: ``"arrow"`` or ``"lmdb"`` shards.
        shard_size: target shard size (int bytes or ``"256MB"``); None takes the configured one.
        compression: Arrow compression (None, ``"zstd"``, ``"lz4"``).
        source_format: the source kind (``"parquet"``, ``"jsonl"``, ``"csv"``, ``"arrow"``,
            ``"hf"``, ``"lmdb"``, ``"imagefolder"``, or ``"streamload"`` for a streamload
            dataset: a directory with index.json, to change its format or shard size); None
            recognises it.
        overwrite: replace a complete dataset at ``dst``.
        storage_options: fsspec options of the source.
        dst_storage_options: fsspec options of the destination.
        batch_rows: most rows read from the source at once (bounds memory).
        progress: show a progress bar; None follows the ``progress`` setting.
        mode: ``"create"`` a dataset, or ``"append"`` the source's rows to the one at ``dst``
            (same schema; a new index version, ``ShardWriter`` docstring).
        engine: ``"local"`` (this process) or ``"ray"``: Ray Data reads the source and
            writes shards in parallel tasks, one commit at the end (``streamload.ray.convert``;
            file-based sources; needs the ``ray`` extra).
        ray_options: with ``engine="ray"``: keyword arguments of ``streamload.ray.convert``
            (e.g. ``{"concurrency": 8}``).
        transform: ``fn(row) -> sample | None``, applied to every source row before it is
            written (None drops the row); the schema is then inferred from its output.
        shapes: variable dims of the transform's array outputs, e.g. ``{"tokens": [None]}``
            (only with ``transform``; without one the source's schema is kept).

    Returns:
        The index of the written dataset.

    Raises:
        FormatError: an unrecognised source, a column type or null value streamload cannot
            store (names the column), or unreadable input.
        StoreError: ``dst`` holds a complete dataset and ``overwrite`` is False.
        ConfigError: bad format, shard_size, compression, mode or engine; ``src`` is ``dst``;
            ``shapes`` without ``transform``; ``transform`` with ``engine="ray"``.
        FormatError: also: the transform returned something other than a sample dict or None,
            or dropped every row.
    """
    from streamload.progress import progress as progress_bar

    if shapes is not None and transform is None:
        raise ConfigError(
            "convert: shapes= applies to the samples a transform= returns; without a transform"
            " the source's own schema is kept"
        )
    if transform is not None and engine == "ray":
        raise ConfigError(
            "convert: transform= runs in this process (engine='local'); on Ray, transform the"
            " rows with ray.data's map_batches and write them with"
            " streamload.ray.ShardDatasink"
        )
    if engine == "ray":
        from streamload.write.ray_engine import convert as ray_convert

        return ray_convert(
            src,
            dst,
            format=format,
            shard_size=shard_size,
            compression=compression,
            source_format=source_format,
            overwrite=overwrite,
            storage_options=storage_options,
            dst_storage_options=dst_storage_options,
            mode=mode,
            **(ray_options or {}),
        )
    if engine != "local":
        raise ConfigError(f"convert engine: unknown engine {engine!r}; use 'local' or 'ray'")

    cfg = config.load()  # an entry point: settings resolved once, here
    policy = RetryPolicy.from_config(cfg)
    if shard_size is None:
        shard_size = cfg.shard_size
    fs, root = store.resolve(dst, dst_storage_options, policy)
    src_fs, src_root = store.resolve(src, storage_options, policy)
    if type(src_fs) is type(fs) and src_root == root:
        raise ConfigError(f"convert: source and destination are the same place ({os.fspath(dst)})")
    encoder: BatchEncoder | None = None
    if source_format == "streamload" or (
        source_format is None and src_fs.exists(store.join(src_root, INDEX_NAME))
    ):
        schema, metadata, num_rows, chunks = _dataset_chunks(src, storage_options, batch_rows)
    else:
        source = open_source(
            os.fspath(src), source_format, storage_options, batch_rows, policy=policy
        )
        encoder = BatchEncoder(source.schema)
        schema, metadata, num_rows = encoder.schema.to_json(), source.metadata, source.num_rows
    # Nothing complete to protect without index.json: overwrite cleans up an interrupted run.
    replace = overwrite or not fs.exists(store.join(root, INDEX_NAME))
    bar = progress_bar(
        total=num_rows, desc="convert", unit="rows", mode=cfg.progress, enabled=progress
    )
    with (
        bar,
        ShardWriter(
            dst,
            format=format,
            shard_size=shard_size,
            compression=compression,
            # With a transform, the schema is what the transform returns: inferred.
            schema=schema if transform is None else None,
            storage_options=dst_storage_options,
            overwrite=replace,
            metadata=metadata,
            mode=mode,
            shapes=shapes,
        ) as writer,
    ):
        if encoder is not None and transform is None:
            for batch in source.batches:
                encoder.write(writer.stream, batch)
                bar.update(batch.num_rows)
        else:
            rows = (
                _rows(encoder, source.batches)
                if encoder is not None
                else _chunk_rows(schema, chunks)
            )
            _write_rows(writer, rows, transform, bar, os.fspath(src))
    return writer.index


def _chunk_rows(
    schema: dict[str, Any], chunks: Iterator[list[list[Any]]]
) -> Iterator[list[dict[str, Any]]]:
    """Per-row samples of each chunk of column value lists."""
    names = [column["name"] for column in schema["columns"]]
    for columns in chunks:
        yield [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _rows(encoder: BatchEncoder, batches: Iterator[Any]) -> Iterator[list[dict[str, Any]]]:
    """Per-row samples of each source record batch."""
    for batch in batches:
        yield list(encoder.rows(batch))


def _write_rows(
    writer: ShardWriter,
    chunks: Iterator[list[dict[str, Any]]],
    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None,
    bar: Any,
    src: str,
) -> None:
    """Write each chunk's rows (through ``transform``, which may drop a row) one chunk at a time."""
    row = 0
    for samples in chunks:
        for sample in samples:
            out: Any = sample
            if transform is not None:
                out = transform(sample)
                if out is not None and not isinstance(out, dict):
                    raise FormatError(
                        f"convert: transform returned a {type(out).__name__} for source row"
                        f" {row}; it must return a sample dict, or None to drop the row"
                    )
            row += 1
            if out is not None:
                writer.write(out)
        bar.update(len(samples))
    if transform is not None and writer.schema is None:
        raise FormatError(
            f"convert: the transform dropped all {row} rows of {src}; nothing to write"
        )


# (schema JSON, index metadata, total rows if known, per-chunk column value lists)
_Chunks = tuple[dict[str, Any], dict[str, Any] | None, int | None, Iterator[list[list[Any]]]]


def _dataset_chunks(
    src: str | os.PathLike[str], storage_options: dict[str, Any] | None, batch_rows: int
) -> _Chunks:
    """A streamload dataset (to change its format or shard size), read with ``get_batch``."""
    from streamload.dataset.streaming import StreamingDataset

    ds = StreamingDataset(src, storage_options=storage_options)
    columns = ds.schema.columns

    def chunks() -> Iterator[list[list[Any]]]:
        for start in range(0, len(ds), batch_rows):
            batch = ds.get_batch(np.arange(start, min(start + batch_rows, len(ds))))
            yield [
                batch[c.name].tolist()
                if c.kind in ("int", "float", "bool")
                else list(batch[c.name])
                for c in columns
            ]

    return ds.schema.to_json(), ds.index.metadata, len(ds), chunks()

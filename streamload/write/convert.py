"""``convert``: turn Parquet, JSONL, CSV, Arrow, HF ``save_to_disk``, image folders and LMDB
environments into a streamload dataset (Arrow or LMDB shards) at any fsspec URL; a streamload
dataset (a directory with index.json) converts too, keeping its schema (re-shard, or Arrow <-> LMDB).

Flow: ``sources.open_source`` yields bounded Arrow record batches; ``column_plan`` maps the
source's Arrow schema to streamload column kinds before any row is read; each batch's columns
become per-row values and go through ``ShardWriter``. Memory is bounded by one batch whatever the
source's size.

Arrow type -> schema kind: integers -> ``int`` (uint64 values above int64 are an error), floats
(16/32/64) -> ``float``, bool -> ``bool``, (large_/view) string -> ``str``, (large_/fixed_size_/
view) binary -> ``bytes``, dictionary -> its value type, (large_/fixed_size_) lists nested over a
numeric or bool type -> ``ndarray`` of that dtype, one dimension per list level (fixed_size_list
gives a fixed dim, list a variable one; inner variable levels must be rectangular per row).
Anything else (timestamps, decimals, structs, maps, nulls...) is a ``FormatError`` naming the
column and its type; so are null values (streamload columns are not nullable).

Atomicity: the ShardWriter writes index.json last, so an interrupted conversion leaves no dataset
that looks complete. Re-running the same conversion finishes the job: a destination without
index.json is overwritten (its leftover shards and temp files are cleaned up); a destination
holding a complete dataset is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamload import config
from streamload.errors import ConfigError, FormatError
from streamload.format.index import INDEX_NAME, DatasetIndex, load_index
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy
from streamload.write.sources import BATCH_ROWS, open_source
from streamload.write.writer import ShardWriter

_INT64_MAX = 2**63 - 1
ToRows = Callable[[pa.Array], list[Any]]


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

    Returns:
        The index of the written dataset.

    Raises:
        FormatError: an unrecognised source, a column type or null value streamload cannot
            store (names the column), or unreadable input.
        StoreError: ``dst`` holds a complete dataset and ``overwrite`` is False.
        ConfigError: bad format, shard_size or compression; ``src`` is ``dst``.
    """
    from streamload.progress import progress as progress_bar

    cfg = config.load()  # an entry point: settings resolved once, here
    policy = RetryPolicy.from_config(cfg)
    if shard_size is None:
        shard_size = cfg.shard_size
    fs, root = store.resolve(dst, dst_storage_options, policy)
    src_fs, src_root = store.resolve(src, storage_options, policy)
    if type(src_fs) is type(fs) and src_root == root:
        raise ConfigError(f"convert: source and destination are the same place ({os.fspath(dst)})")
    if source_format == "streamload" or (
        source_format is None and src_fs.exists(store.join(src_root, INDEX_NAME))
    ):
        schema, metadata, num_rows, chunks = _dataset_chunks(src, storage_options, batch_rows)
    else:
        schema, metadata, num_rows, chunks = _source_chunks(
            src, source_format, storage_options, batch_rows, policy
        )
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
            schema=schema,
            storage_options=dst_storage_options,
            overwrite=replace,
            metadata=metadata,
        ) as writer,
    ):
        names = [column["name"] for column in schema["columns"]]
        for columns in chunks:
            count = 0
            for values in zip(*columns, strict=True):
                writer.write(dict(zip(names, values, strict=True)))
                count += 1
            bar.update(count)
    return load_index(dst, dst_storage_options)


# (schema JSON, index metadata, total rows if known, per-chunk column value lists)
_Chunks = tuple[dict[str, Any], dict[str, Any] | None, int | None, Iterator[list[list[Any]]]]


def _source_chunks(
    src: str | os.PathLike[str],
    source_format: str | None,
    storage_options: dict[str, Any] | None,
    batch_rows: int,
    policy: RetryPolicy,
) -> _Chunks:
    """A foreign source (`open_source`), its Arrow types mapped by `column_plan`."""
    source = open_source(os.fspath(src), source_format, storage_options, batch_rows, policy=policy)
    plan = column_plan(source.schema)

    def chunks() -> Iterator[list[list[Any]]]:
        for batch in source.batches:
            yield [to_rows(batch.column(i)) for i, (_, to_rows) in enumerate(plan)]

    schema = {"columns": [column for column, _ in plan]}
    return schema, source.metadata, source.num_rows, chunks()


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


def column_plan(schema: pa.Schema) -> list[tuple[dict[str, Any], ToRows]]:
    """The streamload column (JSON form) and row converter of every field of an Arrow schema.

    Raises:
        FormatError: a field's type has no streamload kind (names the column and type).
    """
    return [_column(field.name, field.type) for field in schema]


def _column(name: str, arrow_type: pa.DataType) -> tuple[dict[str, Any], ToRows]:
    t = arrow_type
    if pa.types.is_dictionary(t):
        column, inner = _column(name, t.value_type)
        return column, lambda arr: inner(_checked(name, arr).dictionary_decode())
    if pa.types.is_boolean(t):
        return {"name": name, "kind": "bool"}, lambda arr: _checked(name, arr).to_pylist()
    if pa.types.is_integer(t):
        return {"name": name, "kind": "int"}, lambda arr: _ints(name, arr)
    if pa.types.is_floating(t):
        return {"name": name, "kind": "float"}, lambda arr: _floats(name, arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return {"name": name, "kind": "str"}, lambda arr: _checked(name, arr).to_pylist()
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    ):
        return {"name": name, "kind": "bytes"}, lambda arr: _checked(name, arr).to_pylist()
    if _is_list(t):
        dims: list[int | None] = []
        leaf = t
        while _is_list(leaf):
            dims.append(leaf.list_size if pa.types.is_fixed_size_list(leaf) else None)
            leaf = leaf.value_type
        if not (
            pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or pa.types.is_boolean(leaf)
        ):
            raise FormatError(
                f"convert: column {name!r} has type {arrow_type}: lists must hold numbers or bools"
            )
        dtype = np.dtype(leaf.to_pandas_dtype()).name
        column = {"name": name, "kind": "ndarray", "dtype": dtype, "shape": dims}
        return column, lambda arr: _arrays(name, arr, dims, np.dtype(dtype))
    raise FormatError(
        f"convert: column {name!r} has type {arrow_type}, which streamload cannot store"
        " (supported: integers, floats, bool, strings, binary, lists of numbers)"
    )


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _checked(name: str, arr: pa.Array) -> pa.Array:
    if arr.null_count:
        raise FormatError(
            f"convert: column {name!r} holds {arr.null_count} null value(s); streamload columns"
            " are not nullable (fill or drop them before converting)"
        )
    return arr


def _ints(name: str, arr: pa.Array) -> list[int]:
    arr = _checked(name, arr)
    if pa.types.is_uint64(arr.type) and len(arr) and pc.max(arr).as_py() > _INT64_MAX:
        raise FormatError(f"convert: column {name!r} holds uint64 values above int64's range")
    return arr.to_numpy(zero_copy_only=False).tolist()


def _floats(name: str, arr: pa.Array) -> list[float]:
    values = _checked(name, arr).to_numpy(zero_copy_only=False)
    return values.astype(np.float64, copy=False).tolist()


def _arrays(name: str, arr: pa.Array, dims: list[int | None], dtype: np.dtype[Any]) -> list[Any]:
    """Per-row numpy arrays of a list column (one numpy pass when only the first dim varies)."""
    _checked(name, arr)
    n = len(arr)
    if all(d is not None for d in dims) or (dims[0] is None and None not in dims[1:]):
        lengths = (
            np.full(n, dims[0], np.int64)
            if dims[0] is not None
            else pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        )
        values = arr
        for _ in dims:
            values = _checked(name, values.flatten())
        inner = tuple(int(d) for d in dims[1:])  # type: ignore[arg-type]
        flat = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        flat = flat.reshape((-1, *inner))
        bounds = np.cumsum(lengths)[:-1]
        return list(np.split(flat, bounds)) if n else []
    rows = []
    for i, row in enumerate(arr.to_pylist()):
        try:
            rows.append(np.asarray(row, dtype=dtype))
        except ValueError as exc:
            raise FormatError(f"convert: column {name!r} row {i} is ragged: {exc}") from None
        if rows[-1].ndim != len(dims):
            raise FormatError(f"convert: column {name!r} row {i} is ragged (not {len(dims)}-D)")
    return rows

"""Arrow columns -> streamload columns: the type mapping every writer of Arrow data shares.

`column_plan` maps each field of a source's Arrow schema to a streamload column (its JSON form)
and a row converter, before any row is read. `BatchEncoder` applies it to record batches: `rows`
gives samples (dicts), `layout` gives the batch in the shard layout (``Schema.arrow_schema``)
column by column with Arrow casts -- no per-row Python objects -- for scalars, strings, binaries
and arrays whose only variable dimension is the first (rows for the rest), and `write` feeds a
``ShardStream`` (Arrow shards take layout batches, LMDB shards take samples).

Arrow type -> schema kind: integers -> ``int`` (uint64 values above int64 are an error), floats
(16/32/64) -> ``float``, bool -> ``bool``, (large_/view) string -> ``str``, (large_/fixed_size_/
view) binary -> ``bytes``, dictionary -> its value type, (large_/fixed_size_) lists nested over a
numeric or bool type -> ``ndarray`` of that dtype, one dimension per list level (fixed_size_list
gives a fixed dim, list a variable one; inner variable levels must be rectangular per row).
Anything else (timestamps, decimals, structs, maps, nulls...) is a ``FormatError`` naming the
column and its type; so are null values (streamload columns are not nullable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamload.errors import FormatError
from streamload.format.schema import Column, Schema, schema_from_json
from streamload.shards.arrow.writer import to_arrow
from streamload.write.staging import ShardStream

_INT64_MAX = 2**63 - 1
ToRows = Callable[[pa.Array], list[Any]]


class BatchEncoder:
    """Record batches of one source Arrow schema, as streamload samples or shard-layout batches.

    ``schema`` is the streamload schema (``column_plan``); `write` puts a batch into a
    ``ShardStream``: Arrow shards take `layout` batches, LMDB shards take `rows`.
    """

    def __init__(self, source_schema: pa.Schema) -> None:
        """Map ``source_schema`` (FormatError naming a column streamload cannot store)."""
        self.source_schema = source_schema
        self._plan = column_plan(source_schema)
        self.schema: Schema = schema_from_json(
            {"columns": [column for column, _ in self._plan]}, "convert"
        )
        self._arrow_schema = self.schema.arrow_schema()

    def rows(self, batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
        """The batch's rows as samples (dicts in schema order)."""
        names = self.schema.names
        columns = [to_rows(batch.column(i)) for i, (_, to_rows) in enumerate(self._plan)]
        for values in zip(*columns, strict=True):
            yield dict(zip(names, values, strict=True))

    def layout(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch in the shard layout of ``schema`` (``Schema.arrow_schema``).

        Raises:
            FormatError: null values, uint64 values past int64, ragged arrays (names the column).
        """
        arrays = [
            _layout_column(col, batch.column(i), to_rows, field.type)
            for i, (col, (_, to_rows), field) in enumerate(
                zip(self.schema.columns, self._plan, self._arrow_schema, strict=True)
            )
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self._arrow_schema)

    def write(self, stream: ShardStream | Any, batch: pa.RecordBatch) -> None:
        """Add the batch's rows to ``stream`` (a ShardStream)."""
        if stream.format == "arrow":
            stream.add_batch(self.layout(batch))
        else:
            for sample in self.rows(batch):
                stream.add(sample)


def _layout_column(col: Column, arr: pa.Array, to_rows: ToRows, target: pa.DataType) -> pa.Array:
    """One source column in the shard layout: Arrow casts where they are exact, else rows."""
    name = col.name
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = _checked(name, arr).dictionary_decode()
    if col.kind != "ndarray":
        _checked(name, arr)
        if arr.type == target:
            return arr
        try:
            return arr.cast(target)  # safe cast: an overflow or lossy value raises
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return to_arrow(col, to_rows(arr), target)  # names the column and value at fault
    dims = col.shape or ()
    if not dims or None in dims[1:]:
        return to_arrow(col, to_rows(arr), target)
    n = len(arr)
    values = _checked(name, arr)
    lengths = (
        pc.list_value_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
        if dims[0] is None
        else None
    )
    for _ in dims:
        values = _checked(name, values.flatten())
    prim = pa.from_numpy_dtype(np.dtype(col.dtype))
    if values.type != prim:
        values = values.cast(prim)
    inner = [int(d) for d in dims[1:]]  # type: ignore[arg-type]
    if not col.uses_var_layout:
        return pa.FixedSizeListArray.from_arrays(values, math.prod(dims))  # type: ignore[arg-type]
    if lengths is None:
        lengths = np.full(n, dims[0], np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths * math.prod(inner), out=offsets[1:])
    shapes = np.empty((n, len(dims)), np.int64)
    shapes[:, 0] = lengths
    shapes[:, 1:] = inner
    data = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    shape = pa.FixedSizeListArray.from_arrays(pa.array(shapes.reshape(-1)), len(dims))
    return pa.StructArray.from_arrays([data, shape], fields=list(target))


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

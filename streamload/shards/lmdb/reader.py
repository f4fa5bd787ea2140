"""Reading LMDB shards (written by streamload) and existing LMDB environments (written by anyone).

``LmdbShardReader`` reads one ``shard-NNNNN.lmdb``: row ``i`` is key ``row_key(i)``, its value a
`streamload.shards.lmdb.codec` record. Opening checks, before LMDB maps anything: file size equals index.json's
``bytes``, the meta pages are sane and inside the file (``lmdb_file.check_file``: a truncated
file is a ``FormatError``, not a SIGBUS), and LMDB's entry count equals ``num_samples``. Every
decoded value is checked against the schema. ``get``/``take`` return exactly what
``ArrowShardReader.get``/``take`` return for the same data (see `streamload.shards.arrow.reader`), so
``StreamingDataset.get_batch``, iteration and the loader's columnar path do not care which
format a dataset uses. Values decode zero-copy out of the map; ``take`` then copies each row
once into the batch's own arrays (results never alias the map, so they stay valid and writable).

``LmdbEnvReader`` reads an LMDB environment streamload did not write, as rows
``{"key": bytes, "value": bytes}`` in key order. Position ``i`` is the ``i``-th key: the keys
(only the keys) are collected once by a cursor walk into one bytes blob plus an offsets array,
so random access costs one B-tree lookup and memory grows with the total key bytes only.
"""

from __future__ import annotations

import array
import os
from typing import Any

import lmdb
import numpy as np

from streamload.errors import FormatError
from streamload.format.schema import Column, Schema, schema_from_json
from streamload.shards.lmdb.codec import (
    ENTRY_BYTES,
    HEADER_BYTES,
    FixedPrefix,
    decode,
    fixed_prefix,
    layout,
    row_key,
)
from streamload.shards.lmdb.file import LmdbFile

ENV_SCHEMA = schema_from_json(
    {"columns": [{"name": "key", "kind": "bytes"}, {"name": "value", "kind": "bytes"}]},
    "LMDB environment",
)


class LmdbShardReader:
    """One streamload LMDB shard opened for reading (see the module docstring)."""

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | Any,
        schema: Schema,
        shard_name: str,
        expected_bytes: int,
        num_samples: int | None = None,
        columns: list[str] | tuple[str, ...] | None = None,
        marks_dir: str | None = None,
    ) -> None:
        """Check and open a shard.

        Args:
            path_or_file: a local path, or a binary file object (copied to a local temp file).
            schema: the dataset schema from index.json.
            shard_name: the shard's name, for error messages.
            expected_bytes: the size index.json records.
            num_samples: the row count index.json records (None skips the check).
            columns: the columns to return (None: all), kept in schema order.
            marks_dir: where marks of files whose LMDB tree passed its check are kept
                (``lmdb_file.check_tree_once``).

        Raises:
            FormatError: wrong size, not an LMDB file, truncated, a corrupt tree, or a row count
                mismatch.
        """
        self.name = shard_name
        self._schema = schema
        self._selected = schema.select(columns)
        self._positions = [schema.names.index(n) for n in self._selected.names]
        self._layout = layout(schema)
        # Bulk path: selected fixed-size columns in one gather, the rest decoded per row.
        bulk: FixedPrefix | None = fixed_prefix(schema)
        bulk_cols = {c for c, _, _ in bulk.columns} if bulk else set()
        selected = set(self._positions)
        self._bulk_wanted = {
            c for c in bulk_cols & selected if not schema.columns[c].uses_var_layout
        }
        # str/bytes payloads are sliced per row using the entries read from the stacked headers.
        self._bulk_strings = [
            c for c in sorted(selected) if schema.columns[c].kind in ("str", "bytes")
        ]
        self._bulk = bulk if self._bulk_wanted or self._bulk_strings else None
        rest = [
            c in selected and c not in self._bulk_wanted and c not in self._bulk_strings
            for c in range(len(schema.columns))
        ]
        self._rest: tuple[bool, ...] | None = tuple(rest) if any(rest) else None
        self._file = LmdbFile(path_or_file, f"shard {shard_name}", marks_dir)
        if self._file.size != expected_bytes:
            raise FormatError(
                f"shard {shard_name}: size is {self._file.size} bytes, index.json says"
                f" {expected_bytes} (truncated or replaced)"
            )
        self.num_rows = self._file.entries()
        if num_samples is not None and num_samples != self.num_rows:
            raise FormatError(
                f"shard {shard_name}: holds {self.num_rows} samples, index.json says {num_samples}"
            )

    def __len__(self) -> int:
        return self.num_rows

    @property
    def columns(self) -> tuple[str, ...]:
        """The returned columns, in schema order."""
        return self._selected.names

    def _row(self, txn: Any, i: int) -> list[Any]:
        """Row ``i``'s selected columns as zero-copy views (valid until the next lookup)."""
        try:
            value = txn.get(row_key(i))
        except lmdb.Error as exc:
            raise FormatError(f"shard {self.name}: LMDB cannot read row {i}: {exc}") from exc
        if value is None:
            raise FormatError(f"shard {self.name}: row {i} is missing")
        try:
            values = decode(value, self._layout)
        except FormatError as exc:
            raise FormatError(f"shard {self.name} row {i}: {exc}") from None
        return [values[p] for p in self._positions]

    def get(self, i: int) -> dict[str, Any]:
        """One sample as python objects and writable numpy arrays (``ArrowShardReader.get``).

        Raises:
            IndexError: ``i`` is not in ``[0, len(self))``.
            FormatError: the row is missing or corrupt.
        """
        if not 0 <= i < self.num_rows:
            raise IndexError(f"shard {self.name}: row {i} out of range [0, {self.num_rows})")
        row = self._row(self._file.txn(), i)
        return {
            col.name: _own(col, value)
            for col, value in zip(self._selected.columns, row, strict=True)
        }

    def take(self, rows: np.ndarray, strings: str = "list") -> dict[str, Any]:
        """Many rows at once, columnar (``ArrowShardReader.take`` conventions). str/bytes
        columns are always lists (``strings`` is accepted for the reader protocol).

        Args:
            rows: int array of row numbers in this shard, any order, duplicates allowed.

        Raises:
            IndexError: a row is out of range.
            FormatError: a row is missing or corrupt.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(rows)
        if n and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"shard {self.name}: rows out of range [0, {self.num_rows})")
        if n >= _BULK_MIN_ROWS and self._bulk is not None:
            bulk = self._take_bulk(rows)
            if bulk is not None:
                return bulk
        cols = self._selected.columns
        out: list[Any] = [_batch_column(col, n) for col in cols]
        txn = self._file.txn()
        for j, i in enumerate(rows.tolist()):
            for c, value in enumerate(self._row(txn, i)):
                target = out[c]
                if isinstance(target, np.ndarray):
                    target[j] = value
                else:
                    target.append(_own(cols[c], value))
        return {col.name: values for col, values in zip(cols, out, strict=True)}

    def _take_bulk(self, rows: np.ndarray) -> dict[str, Any] | None:
        """``take`` in bulk: the rows' value prefixes are stacked and checked at once, fixed-size
        columns are gathered with one strided copy each, str/bytes are sliced per row at the
        offsets read from the stacked headers, and only variable-shape arrays are decoded row by
        row. None when any value is not as expected (the per-row path then reads the rows and
        reports exactly what is wrong)."""
        bulk = self._bulk
        assert bulk is not None  # checked by take; narrows the type for mypy
        txn = self._file.txn()
        n = len(rows)
        values = []
        try:
            for i in rows.tolist():
                value = txn.get(row_key(i))
                if value is None or len(value) < bulk.length:
                    return None
                values.append(value)
        except lmdb.Error:
            return None
        stacked = np.frombuffer(b"".join([v[: bulk.length] for v in values]), np.uint8).reshape(
            n, bulk.length
        )
        if not (stacked[:, bulk.check_at] == bulk.check_bytes).all():
            return None
        out: dict[str, Any] = {}
        for c, offset, nbytes in bulk.columns:
            if c not in self._bulk_wanted:
                continue
            col = self._schema.columns[c]
            raw = np.ascontiguousarray(stacked[:, offset : offset + nbytes])
            if col.kind == "bool":
                out[col.name] = raw[:, 0] != 0
            else:
                stored = _STORED_DTYPES[col.kind] if col.kind != "ndarray" else col.numpy_dtype
                arr = raw.view(stored.newbyteorder("<")).astype(col.numpy_dtype, copy=False)
                out[col.name] = arr.reshape((n, *col.row_shape))
        for c in self._bulk_strings:
            col = self._schema.columns[c]
            end = HEADER_BYTES + ENTRY_BYTES * (c + 1)
            entry = np.ascontiguousarray(stacked[:, end - 16 : end])  # offset, size
            spans = entry.view(np.dtype("<u8"))
            starts, sizes = spans[:, 0], spans[:, 1]
            lengths = np.fromiter((len(v) for v in values), np.uint64, n)
            if not ((starts <= lengths) & (sizes <= lengths - np.minimum(starts, lengths))).all():
                return None
            ends = (starts + sizes).tolist()
            if col.kind == "bytes":
                out[col.name] = [
                    bytes(v[a:b]) for v, a, b in zip(values, starts.tolist(), ends, strict=True)
                ]
                continue
            try:
                out[col.name] = [
                    str(v[a:b], "utf-8")
                    for v, a, b in zip(values, starts.tolist(), ends, strict=True)
                ]
            except UnicodeDecodeError:
                return None
        if self._rest is not None:
            rest_cols = [c for c in self._selected.columns if c.name not in out]
            lists: list[list[Any]] = [[] for _ in rest_cols]
            positions = [self._schema.names.index(c.name) for c in rest_cols]
            for i, value in zip(rows.tolist(), values, strict=True):
                try:
                    decoded = decode(value, self._layout, self._rest)
                except FormatError as exc:
                    raise FormatError(f"shard {self.name} row {i}: {exc}") from None
                for target, p, col in zip(lists, positions, rest_cols, strict=True):
                    target.append(_own(col, decoded[p]))
            out.update({col.name: v for col, v in zip(rest_cols, lists, strict=True)})
        return {name: out[name] for name in self._selected.names}


_BULK_MIN_ROWS = 4
_STORED_DTYPES = {"int": np.dtype("int64"), "float": np.dtype("float64")}


def _batch_column(col: Column, n: int) -> Any:
    """An empty batch column: a list for per-row objects, else an array filled row by row."""
    if col.kind in ("str", "bytes") or col.uses_var_layout:
        return []
    return np.empty((n, *col.row_shape), dtype=col.numpy_dtype)


def _own(col: Column, value: Any) -> Any:
    """A decoded view as the caller's own object (copied out of the map)."""
    if col.kind == "bytes":
        return bytes(value)
    if col.kind == "ndarray":
        return value[()] if value.ndim == 0 else value.copy()
    return value


class LmdbEnvReader:
    """An LMDB environment streamload did not write, as ``{"key", "value"}`` rows (module docstring)."""

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | Any,
        name: str,
        expected_bytes: int | None = None,
        num_samples: int | None = None,
        columns: list[str] | tuple[str, ...] | None = None,
        marks_dir: str | None = None,
    ) -> None:
        """Check and open an environment's data file and index its keys.

        Args:
            path_or_file: the data file (``data.mdb`` or a ``subdir=False`` file), local path or
                binary file object.
            name: its name in messages.
            expected_bytes: the size seen when the dataset was opened (None skips the check).
            num_samples: the entry count seen then (None skips the check).
            columns: a subset of ``("key", "value")`` (None: both).
            marks_dir: as for ``LmdbShardReader``.

        Raises:
            FormatError: not an LMDB file, truncated, changed since opened, or unreadable.
        """
        self.name = name
        self._selected = ENV_SCHEMA.select(columns)
        self._file = LmdbFile(path_or_file, name, marks_dir)
        if expected_bytes is not None and self._file.size != expected_bytes:
            raise FormatError(
                f"{name}: size is {self._file.size} bytes, it was {expected_bytes} when the"
                " dataset was opened (the environment changed)"
            )
        txn = self._file.txn()
        blob = bytearray()
        offsets = array.array("q", [0])  # 8 bytes per key while building, not a Python int each
        try:
            with txn.cursor() as cursor:
                for key in cursor.iternext(keys=True, values=False):
                    blob += key
                    offsets.append(len(blob))
        except lmdb.Error as exc:
            raise FormatError(f"{name}: LMDB cannot list the keys: {exc}") from exc
        self._keys = bytes(blob)
        self._offsets = np.frombuffer(offsets, dtype=np.int64)
        self.num_rows = len(offsets) - 1
        if num_samples is not None and num_samples != self.num_rows:
            raise FormatError(
                f"{name}: holds {self.num_rows} entries, it had {num_samples} when the dataset"
                " was opened (the environment changed)"
            )

    def __len__(self) -> int:
        return self.num_rows

    @property
    def columns(self) -> tuple[str, ...]:
        """The returned columns."""
        return self._selected.names

    def key(self, i: int) -> bytes:
        """The ``i``-th key in key order."""
        return self._keys[self._offsets[i] : self._offsets[i + 1]]

    def get(self, i: int) -> dict[str, Any]:
        """Entry ``i`` as ``{"key": bytes, "value": bytes}`` (projected to the columns).

        Raises:
            IndexError: out of range.
            FormatError: LMDB cannot read the entry.
        """
        if not 0 <= i < self.num_rows:
            raise IndexError(f"{self.name}: entry {i} out of range [0, {self.num_rows})")
        batch = self.take(np.array([i], np.int64))
        return {name: batch[name][0] for name in self.columns}

    def take(self, rows: np.ndarray, strings: str = "list") -> dict[str, Any]:
        """Entries ``rows`` (any order, duplicates allowed) as ``{"key": [...], "value": [...]}``
        (lists whatever ``strings`` says: see the reader protocol).

        Raises:
            IndexError: a row is out of range.
            FormatError: LMDB cannot read an entry.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"{self.name}: entries out of range [0, {self.num_rows})")
        keys = [self.key(i) for i in rows.tolist()]
        out: dict[str, Any] = {}
        if "key" in self.columns:
            out["key"] = keys
        if "value" in self.columns:
            txn = self._file.txn()
            values = []
            try:
                for key in keys:
                    value = txn.get(key)
                    if value is None:
                        raise FormatError(f"{self.name}: key {key!r:.60} vanished")
                    values.append(bytes(value))
            except lmdb.Error as exc:
                raise FormatError(f"{self.name}: LMDB cannot read an entry: {exc}") from exc
            out["value"] = values
        return out

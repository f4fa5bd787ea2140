"""The sample codec of LMDB shards: one sample <-> one compact, self-describing binary value.

No pickle: a value is plain little-endian structs and raw bytes, so decoding a hostile value can
at worst raise ``FormatError``, never run code. Layout of one value (all integers little-endian)::

    magic  b"SLS1"                       4 bytes
    ncols  uint32                        4 bytes
    ncols entries, 24 bytes each:        kind uint8 | dtype uint8 | ndim uint8 | 5 pad bytes
                                         | offset uint64 | nbytes uint64
    dims   uint64 x (sum of ndims)       every ndarray's shape, in column order
    payloads                             at the entries' offsets

Kinds: 1 int (int64), 2 float (float64), 3 bool (one byte 0/1), 4 str (UTF-8), 5 bytes,
6 ndarray (``dtype`` is the 1-based position in ``schema.DTYPES``, C-order data). Every payload
starts at an offset that is a multiple of 8 inside the value, ndarray data at a multiple of 64,
so an array decodes as a zero-copy ``np.frombuffer`` view of the value: aligned in memory for
values on LMDB overflow pages (large values start 16 bytes into a page), merely correct (numpy
handles unaligned views) for small values stored inside leaf pages.

The value describes its own types and shapes (decoding needs no schema); column names live in
index.json's schema, and the reader has ``decode`` check each value against the schema's
``layout`` (integer comparisons while decoding, so the check is nearly free). ``decode`` bounds-checks
every offset and size against the value before touching it: garbage is a ``FormatError``.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamload.errors import FormatError
from streamload.format.schema import DTYPES, MAX_NDIM, Column, Schema

MAGIC = b"SLS1"
KIND_CODES = {"int": 1, "float": 2, "bool": 3, "str": 4, "bytes": 5, "ndarray": 6}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
DTYPE_CODES = {name: i + 1 for i, name in enumerate(DTYPES)}
_NUMPY_DTYPES = [np.dtype("uint8")] + [np.dtype(d).newbyteorder("<") for d in DTYPES]
_HEAD = struct.Struct("<4sI")
_ENTRY = struct.Struct("<BBB5xQQ")
HEADER_BYTES = _HEAD.size  # magic + column count
ENTRY_BYTES = _ENTRY.size  # one column's entry; its offset and size are the last 16 bytes
_INT = struct.Struct("<q")
_FLOAT = struct.Struct("<d")
_ARRAY_ALIGN = 64
_MAX_EXTENT = 2**63 - 1  # numpy: the product of the non-zero dims times itemsize fits in intp
_ROW_KEY = struct.Struct(">Q")
ROW_KEY_BYTES = _ROW_KEY.size


def row_key(row: int) -> bytes:
    """The LMDB key of row ``row`` of a shard: a big-endian uint64, so key order is row order."""
    return _ROW_KEY.pack(row)


_ALIGN = 8
_PAD = bytes(_ARRAY_ALIGN)


def encode(schema: Schema, sample: dict[str, Any]) -> bytes:
    """Encode one sample (already validated against ``schema``) as a value.

    Returns:
        The value's bytes (layout in the module docstring).
    """
    columns = schema.columns
    payloads: list[tuple[int, int, int, bytes | memoryview, tuple[int, ...], int]] = []
    ndims = 0
    for col in columns:
        value = sample[col.name]
        kind = col.kind
        if kind == "int":
            payloads.append((1, 0, 0, _INT.pack(int(value)), (), _ALIGN))
        elif kind == "float":
            payloads.append((2, 0, 0, _FLOAT.pack(float(value)), (), _ALIGN))
        elif kind == "bool":
            payloads.append((3, 0, 0, b"\x01" if value else b"\x00", (), _ALIGN))
        elif kind == "str":
            payloads.append((4, 0, 0, value.encode("utf-8"), (), _ALIGN))
        elif kind == "bytes":
            payloads.append((5, 0, 0, memoryview(value).cast("B"), (), _ALIGN))
        else:
            arr = np.asarray(value, dtype=_NUMPY_DTYPES[DTYPE_CODES[col.dtype or ""]])
            if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make 0-d arrays 1-d)
                arr = arr.copy(order="C")
            shape = tuple(int(d) for d in arr.shape)
            ndims += len(shape)
            data = arr.reshape(-1).view(np.uint8).data if arr.size else b""
            payloads.append(
                (6, DTYPE_CODES[col.dtype or ""], len(shape), data, shape, _ARRAY_ALIGN)
            )
    header_len = _HEAD.size + _ENTRY.size * len(columns) + 8 * ndims
    offsets = [0] * len(columns)
    body: list[bytes | memoryview] = []
    pos = header_len
    for c in _payload_order(schema):
        data, align = payloads[c][3], payloads[c][5]
        pad = -pos % align
        if pad:
            body.append(_PAD[:pad])
            pos += pad
        offsets[c] = pos
        body.append(data)
        pos += len(data)
    entries = [
        _ENTRY.pack(kind_code, dtype_code, ndim, offsets[c], len(data))
        for c, (kind_code, dtype_code, ndim, data, _, _) in enumerate(payloads)
    ]
    dims = [d for p in payloads for d in p[4]]
    head = _HEAD.pack(MAGIC, len(columns))
    return b"".join([head, *entries, struct.pack(f"<{len(dims)}Q", *dims), *body])


def is_fixed_size(col: Column) -> bool:
    """Whether every value of ``col`` has the same payload size (scalars, fixed-shape arrays)."""
    if col.kind in ("int", "float", "bool"):
        return True
    return col.kind == "ndarray" and None not in (col.shape or ())


@functools.lru_cache(maxsize=256)
def _payload_order(schema: Schema) -> tuple[int, ...]:
    """Fixed-size payloads first (so they sit at the same offsets in every value), then the rest."""
    fixed = [c for c, col in enumerate(schema.columns) if is_fixed_size(col)]
    return (*fixed, *(c for c, col in enumerate(schema.columns) if not is_fixed_size(col)))


# What a schema expects of each stored column: (kind code, dtype code, ndim, fixed dims or None).
Layout = tuple[tuple[int, int, int, tuple[int | None, ...]], ...]


def layout(schema: Schema) -> Layout:
    """The per-column expectations ``decode`` checks a value against (integers only: cheap)."""
    out = []
    for col in schema.columns:
        if col.kind == "ndarray":
            dims = tuple(col.shape or ())
            out.append((6, DTYPE_CODES[col.dtype or ""], len(dims), dims))
        else:
            out.append((KIND_CODES[col.kind], 0, 0, ()))
    return tuple(out)


def decode(
    value: bytes | memoryview, expect: Layout | None = None, only: tuple[bool, ...] | None = None
) -> list[Any]:
    """Decode one value into its column values, in stored order.

    int -> int, float -> float, bool -> bool, str -> str, bytes -> ``memoryview`` slice of
    ``value`` (zero-copy), ndarray -> read-only ``np.ndarray`` view of ``value`` (zero-copy;
    shape [] gives a 0-d array). Views live as long as ``value``'s memory does.

    Args:
        value: the encoded value.
        expect: a schema's ``layout``: when given, the value must hold exactly those columns
            (count, kinds, dtypes, ndims, fixed dims).
        only: per column, whether to decode it (None: all); skipped columns give None.

    Raises:
        FormatError: bad magic, an entry or dimension outside the value, an unknown kind or
            dtype, a shape numpy cannot hold (too many dims, a product past 2**63), a size that does not match the shape, invalid UTF-8, or (with ``expect``) a
            column that is not what the schema says.
    """
    view = memoryview(value).cast("B")
    size = len(view)
    if size < _HEAD.size:
        raise FormatError(f"value of {size} bytes is too short for a sample header")
    magic, ncols = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise FormatError(f"value does not start with the sample magic {MAGIC!r} (got {magic!r})")
    if expect is not None and ncols != len(expect):
        raise FormatError(f"value holds {ncols} columns, the schema has {len(expect)}")
    dims_pos = _HEAD.size + _ENTRY.size * ncols
    if dims_pos > size:
        raise FormatError(f"value claims {ncols} columns but holds {size} bytes")
    out: list[Any] = []
    for c in range(ncols):
        kind, dtype_code, ndim, offset, nbytes = _ENTRY.unpack_from(
            view, _HEAD.size + _ENTRY.size * c
        )
        if offset > size or nbytes > size - offset:
            raise FormatError(
                f"column {c}: payload [{offset}, {offset}+{nbytes}) outside the {size}-byte value"
            )
        if expect is not None:
            want = expect[c]
            if kind != want[0] or dtype_code != want[1] or ndim != want[2]:
                raise FormatError(
                    f"column {c} holds {_what(kind, dtype_code, ndim)}, the schema says"
                    f" {_what(*want[:3])}"
                )
        if only is not None and not only[c]:
            dims_pos += 8 * ndim if kind == 6 else 0
            out.append(None)
            continue
        data = view[offset : offset + nbytes]
        if kind == 1 or kind == 2:
            if nbytes != 8:
                raise FormatError(f"column {c}: a {KIND_NAMES[kind]} needs 8 bytes, has {nbytes}")
            out.append((_INT if kind == 1 else _FLOAT).unpack_from(data, 0)[0])
        elif kind == 3:
            if nbytes != 1:
                raise FormatError(f"column {c}: a bool needs 1 byte, has {nbytes}")
            out.append(data[0] != 0)
        elif kind == 4:
            try:
                out.append(str(data, "utf-8"))
            except UnicodeDecodeError as exc:
                raise FormatError(f"column {c}: str payload is not UTF-8: {exc}") from None
        elif kind == 5:
            out.append(data)
        elif kind == 6:
            if not 1 <= dtype_code <= len(DTYPES):
                raise FormatError(f"column {c}: unknown dtype code {dtype_code}")
            if dims_pos + 8 * ndim > size:
                raise FormatError(f"column {c}: shape of {ndim} dims runs past the value")
            shape = struct.unpack_from(f"<{ndim}Q", view, dims_pos)
            dims_pos += 8 * ndim
            if expect is not None and shape != expect[c][3]:
                for d, w in zip(shape, expect[c][3], strict=True):
                    if w is not None and d != w:
                        raise FormatError(
                            f"column {c} has shape {shape}, the schema says {expect[c][3]}"
                        )
            dtype = _NUMPY_DTYPES[dtype_code]
            count, extent = 1, dtype.itemsize
            for d in shape:
                count *= d
                extent *= max(d, 1)
            if ndim > MAX_NDIM or extent > _MAX_EXTENT:
                # numpy cannot even describe it (an empty array with a hostile dim next to a 0)
                raise FormatError(
                    f"column {c}: shape {shape} of {DTYPES[dtype_code - 1]} is not a valid array"
                    f" shape (at most {MAX_NDIM} dims whose non-zero product fits in memory)"
                )
            if count * dtype.itemsize != nbytes:
                raise FormatError(
                    f"column {c}: shape {shape} of {DTYPES[dtype_code - 1]} needs"
                    f" {count * dtype.itemsize} bytes, payload has {nbytes}"
                )
            out.append(np.frombuffer(data, dtype=dtype).reshape(shape))
        else:
            raise FormatError(f"column {c}: unknown kind code {kind}")
    return out


def _what(kind: int, dtype_code: int, ndim: int) -> str:
    if kind != 6:
        return KIND_NAMES.get(kind, f"kind code {kind}")
    dtype = DTYPES[dtype_code - 1] if 1 <= dtype_code <= len(DTYPES) else f"dtype {dtype_code}"
    return f"a {ndim}-D {dtype} array"


@dataclass(frozen=True)
class FixedPrefix:
    """Where a schema's fixed-size columns sit in every value, for checking and gathering in bulk.

    ``encode`` places fixed-size payloads first, so in every value of a schema the header's
    fixed parts and the fixed-size payloads occupy the same first ``length`` bytes. A batch of
    values is then checked with one vectorised comparison (``check_at`` positions must hold
    ``check_bytes``: magic, column count, every column's kind/dtype/ndim, the fixed columns'
    offsets, sizes and dims) and each fixed
    column is one strided copy out of the stacked prefixes: ``columns`` lists (column index,
    payload offset, payload bytes).
    """

    length: int
    check_at: np.ndarray
    check_bytes: np.ndarray
    columns: tuple[tuple[int, int, int], ...]


def fixed_prefix(schema: Schema) -> FixedPrefix:
    """The ``FixedPrefix`` of ``schema`` (just the header when no column has a fixed size)."""
    fixed = [c for c, col in enumerate(schema.columns) if is_fixed_size(col)]
    encoded = encode(schema, _zero_sample(schema))
    template = np.frombuffer(encoded, np.uint8)
    check: list[int] = list(range(_HEAD.size))
    dims_pos = _HEAD.size + _ENTRY.size * len(schema.columns)
    spans = []
    for c, col in enumerate(schema.columns):
        ndim = len(col.shape or ()) if col.kind == "ndarray" else 0
        entry = _HEAD.size + _ENTRY.size * c
        check += range(entry, entry + 8)  # kind, dtype, ndim, padding: the same in every value
        if c in fixed:
            check += range(entry + 8, entry + _ENTRY.size)
            check += range(dims_pos, dims_pos + 8 * ndim)
            _, _, _, offset, nbytes = _ENTRY.unpack_from(encoded, entry)
            spans.append((c, offset, nbytes))
        dims_pos += 8 * ndim
    length = max([dims_pos, *(offset + nbytes for _, offset, nbytes in spans)])
    at = np.asarray(check, np.intp)
    return FixedPrefix(length, at, template[at].copy(), tuple(spans))


def _zero_sample(schema: Schema) -> dict[str, Any]:
    """A sample with zeros, empty strings and empty variable dims (its header is the template)."""
    out: dict[str, Any] = {}
    for col in schema.columns:
        if col.kind == "ndarray":
            shape = tuple(d or 0 for d in col.shape or ())
            out[col.name] = np.zeros(shape, np.dtype(col.dtype))
        else:
            out[col.name] = {"int": 0, "float": 0.0, "bool": False, "str": "", "bytes": b""}[
                col.kind
            ]
    return out

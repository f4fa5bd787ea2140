"""Column schema of a dataset: its JSON form, inference from a sample, validation, Arrow layout.

A schema is an ordered list of typed columns; every sample is a dict with exactly those keys, and
the key order of samples and batches read back is the schema order. JSON form (stored in
``index.json`` under ``"schema"`` and accepted as ``ShardWriter(schema=...)``)::

    {"columns": [
        {"name": "id", "kind": "int"},                       # python int   -> int64
        {"name": "score", "kind": "float"},                  # python float -> float64
        {"name": "ok", "kind": "bool"},
        {"name": "text", "kind": "str"},
        {"name": "image", "kind": "bytes"},
        {"name": "tokens", "kind": "ndarray", "dtype": "int32", "shape": [2048]},
        {"name": "boxes", "kind": "ndarray", "dtype": "float32", "shape": [null, 4]},
        {"name": "weight", "kind": "ndarray", "dtype": "float16", "shape": []}   # numpy scalar
    ]}

``dtype`` is a numpy dtype name: ``bool``, ``int8..int64``, ``uint8..uint64``, ``float16..float64``
(no object, string, complex or structured dtypes: nothing in a dataset is ever unpickled).
``shape`` lists dimensions; ``null`` marks a variable one. Inference from a first sample records
array shapes as fixed, except where ``shapes`` (``infer_schema(sample, shapes={"tokens": [None]})``)
declares dims variable. ``widen_1d`` is the one relaxation a writer may apply later: a 1-d array
column inferred as ``[n]`` becomes ``[None]`` when a sample of the same dtype has another length
(token documents); any other shape or dtype change is still an error, so a stray wrong-shaped
sample of a multi-dimensional column is caught, not absorbed.

Accepted python values per kind (validated per sample, ``FormatError`` naming sample and field):
``int``: int (not bool) or numpy integer within int64; ``float``: float, int (not bool), numpy
float/integer; ``bool``: bool or ``numpy.bool_``; ``str``: str encodable as UTF-8 (no lone
surrogates); ``bytes``: bytes, bytearray,
memoryview; ``ndarray``: a numpy array or numpy scalar with exactly the column's dtype and ndim,
and the fixed dims equal. No column is nullable.

Arrow layout (one Arrow field per column, all non-nullable): int -> int64, float -> float64,
bool -> bool, str -> large_string, bytes -> large_binary, ndarray shape [] -> the primitive type,
fixed ndarray -> fixed_size_list<primitive, prod(shape)> (row-major, so a batch of rows is one
contiguous buffer), variable ndarray (or fixed with a zero dimension, which Arrow's
fixed_size_list cannot hold) -> struct<data: large_list<primitive>, shape: fixed_size_list<int64, ndim>>.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from streamload.errors import FormatError, quote

KINDS = ("int", "float", "bool", "str", "bytes", "ndarray")
DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
MAX_NDIM = 32
_MAX_FIXED_ITEMS = 2**31 - 1  # Arrow fixed_size_list sizes are int32
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Column:
    """One column: ``name``, ``kind`` (one of KINDS); ``dtype`` and ``shape`` only for ndarray."""

    name: str
    kind: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None

    @property
    def is_fixed_array(self) -> bool:
        """An ndarray column whose every row has the same shape (rows batch into one array)."""
        return self.kind == "ndarray" and self.shape is not None and None not in self.shape

    @property
    def uses_var_layout(self) -> bool:
        """Stored as struct<data, shape> (variable shape, or fixed with a zero-size dimension)."""
        if self.kind != "ndarray" or not self.shape:
            return False
        return not self.is_fixed_array or math.prod(self.shape) == 0  # type: ignore[arg-type]

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row of a numeric column (``()`` for scalars); only for fixed shapes."""
        if self.kind != "ndarray" or not self.shape:
            return ()
        return tuple(d if d is not None else -1 for d in self.shape)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of a numeric column (int -> int64, float -> float64, bool, ndarray)."""
        if self.kind == "ndarray":
            return np.dtype(self.dtype)
        return np.dtype({"int": np.int64, "float": np.float64, "bool": np.bool_}[self.kind])

    def to_json(self) -> dict[str, Any]:
        """The JSON form of this column (see the module docstring)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "ndarray":
            out["dtype"] = self.dtype
            out["shape"] = list(self.shape or ())
        return out


@dataclass(frozen=True)
class Schema:
    """An ordered tuple of columns with unique names."""

    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in schema order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The column called ``name``; KeyError if there is none."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def select(self, names: list[str] | tuple[str, ...] | None) -> Schema:
        """The sub-schema of ``names`` (kept in schema order); None selects every column.

        Raises:
            FormatError: a name is not a column (the message lists the columns there are).
        """
        if names is None:
            return self
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise FormatError(
                f"unknown column(s) {unknown}: the dataset has columns {list(self.names)}"
            )
        wanted = set(names)
        return Schema(tuple(c for c in self.columns if c.name in wanted))

    def to_json(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        return {"columns": [c.to_json() for c in self.columns]}

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema of a shard holding this schema's columns (layout in the module docstring)."""
        return pa.schema([pa.field(c.name, arrow_type(c), nullable=False) for c in self.columns])

    def validate(self, sample: object, number: int) -> None:
        """Check one sample against the schema.

        Args:
            sample: the sample dict about to be written.
            number: its 0-based global index, for the error message.

        Raises:
            FormatError: not a dict, missing or extra key, wrong type, dtype, ndim or fixed dimension.
        """
        if not isinstance(sample, Mapping):
            raise FormatError(f"sample {number}: expected a dict, got {type(sample).__name__}")
        if len(sample) != len(self.columns) or any(c.name not in sample for c in self.columns):
            missing = [n for n in self.names if n not in sample]
            extra = [k for k in sample if k not in self.names]
            raise FormatError(
                f"sample {number}: keys do not match the schema (missing {missing}, extra {extra})"
            )
        for col in self.columns:
            _check_value(col, sample[col.name], number)


def arrow_type(col: Column) -> pa.DataType:
    """The Arrow type that stores column ``col`` (layout in the module docstring)."""
    if col.kind == "int":
        return pa.int64()
    if col.kind == "float":
        return pa.float64()
    if col.kind == "bool":
        return pa.bool_()
    if col.kind == "str":
        return pa.large_string()
    if col.kind == "bytes":
        return pa.large_binary()
    prim = pa.from_numpy_dtype(np.dtype(col.dtype))
    shape = col.shape or ()
    if not shape:
        return prim
    if col.uses_var_layout:
        return pa.struct(
            [
                pa.field("data", pa.large_list(prim), nullable=False),
                pa.field("shape", pa.list_(pa.int64(), len(shape)), nullable=False),
            ]
        )
    return pa.list_(prim, math.prod(shape))  # type: ignore[arg-type]


def infer_schema(
    sample: object, shapes: Mapping[str, Sequence[int | None]] | None = None
) -> Schema:
    """Infer a schema from the first sample.

    Args:
        sample: the first sample dict.
        shapes: declared shapes of array columns, ``None`` marking a variable dim (e.g.
            ``{"tokens": [None]}``); other arrays record the sample's shape as fixed.

    Raises:
        FormatError: not a non-empty dict with string keys, a value of an unsupported type, or a
            declared shape that names no array column or disagrees with the sample.
    """
    if not isinstance(sample, Mapping) or not sample:
        raise FormatError(f"sample 0: expected a non-empty dict, got {sample!r:.80}")
    shapes = dict(shapes or {})
    unknown = sorted(str(n) for n in shapes if n not in sample)
    if unknown:
        raise FormatError(
            f"shapes={{...}} names {unknown}, which the first sample does not have"
            f" (its fields: {list(sample)})"
        )
    columns = []
    for name, value in sample.items():
        if not isinstance(name, str) or not name:
            raise FormatError(f"sample 0: field names must be non-empty strings, got {name!r}")
        _check_utf8(name, f"sample 0: field name {name!r}")
        column = _infer_column(name, value)
        if name in shapes:
            column = _declared_shape(column, shapes[name])
            _check_value(column, value, 0)
        columns.append(column)
    return Schema(tuple(columns))


def _declared_shape(column: Column, shape: object) -> Column:
    """``column`` with the shape ``shapes=`` declares for it (checked like a JSON schema's)."""
    if column.kind != "ndarray":
        raise FormatError(
            f"shapes={{{column.name!r}: ...}}: field {column.name!r} is a {column.kind},"
            " only numpy array fields have a shape"
        )
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence):
        raise FormatError(
            f"shapes={{{column.name!r}: {shape!r:.40}}}: a shape is a list of dims, e.g. [None]"
        )
    raw = {"name": column.name, "kind": "ndarray", "dtype": column.dtype, "shape": list(shape)}
    return _column_from_json(raw, f"shapes={{{column.name!r}: ...}}")


def widen_1d(schema: Schema, sample: Mapping[str, Any], names: Collection[str]) -> Schema | None:
    """``schema`` with the fixed 1-d array columns among ``names`` whose value in ``sample`` has
    the same dtype but another length made variable (``[n]`` -> ``[None]``); None when no column
    of ``names`` can absorb the sample that way (the caller then reports the validation error).
    """
    columns, changed = [], False
    for col in schema.columns:
        value = sample.get(col.name) if isinstance(sample, Mapping) else None
        if (
            col.name in names
            and col.kind == "ndarray"
            and col.shape is not None
            and len(col.shape) == 1
            and col.shape[0] is not None
            and isinstance(value, np.ndarray)
            and value.ndim == 1
            and value.dtype.name == col.dtype
            and value.shape[0] != col.shape[0]
        ):
            col = Column(col.name, "ndarray", col.dtype, (None,))
            changed = True
        columns.append(col)
    return Schema(tuple(columns)) if changed else None


def _infer_column(name: str, value: object) -> Column:
    if isinstance(value, bool):
        return Column(name, "bool")
    if isinstance(value, int):
        return Column(name, "int")
    if isinstance(value, float):
        return Column(name, "float")
    if isinstance(value, str):
        return Column(name, "str")
    if isinstance(value, bytes | bytearray | memoryview):
        return Column(name, "bytes")
    if isinstance(value, np.ndarray | np.generic):
        dtype = value.dtype.name
        if dtype not in DTYPES:
            raise FormatError(
                f"sample 0: field {name!r} has dtype {value.dtype}, not one of {', '.join(DTYPES)}"
            )
        return Column(name, "ndarray", dtype, tuple(int(d) for d in np.shape(value)))
    hint = (
        "; store a list of numbers as a numpy array, e.g. np.asarray(ids, dtype=np.int32)"
        if isinstance(value, list | tuple)
        else ""
    )
    raise FormatError(
        f"sample 0: field {name!r} has unsupported type {type(value).__name__}"
        f" (supported: int, float, bool, str, bytes, numpy arrays and scalars){hint}"
    )


def _check_value(col: Column, value: object, number: int) -> None:
    kind = col.kind
    where = f"sample {number}: field {col.name!r}"
    if kind == "ndarray":
        if not isinstance(value, np.ndarray | np.generic):
            raise FormatError(f"{where} is a {type(value).__name__}, schema says a numpy array")
        if value.dtype.name != col.dtype:
            raise FormatError(f"{where} has dtype {value.dtype}, schema says {col.dtype}")
        shape = np.shape(value)
        want = col.shape or ()
        if len(shape) != len(want) or any(
            w is not None and w != s for s, w in zip(shape, want, strict=True)
        ):
            want_text = "(" + ", ".join("None" if w is None else str(w) for w in want) + ")"
            dims = (
                [w if w == d else None for d, w in zip(shape, want, strict=True)]
                if len(shape) == len(want)
                else [None] * len(shape)
            )
            hint = ", ".join("None" if d is None else str(d) for d in dims)
            raise FormatError(
                f"{where} has shape {tuple(shape)}, schema says {want_text}; if its shape varies"
                f" from sample to sample, declare the varying dims None:"
                f" ShardWriter(url, shapes={{{col.name!r}: [{hint}]}}) (or null in schema=)"
            )
        return
    ok: bool
    if kind == "int":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or isinstance(
            value, np.integer
        )
        if ok and not _INT64_MIN <= int(value) <= _INT64_MAX:  # type: ignore[call-overload]
            raise FormatError(f"{where} = {value} does not fit in int64")
    elif kind == "float":
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or isinstance(
            value, np.integer | np.floating
        )
    elif kind == "bool":
        ok = isinstance(value, bool | np.bool_)
    elif kind == "str":
        ok = isinstance(value, str)
        if isinstance(value, str) and not value.isascii():  # O(1): only non-ASCII is encoded
            _check_utf8(value, where)
    else:
        ok = isinstance(value, bytes | bytearray | memoryview)
    if not ok:
        raise FormatError(f"{where} is a {type(value).__name__}, schema says {kind}")


def _check_utf8(text: str, where: str) -> None:
    """Text must be encodable as UTF-8: a lone surrogate (``"\\ud800"``, e.g. from
    ``os.fsdecode`` of bad bytes) cannot be stored in Arrow or LMDB shards."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise FormatError(
            f"{where} is not valid Unicode text: lone surrogate {bad!r} at character"
            f" {exc.start} (text must be encodable as UTF-8)"
        ) from None


def schema_from_json(data: object, source: str) -> Schema:
    """Parse and validate the JSON form of a schema.

    Args:
        data: the decoded JSON value.
        source: where it came from (a URL or "ShardWriter(schema=...)"), for error messages.

    Raises:
        FormatError: anything malformed: unknown kind or dtype, bad shape, duplicate names, extra keys.
    """
    if not isinstance(data, Mapping) or set(data) != {"columns"}:
        raise FormatError(f"{source}: schema must be an object with exactly the key 'columns'")
    raw_columns = data["columns"]
    if not isinstance(raw_columns, list) or not raw_columns:
        raise FormatError(f"{source}: schema 'columns' must be a non-empty list")
    columns: list[Column] = []
    for i, raw in enumerate(raw_columns):
        columns.append(_column_from_json(raw, f"{source}: schema column {i}"))
    counts = collections.Counter(c.name for c in columns)
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        raise FormatError(f"{source}: duplicate column name(s) {quote(dupes)}")
    return Schema(tuple(columns))


def _column_from_json(raw: object, where: str) -> Column:
    if not isinstance(raw, Mapping):
        raise FormatError(f"{where}: expected an object, got {quote(raw)}")
    name, kind = raw.get("name"), raw.get("kind")
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: 'name' must be a non-empty string, got {quote(name)}")
    _check_utf8(name, f"{where}: column name {quote(name)}")
    if kind not in KINDS:
        raise FormatError(
            f"{where} ({quote(name)}): unknown kind {quote(kind)}; known: {', '.join(KINDS)}"
        )
    allowed = {"name", "kind", "dtype", "shape"} if kind == "ndarray" else {"name", "kind"}
    extra = sorted(str(k) for k in raw if k not in allowed)
    if extra:
        raise FormatError(
            f"{where} ({quote(name)}): unexpected key(s) {quote(extra)} for kind {kind}"
        )
    if kind != "ndarray":
        return Column(name, kind)
    dtype, shape = raw.get("dtype"), raw.get("shape")
    if dtype not in DTYPES:
        raise FormatError(
            f"{where} ({quote(name)}): dtype {quote(dtype)} is not one of {', '.join(DTYPES)}"
        )
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise FormatError(
            f"{where} ({quote(name)}): 'shape' must be a list of at most {MAX_NDIM} dims"
        )
    for d in shape:
        if d is not None and (not isinstance(d, int) or isinstance(d, bool) or d < 0):
            raise FormatError(
                f"{where} ({quote(name)}): shape {quote(shape)} has a dim that is not null or an int >= 0"
            )
    fixed = [d for d in shape if d is not None]
    if None not in shape and math.prod(fixed) > _MAX_FIXED_ITEMS:
        raise FormatError(
            f"{where} ({quote(name)}): fixed shape {quote(shape)} has more than 2**31-1 items"
        )
    return Column(name, "ndarray", dtype, tuple(shape))

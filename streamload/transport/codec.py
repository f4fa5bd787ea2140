"""Batch codec: one collated batch <-> one ring record, arrays as raw aligned bytes.

A batch is a nested structure of dict / list / tuple over numpy arrays, torch tensors, numbers,
str, bytes and None. It is encoded into one record so a producer can reserve exactly the right
size and write straight into ring memory (one memcpy per array byte, no pickling of arrays):

    plan = plan_batch(batch)               # walks the batch once; no bytes copied yet
    with ring.reserve(plan.nbytes) as res:
        plan.write_into(res)
        res.commit()
    # or simply: send(ring, batch)

and the consumer decodes the record: ``decode(record, copy=True)`` copies each array once into
fresh memory and releases the record immediately; ``copy=False`` returns arrays/tensors that view
the ring memory and keep the record alive (it is released when the last of them dies; never via
`torch.frombuffer`, which would not hold the buffer export).

Record payload layout (version 1, little-endian):

    0   magic b"SLB1"
    4   u16 version, u16 flags (bit 0: some leaf was pickled)
    8   u32 meta_len, u32 reserved (0)
    16  meta: the structure as ASCII JSON (below), meta_len bytes
    D = align64(16 + meta_len): data section; every buffer starts 64-byte aligned, at an offset
        relative to D (so the metadata does not depend on its own length)

Metadata nodes: JSON null/true/false/numbers/strings stand for themselves; everything else is a
list tagged by its first element:

    ["d", keys, values]    dict          ["l", items] list      ["t", items] tuple
    ["b", off, n]          bytes         ["ba", off, n]         bytearray
    ["a", off, shape, dtype, origin]     array: dtype is a numpy dtype string; origin "np" or
                                         "torch"; a torch dtype without a numpy equivalent
                                         (bfloat16, float8...) travels as raw bytes with origin
                                         "torch:<name>"
    ["ls", off, n, blob_off, blob_n]     list of str: int64 offsets[n + 1] + UTF-8 blob
    ["lb", off, n, blob_off, blob_n]     list of bytes: same layout
    ["p", off, n]          any other object, pickled (our own worker processes only)

Columnar batches (dict of arrays + lists of str/bytes) therefore never touch pickle. Numbers,
strings and None ride in the JSON. Types are preserved: numpy arrays decode as numpy arrays and
tensors as tensors (like `DataLoader`, which passes a collate_fn's numpy output through), unless
``as_torch=True`` converts every numeric array to a tensor. Non-native byte orders are converted to
native order during the single copy. Tuple/dict subclasses (namedtuple, OrderedDict) and other
objects fall back to pickle, which also pickles any arrays inside them.
"""

from __future__ import annotations

import itertools
import json
import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from streamload.format.blobs import BlobColumn
from streamload.transport.ring import (
    Record,
    RecordType,
    Ring,
    RingArgumentError,
    RingCorrupted,
)

__all__ = ["BatchPlan", "decode", "encode", "encoded_size", "plan_batch", "send"]

MAGIC = b"SLB1"
VERSION = 1
FLAG_PICKLE = 1
_HEADER = struct.Struct("<4sHHII")
ALIGN = 64
_JSON = json.JSONEncoder(separators=(",", ":"))  # reused: json.dumps(**kwargs) builds one per call


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class BatchPlan:
    """The encoding of one batch, computed without copying array bytes.

    Attributes:
        nbytes: exact record payload size `write_into` needs.
        has_pickle: True if some leaf fell back to pickle.
    """

    def __init__(self, meta: bytes, sources: list[tuple[int, Any]], data_nbytes: int, flags: int):
        self._prefix = _HEADER.pack(MAGIC, VERSION, flags, len(meta), 0) + meta
        self._sources = sources  # (offset in data section, numpy array | bytes-like)
        self._data_start = _align(len(self._prefix))
        self.nbytes = self._data_start + data_nbytes
        self.has_pickle = bool(flags & FLAG_PICKLE)

    def write_into(self, buf: Any) -> int:
        """Write the encoded batch into the writable buffer `buf` (e.g. a `Reservation`).

        Returns:
            The number of bytes written (`nbytes`).

        Raises:
            RingArgumentError: `buf` is smaller than `nbytes`.
        """
        dst = np.frombuffer(buf, dtype=np.uint8)
        if dst.size < self.nbytes:
            raise RingArgumentError(
                f"buffer of {dst.size} bytes is smaller than the {self.nbytes}-byte batch"
            )
        dst[: len(self._prefix)] = np.frombuffer(self._prefix, dtype=np.uint8)
        base = self._data_start
        for offset, src in self._sources:
            start = base + offset
            if isinstance(src, np.ndarray):
                if src.nbytes == 0:
                    continue
                target = (
                    dst[start : start + src.nbytes]
                    .view(src.dtype.newbyteorder("="))
                    .reshape(src.shape)
                )
                np.copyto(target, src, casting="no" if src.dtype.isnative else "equiv")
            elif isinstance(src, BlobColumn):
                src.write_data(dst[start : start + src.nbytes])
            else:
                view = np.frombuffer(src, dtype=np.uint8)
                dst[start : start + view.size] = view
        return self.nbytes


class _Planner:
    """One walk over a batch: builds the metadata tree and the list of buffers to copy."""

    def __init__(self) -> None:
        self.sources: list[tuple[int, Any]] = []
        self.size = 0
        self.flags = 0

    def _add(self, src: Any, nbytes: int) -> int:
        offset = self.size
        self.sources.append((offset, src))
        self.size = _align(offset + nbytes)
        return offset

    def node(self, obj: Any) -> Any:
        kind = type(obj)
        if obj is None or kind is bool or kind is int or kind is float or kind is str:
            return obj
        if kind is dict:
            return ["d", [self.node(k) for k in obj], [self.node(v) for v in obj.values()]]
        if kind is list:
            return self._list(obj)
        if kind is tuple:
            return ["t", [self.node(v) for v in obj]]
        if kind is bytes or kind is bytearray:
            return ["b" if kind is bytes else "ba", self._add(obj, len(obj)), len(obj)]
        if kind is memoryview:
            data = obj.tobytes()
            return ["b", self._add(data, len(data)), len(data)]
        if isinstance(obj, np.ndarray) and kind is np.ndarray:
            return self._numpy(obj, "np")
        if isinstance(obj, np.str_):
            return str(obj)
        if isinstance(obj, np.generic) and obj.dtype.kind not in "OV":
            return self._numpy(np.asarray(obj), "np")
        if isinstance(obj, torch.Tensor) and kind is torch.Tensor:
            return self._tensor(obj)
        if kind is BlobColumn:  # a worker's str/bytes column: offsets + rows copied at write
            return [
                "ls" if obj.text else "lb",
                self._add(obj.offsets, obj.offsets.nbytes),
                len(obj),
                self._add(obj, obj.nbytes),
                obj.nbytes,
            ]
        return self._pickle(obj)

    def _list(self, items: list[Any]) -> Any:
        if items and all(type(x) is str for x in items):
            return self._blob_list("ls", [x.encode("utf-8", "surrogatepass") for x in items])
        if items and all(type(x) is bytes for x in items):
            return self._blob_list("lb", items)
        return ["l", [self.node(v) for v in items]]

    def _blob_list(self, tag: str, parts: list[bytes]) -> Any:
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        blob = b"".join(parts)
        return [
            tag,
            self._add(offsets, offsets.nbytes),
            len(parts),
            self._add(blob, len(blob)),
            len(blob),
        ]

    def _numpy(self, arr: np.ndarray, origin: str) -> Any:
        if arr.dtype.hasobject or arr.dtype.fields is not None or arr.dtype.subdtype is not None:
            return self._pickle(arr)  # object/structured dtypes cannot travel as raw bytes
        dtype = arr.dtype.newbyteorder("=") if not arr.dtype.isnative else arr.dtype
        return ["a", self._add(arr, arr.nbytes), list(arr.shape), dtype.str, origin]

    def _tensor(self, tensor: torch.Tensor) -> Any:
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        try:
            return self._numpy(tensor.numpy(), "torch")
        except TypeError:
            # No numpy twin (bfloat16, float8...): ship the raw bytes and the torch dtype name.
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            name = str(tensor.dtype).removeprefix("torch.")
            return ["a", self._add(raw, raw.nbytes), list(tensor.shape), "|u1", f"torch:{name}"]

    def _pickle(self, obj: Any) -> Any:
        self.flags |= FLAG_PICKLE
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return ["p", self._add(data, len(data)), len(data)]


def plan_batch(batch: Any) -> BatchPlan:
    """Plan the encoding of `batch` (see the module docstring for what it may contain).

    Returns:
        A `BatchPlan`; `plan.nbytes` is the exact record size, `plan.write_into(buf)` writes it.
    """
    planner = _Planner()
    tree = planner.node(batch)
    meta = _JSON.encode(tree).encode("ascii")
    return BatchPlan(meta, planner.sources, planner.size, planner.flags)


def encoded_size(batch: Any) -> int:
    """Exact size in bytes of the record `batch` encodes to."""
    return plan_batch(batch).nbytes


def encode(batch: Any) -> bytes:
    """Encode `batch` into a new bytes object (tests, debugging; the ring path is `send`)."""
    plan = plan_batch(batch)
    out = bytearray(plan.nbytes)
    plan.write_into(out)
    return bytes(out)


def send(
    ring: Ring,
    batch: Any,
    *,
    seq: int | None = None,
    timeout: float | None = None,
    type: int = RecordType.DATA,
) -> int:
    """Encode `batch` straight into `ring` as one record (reserve exactly, write, commit).

    Returns:
        The record's sequence number.

    Raises:
        RecordTooLarge: the encoded batch exceeds the ring's max_record (names ring_size).
        RingTimeout, RingClosed, ConsumerDied: as `Ring.reserve`.
    """
    plan = plan_batch(batch)
    with ring.reserve(plan.nbytes, timeout=timeout) as res:
        plan.write_into(res)
        return res.commit(type=type, seq=seq)


class _Decoder:
    def __init__(
        self, view: memoryview, data_start: int, copy: bool, as_torch: bool, allow_pickle: bool
    ):
        self.view = view
        self.base = data_start
        self.limit = len(view)
        self.copy = copy
        self.as_torch = as_torch
        self.allow_pickle = allow_pickle

    def node(self, n: Any) -> Any:
        if not isinstance(n, list):
            return n
        handler = _HANDLERS.get(n[0]) if n and isinstance(n[0], str) else None
        if handler is None:
            raise RingCorrupted(f"batch record has an unknown metadata node {str(n)[:80]!r}")
        return handler(self, n)

    def _dict(self, n: list[Any]) -> Any:
        return dict(zip(map(self.node, n[1]), map(self.node, n[2]), strict=True))

    def _list(self, n: list[Any]) -> Any:
        return [self.node(v) for v in n[1]]

    def _tuple(self, n: list[Any]) -> Any:
        return tuple(self.node(v) for v in n[1])

    def _bytes_node(self, n: list[Any]) -> Any:
        return bytes(self._bytes(n[1], n[2]))

    def _bytearray_node(self, n: list[Any]) -> Any:
        return bytearray(self._bytes(n[1], n[2]))

    def _str_list(self, n: list[Any]) -> Any:
        return self._blob_list(n, text=True)

    def _bytes_list(self, n: list[Any]) -> Any:
        return self._blob_list(n, text=False)

    def _bytes(self, offset: int, nbytes: int) -> memoryview:
        start = self.base + offset
        if not (offset >= 0 and nbytes >= 0 and start + nbytes <= self.limit):
            raise RingCorrupted(
                f"batch record buffer [{offset}, +{nbytes}) lies outside the record"
            )
        return self.view[start : start + nbytes]

    def _array(self, n: list[Any]) -> Any:
        _, offset, shape, dtype_str, origin = n
        count = int(np.prod(shape, dtype=np.int64))
        if origin.startswith("torch:"):
            torch_dtype = getattr(torch, origin.removeprefix("torch:"), None)
            if not isinstance(torch_dtype, torch.dtype):
                raise RingCorrupted(f"batch record names an unknown torch dtype {origin!r}")
            nbytes = count * torch_dtype.itemsize
            raw = np.frombuffer(self._bytes(offset, nbytes), dtype=np.uint8, count=nbytes)
            if self.copy or not raw.flags.writeable:
                raw = raw.copy()
            return torch.from_numpy(raw).view(torch_dtype).reshape(shape)
        dtype = np.dtype(dtype_str)
        if dtype.hasobject:
            raise RingCorrupted("batch record declares an object array")
        raw_view = self._bytes(offset, count * dtype.itemsize)
        arr = np.frombuffer(raw_view, dtype=dtype, count=count).reshape(shape)
        to_torch = origin == "torch" or (self.as_torch and dtype.kind in "biufc")
        # torch cannot wrap read-only memory (a bytes input): copy rather than warn.
        if self.copy or (to_torch and not arr.flags.writeable):
            arr = arr.copy()
        if to_torch:
            try:
                return torch.from_numpy(arr)
            except TypeError:
                return arr  # a numpy dtype torch lacks: keep the array
        return arr

    def _blob_list(self, n: list[Any], *, text: bool) -> list[Any]:
        _, off, count, blob_off, blob_n = n
        offsets = np.frombuffer(self._bytes(off, (count + 1) * 8), dtype=np.int64).tolist()
        blob = self._bytes(blob_off, blob_n)  # items are copied straight out of the record
        pairs = list(itertools.pairwise(offsets))
        if offsets[0] != 0 or offsets[-1] != blob_n or any(a > b for a, b in pairs):
            raise RingCorrupted("batch record has inconsistent string offsets")
        if not text:
            return [blob[a:b].tobytes() for a, b in pairs]
        decoded = str(blob, "utf-8", "surrogatepass")
        if len(decoded) == blob_n:  # ASCII: byte offsets are character offsets
            return [decoded[a:b] for a, b in pairs]
        return [str(blob[a:b], "utf-8", "surrogatepass") for a, b in pairs]

    def _unpickle(self, n: list[Any]) -> Any:
        if not self.allow_pickle:
            raise RingArgumentError("batch record contains a pickled object and allow_pickle=False")
        return pickle.loads(self._bytes(n[1], n[2]))


# Metadata tag -> decoder method (a class-level table: per-instance closures would form a
# reference cycle that keeps the record's buffer export alive until the next GC).
_HANDLERS: dict[str, Callable[[_Decoder, list[Any]], Any]] = {
    "d": _Decoder._dict,
    "l": _Decoder._list,
    "t": _Decoder._tuple,
    "b": _Decoder._bytes_node,
    "ba": _Decoder._bytearray_node,
    "a": _Decoder._array,
    "ls": _Decoder._str_list,
    "lb": _Decoder._bytes_list,
    "p": _Decoder._unpickle,
}


def decode(
    data: Record | bytes | bytearray | memoryview,
    *,
    copy: bool = True,
    as_torch: bool = False,
    allow_pickle: bool = True,
) -> Any:
    """Decode one batch record.

    Args:
        data: a `Record` from `Ring.get` (or any bytes-like holding an encoded batch).
        copy: True copies every array once into fresh memory and releases the record before
            returning; False returns arrays/tensors viewing the record, which is released when
            the last of them (and the record object) is gone.
        as_torch: also turn numpy-origin numeric arrays into tensors.
        allow_pickle: refuse records with pickled leaves when False.

    Returns:
        The batch, with the structure and leaf types it was encoded with.

    Raises:
        RingCorrupted: the payload is not a valid batch record.
        RingArgumentError: a pickled leaf and allow_pickle=False.
    """
    record = data if isinstance(data, Record) else None
    view = record.view(writable=not copy) if record is not None else memoryview(data).cast("B")
    batch = _decode_view(view, copy, as_torch, allow_pickle)
    if record is None:
        return batch
    if copy:
        view.release()  # nothing else views the record any more
        record.release()
    else:
        record.release(deferred=True)  # released when the last array/tensor viewing it dies
    return batch


def _decode_view(view: memoryview, copy: bool, as_torch: bool, allow_pickle: bool) -> Any:
    if len(view) < _HEADER.size:
        raise RingCorrupted(f"batch record of {len(view)} bytes is shorter than its header")
    magic, version, _flags, meta_len, _ = _HEADER.unpack_from(view, 0)
    if magic != MAGIC or version != VERSION or _HEADER.size + meta_len > len(view):
        raise RingCorrupted(
            f"not a version-{VERSION} batch record (magic {magic!r}, version {version})"
        )
    try:
        tree = json.loads(bytes(view[_HEADER.size : _HEADER.size + meta_len]))
    except (ValueError, RecursionError) as exc:  # nested past what json can parse, too
        raise RingCorrupted(f"batch record metadata is not valid JSON: {exc}") from None
    decoder = _Decoder(view, _align(_HEADER.size + meta_len), copy, as_torch, allow_pickle)
    try:
        return decoder.node(tree)
    except (RingCorrupted, RingArgumentError):
        raise
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        RuntimeError,
        SyntaxError,
    ) as exc:
        # A well-formed JSON tree with impossible contents (bad dtype string, shape, arity, a
        # null where a string belongs; numpy parses a dtype string like ",f4" with ast).
        raise RingCorrupted(f"batch record is malformed: {type(exc).__name__}: {exc}") from None

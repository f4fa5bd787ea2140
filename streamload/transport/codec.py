"""Batch codec: one collated batch <-> a byte stream carried by ring records, arrays as raw bytes.

A batch is a nested structure of dict / list / tuple over numpy arrays, torch tensors, numbers,
str, bytes and None. Its encoding is planned once without copying (``plan_batch`` walks the batch
and records where every buffer goes; a worker's columnar batch, a dict of native arrays and
`BlobColumn`s, gets the same bytes without the general walk), then written straight into ring
memory (one memcpy per array byte, no pickling of arrays):

    send(ring, batch)               # one record: the whole batch
    send(ring, batch, chunk=1 << 20)  # a batch larger than `chunk` streams as several records

**Streaming.** A batch larger than ``chunk`` bytes travels as consecutive DATA records of one
ring: the first starts with the header, each next one continues the byte stream where the last
stopped, and the batch is complete when ``total`` bytes (a header field) have arrived; the
first record always holds the header and the whole metadata. So a ring only needs to hold a few
chunks, whatever the batch size: the producer writes chunk k + 1 while the consumer copies
chunk k out and releases it. Nothing else is written to the ring between the records of one
batch; ``skip`` consumes a batch unread.

**Decoding.** ``decode(record, more=next_record)`` in copy mode (the default): a batch in one
record is decoded in place, each value copied out once (``_Decoder``); a streamed batch first
gets every buffer's final memory (numpy arrays of the declared shape; the rows of a str/bytes
list become their objects as soon as a record holds them whole, in C: ``_ring.split``) and then
each record's bytes are copied straight there and the record is released (``_Assembly``): one
copy per byte, and at most one record of the ring held at a time. ``copy=False`` (zero-copy)
needs the whole batch in one record and returns arrays/tensors that view it; the record is
released when the last of them dies (never via `torch.frombuffer`, which would not hold the
buffer export). A malformed batch raises `RingCorrupted` and never leaves a record held.

Byte stream layout (version 2, little-endian):

    0   magic b"SLB1"
    4   u16 version, u16 flags (bit 0: some leaf was pickled)
    8   u32 meta_len, u32 reserved (0)
    16  u64 total: bytes of the whole stream (header included)
    24  meta: the structure as ASCII JSON (below), meta_len bytes
    D = align64(24 + meta_len): data section; every buffer starts 64-byte aligned, at an offset
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
``as_torch=True`` converts every numeric array to a tensor. Lists of str/bytes decode as lists
(``blobs="list"``) or, with ``blobs="column"``, as one `BlobColumn` each (offsets + one
contiguous buffer, no per-item objects). Non-native byte orders are converted to native order
during the single copy. Tuple/dict subclasses (namedtuple, OrderedDict) and other objects fall
back to pickle, which also pickles any arrays inside them.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from streamload.errors import RingError
from streamload.format.blobs import BlobColumn
from streamload.transport import _ring
from streamload.transport.ring import (
    Record,
    RecordType,
    Ring,
    RingArgumentError,
    RingCorrupted,
)

__all__ = ["BatchPlan", "decode", "encode", "encoded_size", "plan_batch", "send", "skip"]

MAGIC = b"SLB1"
VERSION = 2
FLAG_PICKLE = 1
_HEADER = struct.Struct("<4sHHIIQ")
HEADER_SIZE = _HEADER.size  # bytes before the metadata (tools that rebuild records use it)
ALIGN = 64
_JSON = json.JSONEncoder(separators=(",", ":"))  # reused: json.dumps(**kwargs) builds one per call
BLOB_FORMS = ("list", "column")


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class BatchPlan:
    """The encoding of one batch, computed without copying array bytes.

    Attributes:
        nbytes: exact size of the encoded stream (`write_into` needs a buffer this large).
        has_pickle: True if some leaf fell back to pickle.
    """

    def __init__(
        self, meta: bytes, sources: list[tuple[int, int, Any]], data_nbytes: int, flags: int
    ):
        data_start = _align(_HEADER.size + len(meta))
        self.nbytes = data_start + data_nbytes
        self._prefix = _HEADER.pack(MAGIC, VERSION, flags, len(meta), 0, self.nbytes) + meta
        # (position in the stream, end, numpy array | BlobColumn | bytes-like), in stream order.
        self._sources = [(data_start + off, data_start + off + n, src) for off, n, src in sources]
        self._flat: dict[int, np.ndarray] = {}  # array sources as native bytes, for partial writes
        self.has_pickle = bool(flags & FLAG_PICKLE)

    @property
    def prefix_nbytes(self) -> int:
        """Bytes of the header and metadata (a streamed batch's first record holds them all)."""
        return len(self._prefix)

    def write_into(self, buf: Any) -> int:
        """Write the whole encoded batch into the writable buffer `buf` (e.g. a `Reservation`).

        Returns:
            The number of bytes written (`nbytes`).

        Raises:
            RingArgumentError: `buf` is smaller than `nbytes`.
        """
        dst = np.frombuffer(buf, dtype=np.uint8)
        if dst.size < self.nbytes:
            raise RingArgumentError(
                f"buffer of {dst.size} bytes is smaller than the {self.nbytes} bytes to write"
            )
        prefix = self._prefix
        raw = dst.data  # memoryview slices: cheaper than numpy ones for a plain memcpy
        raw[: len(prefix)] = prefix
        for pos, end, src in self._sources:
            if end > pos and _plain(src):
                raw[pos:end] = src.data.cast("B")
            else:
                _write_whole(dst[pos:end], src)
        return self.nbytes

    def write_range(self, buf: Any, start: int, stop: int) -> int:
        """Write bytes [start, stop) of the encoded stream to the front of `buf`.

        Alignment gaps between buffers are left as they are (the decoder never reads them).

        Returns:
            ``stop - start``.

        Raises:
            RingArgumentError: `buf` is smaller than the range, or the range is outside the stream.
        """
        if not 0 <= start <= stop <= self.nbytes:
            raise RingArgumentError(
                f"range [{start}, {stop}) is outside the {self.nbytes}-byte batch"
            )
        dst = np.frombuffer(buf, dtype=np.uint8)
        if dst.size < stop - start:
            raise RingArgumentError(
                f"buffer of {dst.size} bytes is smaller than the {stop - start} bytes to write"
            )
        prefix = self._prefix
        if start < len(prefix):
            end = min(stop, len(prefix))
            dst[: end - start] = np.frombuffer(
                prefix, dtype=np.uint8, count=end - start, offset=start
            )
        for k, (pos, end, src) in enumerate(self._sources):
            if pos >= stop:
                break
            lo, hi = max(pos, start), min(end, stop)
            if lo >= hi:
                continue
            out = dst[lo - start : hi - start]
            if lo == pos and hi == end:
                _write_whole(out, src)
            else:
                self._write_part(k, out, src, lo - pos, hi - pos)
        return stop - start

    def _write_part(self, k: int, out: np.ndarray, src: Any, lo: int, hi: int) -> None:
        if isinstance(src, BlobColumn):
            src.write_range(out, lo, hi)
        elif isinstance(src, np.ndarray):
            flat = self._flat.get(k)
            if flat is None:
                native = src.dtype.newbyteorder("=")
                flat = self._flat[k] = (
                    np.ascontiguousarray(src, dtype=native).reshape(-1).view(np.uint8)
                )
            out[:] = flat[lo:hi]
        else:
            out[:] = np.frombuffer(src, dtype=np.uint8)[lo:hi]


def _plain(src: Any) -> bool:
    """Whether `src` is a numpy array whose bytes are its encoding as they lie (one memcpy)."""
    return (
        type(src) is np.ndarray
        and src.flags.c_contiguous
        and src.dtype.isnative
        and src.dtype.kind in "biufc"
    )


def _write_whole(out: np.ndarray, src: Any) -> None:
    if isinstance(src, np.ndarray):
        if not src.nbytes:
            return
        if _plain(src):
            out.data.cast("B")[:] = src.data.cast("B")  # the common case: one memcpy
            return
        target = out.view(src.dtype.newbyteorder("=")).reshape(src.shape)
        np.copyto(target, src, casting="no" if src.dtype.isnative else "equiv")
    elif isinstance(src, BlobColumn):
        src.write_data(out)
    else:
        out.data.cast("B")[:] = memoryview(src).cast("B")


class _Planner:
    """One walk over a batch: builds the metadata tree and the list of buffers to copy."""

    def __init__(self) -> None:
        self.sources: list[tuple[int, int, Any]] = []  # (offset, nbytes, buffer)
        self.size = 0
        self.flags = 0

    def _add(self, src: Any, nbytes: int) -> int:
        offset = self.size
        self.sources.append((offset, nbytes, src))
        self.size = (offset + nbytes + ALIGN - 1) & ~(ALIGN - 1)
        return offset

    def node(self, obj: Any) -> Any:
        kind = type(obj)
        if obj is None or kind is bool or kind is int or kind is float or kind is str:
            return obj
        if kind is dict:
            keys = [k if type(k) is str else self.node(k) for k in obj]
            return ["d", keys, [self.node(v) for v in obj.values()]]
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
            nbytes = obj.nbytes
            return [
                "ls" if obj.text else "lb",
                self._add(obj.offsets, obj.offsets.nbytes),
                len(obj),
                self._add(obj, nbytes),
                nbytes,
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
        A `BatchPlan`; `plan.nbytes` is the exact stream size, `plan.write_into(buf)` writes it.
    """
    if type(batch) is dict:
        plan = _plan_columns(batch)
        if plan is not None:
            return plan
    return _plan_walk(batch)


def _plan_walk(batch: Any) -> BatchPlan:
    """`plan_batch` by the general walk over any supported structure."""
    planner = _Planner()
    tree = planner.node(batch)
    meta = _JSON.encode(tree).encode("ascii")
    return BatchPlan(meta, planner.sources, planner.size, planner.flags)


_KEYS_JSON: dict[tuple[str, ...], str] = {}  # a columnar batch's keys, as JSON (few per run)


def _plan_columns(batch: dict[Any, Any]) -> BatchPlan | None:
    """`plan_batch` of a worker's columnar batch (str keys; C-contiguous native numeric numpy
    arrays and `BlobColumn` values, nothing else) without the general walk: the metadata is the
    very text `_Planner` would write, formatted directly. None for any other batch."""
    parts: list[str] = []
    planner = _Planner()  # its buffer bookkeeping, not its walk
    for value in batch.values():
        kind = type(value)
        if kind is np.ndarray:
            if not _plain(value):
                return None
            at = planner._add(value, value.nbytes)
            shape = ",".join(map(str, value.shape))
            parts.append(f'["a",{at},[{shape}],"{value.dtype.str}","np"]')
        elif kind is BlobColumn:
            offsets_at = planner._add(value.offsets, value.offsets.nbytes)
            nbytes = value.nbytes
            at = planner._add(value, nbytes)
            tag = "ls" if value.text else "lb"
            parts.append(f'["{tag}",{offsets_at},{len(value)},{at},{nbytes}]')
        else:
            return None
    keys = tuple(batch)
    keys_json = _KEYS_JSON.get(keys)
    if keys_json is None:
        if not all(type(k) is str for k in keys):
            return None
        if len(_KEYS_JSON) >= 64:  # batches whose keys keep changing: stay bounded
            _KEYS_JSON.clear()
        keys_json = _KEYS_JSON[keys] = _JSON.encode(list(keys))
    meta = f'["d",{keys_json},[{",".join(parts)}]]'.encode("ascii")
    return BatchPlan(meta, planner.sources, planner.size, 0)


def encoded_size(batch: Any) -> int:
    """Exact size in bytes of the stream `batch` encodes to."""
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
    chunk: int | None = None,
) -> int:
    """Encode `batch` straight into `ring`: one record, or a stream of records of `chunk` bytes.

    Args:
        chunk: None writes the batch as one record (``decode(copy=False)`` needs that); an int
            (a multiple of 64) streams a batch larger than `chunk` as consecutive records of at
            most `chunk` bytes, waiting for space before each (see the module docstring).
        timeout: seconds to wait for ring space, per record.

    Returns:
        The sequence number of the batch's first record.

    Raises:
        RecordTooLarge: one record would exceed the ring's max_record (names ring_size).
        RingTimeout, RingClosed, ConsumerDied: as `Ring.reserve`.
        RingArgumentError: `chunk` is not a positive multiple of 64.
    """
    plan = plan_batch(batch)
    if chunk is None or plan.nbytes <= chunk:
        with ring.reserve(plan.nbytes, timeout=timeout) as res:
            plan.write_into(res)
            return res.commit(type=type, seq=seq)
    if chunk <= 0 or chunk % ALIGN:
        raise RingArgumentError(f"chunk must be a positive multiple of {ALIGN}, got {chunk}")
    # The first record carries the header and the whole metadata, whatever `chunk` says.
    start, stop = 0, max(chunk, _align(plan.prefix_nbytes))
    first = -1
    while start < plan.nbytes:
        stop = min(stop, plan.nbytes)
        with ring.reserve(stop - start, timeout=timeout) as res:
            plan.write_range(res, start, stop)
            committed = res.commit(type=type, seq=seq if first < 0 else None)
        first = committed if first < 0 else first
        start, stop = stop, stop + chunk
    return first


# -- decoding ------------------------------------------------------------------------------------


def decode(
    data: Record | bytes | bytearray | memoryview,
    *,
    copy: bool = True,
    as_torch: bool = False,
    allow_pickle: bool = True,
    blobs: str = "list",
    more: Callable[[], Record] | None = None,
    tally: list[int] | None = None,
) -> Any:
    """Decode one batch from its first record (and, for a streamed batch, the records after it).

    Args:
        data: a `Record` from `Ring.get` (or any bytes-like holding a whole encoded batch).
        copy: True gives every buffer its own memory, copies each record there and releases it
            at once; False returns arrays/tensors viewing the record, which is released when the
            last of them (and the record object) is gone (the batch must be one record).
        as_torch: also turn numpy-origin numeric arrays into tensors.
        allow_pickle: refuse batches with pickled leaves when False.
        blobs: ``"list"``: lists of str/bytes decode as lists; ``"column"``: as `BlobColumn`.
        more: returns the next record of the same ring, for a batch streamed in several.
        tally: if given, ``tally[0]`` grows by the batch's data bytes as the metadata gives them
            (arrays' nbytes, the UTF-8/raw bytes of str/bytes leaves): what a loader counts as
            delivered without a pass over the decoded rows.

    Returns:
        The batch, with the structure and leaf types it was encoded with.

    Raises:
        RingCorrupted: the bytes are not a valid batch (or a stream ends early).
        RingArgumentError: a pickled leaf and allow_pickle=False; copy=False on a streamed batch;
            an unknown `blobs` form.
    """
    try:
        return _decode(
            data,
            copy=copy,
            as_torch=as_torch,
            allow_pickle=allow_pickle,
            blobs=blobs,
            more=more,
            tally=tally,
        )
    except RingError:
        raise
    except _MALFORMED as exc:
        # A well-formed JSON tree with impossible contents (bad dtype string, shape, arity, a
        # null where a string belongs; numpy parses a dtype string like ",f4" with ast).
        raise RingCorrupted(f"batch record is malformed: {type(exc).__name__}: {exc}") from None


_MALFORMED = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RuntimeError,
    SyntaxError,
)


def _decode(
    data: Record | bytes | bytearray | memoryview,
    *,
    copy: bool = True,
    as_torch: bool = False,
    allow_pickle: bool = True,
    blobs: str = "list",
    more: Callable[[], Record] | None = None,
    tally: list[int] | None = None,
) -> Any:
    """`decode` without the translation of stray exceptions into RingCorrupted."""
    if blobs not in BLOB_FORMS:
        raise RingArgumentError(f"blobs must be one of {BLOB_FORMS}, got {blobs!r}")
    record = data if isinstance(data, Record) else None
    view = record.view(writable=not copy) if record is not None else memoryview(data).cast("B")
    try:
        _, meta_len, total = _parse_header(view)
        if _HEADER.size + meta_len > len(view):
            raise RingCorrupted(f"batch metadata of {meta_len} bytes runs past its first record")
        tree = _parse_meta(view[_HEADER.size : _HEADER.size + meta_len])
        data_start = _align(_HEADER.size + meta_len)
        if total == len(view):  # the whole batch in one record: decode it in place
            if copy and blobs == "list":
                columns = _copy_columns(view, tree, data_start, as_torch)
                if columns is not None:
                    if tally is not None:
                        tally[0] += columns[1]
                    return columns[0]
            decoder = _Decoder(view, data_start, copy, as_torch, allow_pickle, blobs)
            batch = decoder.run(tree)
            if tally is not None:
                tally[0] += decoder.nbytes
            if record is not None and not copy:
                record.release(deferred=True)  # when the last array/tensor viewing it dies
            return batch
        if not copy:
            raise RingArgumentError(
                f"zero-copy decoding needs the whole batch in one record ({len(view)} of"
                f" {total} bytes here): send it without chunk="
            )
        assembly = _Assembly(tree, data_start, total, as_torch, allow_pickle, blobs)
        if tally is not None:
            tally[0] += assembly.nbytes
        part: np.ndarray | None = np.frombuffer(view, dtype=np.uint8)
        assert part is not None
        assembly.feed(part, 0)
        pos = len(part)
        part = None
    finally:
        if copy:  # every value was copied out: nothing views the record any more
            try:
                view.release()
                if record is not None:
                    record.release()
            except BufferError:  # an error left arrays over it alive: they release it
                if record is not None:
                    record.release(deferred=True)
    while pos < total:
        if more is None:
            raise RingCorrupted(
                f"batch of {total} bytes continues after its first {pos} bytes but no further"
                " records were given"
            )
        rec = more()
        try:
            part = np.frombuffer(rec, dtype=np.uint8)  # type: ignore[call-overload]
            if rec.type != RecordType.DATA or not len(part):
                raise RingCorrupted("a batch's records were interrupted by another record")
            assembly.feed(part, pos)
            pos += len(part)
        finally:
            part = None
            try:
                rec.release()
            except BufferError:  # an error left a slice of it alive (traceback): it releases it
                rec.release(deferred=True)
    if pos != total:
        raise RingCorrupted(f"batch records carry {pos} bytes where the header says {total}")
    return assembly.result()


def _copy_columns(
    view: memoryview, tree: Any, base: int, as_torch: bool
) -> tuple[dict[str, Any], int] | None:
    """A whole-record columnar batch (str keys; numeric arrays and lists of str/bytes: what a
    worker sends) copied out with no per-node dispatch, as (batch, data bytes); None for any
    other tree, which the general `_Decoder` then decodes from the start. Every offset and size
    is checked against the record as there (numpy refuses a read past the buffer)."""
    if type(tree) is not list or len(tree) != 3 or tree[0] != "d":
        return None
    keys, values = tree[1], tree[2]
    if type(keys) is not list or type(values) is not list or len(keys) != len(values):
        return None
    out: dict[str, Any] = {}
    nbytes = 0
    for key, node in zip(keys, values, strict=True):
        if type(key) is not str or type(node) is not list or len(node) != 5:
            return None
        tag, offset, a, b, c = node
        if type(offset) is not int or offset < 0:
            return None
        if tag == "a":  # a, b, c: shape, dtype string, origin
            dtype = _DTYPES.get(b) if type(b) is str else None
            if dtype is None or type(a) is not list or c not in ("np", "torch"):
                return None
            if len(a) == 1 and type(a[0]) is int and a[0] >= 0:
                arr = np.frombuffer(view, dtype, a[0], base + offset).copy()
            elif all(type(d) is int and d >= 0 for d in a):
                count = math.prod(a)
                arr = np.frombuffer(view, dtype, count, base + offset).reshape(a).copy()
            else:
                return None
            nbytes += arr.nbytes
            if c == "torch" or (as_torch and dtype.kind in "biufc"):
                try:
                    out[key] = torch.from_numpy(arr)
                    continue
                except TypeError:
                    pass  # a numpy dtype torch lacks: keep the array
            out[key] = arr
        elif tag == "ls" or tag == "lb":  # a, b, c: row count, blob offset, blob bytes
            if not (type(a) is int and type(b) is int and type(c) is int):
                return None
            if a < 0 or b < 0 or c < 0:
                return None
            offsets = np.frombuffer(view, np.int64, a + 1, base + offset)
            blob = np.frombuffer(view, np.uint8, c, base + b)
            _check_string_offsets(offsets, c)
            out[key] = _split_rows(blob, offsets, tag == "ls")
            nbytes += c
        else:
            return None
    return out, nbytes


def _check_string_offsets(offsets: np.ndarray, blob_n: int) -> None:
    if offsets[0] or int(offsets[-1]) != blob_n:
        raise RingCorrupted("batch record has inconsistent string offsets")


def _split_rows(blob: np.ndarray, offsets: np.ndarray, text: bool) -> list[Any]:
    """A str/bytes list's rows, each copied out of the record (`_ring.split`)."""
    try:
        return _ring.split(blob, offsets, text)
    except ValueError as exc:  # offsets out of order or outside the blob, bad UTF-8
        raise RingCorrupted(f"batch record has an inconsistent string list: {exc}") from None


def skip(data: Record, more: Callable[[], Record]) -> None:
    """Consume one batch unread: release its first record and every record it continues in.

    Raises:
        RingCorrupted: the first record is not the start of a batch.
    """
    with data.view() as view:
        _, _, total = _parse_header(view)
    pos = len(data)
    data.release()
    while pos < total:
        rec = more()
        pos += len(rec)
        rec.release()


def _parse_header(head: Any) -> tuple[int, int, int]:
    """(flags, meta_len, total) from the first bytes of a stream."""
    if len(head) < _HEADER.size:
        raise RingCorrupted(f"batch record of {len(head)} bytes is shorter than its header")
    magic, version, flags, meta_len, _, total = _HEADER.unpack_from(head, 0)
    if magic != MAGIC or version != VERSION or total < _HEADER.size + meta_len:
        raise RingCorrupted(
            f"not a version-{VERSION} batch record (magic {magic!r}, version {version})"
        )
    return flags, meta_len, total


def _parse_meta(meta: Any) -> Any:
    try:
        return _JSON_DECODER.decode(str(meta, "ascii"))
    except (ValueError, RecursionError) as exc:  # nested past what json can parse, too
        raise RingCorrupted(f"batch record metadata is not valid JSON: {exc}") from None


_JSON_DECODER = json.JSONDecoder()
_DTYPES: dict[str, np.dtype[Any]] = {}


def _dtype(name: Any) -> np.dtype[Any]:
    """The numpy dtype a metadata string names (cached: a batch names the same few each time)."""
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = np.dtype(name)
        if dtype.hasobject:
            raise RingCorrupted("batch record declares an object array")
        if len(_DTYPES) < 256:
            _DTYPES[name] = dtype
    return dtype


class _Sink:
    """Where one buffer of the batch goes: stream range [start, stop) and its final value."""

    start = 0
    stop = 0

    def feed(self, part: np.ndarray, at: int) -> None:
        raise NotImplementedError

    def value(self) -> Any:
        raise NotImplementedError


class _ArraySink(_Sink):
    """An array leaf: its memory is allocated with the final shape and dtype up front."""

    def __init__(self, node: list[Any], base: int, total: int, as_torch: bool) -> None:
        _, offset, shape, dtype_str, origin = node
        self.torch_dtype: torch.dtype | None = None
        if origin.startswith("torch:"):
            torch_dtype = getattr(torch, origin.removeprefix("torch:"), None)
            if not isinstance(torch_dtype, torch.dtype):
                raise RingCorrupted(f"batch record names an unknown torch dtype {origin!r}")
            self.torch_dtype = torch_dtype
            nbytes = math.prod(shape) * torch_dtype.itemsize
        else:
            dtype = _dtype(dtype_str)
            nbytes = math.prod(shape) * dtype.itemsize
        self.start, self.stop = _span(base, offset, nbytes, total)
        if self.torch_dtype is not None:
            self.array = np.empty(nbytes, np.uint8)
            self.flat = self.array
        else:
            self.array = np.empty(shape, dtype)
            self.flat = self.array.reshape(-1).view(np.uint8)
        self.shape = shape
        self.to_torch = origin == "torch" or (as_torch and self.array.dtype.kind in "biufc")

    def feed(self, part: np.ndarray, at: int) -> None:
        self.flat[at : at + len(part)] = part

    def value(self) -> Any:
        if self.torch_dtype is not None:
            return torch.from_numpy(self.array).view(self.torch_dtype).reshape(self.shape)
        if self.to_torch:
            try:
                return torch.from_numpy(self.array)
            except TypeError:
                return self.array  # a numpy dtype torch lacks: keep the array
        return self.array


class _BytesSink(_Sink):
    """A bytes / bytearray / pickle leaf."""

    def __init__(self, node: list[Any], base: int, total: int, allow_pickle: bool) -> None:
        tag, offset, nbytes = node
        if tag == "p" and not allow_pickle:
            raise RingArgumentError("batch record contains a pickled object and allow_pickle=False")
        self.tag = tag
        self.start, self.stop = _span(base, offset, nbytes, total)
        self.data = bytearray(nbytes)
        self.flat: np.ndarray | None = np.frombuffer(self.data, np.uint8)

    def feed(self, part: np.ndarray, at: int) -> None:
        assert self.flat is not None
        self.flat[at : at + len(part)] = part

    def value(self) -> Any:
        self.flat = None  # a bytearray handed out must be resizable: no export may remain
        if self.tag == "ba":
            return self.data
        if self.tag == "b":
            return bytes(self.data)
        return pickle.loads(self.data)


class _OffsetsSink(_Sink):
    """The int64 offsets[n + 1] of a str/bytes list."""

    def __init__(self, base: int, offset: int, count: int, total: int) -> None:
        self.start, self.stop = _span(base, offset, (count + 1) * 8, total)
        self.array = np.zeros(count + 1, np.int64)
        self.flat = self.array.view(np.uint8)

    def feed(self, part: np.ndarray, at: int) -> None:
        self.flat[at : at + len(part)] = part


class _ItemsSink(_Sink):
    """The rows of a str/bytes list: each becomes its object straight from the record it lies in
    (a row split across two records is gathered first), or all land in one contiguous buffer
    (``blobs="column"``)."""

    def __init__(
        self, node: list[Any], base: int, total: int, offsets: _OffsetsSink, column: bool
    ) -> None:
        tag, _, count, blob_off, blob_n = node
        self.text = tag == "ls"
        self.count = count
        self.nbytes = blob_n
        self.start, self.stop = _span(base, blob_off, blob_n, total)
        self.offsets = offsets
        self.column = column
        self.data = np.empty(blob_n, np.uint8) if column else None
        self.items: list[Any] = []
        self.next = 0  # first row not yet complete
        self.partial: np.ndarray | None = None
        self.checked = False

    def _check(self) -> None:
        if self.checked:
            return
        offs = self.offsets.array
        if offs[0] != 0 or offs[-1] != self.nbytes or (np.diff(offs) < 0).any():
            raise RingCorrupted("batch record has inconsistent string offsets")
        self.checked = True

    def feed(self, part: np.ndarray, at: int) -> None:
        self._check()
        if self.data is not None:
            self.data[at : at + len(part)] = part
            return
        offs = self.offsets.array
        end = at + len(part)
        i = self.next
        if self.partial is not None:  # row i began in an earlier record
            row_start, row_end = int(offs[i]), int(offs[i + 1])
            take = min(row_end, end) - at
            self.partial[at - row_start : at - row_start + take] = part[:take]
            if row_end > end:
                return
            self.items.append(self._item(self.partial))
            self.partial = None
            i += 1
        j = i + int(np.searchsorted(offs[i:], end, side="right")) - 1  # rows i..j-1 end by `end`
        if j > i:
            rel = offs[i : j + 1] if at == 0 else offs[i : j + 1] - at
            self.items.extend(_ring.split(part, rel, self.text))
            i = j
        if i < self.count and offs[i] < end:  # row i continues in the next record
            head = part[int(offs[i]) - at :]
            self.partial = np.empty(int(offs[i + 1] - offs[i]), np.uint8)
            self.partial[: len(head)] = head
        self.next = i

    def _item(self, raw: np.ndarray) -> Any:
        data = raw.tobytes()  # rare: only rows cut by a record boundary come here
        return data.decode("utf-8", "surrogatepass") if self.text else data

    def value(self) -> Any:
        self._check()
        if self.data is not None:
            return BlobColumn(self.text, self.offsets.array, self.data)
        # Rows after the last fed byte are empty (a zero-byte blob is never fed at all).
        self.items.extend(["" if self.text else b""] * (self.count - len(self.items)))
        return self.items


def _span(base: int, offset: Any, nbytes: int, total: int) -> tuple[int, int]:
    if not (isinstance(offset, int) and offset >= 0 and nbytes >= 0):
        raise RingCorrupted(f"batch record buffer [{offset}, +{nbytes}) is malformed")
    start = base + offset
    if start + nbytes > total:
        raise RingCorrupted(f"batch record buffer [{offset}, +{nbytes}) lies outside the record")
    return start, start + nbytes


class _Assembly:
    """Copy-mode decoding of one stream: sinks for every buffer, fed record by record."""

    def __init__(
        self, tree: Any, base: int, total: int, as_torch: bool, allow_pickle: bool, blobs: str
    ) -> None:
        self.tree = tree
        self.base = base
        self.total = total
        self.as_torch = as_torch
        self.allow_pickle = allow_pickle
        self.column = blobs == "column"
        self.sinks: dict[int, _Sink | tuple[_OffsetsSink, _ItemsSink]] = {}
        self.slots: list[_Sink] = []
        self.nbytes = 0  # data bytes of the batch's leaves (offsets arrays not counted)
        try:
            self._plan(tree)
        except (RingCorrupted, RingArgumentError):
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError) as exc:
            raise RingCorrupted(f"batch record is malformed: {type(exc).__name__}: {exc}") from None
        self.slots.sort(key=lambda s: s.start)
        self.cursor = 0

    def _plan(self, node: Any) -> None:
        if not isinstance(node, list):
            return
        tag = node[0] if node and isinstance(node[0], str) else None
        if tag == "d":
            for child in (*node[1], *node[2]):
                self._plan(child)
        elif tag in ("l", "t"):
            for child in node[1]:
                self._plan(child)
        elif tag == "a":
            sink: _Sink = _ArraySink(node, self.base, self.total, self.as_torch)
            self.nbytes += sink.stop - sink.start
            self._add(node, sink)
        elif tag in ("b", "ba", "p"):
            sink = _BytesSink(node, self.base, self.total, self.allow_pickle)
            self.nbytes += sink.stop - sink.start
            self._add(node, sink)
        elif tag in ("ls", "lb"):
            offsets = _OffsetsSink(self.base, node[1], node[2], self.total)
            items = _ItemsSink(node, self.base, self.total, offsets, self.column)
            self.nbytes += items.nbytes
            self.sinks[id(node)] = (offsets, items)
            self.slots += (offsets, items)
        else:
            raise RingCorrupted(f"batch record has an unknown metadata node {str(node)[:80]!r}")

    def _add(self, node: list[Any], sink: _Sink) -> None:
        self.sinks[id(node)] = sink
        self.slots.append(sink)

    def feed(self, part: np.ndarray, pos: int) -> None:
        """Route stream bytes [pos, pos + len(part)) to the sinks they belong to.

        Raises:
            RingCorrupted: the bytes contradict the metadata (offsets, UTF-8 text).
        """
        try:
            self._feed(part, pos)
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            raise RingCorrupted(f"batch record is malformed: {type(exc).__name__}: {exc}") from None

    def _feed(self, part: np.ndarray, pos: int) -> None:
        end = pos + len(part)
        slots, k = self.slots, self.cursor
        while k < len(slots):
            sink = slots[k]
            if sink.start >= end:
                break
            lo, hi = max(sink.start, pos), min(sink.stop, end)
            if hi > lo:
                sink.feed(part[lo - pos : hi - pos], lo - sink.start)
            if sink.stop > end:
                break
            k += 1
        self.cursor = k

    def result(self) -> Any:
        try:
            return self._value(self.tree)
        except (RingCorrupted, RingArgumentError):
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as exc:
            raise RingCorrupted(f"batch record is malformed: {type(exc).__name__}: {exc}") from None

    def _value(self, node: Any) -> Any:
        if not isinstance(node, list):
            return node
        tag = node[0]
        if tag == "d":
            return dict(zip(map(self._value, node[1]), map(self._value, node[2]), strict=True))
        if tag == "l":
            return [self._value(v) for v in node[1]]
        if tag == "t":
            return tuple(self._value(v) for v in node[1])
        sink = self.sinks[id(node)]
        if isinstance(sink, tuple):
            return sink[1].value()
        return sink.value()


# -- decoding a whole record in place ------------------------------------------------------------


class _Decoder:
    """Values from one whole record: copied out of it (copy=True) or viewing it (copy=False)."""

    def __init__(
        self,
        view: memoryview,
        data_start: int,
        copy: bool,
        as_torch: bool,
        allow_pickle: bool,
        blobs: str,
    ):
        self.view = view
        self.base = data_start
        self.limit = len(view)
        self.copy = copy
        self.as_torch = as_torch
        self.allow_pickle = allow_pickle
        self.column = blobs == "column"
        self.nbytes = 0  # data bytes of the leaves decoded so far (offsets arrays not counted)

    def run(self, tree: Any) -> Any:
        try:
            return self.node(tree)
        except (RingCorrupted, RingArgumentError):
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as exc:
            # A well-formed JSON tree with impossible contents (bad dtype string, shape, arity).
            raise RingCorrupted(f"batch record is malformed: {type(exc).__name__}: {exc}") from None

    def node(self, n: Any) -> Any:
        if not isinstance(n, list):
            return n
        handler = _HANDLERS.get(n[0]) if n and isinstance(n[0], str) else None
        if handler is None:
            raise RingCorrupted(f"batch record has an unknown metadata node {str(n)[:80]!r}")
        return handler(self, n)

    def _dict(self, n: list[Any]) -> Any:
        node = self.node
        return {
            k if type(k) is str else node(k): v if type(v) is not list else node(v)
            for k, v in zip(n[1], n[2], strict=True)
        }

    def _list(self, n: list[Any]) -> Any:
        return [self.node(v) for v in n[1]]

    def _tuple(self, n: list[Any]) -> Any:
        return tuple(self.node(v) for v in n[1])

    def _bytes_node(self, n: list[Any]) -> Any:
        return bytes(self._bytes(n[1], n[2]))

    def _bytearray_node(self, n: list[Any]) -> Any:
        return bytearray(self._bytes(n[1], n[2]))

    def _bytes(self, offset: int, nbytes: int) -> memoryview:
        start = self.base + offset
        if not (offset >= 0 and nbytes >= 0 and start + nbytes <= self.limit):
            raise RingCorrupted(
                f"batch record buffer [{offset}, +{nbytes}) lies outside the record"
            )
        self.nbytes += nbytes
        return self.view[start : start + nbytes]

    def _array(self, n: list[Any]) -> Any:
        _, offset, shape, dtype_str, origin = n
        count = math.prod(shape)
        if origin != "np" and origin.startswith("torch:"):
            torch_dtype = getattr(torch, origin.removeprefix("torch:"), None)
            if not isinstance(torch_dtype, torch.dtype):
                raise RingCorrupted(f"batch record names an unknown torch dtype {origin!r}")
            nbytes = count * torch_dtype.itemsize
            raw = np.frombuffer(self._bytes(offset, nbytes), dtype=np.uint8, count=nbytes)
            if self.copy or not raw.flags.writeable:
                raw = raw.copy()
            return torch.from_numpy(raw).view(torch_dtype).reshape(shape)
        dtype = _dtype(dtype_str)
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

    def _blob_list(self, n: list[Any]) -> Any:
        tag, off, count, blob_off, blob_n = n
        offsets = np.frombuffer(self._bytes(off, (count + 1) * 8), dtype=np.int64)
        self.nbytes -= (count + 1) * 8  # the rows' bytes count, not their offsets
        blob = np.frombuffer(self._bytes(blob_off, blob_n), dtype=np.uint8)
        _check_string_offsets(offsets, blob_n)
        if self.column:
            if (np.diff(offsets) < 0).any():
                raise RingCorrupted("batch record has inconsistent string offsets")
            if self.copy:
                offsets, blob = offsets.copy(), blob.copy()
            return BlobColumn(tag == "ls", offsets, blob)
        return _split_rows(blob, offsets, tag == "ls")

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
    "ls": _Decoder._blob_list,
    "lb": _Decoder._blob_list,
    "p": _Decoder._unpickle,
}

"""The batch codec (streamload.transport): exact round trips, no pickle for arrays, lifetimes."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamload.format.blobs import BlobColumn
from streamload.transport import codec
from streamload.transport.codec import BatchPlan, decode, encode, encoded_size, plan_batch, send
from streamload.transport.ring import (
    Record,
    RecordTooLarge,
    RecordType,
    Ring,
    RingArgumentError,
    RingCorrupted,
    RingTimeout,
)

REPO = Path(__file__).resolve().parents[3]


def make_pair(capacity: int = 1 << 20) -> tuple[Ring, Ring]:
    cons = Ring.create(capacity)
    return cons, Ring.attach(cons.handle(), "producer")


def assert_same(a: object, b: object) -> None:
    """Structural equality that also compares leaf types, dtypes and shapes."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, float) and a != a:
        assert b != b  # NaN
    else:
        assert a == b


def columnar_batch() -> dict[str, object]:
    return {
        "image": np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        "label": np.array([3, 7], dtype=np.int64),
        "tokens": torch.arange(10, dtype=torch.int32).reshape(2, 5),
        "text": ["hello", "wörld ✓"],
        "blobs": [b"\x00\x01", b""],
        "id": 7,
        "scale": 0.5,
        "flag": True,
        "name": "batch",
        "nothing": None,
    }


def test_columnar_batch_round_trips_without_pickle() -> None:
    """Arrays, tensors, string/bytes lists and scalars decode to equal values with no pickle."""
    batch = columnar_batch()
    plan = plan_batch(batch)
    assert not plan.has_pickle
    blob = encode(batch)
    assert len(blob) == plan.nbytes == encoded_size(batch)
    assert b"pickle" not in blob and b"\x80\x05" not in blob  # no pickle stream anywhere
    assert_same(decode(blob), batch)


def test_metadata_is_json_and_buffers_are_64_byte_aligned() -> None:
    """The structure is plain JSON; every array starts at a 64-byte aligned offset."""
    blob = encode({"a": np.zeros(3, np.float64), "b": np.ones(5, np.int8)})
    magic, version, flags, meta_len, _, total = struct.unpack_from("<4sHHIIQ", blob)
    assert (magic, version, flags, total) == (b"SLB1", 2, 0, len(blob))
    tree = json.loads(blob[24 : 24 + meta_len])
    data_start = (24 + meta_len + 63) // 64 * 64
    offsets = [node[1] for node in tree[2]]
    assert all((data_start + off) % 64 == 0 for off in offsets)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.float32,
        torch.float64,
        torch.bfloat16,
        torch.complex64,
    ],
)
def test_every_torch_dtype_keeps_its_dtype(dtype: torch.dtype) -> None:
    """Tensors come back with the same dtype, bool and bfloat16 (no numpy twin) included."""
    tensor = (torch.arange(12) % 3).to(dtype).reshape(3, 4)
    out = decode(encode({"t": tensor, "scalar": tensor[0, 0]}))
    assert_same(out, {"t": tensor, "scalar": tensor[0, 0]})


def test_non_contiguous_and_byte_swapped_arrays_are_copied_once_into_native_layout() -> None:
    """Strided views and big-endian arrays decode to equal, native, contiguous arrays."""
    base = np.arange(40, dtype=np.float32).reshape(5, 8)
    swapped = np.arange(6, dtype=">i4")
    out = decode(
        encode(
            {"strided": base[::2, 1::3], "swapped": swapped, "t": torch.arange(9).reshape(3, 3).T}
        )
    )
    np.testing.assert_array_equal(out["strided"], base[::2, 1::3])
    assert out["strided"].flags.c_contiguous
    assert out["swapped"].dtype == np.dtype("int32") and out["swapped"].dtype.isnative
    np.testing.assert_array_equal(out["swapped"], swapped)
    assert torch.equal(out["t"], torch.arange(9).reshape(3, 3).T)


def test_other_objects_fall_back_to_flagged_pickle() -> None:
    """A set (no native encoding) is pickled, flagged in the header, and refusable."""
    batch = {"tags": {1, 2}, "x": np.ones(2)}
    plan = plan_batch(batch)
    assert plan.has_pickle
    blob = encode(batch)
    assert struct.unpack_from("<4sHH", blob)[2] & 1
    assert_same(decode(blob), batch)
    with pytest.raises(RingArgumentError, match="allow_pickle=False"):
        decode(blob, allow_pickle=False)


def test_as_torch_turns_numeric_numpy_arrays_into_tensors() -> None:
    """as_torch=True converts numeric numpy arrays; unicode arrays stay numpy."""
    out = decode(encode({"x": np.arange(3), "u": np.array(["a", "bc"])}), as_torch=True)
    assert isinstance(out["x"], torch.Tensor) and out["x"].dtype == torch.int64
    assert isinstance(out["u"], np.ndarray) and out["u"].tolist() == ["a", "bc"]


leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=50),
    hnp.arrays(
        dtype=st.sampled_from(
            [np.int8, np.uint16, np.int64, np.float32, np.float64, np.bool_, np.complex128]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    st.lists(st.text(max_size=10), min_size=1, max_size=5),
    st.lists(st.binary(max_size=10), min_size=1, max_size=5),
)
batches = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(batch=batches)
def test_any_supported_batch_round_trips_exactly(batch: object) -> None:
    """Any nesting of supported leaves decodes to an equal structure with equal leaf types."""
    plan = plan_batch(batch)
    assert not plan.has_pickle
    assert_same(decode(encode(batch)), batch)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300), cut=st.integers(0, 400))
def test_garbage_payloads_raise_ring_corrupted_not_crash(garbage: bytes, cut: int) -> None:
    """Scribbled payloads decode or raise RingCorrupted; nothing else escapes, nothing crashes."""
    blob = bytearray(encode(columnar_batch()))
    blob[cut : cut + len(garbage)] = garbage
    # RingArgumentError: the scribble produced a pickle node, which allow_pickle=False refuses.
    with contextlib.suppress(RingCorrupted, RingArgumentError):
        decode(bytes(blob), allow_pickle=False)


def _record(meta: bytes, data: bytes = b"") -> bytes:
    """A version-2 batch record around hand-made metadata and data (header, meta, padding)."""
    pad = bytes(-(24 + len(meta)) % 64) if data else b""
    total = 24 + len(meta) + len(pad) + len(data)
    return struct.pack("<4sHHIIQ", b"SLB1", 2, 0, len(meta), 0, total) + meta + pad + data


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_metadata_nested_past_what_json_parses_is_ring_corrupted(opener: str) -> None:
    """Found by benchmarks/fuzz.py: metadata nested 100,000 deep raised RecursionError from
    json.loads; it is a RingCorrupted like any other malformed record."""
    depth = 100_000
    inner, closer = ("", "]") if opener == "[" else ("1", "}")
    meta = (opener * depth + inner + closer * depth).encode()
    record = _record(meta)
    with pytest.raises(RingCorrupted, match="metadata is not valid JSON"):
        decode(record, allow_pickle=False)


@pytest.mark.parametrize("dtype", [",f4", "(,)f4", "f4,(,)i2", "[", 7])
def test_a_hostile_dtype_string_is_ring_corrupted(dtype: object) -> None:
    """Found by benchmarks/fuzz.py: numpy parses dtype strings like ",f4" with ast and raised
    SyntaxError; every dtype that is not one is a RingCorrupted."""
    meta = json.dumps(["a", 0, [1], dtype, "np"]).encode()
    record = _record(meta, bytes(64))
    with pytest.raises(RingCorrupted, match="batch record is malformed"):
        decode(record, allow_pickle=False)


def test_send_writes_straight_into_the_ring_and_decode_copy_releases_at_once() -> None:
    """send() reserves exactly encoded_size; decode(copy=True) releases the record immediately."""
    cons, prod = make_pair()
    batch = columnar_batch()
    seq = send(prod, batch)
    rec = cons.get(timeout=0)
    assert rec.seq == seq and rec.nbytes == encoded_size(batch)
    out = decode(rec)
    assert rec.released and cons.stats()["bytes_in_use"] == 0
    assert_same(out, batch)


def test_zero_copy_decode_keeps_the_record_until_the_last_tensor_dies() -> None:
    """decode(copy=False) tensors view ring memory; the space returns when the last one is gone."""
    cons, prod = make_pair()
    send(
        prod,
        {"a": torch.arange(1000), "b": np.arange(10.0), "c": torch.ones(4, dtype=torch.bfloat16)},
    )
    rec = cons.get(timeout=0)
    out = decode(rec, copy=False)
    del rec
    gc.collect()
    a, b, c = out["a"], out["b"], out["c"]
    del out
    assert cons.stats()["bytes_held"] > 0
    assert int(a.sum()) == sum(range(1000))
    del a, b
    assert cons.stats()["bytes_held"] > 0  # c still views the record
    assert c.float().sum().item() == 4.0
    del c
    assert cons.stats()["bytes_in_use"] == 0


def test_zero_copy_tensors_view_ring_memory_not_a_copy() -> None:
    """copy=False really is zero-copy: the tensor's data pointer lies inside the record."""
    cons, prod = make_pair()
    send(prod, {"a": torch.arange(64, dtype=torch.int64)})
    rec = cons.get(timeout=0)
    start = np.frombuffer(rec, dtype=np.uint8).ctypes.data
    out = decode(rec, copy=False)
    assert start <= out["a"].data_ptr() < start + rec.nbytes
    assert out["a"].data_ptr() % 64 == 0


def test_batch_too_large_for_the_ring_names_ring_size() -> None:
    """A batch that cannot fit raises RecordTooLarge and publishes nothing."""
    cons, prod = make_pair(1 << 12)
    with pytest.raises(RecordTooLarge, match="raise ring_size"):
        send(prod, {"x": np.zeros(10_000, np.uint8)})
    send(prod, {"x": np.zeros(10, np.uint8)})
    out = decode(cons.get(timeout=0))
    assert out["x"].shape == (10,)


def test_failure_while_writing_aborts_the_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    """If writing the batch fails half-way, nothing is published and the producer continues."""
    cons, prod = make_pair()
    original = BatchPlan.write_into

    def write_then_fail(self: BatchPlan, buf: object) -> int:
        original(self, buf)
        raise RuntimeError("decoder blew up")

    monkeypatch.setattr(BatchPlan, "write_into", write_then_fail)
    with pytest.raises(RuntimeError, match="decoder blew up"):
        send(prod, {"x": np.ones(100)})
    monkeypatch.undo()
    with pytest.raises(RingTimeout):
        cons.get(timeout=0)
    send(prod, {"ok": 1})
    rec = cons.get(timeout=0)
    assert rec.seq == 0 and decode(rec) == {"ok": 1}


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang guard only: no wall-clock limit under load
def test_transport_benchmark_quick_mode_runs(tmp_path: Path) -> None:
    """benchmarks/transport.py --quick completes and reports every transport (keeps it from rotting)."""
    out = tmp_path / "transport.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "transport.py"), "--quick", "--json", str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    results = json.loads(out.read_text())["results"]
    names = {r["name"] for r in results}
    assert names == {
        "ring copy-out",
        "ring zero-copy",
        "ring streamed",
        "ring raw",
        "mp.Queue",
        "DataLoader",
    }
    assert all(r["items_per_s"] > 0 and len(r["seconds"]) == 1 for r in results)


# -- streaming a batch through the ring in chunks -------------------------------------------------


def _stream(batch: object, chunk: int, capacity: int = 1 << 20, **kwargs: Any) -> object:
    """Send `batch` in chunks into a ring big enough for all of them, then decode it back."""
    cons, prod = make_pair(capacity)
    send(prod, batch, chunk=chunk)
    first = cons.get(timeout=0)
    out = decode(first, more=lambda: cons.get(timeout=0), **kwargs)
    assert cons.stats()["bytes_in_use"] == 0  # every record released
    with pytest.raises(RingTimeout):
        cons.get(timeout=0)  # the batch consumed exactly its own records
    return out


@settings(max_examples=150, deadline=None)
@given(batch=batches, chunk=st.sampled_from([64, 128, 192, 320, 4096]))
def test_any_batch_streamed_in_chunks_decodes_equal(batch: object, chunk: int) -> None:
    """Cut into records of any chunk size, every supported batch decodes to the same value."""
    assert_same(_stream(batch, chunk), batch)


@settings(max_examples=100, deadline=None)
@given(batch=batches, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_written_ranges_concatenate_to_the_whole_encoding(batch: object, cuts: list[int]) -> None:
    """write_range over consecutive ranges yields exactly the bytes write_into yields."""
    plan = plan_batch(batch)
    whole = encode(batch)
    bounds = sorted({0, plan.nbytes, *(c % (plan.nbytes + 1) for c in cuts)})
    parts = []
    for a, b in itertools.pairwise(bounds):
        buf = bytearray(b - a)
        assert plan.write_range(buf, a, b) == b - a
        parts.append(bytes(buf))
    # Alignment gaps are never read; compare everything the decoder reads.
    assert_same(decode(b"".join(parts)), decode(whole))


def test_tally_counts_the_data_bytes_of_every_leaf_whole_or_streamed() -> None:
    """decode(tally=) adds arrays' nbytes and str/bytes rows' UTF-8/raw bytes (not offsets
    or metadata), the same whether the batch came as one record or streamed in chunks."""
    batch = {
        "ids": np.arange(300, dtype=np.int64),
        "t": torch.ones(7, 3, dtype=torch.float16),
        "text": ["ä" * 97, "", "abc"],
        "raw": [b"\x01" * 500, b"x"],
        "one": b"0123456789",
    }
    expected = 300 * 8 + 7 * 3 * 2 + (2 * 97 + 3) + 501 + 10
    whole = [0]
    decode(encode(batch), tally=whole)
    cons, prod = make_pair(1 << 20)
    send(prod, batch, chunk=128)
    streamed = [5]  # the tally adds to what is there
    decode(cons.get(timeout=0), more=lambda: cons.get(timeout=0), tally=streamed)
    assert whole == [expected] and streamed == [5 + expected]


def test_rows_larger_than_a_chunk_and_split_characters_survive_streaming() -> None:
    """A bytes row spanning many records, and UTF-8 characters cut by a record boundary,
    decode exactly."""
    text = ["ä" * 97, "€" * 300, "", "x", "😀" * 50]
    blobs = [bytes(range(256)) * 40, b"", b"\x00" * 70]
    batch = {"text": text, "blobs": blobs, "n": np.arange(5000, dtype=np.int32)}
    for chunk in (64, 128, 960):
        assert_same(_stream(batch, chunk), batch)


def test_blob_columns_come_out_contiguous_whole_or_streamed() -> None:
    """blobs="column": one BlobColumn (offsets + one buffer) per str/bytes list, either way."""
    batch = {"text": ["ab", "", "cdé"], "raw": [b"\x01" * 300, b"\x02"]}
    for out in (decode(encode(batch), blobs="column"), _stream(batch, 64, blobs="column")):
        assert isinstance(out, dict)
        text, raw = out["text"], out["raw"]
        assert isinstance(text, BlobColumn) and text.text and text.tolist() == batch["text"]
        assert isinstance(raw, BlobColumn) and not raw.text and raw.tolist() == batch["raw"]
        assert raw.data.tobytes() == b"\x01" * 300 + b"\x02"
        assert raw.offsets.tolist() == [0, 300, 301]


def test_a_batch_far_larger_than_the_ring_streams_through_it() -> None:
    """A 6 MiB batch crosses a 64 KiB ring: the producer writes chunk k + 1 while the consumer
    copies chunk k, and the consumer never holds more than one record."""
    cons, prod = make_pair(1 << 16)
    batch = {
        "image": np.random.default_rng(0).integers(0, 255, (24, 256, 1024), dtype=np.uint8),
        "blobs": [bytes([i]) * 50_000 for i in range(20)],
    }
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            send(prod, batch, chunk=16 << 10, timeout=30)
        except BaseException as exc:  # pragma: no cover - surfaced by the assertion below
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    held = []

    def next_record() -> Record:
        held.append(cons.stats()["bytes_held"])  # before taking the next record
        return cons.get(timeout=30)

    out = decode(cons.get(timeout=30), more=next_record)
    producer.join(30)
    assert not errors
    assert_same(out, batch)
    assert len(held) > 6 * 1024 // 16 - 5 and max(held) == 0
    assert cons.stats()["bytes_in_use"] == 0


def test_zero_copy_needs_the_whole_batch_in_one_record() -> None:
    """decode(copy=False) of a streamed batch refuses with a clear error instead of misreading."""
    cons, prod = make_pair()
    send(prod, {"x": np.zeros(1000, np.int64)}, chunk=1024)
    with pytest.raises(RingArgumentError, match="whole batch in one record"):
        decode(cons.get(timeout=0), copy=False)


def test_a_stream_cut_short_or_interrupted_is_corrupt() -> None:
    """Missing continuation records, or another record in their place, raise RingCorrupted."""
    cons, prod = make_pair()
    send(prod, {"x": np.zeros(1000, np.int64)}, chunk=1024)
    with pytest.raises(RingCorrupted, match="no further records"):
        decode(cons.get(timeout=0))
    for _ in range(cons.stats()["records"] - 1):
        cons.get(timeout=0).release()
    send(prod, {"x": np.zeros(1000, np.int64)}, chunk=1024)
    prod.put(b"E", type=RecordType.ERROR)
    first = cons.get(timeout=0)
    cons.get(timeout=0).release()  # lose the second record: the ERROR record comes next
    with pytest.raises(RingCorrupted, match="interrupted"):
        decode(first, more=lambda: cons.get(timeout=0))


def test_chunk_must_be_a_positive_multiple_of_64() -> None:
    """A chunk size the ring's alignment cannot honour is refused before anything is written."""
    cons, prod = make_pair()
    with pytest.raises(RingArgumentError, match="multiple of 64"):
        send(prod, {"x": np.zeros(1000, np.int64)}, chunk=1000)
    assert cons.stats()["records"] == 0


@settings(max_examples=150, deadline=None)
@given(
    garbage=st.binary(min_size=1, max_size=200),
    cut=st.integers(0, 4000),
    chunk=st.sampled_from([128, 256, 1024]),
)
def test_garbage_in_streamed_records_raises_ring_corrupted_not_crash(
    garbage: bytes, cut: int, chunk: int
) -> None:
    """Scribbled bytes anywhere in a streamed batch's records decode or raise RingCorrupted."""
    whole = bytearray(encode(columnar_batch()))
    whole[cut : cut + len(garbage)] = garbage
    cons, prod = make_pair()
    first = max(chunk, (24 + struct.unpack_from("<I", bytes(whole), 8)[0] + 63) // 64 * 64)
    bounds = [0, *range(first, len(whole), chunk), len(whole)]
    for a, b in itertools.pairwise(bounds):
        prod.put(bytes(whole[a:b]))
    with contextlib.suppress(RingCorrupted, RingArgumentError, RingTimeout):
        decode(cons.get(timeout=0), more=lambda: cons.get(timeout=0), allow_pickle=False)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.text(), max_size=40), prefix=st.binary(max_size=8))
def test_split_builds_exactly_the_rows_python_would(rows: list[str], prefix: bytes) -> None:
    """The native split gives each row as str (UTF-8, surrogatepass) or bytes, like slicing."""
    from streamload.transport import _ring

    raw = [r.encode("utf-8", "surrogatepass") for r in rows]
    blob = prefix + b"".join(raw)
    offsets = np.asarray(np.cumsum([len(prefix), *map(len, raw)]), np.int64)
    assert _ring.split(blob, offsets, True) == rows
    assert _ring.split(blob, offsets, False) == raw


@settings(max_examples=200, deadline=None)
@given(offsets=st.lists(st.integers(-5, 60), min_size=1, max_size=8))
def test_split_refuses_offsets_outside_the_buffer_or_out_of_order(offsets: list[int]) -> None:
    """Offsets that decrease, go negative or past the buffer raise ValueError; no row is read."""
    from streamload.transport import _ring

    blob = bytes(range(50))
    valid = offsets[0] >= 0 and all(a <= b for a, b in itertools.pairwise(offsets))
    valid = valid and offsets[-1] <= len(blob)
    if valid:
        assert _ring.split(blob, np.asarray(offsets, np.int64), False) == [
            blob[a:b] for a, b in itertools.pairwise(offsets)
        ]
    else:
        with pytest.raises(ValueError, match="split"):
            _ring.split(blob, np.asarray(offsets, np.int64), False)


columnar_values = st.one_of(
    hnp.arrays(
        dtype=st.sampled_from(
            [np.int8, np.uint16, np.int64, np.float32, np.float64, np.bool_, np.complex128]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ).flatmap(
        # as given, byte-swapped, or a strided view: the fast plan must leave those to the walk
        lambda a: st.sampled_from(
            [a, a.astype(a.dtype.newbyteorder()), a[..., ::2] if a.ndim else a, a.T]
        )
    ),
    st.lists(st.text(max_size=10), max_size=5).map(
        lambda rows: BlobColumn.from_arrow(pa.array(rows, pa.large_string()))
    ),
    st.lists(st.binary(max_size=10), max_size=5).map(
        lambda rows: BlobColumn.from_arrow(pa.array(rows, pa.large_binary()))
    ),
    st.lists(st.text(max_size=5), min_size=1, max_size=3),
    st.integers(0, 9),
)


@settings(max_examples=200, deadline=None)
@given(batch=st.dictionaries(st.text(max_size=5), columnar_values, max_size=4))
def test_a_columnar_batch_encodes_exactly_as_the_general_walk(batch: dict[str, object]) -> None:
    """A worker's columnar batch (planned without the general walk) encodes to the very bytes
    the walk gives, whatever its arrays' layout, and decodes back to its columns."""
    fast, walk = plan_batch(batch), codec._plan_walk(batch)
    assert fast.nbytes == walk.nbytes
    a, b = bytearray(fast.nbytes), bytearray(walk.nbytes)
    fast.write_into(a)
    walk.write_into(b)
    assert a == b
    out = decode(bytes(a))
    assert list(out) == list(batch)
    for key, value in batch.items():
        if isinstance(value, BlobColumn):
            assert out[key] == value.tolist()
        elif isinstance(value, np.ndarray):
            assert_same(out[key], np.array(value, value.dtype.newbyteorder("="), order="C"))
        else:
            assert_same(out[key], value)


def _worker_batch() -> dict[str, object]:
    """What a worker sends: numeric arrays and text/bytes columns only."""
    return {
        "id": np.arange(5, dtype=np.int64),
        "image": np.arange(2 * 5 * 3, dtype=np.uint8).reshape(5, 2, 3),
        "text": ["a", "bé", "", "cde", "✓"],
        "raw": [b"\x00", b"", b"xy", b"z", b"\xff"],
    }


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, 40),
    number=st.one_of(st.integers(-(2**64), 2**64), st.sampled_from([-1, 0, 1, 63, 64, 4096])),
)
def test_a_worker_batch_with_any_number_of_its_metadata_changed_never_crashes(
    which: int, number: int
) -> None:
    """A worker batch whose metadata has one number replaced (offset, count, shape, size)
    decodes to the batch (if the number was not used) or raises RingCorrupted: no read outside
    the record, no other exception, in both the columnar fast path and the general decoder."""
    record = encode(_worker_batch())
    meta_len = struct.unpack_from("<I", record, 8)[0]
    meta = json.loads(record[24 : 24 + meta_len])
    numbers = [
        (node, k)
        for node in meta[2]
        for k in range(1, len(node))
        if type(node[k]) is int or type(node[k]) is list
    ]
    node, k = numbers[which % len(numbers)]
    node[k] = [number] if type(node[k]) is list else number
    data = record[(24 + meta_len + 63) & ~63 :]
    hostile = _record(json.dumps(meta, separators=(",", ":")).encode(), data)
    for blobs in ("list", "column"):
        try:
            out = decode(hostile, blobs=blobs)
        except RingCorrupted:
            continue
        assert list(out) == list(_worker_batch())

"""str/bytes columns travel from workers as offsets + one blob and arrive as the same lists."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streamload as sl
from streamload.format.blobs import BlobColumn
from streamload.pipeline.collate import columns_to_torch, stack_columns
from streamload.transport.codec import decode, encode, send
from streamload.transport.ring import Ring

TEXTS = ["", "a", "héllo", "\u2603 snow", "x" * 300, "", "日本語"]
BLOBS = [b"", b"\x00\xff", b"abc" * 100, b"", bytes(range(256))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> sl.StreamingDataset:
    root = tmp_path_factory.mktemp("blob") / "ds"
    with sl.ShardWriter(str(root), shard_size=3000) as w:
        for i in range(400):
            w.write(
                {"id": i, "s": TEXTS[i % len(TEXTS)] + str(i), "b": BLOBS[i % len(BLOBS)] * (i % 3)}
            )
    ds = sl.StreamingDataset(str(root))
    assert ds.num_shards > 3
    return ds


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(400),
        np.arange(17, 29),
        np.random.default_rng(0).permutation(400)[:150],
        np.array([3, 3, 399, 0, 3]),
        np.array([], np.int64),
    ],
    ids=["all", "run", "shuffled", "duplicates", "empty"],
)
def test_arrow_strings_hold_exactly_the_list_values(
    dataset: sl.StreamingDataset, ids: np.ndarray
) -> None:
    """get_batch(strings='blob') has the rows get_batch gives as lists, in the same order."""
    as_lists = dataset.get_batch(ids)
    as_blobs = dataset.get_batch(ids, strings="blob")
    for name in ("s", "b"):
        assert isinstance(as_blobs[name], BlobColumn)
        assert as_blobs[name].tolist() == as_lists[name]
    np.testing.assert_array_equal(as_blobs["id"], as_lists["id"])


def test_blob_column_of_a_sliced_array_starts_at_zero() -> None:
    """A slice's offsets are rebased, so the wire form never carries bytes outside the slice."""
    array = pa.array(["zero", "one", "two", "three"], pa.large_string()).slice(1, 2)
    blob = BlobColumn.from_arrow(array)
    assert blob.offsets.tolist() == [0, 3, 6]
    assert blob.data.tobytes() == b"onetwo"
    assert blob.tolist() == ["one", "two"]


@pytest.mark.parametrize("values", [TEXTS, BLOBS], ids=["str", "bytes"])
def test_blob_columns_decode_to_the_lists_they_came_from(values: list) -> None:
    """A BlobColumn through the codec (and through a real ring) decodes to the original list."""
    kind = pa.large_string() if isinstance(values[0], str) else pa.large_binary()
    batch = stack_columns({"v": pa.array(values, kind), "n": np.arange(len(values))})
    assert isinstance(batch["v"], BlobColumn)
    assert decode(encode(batch), as_torch=True)["v"] == values
    assert columns_to_torch(batch)["v"] == values
    consumer = Ring.create(1 << 16)
    producer = Ring.attach(consumer.handle(), "producer")
    try:
        send(producer, batch)
        assert decode(consumer.get(timeout=5), copy=True)["v"] == values
    finally:
        producer.close(timeout=0)
        consumer.close(timeout=0)


def test_loader_batches_with_workers_equal_in_process_batches(
    dataset: sl.StreamingDataset, tmp_path: Path
) -> None:
    """str/bytes columns are the same lists whether batches come from workers or not."""
    inline = list(sl.StreamLoader(dataset, batch_size=64))
    workers = list(sl.StreamLoader(dataset, batch_size=64, num_workers=2))
    assert [b["s"] for b in workers] == [b["s"] for b in inline]
    assert [b["b"] for b in workers] == [b["b"] for b in inline]
    assert all(isinstance(b["s"], list) and isinstance(b["b"], list) for b in workers)


@pytest.mark.parametrize(
    "size", [10, 20_000], ids=["small-rows-arrow-take", "large-rows-run-copies"]
)
def test_shuffled_gathers_match_lists_for_small_and_large_rows(tmp_path: Path, size: int) -> None:
    """Both gather strategies (Arrow take for many small rows, run copies for big ones) agree."""
    rng = np.random.default_rng(size)
    rows = [rng.bytes(int(rng.integers(0, size))) for _ in range(300)]
    with sl.ShardWriter(str(tmp_path / "ds"), shard_size="1GB") as w:
        for r in rows:
            w.write({"b": r, "s": r.hex()})
    ds = sl.StreamingDataset(str(tmp_path / "ds"))
    ids = rng.permutation(300)
    blobs = ds.get_batch(ids, strings="blob")
    assert blobs["b"].tolist() == [rows[i] for i in ids]
    assert blobs["s"].tolist() == [rows[i].hex() for i in ids]


def test_copy_runs_copies_every_row_to_its_place() -> None:
    """copy_runs equals a per-row copy, whatever the runs look like."""
    from streamload.format.blobs import copy_runs

    rng = np.random.default_rng(1)
    src = rng.integers(0, 255, 10_000, dtype=np.uint8)
    lengths = rng.integers(0, 50, 200)
    src_starts = np.where(rng.random(200) < 0.5, rng.integers(0, 9_000, 200), 0)
    src_starts[1::3] = (
        src_starts[0::3][: len(src_starts[1::3])] + lengths[0::3][: len(src_starts[1::3])]
    )
    dst_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    dst = np.zeros(int(lengths.sum()), np.uint8)
    copy_runs(dst, src, src_starts, dst_starts, lengths)
    expected = np.concatenate([src[s : s + n] for s, n in zip(src_starts, lengths, strict=True)])
    np.testing.assert_array_equal(dst, expected)


@st.composite
def _scattered(draw: st.DrawFn) -> tuple[BlobColumn, list[bytes]]:
    """A column of rows drawn from several shards' sources, gathered lazily and interleaved."""
    n = draw(st.integers(0, 30))
    rows = draw(st.lists(st.binary(max_size=12), min_size=n, max_size=n))
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    parts, positions = [], []
    for group in np.split(np.asarray(order, np.int64), cuts):
        if not len(group):
            continue
        pieces = [rows[r] for r in group]
        if draw(st.booleans()):  # rows back to back in their own buffer (an Arrow slice)
            blob = np.frombuffer(b"".join(pieces), np.uint8)
            offsets = np.zeros(len(pieces) + 1, np.int64)
            np.cumsum([len(p) for p in pieces], out=offsets[1:])
            parts.append(BlobColumn(False, offsets, blob))
        else:  # rows scattered in a mapped source, in reverse order
            buf, starts = bytearray(), [0] * len(pieces)
            for k in reversed(range(len(pieces))):
                buf += b"#"
                starts[k] = len(buf)
                buf += pieces[k]
            source = np.frombuffer(bytes(buf), np.uint8)
            parts.append(BlobColumn.gather(False, source, starts, [len(p) for p in pieces]))
        positions.append(group)
    if not parts:
        return BlobColumn(False, np.zeros(1, np.int64), np.zeros(0, np.uint8)), []
    return BlobColumn.scatter(parts, positions, n), rows


@settings(max_examples=200, deadline=None)
@given(column=_scattered(), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_scattered_rows_write_to_any_range_without_gathering(
    column: tuple[BlobColumn, list[bytes]], cuts: list[int]
) -> None:
    """Rows gathered from several sources are written, whole or in any consecutive ranges, as
    the rows back to back, and the column holds no copy of them until `data` is asked for."""
    col, rows = column
    whole = b"".join(rows)
    assert col.nbytes == len(whole)
    assert col._data is None or not rows
    out = np.zeros(col.nbytes, np.uint8)
    col.write_data(out)
    assert out.tobytes() == whole
    bounds = sorted({0, col.nbytes, *(c % (col.nbytes + 1) for c in cuts)})
    pieces = []
    for a, b in itertools.pairwise(bounds):
        part = np.zeros(b - a, np.uint8)
        col.write_range(part, a, b)
        pieces.append(part.tobytes())
    assert b"".join(pieces) == whole
    assert col.tolist() == rows


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_hands_out_contiguous_blobs_on_request(
    dataset: sl.StreamingDataset, workers: int
) -> None:
    """strings="blobs": every str/bytes column is one Blobs (a uint8 tensor + int64 offsets)
    holding exactly the rows the default lists hold, in and out of worker processes."""
    kwargs: dict[str, Any] = {"batch_size": 64, "num_workers": workers}
    if workers:
        kwargs["multiprocessing_context"] = "fork"
    lists = list(sl.StreamLoader(dataset, **kwargs))
    blobs = list(sl.StreamLoader(dataset, strings="blobs", **kwargs))
    assert len(lists) == len(blobs) == 7
    for want, got in zip(lists, blobs, strict=True):
        assert torch.equal(want["id"], got["id"])
        for name in ("s", "b"):
            column = got[name]
            assert isinstance(column, sl.Blobs) and column.data.dtype == torch.uint8
            assert column.offsets.dtype == torch.int64 and len(column) == len(want[name])
            assert column.tolist() == want[name]
            raw = [r.encode() if isinstance(r, str) else r for r in want[name]]
            assert [bytes(v.numpy()) for v in column.views()] == raw
            assert bytes(column[-1].numpy()) == raw[-1]
            assert column.data.numel() == sum(map(len, raw))


def test_strings_must_name_a_form() -> None:
    """An unknown strings= form is a ConfigError naming the choices."""
    with pytest.raises(sl.ConfigError, match="list, blobs"):
        sl.StreamLoader(list(range(4)), strings="arrow")


@given(st.lists(st.lists(st.binary(max_size=6), min_size=1, max_size=5), min_size=1, max_size=4))
def test_concatenated_columns_hold_the_parts_rows_in_order(parts: list[list[bytes]]) -> None:
    """BlobColumn.concat of columns (a run read across record batches) holds every part's rows
    back to back, written whole or by ranges, without copying before the write."""
    columns = [BlobColumn.from_arrow(pa.array(rows, pa.large_binary())) for rows in parts]
    joined = BlobColumn.concat(columns)
    rows = [r for part in parts for r in part]
    assert len(joined) == len(rows) and joined.offsets[0] == 0
    assert joined.tolist() == rows
    cut = joined.nbytes // 2
    out = np.zeros(joined.nbytes, np.uint8)
    joined.write_range(out[:cut], 0, cut)
    joined.write_range(out[cut:], cut, joined.nbytes)
    assert out.tobytes() == b"".join(rows)

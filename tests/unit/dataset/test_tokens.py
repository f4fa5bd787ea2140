"""Token streams over real datasets: blocks are slices of the corpus, packed rows keep documents
whole, and both are items the plan shuffles, partitions and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamload as sl
from streamload.dataset.packing import pack
from streamload.errors import ConfigError, FormatError


def _write(
    root: Path | str, lengths: list[int], shard_size: Any = "1MB", dtype: Any = np.int32
) -> np.ndarray:
    """Documents of ``lengths`` whose tokens are their positions in the whole corpus."""
    stream = np.arange(sum(lengths), dtype=np.int64)
    with sl.ShardWriter(
        str(root), shard_size=shard_size, shapes={"tokens": [None]}, overwrite=True
    ) as w:
        at = 0
        for n in lengths:
            w.write({"tokens": (stream[at : at + n] % np.iinfo(dtype).max).astype(dtype)})
            at += n
    return stream


_SHARD_SIZES = st.sampled_from([1, 64, 700, "1MB"])  # 1 byte: one document per shard


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(0, 90), min_size=1, max_size=40),
    shard_size=_SHARD_SIZES,
    block_size=st.integers(1, 70),
    data=st.data(),
)
def test_blocks_equal_slices_of_the_concatenated_corpus(
    tmp_path: Path, lengths: list[int], shard_size: Any, block_size: int, data: st.DataObject
) -> None:
    """Block b is tokens [b*L, (b+1)*L) of all documents of all shards, whatever the sizes."""
    stream = _write(tmp_path, lengths, shard_size)
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", block_size=block_size)
    assert len(ds) == len(stream) // block_size
    if len(ds) == 0:
        return
    ids = np.array(data.draw(st.lists(st.integers(0, len(ds) - 1), min_size=1, max_size=6)))
    batch = ds.get_batch(ids)["tokens"]
    assert batch.shape == (len(ids), block_size) and batch.dtype == np.int32
    for row, b in zip(batch, ids, strict=True):
        assert row.tolist() == stream[b * block_size : (b + 1) * block_size].tolist()
    assert ds[int(ids[0])]["tokens"].tolist() == batch[0].tolist()


def test_blocks_span_shards_and_documents(tmp_path: Path) -> None:
    """With one document per shard, a block holds the end of one shard and the start of the next."""
    stream = _write(tmp_path, [5, 3, 7, 0, 4], shard_size=1)
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", block_size=6)
    assert ds.num_shards == 5 and len(ds) == 3
    assert ds.get_batch(np.arange(3))["tokens"].tolist() == stream[:18].reshape(3, 6).tolist()
    assert ds.tokens is not None and ds.tokens.items_per_shard().tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("shuffle_mode", ["full", "block"])
def test_every_token_once_per_epoch_except_the_tail(tmp_path: Path, shuffle_mode: str) -> None:
    """A shuffled epoch of blocks yields each of the first N//L*L tokens exactly once."""
    rng = np.random.default_rng(1)
    stream = _write(tmp_path, rng.integers(0, 200, 300).tolist(), shard_size="4KiB")
    ds = sl.StreamingDataset(
        str(tmp_path),
        tokens="tokens",
        block_size=33,
        shuffle=True,
        seed=3,
        shuffle_mode=shuffle_mode,
        shuffle_block=2,
    )
    assert ds.num_shards > 5
    loader = sl.StreamLoader(ds, batch_size=7)
    got = np.concatenate([b["tokens"].numpy().reshape(-1) for b in loader])
    covered = len(ds) * 33
    assert sorted(got.tolist()) == stream[:covered].tolist()
    assert covered > len(stream) - 33


def test_a_dataset_without_element_totals_reads_the_same_blocks(tmp_path: Path) -> None:
    """A version 1 index (no per-shard totals) is read by counting each shard: same blocks."""
    stream = _write(tmp_path, [10, 20, 30, 40, 50], shard_size=1)
    index = json.loads((tmp_path / "index.json").read_text())
    index["format_version"] = 1
    for shard in index["shards"]:
        del shard["elements"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", block_size=16)
    assert len(ds) == 150 // 16
    assert ds.get_batch(np.arange(len(ds)))["tokens"].reshape(-1).tolist() == stream[:144].tolist()


def test_a_wrong_element_total_is_a_format_error_naming_the_shard(tmp_path: Path) -> None:
    """index.json claiming more tokens than a shard holds fails when the shard is read."""
    _write(tmp_path, [10, 20], shard_size=1)
    index = json.loads((tmp_path / "index.json").read_text())
    index["shards"][1]["elements"]["tokens"] = 25
    (tmp_path / "index.json").write_text(json.dumps(index))
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", block_size=5)
    with pytest.raises(
        FormatError, match=r"shard shard-00001.arrow: .* holds 20 tokens, index.json says 25"
    ):
        ds.get_batch(np.array([3]))


def test_lmdb_token_datasets_read_the_same_blocks(tmp_path: Path) -> None:
    """Blocks do not depend on the shard format."""
    lengths = [7, 0, 13, 2, 30]
    stream = _write(tmp_path / "a", lengths, shard_size=64)
    with sl.ShardWriter(str(tmp_path / "l"), format="lmdb", shard_size=64) as w:
        at = 0
        for n in lengths:
            w.write({"tokens": stream[at : at + n].astype(np.int32)})
            at += n
    arrow = sl.StreamingDataset(str(tmp_path / "a"), tokens="tokens", block_size=9)
    lmdb = sl.StreamingDataset(str(tmp_path / "l"), tokens="tokens", block_size=9)
    ids = np.arange(len(arrow))
    assert lmdb.get_batch(ids)["tokens"].tolist() == arrow.get_batch(ids)["tokens"].tolist()


# -- packed rows ---------------------------------------------------------------------------------


def _documents(ds_root: Path, lengths: list[int]) -> list[list[int]]:
    stream = _write(ds_root, lengths, shard_size="2KiB")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [stream[bounds[i] : bounds[i + 1]].tolist() for i in range(len(lengths))]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lengths=st.lists(st.integers(0, 120), min_size=1, max_size=60), seq_len=st.integers(8, 64))
def test_packed_rows_keep_fitting_documents_whole_and_mask_padding(
    tmp_path: Path, lengths: list[int], seq_len: int
) -> None:
    """Every document appears once; one that fits is one segment; segments restart positions;
    padding has segment 0, position 0 and token 0."""
    docs = _documents(tmp_path, lengths)
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", seq_len=seq_len, pack=True)
    batch = ds.get_batch(np.arange(len(ds)))
    tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
    assert tokens.shape == seg.shape == pos.shape == (len(ds), seq_len)
    pieces: dict[int, list[list[int]]] = {}
    first_token = {d[0]: i for i, d in enumerate(docs) if d}
    for r in range(len(ds)):
        ids = seg[r]
        assert (tokens[r][ids == 0] == 0).all() and (pos[r][ids == 0] == 0).all()
        used = int((ids > 0).sum())
        assert (ids[:used] > 0).all()  # padding only at the end of a row
        for s in range(1, int(ids.max(initial=0)) + 1):
            where = np.flatnonzero(ids == s)
            assert pos[r][where].tolist() == list(range(len(where)))
            piece = tokens[r][where].tolist()
            doc = next(i for i, d in enumerate(docs) if d and piece[0] in d)
            pieces.setdefault(doc, []).append(piece)
    for i, d in enumerate(docs):
        got = sorted(pieces.get(i, []), key=lambda p: p[0])
        assert [t for piece in got for t in piece] == d
        if 0 < len(d) <= seq_len:
            assert len(got) == 1
    assert first_token is not None


def _packed_reference(root: Path, stream: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """Every packed row built by hand from `pack` over each shard's documents (storage order)."""
    index = json.loads((root / "index.json").read_text())
    lengths = np.array(
        [
            len(t)
            for t in sl.StreamingDataset(str(root)).get_batch(np.arange(index["num_samples"]))[
                "tokens"
            ]
        ]
    )
    doc_start = np.concatenate([[0], np.cumsum(lengths)])
    rows: dict[str, list[np.ndarray]] = {"tokens": [], "segment_ids": [], "positions": []}
    first_doc = 0
    for shard in index["shards"]:
        docs = lengths[first_doc : first_doc + shard["num_samples"]]
        packing = pack(docs, seq_len)
        for r in range(packing.num_rows):
            out = {name: np.zeros(seq_len, np.int64) for name in rows}
            at = 0
            for segment, j in enumerate(range(packing.row_ptr[r], packing.row_ptr[r + 1]), 1):
                n = int(packing.length[j])
                begin = doc_start[first_doc + packing.doc[j]] + packing.start[j]
                out["tokens"][at : at + n] = stream[begin : begin + n]
                out["segment_ids"][at : at + n] = segment
                out["positions"][at : at + n] = np.arange(n)
                at += n
            for name in rows:
                rows[name].append(out[name])
        first_doc += shard["num_samples"]
    return {name: np.array(v).reshape(-1, seq_len) for name, v in rows.items()}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(0, 150), min_size=1, max_size=50),
    seq_len=st.integers(1, 64),
    dtype=st.sampled_from([np.uint16, np.int32]),
    data=st.data(),
)
def test_packed_rows_read_in_any_order_are_the_rows_packing_lays_out(
    tmp_path: Path, lengths: list[int], seq_len: int, dtype: Any, data: st.DataObject
) -> None:
    """Any ids (shuffled, repeated, across shards) give exactly `pack`'s rows: tokens of each
    piece, segment ids 1.. per piece, positions restarting per piece, zeros on padding, in fresh
    writable arrays of the column dtype and int32."""
    stream = _write(tmp_path, lengths, shard_size=256, dtype=dtype)
    want = _packed_reference(tmp_path, stream, seq_len)
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", seq_len=seq_len, pack=True)
    assert len(ds) == len(want["tokens"])
    if not len(ds):
        return
    in_order = ds.get_batch(np.arange(len(ds)))
    ids = np.array(
        data.draw(st.lists(st.integers(0, len(ds) - 1), min_size=1, max_size=3 * len(ds))),
        np.int64,
    )
    for batch, rows in ((in_order, np.arange(len(ds))), (ds.get_batch(ids), ids)):
        assert batch["tokens"].dtype == dtype
        assert batch["segment_ids"].dtype == batch["positions"].dtype == np.int32
        for name, values in batch.items():
            assert values.flags.writeable and values.flags.c_contiguous
            assert values.tolist() == want[name][rows].tolist(), name
    batch = ds.get_batch(ids)
    batch["tokens"][:] = 1  # owned by the caller: writing it changes no later batch
    assert ds.get_batch(ids)["tokens"].tolist() == want["tokens"][ids].tolist()


def test_lmdb_token_datasets_pack_the_rows_packing_lays_out(tmp_path: Path) -> None:
    """Packed rows of LMDB shards (tokens copied out of the shard, not mapped) are `pack`'s rows."""
    lengths = [7, 0, 13, 2, 30, 5, 19]
    stream = np.arange(sum(lengths), dtype=np.int32)
    with sl.ShardWriter(str(tmp_path), format="lmdb", shard_size=64) as w:
        at = 0
        for n in lengths:
            w.write({"tokens": stream[at : at + n]})
            at += n
    want = _packed_reference(tmp_path, stream, 16)
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", seq_len=16, pack=True)
    assert ds.num_shards > 1 and len(ds) == len(want["tokens"])
    ids = np.array([3, 0, 2, 2, 1, len(ds) - 1]) % len(ds)
    got = ds.get_batch(ids)
    assert {k: v.tolist() for k, v in got.items()} == {k: v[ids].tolist() for k, v in want.items()}


def test_padding_fraction_is_reported_by_the_loader(tmp_path: Path) -> None:
    """loader.stats() reports padding over the token slots the loop received."""
    _documents(tmp_path, [30, 30, 30, 50])  # rows of 64: 50, 30+30, 30 -> 192 slots, 140 tokens
    ds = sl.StreamingDataset(str(tmp_path), tokens="tokens", seq_len=64, pack=True)
    loader = sl.StreamLoader(ds, batch_size=2)
    assert sum(b["tokens"].shape[0] for b in loader) == 3
    packing = loader.stats()["packing"]
    assert packing["tokens"] == 140 and packing["slots"] == 192
    assert packing["padding_fraction"] == pytest.approx(1 - 140 / 192)
    assert ds.tokens is not None and ds.tokens.padding_fraction() == pytest.approx(1 - 140 / 192)


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokens": "tokens"}, "give block_size= .* or seq_len= with pack=True"),
        ({"tokens": "tokens", "block_size": 4, "seq_len": 4}, "not both or neither"),
        ({"tokens": "tokens", "seq_len": 4}, "pass pack=True"),
        ({"tokens": "tokens", "block_size": 4, "pack": True}, "nothing to pack"),
        ({"tokens": "tokens", "block_size": 0}, "block_size: must be an int >= 1"),
        (
            {"tokens": "nope", "block_size": 4},
            r"no such column; the dataset has \['id', 'tokens', 'x'\]",
        ),
        ({"tokens": "x", "block_size": 4}, "the column is a float32 array of shape \\[None\\]"),
        ({"tokens": "id", "block_size": 4}, "the column is a int"),
        ({"block_size": 4}, "name it with tokens='tokens'"),
        ({"tokens": "tokens", "block_size": 4, "columns": ["id"]}, "columns= does not apply"),
    ],
)
def test_bad_token_settings_fail_at_construction(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """Each wrong combination is a ConfigError that says what to pass instead."""
    with sl.ShardWriter(str(tmp_path)) as w:
        for n in (3, 5):
            w.write({"id": n, "tokens": np.zeros(n, np.uint16), "x": np.zeros(n, np.float32)})
    with pytest.raises(ConfigError, match=message):
        sl.StreamingDataset(str(tmp_path), **kwargs)

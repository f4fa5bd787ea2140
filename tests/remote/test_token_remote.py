"""Token streams from an object store (moto S3 on 127.0.0.1) through the shard cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from servers import Remote

from streamload import ShardWriter, StreamingDataset, StreamLoader


def _write_corpus(remote: Remote) -> np.ndarray:
    """~12k int32 tokens in ~200 documents over several shards; token = corpus position."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 120, 200)
    stream = np.arange(int(lengths.sum()), dtype=np.int32)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    with ShardWriter(remote.url, shard_size="8KiB", storage_options=remote.storage_options) as w:
        for k in range(len(lengths)):
            w.write({"tokens": stream[bounds[k] : bounds[k + 1]]})
    return stream


def test_blocks_stream_from_s3_through_the_cache_opening_no_shard_up_front(
    s3_url: Remote, tmp_path: Path
) -> None:
    """index.json alone lays out the blocks (no shard downloaded to count tokens); two workers
    then read every block exactly once, equal to the corpus, through the cache."""
    stream = _write_corpus(s3_url)
    cache = tmp_path / "cache"
    ds = StreamingDataset(
        s3_url.url,
        storage_options=s3_url.storage_options,
        cache_dir=cache,
        tokens="tokens",
        block_size=64,
        shuffle=True,
        seed=1,
    )
    assert ds.num_shards > 3
    assert len(ds) == len(stream) // 64
    cached = [f for _, _, files in os.walk(cache) for f in files if f.endswith(".arrow")]
    assert cached == []  # len() and the plan needed no shard
    loader = StreamLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork")
    blocks = np.concatenate([b["tokens"].numpy() for b in loader])
    assert sorted(blocks[:, 0].tolist()) == list(range(0, len(ds) * 64, 64))
    for row in blocks:
        assert row.tolist() == stream[row[0] : row[0] + 64].tolist()
    cached = [f for _, _, files in os.walk(cache) for f in files if f.endswith(".arrow")]
    assert len(cached) == ds.num_shards


def test_packed_rows_from_s3_hold_every_token_once(s3_url: Remote, tmp_path: Path) -> None:
    """Packed rows over a remote corpus place every token exactly once."""
    stream = _write_corpus(s3_url)
    ds = StreamingDataset(
        s3_url.url,
        storage_options=s3_url.storage_options,
        cache_dir=tmp_path / "cache",
        tokens="tokens",
        seq_len=128,
        pack=True,
    )
    loader = StreamLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork")
    tokens = [
        t[s != 0]
        for b in loader
        for t, s in zip(b["tokens"].numpy(), b["segment_ids"].numpy(), strict=True)
    ]
    assert sorted(np.concatenate(tokens).tolist()) == stream.tolist()

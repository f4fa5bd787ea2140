"""Lazy shard sequences (streamload.cache.read_plan): what read-ahead walks, generated on demand."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.cache.read_plan import ShardSequence, chunk_shards


def _expected(chunks: list[np.ndarray], offsets: np.ndarray) -> list[int]:
    """Per chunk its distinct shards ascending; consecutive repeats across chunks collapsed."""
    out: list[int] = []
    for chunk in chunks:
        for i in sorted({int(np.searchsorted(offsets, i, "right") - 1) for i in chunk.tolist()}):
            if not out or out[-1] != i:
                out.append(i)
    return out


@given(st.lists(st.integers(1, 5), min_size=1, max_size=8), st.data())
def test_a_chunk_opens_each_of_its_shards_once_in_shard_order(
    counts: list[int], data: st.DataObject
) -> None:
    """A chunk's ids map to their shards; each shard once, ascending: the order get_batch
    opens them in."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = data.draw(st.lists(st.integers(0, int(offsets[-1]) - 1), max_size=40))
    expected = sorted(
        {next(k for k in range(len(counts)) if offsets[k] <= i < offsets[k + 1]) for i in ids}
    )
    assert chunk_shards(np.array(ids, np.int64), offsets).tolist() == expected


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=8),
    st.lists(st.lists(st.integers(0, 10**6), max_size=6), max_size=6),
    st.lists(st.lists(st.integers(0, 10**6), max_size=6), max_size=6),
)
def test_lazy_sequence_equals_the_shards_of_all_reads(
    counts: list[int], first: list[list[int]], second: list[list[int]]
) -> None:
    """Generated chunk by chunk, the sequence is both epochs' chunks' shards joined (repeats
    across chunk boundaries collapsed); boundary is where the second epoch's shards begin."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(offsets[-1])
    a = [np.array([i % n for i in c], np.int64) for c in first]
    b = [np.array([i % n for i in c], np.int64) for c in second]
    seq = ShardSequence([a, b], offsets)
    got = []
    position = 0
    while (k := seq.get(position)) is not None:
        got.append(k)
        position += 1
    assert got == _expected(a + b, offsets)
    head = _expected(a, offsets)
    if any(len(c) for c in b):
        assert seq.boundary is not None and seq.boundary in (len(head), len(head) - 1)


def test_entries_are_generated_only_as_far_as_asked_and_forgotten_behind() -> None:
    """A billion-id epoch costs only the chunks looked at: asking for position 10 pulls a few
    chunks; forget() drops what is behind, and a forgotten position raises IndexError."""
    pulled = []

    def chunks() -> Iterator[np.ndarray]:
        for c in range(10**9 // 100):
            pulled.append(c)
            yield np.arange(c * 100, c * 100 + 100, dtype=np.int64)

    offsets = np.arange(0, 10**9 + 1, 50, dtype=np.int64)  # 2 shards per chunk
    seq = ShardSequence([chunks()], offsets)
    assert seq.get(10) == 10 and len(pulled) == 6
    assert seq.find(14, 10, 100) == 14 and seq.find(3, 10, 100) is None
    seq.forget(8)
    assert seq.window(8, 3) == [8, 9, 10]
    with pytest.raises(IndexError):
        seq.get(7)

"""Block arithmetic: blocks per shard, and ranges cut at shard/record-batch boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.token_blocks import (
    block_pieces,
    blocks_per_shard,
    check_block_size,
    offsets,
    split_ranges,
)

shard_counts = st.lists(st.integers(0, 60), min_size=0, max_size=12)


@given(shard_counts, st.integers(1, 50))
def test_blocks_per_shard_counts_blocks_by_the_shard_of_their_first_token(
    counts: list[int], block_size: int
) -> None:
    """Shard k gets exactly the blocks whose first token lies in it; they total N // block_size."""
    per_shard = blocks_per_shard(counts, block_size)
    total = sum(counts) // block_size
    assert per_shard.sum() == total and (per_shard >= 0).all()
    shard_of_token = np.repeat(np.arange(len(counts)), counts)
    expected = (
        np.bincount(
            shard_of_token[np.arange(total) * block_size].astype(np.int64), minlength=len(counts)
        )
        if total
        else np.zeros(len(counts), np.int64)
    )
    assert per_shard.tolist() == expected.tolist()


@given(shard_counts, st.integers(1, 50), st.data())
def test_block_pieces_reassemble_the_concatenated_stream(
    counts: list[int], block_size: int, data: st.DataObject
) -> None:
    """Copying each piece into its row and column gives exactly slices of the whole stream."""
    shards = [np.arange(c, dtype=np.int64) + 1000 * k for k, c in enumerate(counts)]
    stream = np.concatenate(shards) if shards else np.zeros(0, np.int64)
    total = len(stream) // block_size
    if total == 0:
        return
    ids = np.array(data.draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=8)))
    out = np.full((len(ids), block_size), -1, np.int64)
    p = block_pieces(ids, offsets(counts), block_size)
    for row, part, lo, hi, at in zip(*p, strict=True):
        assert 0 <= lo < hi <= counts[part]
        out[row, at : at + hi - lo] = shards[part][lo:hi]
    expected = np.stack([stream[b * block_size : (b + 1) * block_size] for b in ids])
    assert (out == expected).all()


@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=10),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=10),
)
def test_split_ranges_tiles_each_range_in_order(
    parts: list[int], ranges: list[tuple[int, int]]
) -> None:
    """Pieces of a range are contiguous, in order, each inside one part, and cover it exactly."""
    bounds = offsets(parts)
    total = int(bounds[-1])
    starts = np.array([min(a, total) for a, _ in ranges], np.int64)
    stops = np.array([min(a + n, total) for a, n in ranges], np.int64)
    p = split_ranges(starts, stops, bounds)
    for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
        mine = p.range_index == i
        glob_lo = bounds[p.part[mine]] + p.start[mine]
        glob_hi = bounds[p.part[mine]] + p.stop[mine]
        assert (p.stop[mine] > p.start[mine]).all()
        assert (glob_hi <= bounds[p.part[mine] + 1]).all()
        if a == b:
            assert not mine.any()
            continue
        assert glob_lo[0] == a and glob_hi[-1] == b
        assert (glob_lo[1:] == glob_hi[:-1]).all()
        assert (p.at[mine] == glob_lo - a).all()


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "8"])
def test_block_size_must_be_a_positive_int(bad: object) -> None:
    """block_size 0, negatives, floats, bools and strings are a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match="block_size"):
        check_block_size(bad)

"""Block arithmetic: how many blocks start in each shard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.dataset.token_blocks import blocks_per_shard, check_block_size, offsets
from streamload.errors import ConfigError

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


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "8"])
def test_block_size_must_be_a_positive_int(bad: object) -> None:
    """block_size 0, negatives, floats, bools and strings are a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match="block_size"):
        check_block_size(bad)


@given(shard_counts)
def test_offsets_are_the_running_total(counts: list[int]) -> None:
    """offsets(c)[k] is the number of positions before part k."""
    assert offsets(counts).tolist() == [sum(counts[:k]) for k in range(len(counts) + 1)]
